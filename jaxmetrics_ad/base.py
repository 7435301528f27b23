"""The metric protocol: immutable pytrees with pure ``update``, ``merge``, ``all_reduce`` and ``compute``.

A metric holds static configuration (thresholds, fields, prefix, ...) as pytree metadata and its state
arrays as leaves, so it passes through ``jax.jit``, ``vmap``, ``lax.scan``, ``pmap``/``shard_map`` and
``flax.serialization`` unchanged. Every method returns a new metric; nothing is mutated.

Naming follows anomalib: ``fields`` name the batch entries passed positionally to ``update`` (scores
first, target second), and ``name == prefix + class name``. ``strict=False`` makes :meth:`update_from`
skip batches that lack a field, and ``compute`` of a never-updated non-strict metric return None.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from jaxmetrics_ad.numpy_updates import numpy_updates_apply, scalar
from jaxmetrics_ad.validation import as_array, is_traced, state_array

_CHILDREN = ("state", "num_updates", "num_invalid")
_INT32_MAX = 2**31 - 1

LOOSE_BOUND = 1e-3
"""A binned value whose certified error bound exceeds this warns when computed eagerly."""

_Reader = TypeVar("_Reader", bound=Callable[..., Any])


def state_reader(method: _Reader) -> _Reader:
    """Decorator for a metric's readers other than ``compute`` (curves, thresholds, bounds, ...).

    The reader gets ``compute``'s eager checks (no data, samples found invalid inside jit: ValueError)
    and, under a trace, its floating outputs become NaN when the state holds invalid samples, so no
    reader of a poisoned state returns an ordinary number.

    Example:
        >>> import jax, jax.numpy as jnp, jaxmetrics_ad as jm
        >>> m = jax.jit(lambda m, s, y: m.update(s, y))(jm.AUROC(thresholds=8), jnp.array([0.1, jnp.nan]), jnp.array([0, 1]))
        >>> bool(jnp.isnan(jax.jit(lambda m: m.error_bound())(m)))
        True
    """

    @functools.wraps(method)
    def read(self: Metric, *args: Any, **kwargs: Any) -> Any:
        if not is_traced(*jax.tree_util.tree_leaves(self)):
            return method(self, *args, **kwargs) if self._check_readable() else None
        return jax.tree_util.tree_map(self._poison_if_invalid, method(self, *args, **kwargs))

    return read  # type: ignore[return-value]


def valid_rows(arrays: Sequence[jax.Array], valid: jax.Array | None) -> tuple[jax.Array, ...]:
    """The images (first-axis rows) of ``arrays`` where ``valid`` is True, for eager code.

    The one place rows are left out eagerly: :meth:`Metric.update`'s input checks and the metrics
    whose state keeps data-dependent amounts on the host (exact PIMO) use it. Arrays are returned
    unchanged when ``valid`` is None or all True, or when anything is traced (inside jit a metric
    masks with ``valid`` instead). Otherwise the rows are taken with numpy on the host and put on
    the CPU with ``jax.device_put``: that compiles nothing, where eager jax indexing or
    ``jnp.asarray`` of a numpy array compile a small program per shape, i.e. per count of valid
    rows (a ragged last batch would compile again). The eager checks then run in numpy too (see
    ``validation._checkable``). Arrays whose first axis is not ``valid``'s are returned unchanged,
    for the shape checks to name them.

    Example:
        >>> import jax.numpy as jnp
        >>> maps, masks = valid_rows([jnp.arange(3.0), jnp.array([0, 1, 0])], jnp.array([True, False, True]))
        >>> maps.tolist(), masks.tolist()
        ([0.0, 2.0], [0, 0])
    """
    if valid is None or is_traced(valid, *arrays):
        return tuple(arrays)
    rows = np.asarray(valid)
    if rows.all() or any(np.shape(a)[: rows.ndim] != rows.shape for a in arrays):
        return tuple(arrays)
    return tuple(jax.device_put(np.asarray(a)[rows], _host_device()) for a in arrays)


@functools.cache
def _host_device() -> jax.Device | None:
    """The CPU device (None, i.e. the default one, when jax runs without its CPU backend)."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return None


