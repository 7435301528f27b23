"""The metric protocol: immutable pytrees with pure ``update``, ``merge``, ``all_reduce`` and ``compute``.

A metric holds static configuration (thresholds, fields, prefix, ...) as pytree metadata and its state
arrays as leaves, so it passes through ``jax.jit``, ``vmap``, ``lax.scan``, ``pmap``/``shard_map`` and
``flax.serialization`` unchanged. Every method returns a new metric; nothing is mutated.

Naming follows anomalib: ``fields`` name the batch entries passed positionally to ``update`` (scores
first, target second), and ``name == prefix + class name``. ``strict=False`` makes :meth:`update_from`
skip batches that lack a field, and ``compute`` of a never-updated non-strict metric return None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from jaxmetrics_ad.validation import as_array, is_traced

_CHILDREN = ("state", "num_updates", "num_invalid")


def _frozen(value: Any) -> Any:
    """A hashable version of a configuration value (arrays and lists become tuples)."""
    if isinstance(value, (np.ndarray, jax.Array)):
        return tuple(float(v) for v in np.asarray(value).ravel())
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def read_field(batch: Any, field: str) -> Any:
    """The entry ``field`` of a Mapping, or the attribute of any other object; None when absent.

    Example:
        >>> read_field({"pred_score": 1.0}, "pred_score"), read_field({"a": 1}, "gt_label")
        (1.0, None)
    """
    if isinstance(batch, Mapping):
        return batch.get(field)
    return getattr(batch, field, None)


def available_fields(batch: Any) -> list[str]:
    """The names a batch offers (keys of a Mapping, public non-None attributes otherwise).

    Example:
        >>> available_fields({"gt_label": 1, "pred_score": 2})
        ['gt_label', 'pred_score']
    """
    if isinstance(batch, Mapping):
        return sorted(str(k) for k in batch)
    names = (
        getattr(batch, "__dataclass_fields__", None)
        or getattr(batch, "_fields", None)  # NamedTuple: no __dict__
        or getattr(batch, "__dict__", {})
    )
    return sorted(n for n in names if not n.startswith("_") and getattr(batch, n, None) is not None)


class Metric:
    """Base class of every metric: configuration is static, state arrays are pytree leaves.

    Subclasses call ``super().__init__(fields=..., prefix=..., strict=..., **config)`` and implement
    ``_empty_state()``, ``_update_state(*arrays) -> (state, num_invalid)`` and ``_compute()``. A state
    is any pytree with ``merge(other)`` and ``all_reduce(axis_name)`` methods.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jaxmetrics_ad as jm
        >>> auroc = jm.AUROC(thresholds=1024, fields=("pred_score", "gt_label"), prefix="image_")
        >>> auroc.name
        'image_AUROC'
        >>> step = jax.jit(lambda m, s, y: m.update(s, y))
        >>> auroc = step(auroc, jnp.array([0.1, 0.9]), jnp.array([0, 1]))
        >>> float(auroc.compute())
        1.0
    """

    default_fields: ClassVar[tuple[str, ...]] = ("pred_score", "gt_label")
    requires_data: ClassVar[bool] = True

    def __init__(
        self,
        *,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
        **config: Any,
    ) -> None:
        fields = tuple(fields) if fields is not None else self.default_fields
        if len(fields) != len(self.default_fields) or not all(isinstance(f, str) for f in fields):
            raise ValueError(
                f"{type(self).__name__}: fields must be {len(self.default_fields)} names like "
                f"{self.default_fields}, got {fields!r}"
            )
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        config = {"fields": fields, "prefix": prefix, "strict": bool(strict), **config}
        object.__setattr__(self, "_config", tuple((k, _frozen(v)) for k, v in config.items()))
        self._set_children(self._empty_state(), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    # -- pytree plumbing -------------------------------------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_with_keys(
            cls, cls._flatten_with_keys, cls._unflatten, flatten_func=cls._flatten
        )
        flax.serialization.register_serialization_state(
            cls, cls._to_state_dict, cls._from_state_dict, override=True
        )

    def _flatten(self):
        return tuple(getattr(self, n) for n in _CHILDREN), self._config

    def _flatten_with_keys(self):
        children = tuple((jax.tree_util.GetAttrKey(n), getattr(self, n)) for n in _CHILDREN)
        return children, self._config

    @classmethod
    def _unflatten(cls, config, children):
        metric = object.__new__(cls)
        object.__setattr__(metric, "_config", config)
        metric._set_children(*children)
        return metric

    def _to_state_dict(self) -> dict[str, Any]:
        return {n: flax.serialization.to_state_dict(getattr(self, n)) for n in _CHILDREN}

    def _from_state_dict(self, state: dict[str, Any]) -> Metric:
        children = [
            flax.serialization.from_state_dict(getattr(self, n), state[n], name=n)
            for n in _CHILDREN
        ]
        return self._unflatten(self._config, children)

    def _set_children(self, state, num_updates, num_invalid) -> None:
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "num_updates", num_updates)
        object.__setattr__(self, "num_invalid", num_invalid)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; update() returns a new metric")

    def __getattr__(self, name: str) -> Any:
        for key, value in object.__getattribute__(self, "_config"):
            if key == name:
                return value
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def _replace(self, **children: Any) -> Metric:
        values = [children.get(n, getattr(self, n)) for n in _CHILDREN]
        return self._unflatten(self._config, values)

    # -- public protocol ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``prefix + class name``, the key of this metric in an Evaluator's results."""
        return self.prefix + type(self).__name__

    @property
    def config(self) -> dict[str, Any]:
        """The static configuration (constructor arguments)."""
        return dict(self._config)

    def reset(self) -> Metric:
        """An empty metric with the same configuration."""
        return self._replace(
            state=self._empty_state(),
            num_updates=jnp.zeros((), jnp.int32),
            num_invalid=jnp.zeros((), jnp.int32),
        )

    def update(self, *inputs: Any) -> Metric:
        """The metric with one more batch; inputs in the order of ``fields``. Pure and jit-able."""
        if len(inputs) != len(self.fields):
            raise TypeError(
                f"{self.name}.update takes {len(self.fields)} arrays {self.fields}, got {len(inputs)}"
            )
        arrays = [as_array(x, field) for x, field in zip(inputs, self.fields)]
        self._check_inputs(*arrays)
        if is_traced(*arrays, *jax.tree_util.tree_leaves(self)) or self._state_grows():
            return self._update_unchecked(*arrays)
        return _jitted_update(self, *arrays)

    def _update_unchecked(self, *arrays: jax.Array) -> Metric:
        state, num_invalid = self._update_state(*arrays)
        return self._replace(
            state=state,
            num_updates=self.num_updates + 1,
            num_invalid=self.num_invalid + num_invalid,
        )

    def _state_grows(self) -> bool:
        # A state whose shapes change between updates would recompile at every jitted call.
        return getattr(self.state, "grows", False)

    def update_from(self, batch: Any) -> Metric:
        """``update`` with the metric's ``fields`` read from a Mapping or an object's attributes.

        A missing field raises ValueError naming it (``strict=True``) or skips the batch.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> m = jm.AUROC().update_from({"pred_score": [0.2, 0.8], "gt_label": [0, 1]})
            >>> float(m.compute())
            1.0
        """
        values = [read_field(batch, field) for field in self.fields]
        missing = [f for f, v in zip(self.fields, values) if v is None]
        if missing:
            if not self.strict:
                return self
            raise ValueError(
                f"{self.name}: the batch has no field {missing[0]!r} (this metric reads "
                f"{list(self.fields)}; the batch has {available_fields(batch)})"
            )
        return self.update(*values)

    def merge(self, other: Metric) -> Metric:
        """The metric over the data of both. Pure and jit-able."""
        if type(other) is not type(self) or other._config != self._config:
            raise ValueError(
                f"cannot merge {other!r} into {self!r}: type and configuration must match"
            )
        return self._replace(
            state=self.state.merge(other.state),
            num_updates=self.num_updates + other.num_updates,
            num_invalid=self.num_invalid + other.num_invalid,
        )

    def all_reduce(self, axis_name: str) -> Metric:
        """The metric over the data of every device along ``axis_name`` (inside pmap/shard_map)."""
        return self._replace(
            state=self.state.all_reduce(axis_name),
            num_updates=jax.lax.psum(self.num_updates, axis_name),
            num_invalid=jax.lax.psum(self.num_invalid, axis_name),
        )

    def compute(self) -> Any:
        """The metric value. Pure and jit-able (eager-only checks are skipped under a trace).

        Eagerly, a strict metric with no data raises ValueError and a non-strict one returns None.
        Samples found invalid inside jit (NaN/inf scores, labels outside {0, 1}) make the value NaN;
        eagerly they raise ValueError.
        """
        traced = is_traced(*jax.tree_util.tree_leaves(self))
        if not traced:
            if self.requires_data and int(self.num_updates) == 0:
                if not self.strict:
                    return None
                raise ValueError(f"{self.name} has no data: call update() before compute()")
            if int(self.num_invalid):
                raise ValueError(
                    f"{self.name}: {int(self.num_invalid)} invalid samples (NaN/inf scores or labels "
                    "outside {0, 1}) were given inside jit; the value is undefined"
                )
            self._check_state()
        if traced or self._state_grows():
            return self._compute_checked()
        return _jitted_compute(self)

    def _compute_checked(self) -> Any:
        value = self._compute()
        return jax.tree_util.tree_map(self._poison_if_invalid, value)

    def _poison_if_invalid(self, value: jax.Array) -> jax.Array:
        if not jnp.issubdtype(jnp.asarray(value).dtype, jnp.floating):
            return value
        return jnp.where(self.num_invalid > 0, jnp.nan, value)

    def __call__(self, *inputs: Any) -> Any:
        """One-shot: the value over these inputs alone (the metric itself is left unchanged).

        Example:
            >>> import jaxmetrics_ad as jm
            >>> float(jm.AUROC()([0.1, 0.9, 0.2, 0.8], [0, 1, 0, 1]))
            1.0
        """
        return self.reset().update(*inputs).compute()

    def __repr__(self) -> str:
        shown = {k: v for k, v in self._config if k not in ("strict",) or not v}
        args = ", ".join(f"{k}={_short(v)}" for k, v in shown.items())
        text = f"{type(self).__name__}({args})"
        if is_traced(self.num_updates) or int(self.num_updates) == 0:
            return text
        try:
            value = self.compute()
        except (ValueError, TypeError):
            return f"{text}  # {int(self.num_updates)} updates"
        return f"{text}  # {int(self.num_updates)} updates → {_short(value)}"

    # -- subclass hooks ----------------------------------------------------------------------------

    def _empty_state(self) -> Any:
        raise NotImplementedError

    def _check_inputs(self, *arrays: jax.Array) -> None:
        """Raise on bad inputs: shapes always, values only when concrete (see validation)."""

    def _update_state(self, *arrays: jax.Array) -> tuple[Any, jax.Array]:
        raise NotImplementedError

    def _check_state(self) -> None:
        """Eager-only checks before compute (warnings, overflow); skipped under a trace."""

    def _compute(self) -> Any:
        raise NotImplementedError


@jax.jit
def _jitted_update(metric: Metric, *arrays: jax.Array) -> Metric:
    return metric._update_unchecked(*arrays)


@jax.jit
def _jitted_compute(metric: Metric) -> Any:
    return metric._compute_checked()


def _short(value: Any) -> str:
    """A compact text for reprs: long tuples and arrays are abbreviated."""
    if isinstance(value, tuple) and len(value) > 4 and all(isinstance(v, float) for v in value):
        return f"<{len(value)} thresholds>"
    if isinstance(value, (jax.Array, np.ndarray)):
        array = np.asarray(value)
        if array.size == 1:
            return f"{array.item():.6g}"
        return f"array(shape={array.shape}, dtype={array.dtype})"
    if isinstance(value, tuple) and any(isinstance(v, (jax.Array, np.ndarray)) for v in value):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return repr(value)