def _saturating_add(count: jax.Array, more: jax.Array) -> jax.Array:
    """``count + more`` for non-negative int32 counts, stopping at 2**31 - 1 instead of wrapping."""
    more = jnp.asarray(more, jnp.int32)
    return jnp.where(more > _INT32_MAX - count, _INT32_MAX, count + more).astype(jnp.int32)


def _saturating_psum(count: jax.Array, axis_name: str) -> jax.Array:
    """The sum of a non-negative int32 count over devices, saturating like :func:`_saturating_add`."""
    approximate = jax.lax.psum(count.astype(jnp.float32), axis_name)
    exact = jax.lax.psum(count, axis_name)
    return jnp.where(approximate >= _INT32_MAX - 2**10, _INT32_MAX, exact).astype(jnp.int32)


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


_STATE_HOOKS = ("update", "update_from", "_update_unchecked", "_empty_state", "_check_inputs",
                "_update_state")  # fmt: skip
# Methods that build or update a state: a class defining one starts a state family (Metric.state_family).


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
    masks_samples: ClassVar[bool] = False
    """Whether ``update(..., valid=...)`` can leave out padded images."""
    reader_config: ClassVar[tuple[str, ...]] = ()
    """Configuration entries that only change how the state is read (e.g. PGn's ``fnr``): an
    Evaluator shares one state between metrics that differ only there (and in ``prefix``)."""
    state_family: ClassVar[str] = "jaxmetrics_ad.base.Metric"
    """The kind of state this class keeps: metrics of one family whose configurations agree (apart
    from ``prefix`` and :attr:`reader_config`) keep equal states, and an Evaluator keeps one for
    them. A subclass that defines its own state hooks (``_empty_state``, ``_update_state``, ...)
    starts its own family, named after it, unless it declares ``state_family`` itself."""

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
        zero = state_array(0, (), np.int32)
        self._set_children(self._empty_state(), zero, zero)

    # -- pytree plumbing -------------------------------------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "state_family" not in cls.__dict__ and any(
            hook in cls.__dict__ for hook in _STATE_HOOKS
        ):
            cls.state_family = f"{cls.__module__}.{cls.__qualname__}"
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
        """The state arrays, and under ``"config"`` the class and configuration (JSON texts)."""
        state = {n: flax.serialization.to_state_dict(getattr(self, n)) for n in _CHILDREN}
        return {**state, "config": _saved_config(self)}

    def _from_state_dict(self, state: dict[str, Any]) -> Metric:
        """This metric holding a saved state; ValueError when the state is another metric's.

        The saved class and configuration must equal this metric's, apart from ``prefix`` (only a
        name: a state may be restored under another one); the error names the entries that differ.
        Each restored array must then have this metric's shape and dtype (the sample axis of a
        growing exact buffer may have any length). A state saved without ``"config"`` (by an older
        version) is checked by shapes and dtypes only.
        """
        _check_saved_config(self, state.get("config"))
        try:
            children = [
                flax.serialization.from_state_dict(getattr(self, n), state[n], name=n)
                for n in _CHILDREN
            ]
        except (KeyError, ValueError) as error:
            raise ValueError(
                f"cannot restore {self.name}: the saved state is laid out differently "
                f"({type(error).__name__}: {error})"
            ) from error
        restored = self._unflatten(self._config, children)
        _check_restored_arrays(self, restored)
        return restored

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

    def state_key(self) -> tuple:
        """What decides this metric's state (hashable): equal keys, equal states for equal data.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> jm.AUROC(64, prefix="image_").state_key() == jm.F1Max(64).state_key()
            True
        """
        read_only = ("prefix", *self.reader_config)
        return self.state_family, tuple((k, v) for k, v in self._config if k not in read_only)

    def state_views(self) -> dict[tuple, Callable[[Any], Any]]:
        """The states of other metrics that this metric's state holds too, as ``{state_key: view}``
        where ``view(self.state)`` is that state: an Evaluator then updates only this one (e.g. a
        binned AUPRO's histogram holds pixel AUROC's, plus a weight row). None by default.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> auroc, aupro = jm.AUROC(64, fields=("anomaly_map", "gt_mask")), jm.AUPRO(thresholds=64)
            >>> auroc.state_key() in aupro.state_views(), jm.AUROC(64).state_views()
            (True, {})
        """
        return {}

    @property
    def config(self) -> dict[str, Any]:
        """The static configuration (constructor arguments)."""
        return dict(self._config)

    def reset(self) -> Metric:
        """An empty metric with the same configuration."""
        return self._replace(
            state=self._empty_state(),
            num_updates=state_array(0, (), np.int32),
            num_invalid=state_array(0, (), np.int32),
        )

    # -- clu's verbs, so that metrics sit in a clu.metrics.Collection ------------------------------

    @classmethod
    def empty(cls) -> Metric:
        """An empty metric of the default configuration (clu's ``Metric.empty``); see :meth:`configured`.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> int(jm.AUROC.empty().num_updates)
            0
        """
        return cls()

    @classmethod
    def from_model_output(cls, **outputs: Any) -> Metric:
        """The metric of one batch of named model outputs (clu's ``Metric.from_model_output``).

        Reads this metric's ``fields`` from ``outputs`` and ignores the other entries, as a
        ``clu.metrics.Collection`` passes every output to every metric.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> m = jm.AUROC.from_model_output(pred_score=[0.2, 0.8], gt_label=[0, 1], loss=3.0)
            >>> float(m.compute())
            1.0
        """
        return cls().update_from(outputs)

    @classmethod
    def configured(cls, **config: Any) -> type[Metric]:
        """This class with other defaults, for APIs that take metric *classes* (clu's ``Collection``).

        Example:
            >>> import jaxmetrics_ad as jm
            >>> BinnedAUROC = jm.AUROC.configured(thresholds=1024)
            >>> BinnedAUROC.empty().thresholds, BinnedAUROC.__name__
            (1024, 'AUROC')
        """
        cls(**config)  # checks the configuration now, with the usual errors
        base = cls

        def __init__(self: Metric, **overrides: Any) -> None:
            base.__init__(self, **{**config, **overrides})

        return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__})

    def reduce(self) -> Metric:
        """Merge metrics stacked along a leading axis (``all_gather`` / ``vmap`` output) into one:
        clu's ``Metric.reduce``; a metric that is not stacked is returned as it is.

        Example:
            >>> import jax, jax.numpy as jnp, jaxmetrics_ad as jm
            >>> stacked = jax.vmap(lambda s, y: jm.AUROC(thresholds=16).update(s, y))(
            ...     jnp.array([[0.1, 0.9], [0.2, 0.8]]), jnp.array([[0, 1], [0, 1]]))
            >>> int(stacked.reduce().num_updates)
            2
        """
        if jnp.ndim(self.num_updates) == 0:
            return self
        count = jnp.shape(self.num_updates)[0]
        parts = [jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], self) for i in range(count)]
        return functools.reduce(lambda a, b: a.merge(b), parts)

    def update(self, *inputs: Any, valid: Any = None, **named: Any) -> Metric:
        """The metric with one more batch; inputs in the order of ``fields``. Pure and jit-able.

        ``valid`` (bool, one entry per image: the first axis of the inputs) leaves out the images
        where it is False, e.g. the padding that brings a ragged last batch to the shape a jitted
        step was compiled for (:func:`jaxmetrics_ad.evaluator.pad_batch`). Padded images must still
        hold valid values (zeros do). Metrics with ``masks_samples = False`` do not take it.

        The inputs may also be given by field name, as in ``flax.nnx`` metrics:
        ``metric.update(anomaly_map=maps, gt_mask=masks)``.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> m = jm.AUROC().update([0.1, 0.9, 0.0], [0, 1, 1], valid=[True, True, False])
            >>> float(m.compute())
            1.0
            >>> float(jm.AUROC().update(pred_score=[0.2, 0.7], gt_label=[0, 1]).compute())
            1.0
        """
        if named:
            if inputs:
                raise TypeError(
                    f"{self.name}.update: give the arrays {self.fields} by position or by name, "
                    "not both"
                )
            unknown = sorted(set(named) - set(self.fields))
            missing = [field for field in self.fields if field not in named]
            if unknown or missing:
                raise TypeError(
                    f"{self.name}.update reads {list(self.fields)}; got unknown {unknown} and "
                    f"missing {missing}"
                )
            inputs = tuple(named[field] for field in self.fields)
        if len(inputs) != len(self.fields):
            raise TypeError(
                f"{self.name}.update takes {len(self.fields)} arrays {self.fields}, got {len(inputs)}"
            )
        arrays = [as_array(x, field) for x, field in zip(inputs, self.fields)]
        valid = self._checked_valid(valid, arrays)
        # eager checks see the images that count, not the padding
        self._check_inputs(*valid_rows(arrays, valid))
        if is_traced(*arrays, valid, *jax.tree_util.tree_leaves(self)) or self._state_grows():
            return self._update_unchecked(*arrays, valid=valid)
        if self._updates_in_numpy() and numpy_updates_apply():
            return self._update_in_numpy(arrays, valid)
        return _jitted_update(self, arrays, valid)

    def _update_in_numpy(self, arrays: Sequence[jax.Array], valid: jax.Array | None) -> Metric:
        """The eager CPU update: ``_update_state_in_numpy`` on the valid rows, nothing compiled."""
        host = [np.asarray(array) for array in arrays]
        if valid is not None:
            keep = np.asarray(valid)
            host = [a[keep] if a.shape[:1] == keep.shape else a for a in host]
        state, num_invalid = self._update_state_in_numpy(*host)
        total = min(int(self.num_invalid) + int(num_invalid), int(_INT32_MAX))
        return self._replace(
            state=state,
            num_updates=scalar(int(self.num_updates) + 1, np.int32),
            num_invalid=scalar(total, np.int32),
        )

    def _checked_valid(self, valid: Any, arrays: Sequence[jax.Array]) -> jax.Array | None:
        if valid is None:
            return None
        if not self.masks_samples:
            raise TypeError(f"{self.name}: this metric cannot leave out images (valid=...)")
        valid = as_array(valid, "valid")
        images = arrays[0].shape[:1]
        if valid.dtype != jnp.bool_ or valid.shape != images:
            raise ValueError(
                f"valid: expected a bool array of shape {images} (one entry per image), got "
                f"{valid.dtype} {valid.shape}"
            )
        return valid

    def _update_unchecked(self, *arrays: jax.Array, valid: jax.Array | None = None) -> Metric:
        if valid is None:
            state, num_invalid = self._update_state(*arrays)
        else:
            state, num_invalid = self._update_state(*arrays, valid=valid)
        if is_traced(self.num_updates, self.num_invalid, num_invalid):
            return self._replace(
                state=state,
                num_updates=self.num_updates + 1,
                num_invalid=_saturating_add(self.num_invalid, num_invalid),
            )
        # eager (e.g. a growing state's update): the counters in numpy, no XLA op to compile
        total = min(int(self.num_invalid) + int(num_invalid), int(_INT32_MAX))
        return self._replace(
            state=state,
            num_updates=scalar(int(self.num_updates) + 1, np.int32),
            num_invalid=scalar(total, np.int32),
        )

    def _state_grows(self) -> bool:
        # A state whose shapes change between updates would recompile at every jitted call.
        return getattr(self.state, "grows", False)

    def update_from(self, batch: Any, valid: Any = None) -> Metric:
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
        return self.update(*values, valid=valid)

    def merge(self, other: Metric) -> Metric:
        """The metric over the data of both. Pure and jit-able."""
        if type(other) is not type(self) or other._config != self._config:
            raise ValueError(
                f"cannot merge {other!r} into {self!r}: type and configuration must match"
            )
        return self._replace(
            state=self.state.merge(other.state),
            num_updates=self.num_updates + other.num_updates,
            num_invalid=_saturating_add(self.num_invalid, other.num_invalid),
        )

    def all_reduce(self, axis_name: str) -> Metric:
        """The metric over the data of every device along ``axis_name`` (inside pmap/shard_map)."""
        return self._replace(
            state=self.state.all_reduce(axis_name),
            num_updates=jax.lax.psum(self.num_updates, axis_name),
            num_invalid=_saturating_psum(self.num_invalid, axis_name),
        )

    def compute(self) -> Any:
        """The metric value. Pure and jit-able (eager-only checks are skipped under a trace).

        Eagerly, a strict metric with no data raises ValueError and a non-strict one returns None.
        Samples found invalid inside jit (NaN/inf scores, labels outside {0, 1}) make the value NaN;
        eagerly they raise ValueError. A binned value whose certified error bound exceeds
        :data:`LOOSE_BOUND` warns (eagerly) that the bins are too coarse for these scores.
        """
        traced = is_traced(*jax.tree_util.tree_leaves(self))
        if not traced:
            if not self._check_readable():
                return None
            self._check_state()
        if traced or self._state_grows() or self._computes_on_host():
            value = self._compute_checked()
        else:
            value = _jitted_compute(self)
        if not traced:
            self._warn_if_loose()
        return value

    def _check_readable(self) -> bool:
        """Eager checks shared by every reader: False for a non-strict metric without data."""
        if self.requires_data and int(self.num_updates) == 0:
            if not self.strict:
                return False
            raise ValueError(f"{self.name} has no data: call update() before compute()")
        if int(self.num_invalid):
            count = int(self.num_invalid)
            amount = f"at least {count}" if count == _INT32_MAX else str(count)
            raise ValueError(
                f"{self.name}: {amount} invalid samples (NaN/inf scores or labels outside "
                "{0, 1}) were given inside jit; the value is undefined"
            )
        return True

    def _warn_if_loose(self) -> None:
        bound_reader = getattr(self, "error_bound", None)
        if bound_reader is None or getattr(self, "is_exact", True):
            return
        bound = np.max(np.asarray(bound_reader(), np.float64), initial=0.0)
        bound = 0.0 if np.isnan(bound) else bound
        if bound > LOOSE_BOUND:
            warnings.warn(
                f"{self.name}: the binned value may be off by up to {bound:.3g} (certified bound): "
                "the bins are too coarse for these scores (e.g. heavily tied scores, or more far "
                "outliers than the exact tails keep); use more thresholds, explicit thresholds, or "
                "exact mode (thresholds=None)",
                UserWarning,
                stacklevel=3,
            )

    def _computes_on_host(self) -> bool:
        """True when an eager compute reads the state with numpy instead of a jitted program.

        Reading a small state (a histogram of a few thousand bins) takes microseconds in numpy,
        while compiling the same reader with XLA takes most of a second per metric: cold
        evaluations are dominated by such compiles.
        """
        return False

    def _compute_checked(self) -> Any:
        value = self._compute()
        if not is_traced(*jax.tree_util.tree_leaves(self)):
            # eagerly an invalid state has raised already; numpy results become jax arrays
            return jax.tree_util.tree_map(_as_jax, value)
        return jax.tree_util.tree_map(self._poison_if_invalid, value)

    def _poison_if_invalid(self, value: jax.Array) -> jax.Array:
        dtype = value.dtype if hasattr(value, "dtype") else np.result_type(value)
        if not jnp.issubdtype(dtype, jnp.floating):
            return value
        if not is_traced(value, self.num_invalid):  # numpy: no eager XLA op to compile
            return _as_jax(np.where(int(self.num_invalid) > 0, np.nan, np.asarray(value)))
        return jnp.where(self.num_invalid > 0, jnp.nan, value)

    def generate_figure(self) -> tuple[Any, str]:
        """``(matplotlib Figure, title)`` of this metric, as anomalib's (needs the ``plot`` extra).

        AUROC, AUPR, AUPRO, PIMO, AUPIMO and AnomalyScoreDistribution draw one (see
        :func:`jaxmetrics_ad.plotting.figure_of`); other metrics raise TypeError. Eager only.

        Example:
            >>> import matplotlib
            >>> matplotlib.use("Agg")
            >>> import jaxmetrics_ad as jm
            >>> figure, title = jm.AUPR().update([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]).generate_figure()
            >>> title, figure.axes[0].get_title()
            ('PR', 'PR: AUPR = 0.8333')
            >>> matplotlib.pyplot.close(figure)
        """
        from jaxmetrics_ad.plotting import figure_of

        return figure_of(self)

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
        updates = self.num_updates
        if is_traced(updates) or not isinstance(updates, (jax.Array, np.ndarray, np.generic)):
            return text  # a trace, or a tree of shapes (jax.eval_shape, tree_map(jnp.shape, ...))
        if np.ndim(updates):  # stacked metrics, e.g. a pmap/vmap output: one per leading index
            counts = np.asarray(updates)
            low, high = (int(counts.min()), int(counts.max())) if counts.size else (0, 0)
            each = f"{low}" if low == high else f"{low}-{high}"
            return f"{text}  # {counts.size} stacked metrics {counts.shape}, {each} updates each"
        if int(updates) == 0:
            return text
        count = f"{int(updates)} update{'s' if int(updates) != 1 else ''}"
        try:
            with warnings.catch_warnings():  # a repr shows; compute() is where warnings belong
                warnings.simplefilter("ignore")
                value = self.compute()
        except (ValueError, TypeError):
            return f"{text}  # {count}"
        return f"{text}  # {count} → {_short(value)}"

    # -- subclass hooks ----------------------------------------------------------------------------

    def _empty_state(self) -> Any:
        raise NotImplementedError

    def _check_inputs(self, *arrays: jax.Array) -> None:
        """Raise on bad inputs: shapes always, values only when concrete (see validation)."""

    def _update_state(self, *arrays: jax.Array) -> tuple[Any, jax.Array]:
        raise NotImplementedError

    def _updates_in_numpy(self) -> bool:
        """Whether ``_update_state_in_numpy`` serves this configuration (eager CPU updates)."""
        return False

    def _update_state_in_numpy(self, *arrays: np.ndarray) -> tuple[Any, np.ndarray]:
        """``_update_state`` in numpy, without ``valid`` (see :mod:`jaxmetrics_ad.numpy_updates`)."""
        raise NotImplementedError

    def _check_state(self) -> None:
        """Eager-only checks before compute (warnings, overflow); skipped under a trace."""

    def _compute(self) -> Any:
        raise NotImplementedError


@jax.jit
def _jitted_update(metric: Metric, arrays: Sequence[jax.Array], valid: jax.Array | None) -> Metric:
    return metric._update_unchecked(*arrays, valid=valid)


def _as_jax(value: Any) -> Any:
    """A numpy result as a jax array (float64 becomes float32 without x64); others unchanged."""
    if isinstance(value, (np.ndarray, np.generic, float)) and not isinstance(value, bool):
        # device_put, not jnp.asarray: the latter compiles a small program per new shape
        return jax.device_put(
            np.asarray(value, np.float32) if np.asarray(value).dtype == np.float64 else value
        )
    return value


@jax.jit
def _jitted_compute(metric: Metric) -> Any:
    return metric._compute_checked()


def _short(value: Any) -> str:
    """A compact text for reprs: long tuples and arrays are abbreviated, floats shown to 6 digits."""
    if isinstance(value, tuple) and len(value) > 4 and all(isinstance(v, float) for v in value):
        return f"<{len(value)} thresholds>"
    if isinstance(value, (float, np.floating)):  # float32(0.3) reads 0.3, not 0.30000001192092896
        return f"{float(value):.6g}"
    if isinstance(value, (jax.Array, np.ndarray)):
        array = np.asarray(value)
        if array.size == 1:
            return f"{array.item():.6g}"
        return f"array(shape={array.shape}, dtype={array.dtype})"
    if isinstance(value, tuple) and any(
        isinstance(v, (float, np.floating, jax.Array, np.ndarray)) for v in value
    ):
        return "(" + ", ".join(_short(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


# -- saved states: what a state dict records about its metric, and the checks on restore ------------


def _saved_config(metric: Metric) -> dict[str, str]:
    """``{"class": name, entry: JSON text of its value}``: msgpack- and checkpoint-friendly strings."""
    import json

    config = {key: json.dumps(value, default=str) for key, value in metric._config}
    return {"class": type(metric).__name__, **config}


def _shown(text: str | None, other: str | None) -> str:
    """A saved configuration value for an error message (``other``: the value it is compared with)."""
    import json

    if text is None:
        return "<absent>"
    try:
        value, versus = json.loads(text), json.loads(other) if other is not None else None
    except ValueError:  # the class name is plain text
        return text
    if not isinstance(value, list) or len(value) <= 6:
        return repr(_frozen(value))
    if isinstance(versus, list) and len(versus) == len(value):
        first = next((i for i, (a, b) in enumerate(zip(value, versus)) if a != b), 0)
        return f"<{len(value)} values, [{first}]={value[first]!r}>"
    return f"<{len(value)} values: {value[0]!r}, {value[1]!r}, ..., {value[-1]!r}>"


def _check_saved_config(metric: Metric, saved: Any) -> None:
    """ValueError naming each configuration entry that differs (``prefix`` may differ)."""
    if saved is None:
        return
    if not isinstance(saved, Mapping):
        raise ValueError(
            f"cannot restore {metric.name}: the saved 'config' is not a dict: {saved!r}"
        )
    saved = {str(k): str(v) for k, v in saved.items()}
    expected = _saved_config(metric)
    keys = list(expected) + [k for k in saved if k not in expected]
    differ = [
        f"{key}: saved {_shown(saved.get(key), expected.get(key))}, "
        f"this metric {_shown(expected.get(key), saved.get(key))}"
        for key in keys
        if key != "prefix" and saved.get(key) != expected.get(key)
    ]
    if differ:
        raise ValueError(
            f"cannot restore {metric.name} from a state saved by a metric of another "
            f"configuration ({'; '.join(differ)}); build the metric with the saved configuration"
        )


def _array_entries(tree: Any, path: str = "") -> dict[str, Any]:
    """The arrays of a state dict, keyed by their slash-separated path."""
    if isinstance(tree, Mapping):
        entries: dict[str, Any] = {}
        for key, value in tree.items():
            entries.update(_array_entries(value, f"{path}/{key}" if path else str(key)))
        return entries
    return {path: tree}


def _check_restored_arrays(metric: Metric, restored: Metric) -> None:
    """ValueError naming each restored array whose shape or dtype differs from ``metric``'s."""

    def arrays(m: Metric) -> dict[str, Any]:  # shapes and dtypes only: nothing is computed
        return jax.eval_shape(
            lambda m: _array_entries(
                {n: flax.serialization.to_state_dict(getattr(m, n)) for n in _CHILDREN}
            ),
            m,
        )

    expected, found = arrays(metric), arrays(restored)
    if sorted(expected) != sorted(found):
        raise ValueError(
            f"cannot restore {metric.name}: the saved state holds {sorted(found)}, this metric "
            f"{sorted(expected)}"
        )
    grows = metric._state_grows()  # the sample axis (the last) of a growing buffer has any length
    differ = []
    for path, want in expected.items():
        have = found[path]
        want_shape, have_shape = tuple(want.shape), tuple(have.shape)
        want_dtype, have_dtype = want.dtype, have.dtype
        comparable = (want_shape[:-1], len(want_shape)) if grows else want_shape
        if comparable != ((have_shape[:-1], len(have_shape)) if grows else have_shape):
            differ.append(f"{path}: saved shape {have_shape}, this metric {want_shape}")
        if want_dtype != have_dtype:
            differ.append(f"{path}: saved dtype {have_dtype}, this metric {want_dtype}")
    if differ:
        raise ValueError(
            f"cannot restore {metric.name}: the saved arrays do not fit this metric "
            f"({'; '.join(differ)})"
        )
