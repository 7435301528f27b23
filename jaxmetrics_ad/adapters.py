"""Other JAX libraries' metrics as jaxmetrics_ad metrics, so they drop into :class:`~jaxmetrics_ad.Evaluator`.

:func:`wrap_metric` plays the part of anomalib's ``create_anomalib_metric``: it gives a metric of
another library our ``fields``, ``prefix``, ``strict`` and ``name``, and makes it an immutable pytree
with pure ``update``/``merge``/``all_reduce``/``compute``, usable under ``jax.jit``. Four kinds of
metric are understood:

* a **clu** metric class (``clu.metrics.Average``, ``Accuracy``, ``Std``, your own
  ``clu.metrics.Metric`` subclass, and so **metrax**'s metrics, which are clu metrics): the state is
  the clu metric itself (a ``flax.struct`` dataclass), started from ``cls.empty()`` and updated by
  ``state.merge(cls.from_model_output(**inputs))``;
* a **flax.nnx** metric (an instance such as ``nnx.metrics.Average("loss")``, or a class built
  without arguments): nnx metrics mutate themselves, so the wrapper keeps their variables as a plain
  dict of arrays (``nnx.to_pure_dict``) and, at each update, rebuilds a throw-away module from
  it, calls its ``update`` and reads the variables back. The metric passed in is never modified;
* a :class:`MetricFunctions` quadruple ``(init, update, merge, compute)`` of pure functions on any
  pytree state.

The positional ``fields`` of a batch are handed to the wrapped metric as the keyword arguments named
by ``keywords`` (by default the field names themselves): ``wrap_metric(clu.metrics.Average,
fields=("pred_score",), keywords=("values",))`` computes ``Average.from_model_output(values=<the
batch's pred_score>)``. Constant keyword arguments (a threshold, ...) go in ``options``.

Merging across devices (:meth:`WrappedMetric.all_reduce`): a state whose merge adds its leaves
(``additive=True``) is reduced with one ``psum``; any other is gathered with ``all_gather`` and
folded with its merge (for clu metrics, clu's own ``reduce``, which keeps e.g. ``LastValue``'s
cross-device averaging), which is always right but holds one state per device for a moment.
``additive=None`` (the default) picks True for the metrics known to add (clu's ``Average``,
``Accuracy`` and ``Std``, nnx's ``Average`` and ``Accuracy``) and False otherwise: pass
``additive=True`` for other counting metrics (e.g. metrax's ``Precision`` and ``Recall``, whose
states are sums of true/false positive counts).

Limits: the wrapped ``update`` and ``compute`` must be jit-able (the metric is updated and computed
under ``jax.jit`` even when called eagerly); a state that grows (clu's ``CollectingMetric``)
recompiles at every update. A clu state starts from ``cls.empty()`` and every batch is merged
into it, so a metric whose ``empty()`` does not merge with a batch's state (metrax's ``AUCPR`` and
``AUCROC`` keep ``num_thresholds`` as an array leaf that ``empty()`` sets to 0) is not supported.
Unlike our own metrics, a wrapped one does not check its inputs' values: NaN scores give whatever
the wrapped metric gives (``num_invalid`` stays 0). An nnx metric other than ``Average``,
``Accuracy`` and ``Welford`` has no known merge: pass ``merge=`` (a function of two pure-dict
states) to merge it or reduce it across devices.

Example:
    >>> import jax, jax.numpy as jnp, jaxmetrics_ad as jm
    >>> total = jm.MetricFunctions(
    ...     init=lambda: jnp.zeros(()),
    ...     update=lambda state, values: state + jnp.sum(values),
    ...     merge=lambda a, b: a + b,
    ...     compute=lambda state: state,
    ... )
    >>> metric = jm.wrap_metric(total, fields=("pred_score",), keywords=("values",),
    ...                         name="ScoreSum", prefix="image_")
    >>> metric.name
    'image_ScoreSum'
    >>> metric = jax.jit(lambda m, s: m.update(s))(metric, jnp.array([0.5, 2.0]))
    >>> float(metric.compute())
    2.5
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxmetrics_ad.base import Metric, _saturating_add, _saturating_psum


class MetricFunctions(NamedTuple):
    """A metric as four pure functions on a pytree state, for :func:`wrap_metric`.

    ``init() -> state`` (the empty state), ``update(state, **inputs) -> state`` (inputs by the
    wrapper's ``keywords``), ``merge(state, state) -> state`` and ``compute(state) -> value``. Define
    the functions once (module level, not a new lambda per call): two wrapped metrics merge only
    when their functions are the same objects.

    Example:
        >>> import jax.numpy as jnp
        >>> fns = MetricFunctions(lambda: jnp.zeros(()), lambda s, x: s + x.sum(),
        ...                       lambda a, b: a + b, lambda s: s)
        >>> float(fns.compute(fns.update(fns.init(), x=jnp.ones(3))))
        3.0
    """

    init: Callable[[], Any]
    update: Callable[..., Any]
    merge: Callable[[Any, Any], Any]
    compute: Callable[[Any], Any]


# -- adapters: how each library's metric is started, updated, merged, reduced and computed ----------


@dataclasses.dataclass(frozen=True)
class _Adapter:
    """Static (hashable) description of a wrapped metric; its state lives in the WrappedMetric."""

    target: Any
    options: tuple[tuple[str, Any], ...]
    additive: bool
    merge_fn: Callable[[Any, Any], Any] | None

    kind = "functions"

    @property
    def label(self) -> str:
        return getattr(self.target, "__name__", type(self.target).__name__)

    def __repr__(self) -> str:  # also the saved configuration's text: no addresses in it
        target = self.target
        qualified = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"
        return f"{self.kind}:{qualified}" + (" (additive)" if self.additive else "")

    def empty(self) -> Any:
        raise NotImplementedError

    def update(self, state: Any, inputs: dict[str, jax.Array]) -> Any:
        raise NotImplementedError

    def own_merge(self, first: Any, second: Any) -> Any:
        raise NotImplementedError

    def compute(self, state: Any) -> Any:
        raise NotImplementedError

    def merge(self, first: Any, second: Any) -> Any:
        if self.merge_fn is not None:
            return self.merge_fn(first, second)
        return self.own_merge(first, second)

    def gather_and_fold(self, gathered: Any) -> Any:
        """The merge of the states stacked along the leading axis of ``gathered``."""
        first = jax.tree_util.tree_map(lambda x: x[0], gathered)
        rest = jax.tree_util.tree_map(lambda x: x[1:], gathered)
        return jax.lax.scan(lambda acc, s: (self.merge(acc, s), None), first, rest)[0]

    def all_reduce(self, state: Any, axis_name: str) -> Any:
        if self.additive:
            return jax.tree_util.tree_map(lambda x: jax.lax.psum(x, axis_name), state)
        return self.gather_and_fold(jax.lax.all_gather(state, axis_name))


class _FunctionsAdapter(_Adapter):
    kind = "functions"

    @property
    def label(self) -> str:
        return "WrappedMetric"

    def __repr__(self) -> str:
        update = self.target.update
        qualified = f"{getattr(update, '__module__', '?')}.{getattr(update, '__qualname__', '?')}"
        return f"functions:{qualified}" + (" (additive)" if self.additive else "")

    def empty(self) -> Any:
        return self.target.init()

    def update(self, state: Any, inputs: dict[str, jax.Array]) -> Any:
        return self.target.update(state, **inputs, **dict(self.options))

    def own_merge(self, first: Any, second: Any) -> Any:
        return self.target.merge(first, second)

    def compute(self, state: Any) -> Any:
        return self.target.compute(state)


class _CluAdapter(_Adapter):
    kind = "clu"

    def empty(self) -> Any:
        return self.target.empty()

    def update(self, state: Any, inputs: dict[str, jax.Array]) -> Any:
        return state.merge(self.target.from_model_output(**inputs, **dict(self.options)))

    def own_merge(self, first: Any, second: Any) -> Any:
        return first.merge(second)

    def compute(self, state: Any) -> Any:
        return state.compute()

    def gather_and_fold(self, gathered: Any) -> Any:
        if self.merge_fn is None and hasattr(gathered, "reduce"):
            return gathered.reduce()  # clu's cross-device semantics
        return super().gather_and_fold(gathered)


@dataclasses.dataclass(frozen=True)
class _NnxAdapter(_Adapter):
    """A flax.nnx metric: ``target`` is its graph definition (hashable, compared by structure)."""

    template: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    kind = "nnx"

    @property
    def label(self) -> str:
        return type(self.template_module()).__name__

    def __repr__(self) -> str:
        cls = type(self.template_module())
        return f"nnx:{cls.__module__}.{cls.__qualname__}" + (" (additive)" if self.additive else "")

    def template_module(self) -> Any:
        from flax import nnx

        return nnx.merge(self.target, self._fresh_state(self.empty()))

    def _fresh_state(self, values: Mapping[str, Any]) -> Any:
        from flax import nnx

        state = jax.tree_util.tree_map(lambda x: x, self.template)  # new variables, same structure
        nnx.replace_by_pure_dict(state, values)
        return state

    def empty(self) -> Any:
        from flax import nnx

        return nnx.to_pure_dict(self.template)

    def update(self, state: Any, inputs: dict[str, jax.Array]) -> Any:
        from flax import nnx

        module = nnx.merge(self.target, self._fresh_state(state))
        module.update(**inputs, **dict(self.options))
        return nnx.to_pure_dict(nnx.state(module))

    def own_merge(self, first: Any, second: Any) -> Any:
        from flax import nnx

        cls = type(nnx.merge(self.target, self._fresh_state(first)))
        if cls is nnx.metrics.Welford:
            return _welford_merge(first, second)
        if self.additive:
            return jax.tree_util.tree_map(jnp.add, first, second)
        raise TypeError(
            f"wrapped nnx metric {cls.__name__} has no known merge: pass merge=<a function of two "
            "states> (dicts of arrays, as nnx.to_pure_dict gives) to wrap_metric, or "
            "additive=True when its variables simply add"
        )

    def compute(self, state: Any) -> Any:
        from flax import nnx

        return nnx.merge(self.target, self._fresh_state(state)).compute()


def _welford_merge(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, Any]:
    """Two nnx ``Welford`` states (count, mean, m2) as one (the parallel-variance formula)."""
    count = first["count"] + second["count"]
    share = jnp.where(count > 0, second["count"] / jnp.maximum(count, 1), 0.0)
    delta = second["mean"] - first["mean"]
    mean = first["mean"] + delta * share
    m2 = first["m2"] + second["m2"] + delta**2 * first["count"] * share
    return {
        "count": count.astype(first["count"].dtype),
        "mean": mean.astype(first["mean"].dtype),
        "m2": m2.astype(first["m2"].dtype),
    }


def _known_additive(target: Any) -> bool:
    try:
        import clu.metrics as clu_metrics
    except ImportError:
        clu_metrics = None
    from flax import nnx

    known: tuple[type, ...] = (nnx.metrics.Average, nnx.metrics.Accuracy)
    if clu_metrics is not None:
        known += (clu_metrics.Average, clu_metrics.Accuracy, clu_metrics.Std)
    return any(target is cls for cls in known)


def _is_clu_class(metric: Any) -> bool:
    return (
        isinstance(metric, type)
        and callable(getattr(metric, "from_model_output", None))
        and callable(getattr(metric, "empty", None))
        and callable(getattr(metric, "merge", None))
        and callable(getattr(metric, "compute", None))
    )


def _is_nnx_metric(metric: Any) -> bool:
    from flax import nnx

    cls = metric if isinstance(metric, type) else type(metric)
    return issubclass(cls, nnx.metrics.Metric)


def _adapter(
    metric: Any,
    options: tuple[tuple[str, Any], ...],
    additive: bool | None,
    merge: Callable[[Any, Any], Any] | None,
) -> _Adapter:
    if isinstance(metric, MetricFunctions) or (
        isinstance(metric, tuple) and len(metric) == 4 and all(callable(f) for f in metric)
    ):
        return _FunctionsAdapter(MetricFunctions(*metric), options, bool(additive), merge)
    if _is_nnx_metric(metric):
        from flax import nnx

        module = metric() if isinstance(metric, type) else nnx.clone(metric)
        module.reset()
        graphdef, state = nnx.split(module)
        auto = _known_additive(type(module))
        return _NnxAdapter(
            graphdef, options, auto if additive is None else bool(additive), merge, template=state
        )
    if _is_clu_class(metric):
        auto = _known_additive(metric)
        return _CluAdapter(metric, options, auto if additive is None else bool(additive), merge)
    raise TypeError(
        "wrap_metric: expected a clu/metrax metric class (with from_model_output, empty, merge and "
        "compute), a flax.nnx.Metric (instance or class) or a MetricFunctions(init, update, merge, "
        f"compute) quadruple, got {metric!r}"
    )


# -- the wrapper ------------------------------------------------------------------------------------


class WrappedMetric(Metric):
    """Another library's metric with our protocol; build it with :func:`wrap_metric`.

    ``state`` is the wrapped metric's state: the clu metric itself, an nnx metric's variables as a
    dict of arrays, or a :class:`MetricFunctions` state. ``name`` is ``prefix`` + the wrapped class's
    name (or the ``name`` given to :func:`wrap_metric`).

    Example:
        >>> import jax.numpy as jnp, jaxmetrics_ad as jm
        >>> from flax import nnx
        >>> mean = jm.wrap_metric(nnx.metrics.Average, fields=("pred_score",), keywords=("values",))
        >>> a = mean.update(jnp.array([1.0, 2.0]))
        >>> b = mean.update(jnp.array([6.0]))
        >>> mean.name, float(a.merge(b).compute())
        ('Average', 3.0)
    """

    def __init__(
        self,
        metric: Any,
        fields: Sequence[str],
        keywords: Sequence[str] | None = None,
        *,
        prefix: str = "",
        strict: bool = True,
        name: str | None = None,
        additive: bool | None = None,
        merge: Callable[[Any, Any], Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(fields, str):
            raise TypeError(f"fields must be a sequence of names, got the string {fields!r}")
        fields = tuple(fields)
        if not fields or not all(isinstance(f, str) for f in fields):
            raise ValueError(f"fields must be one or more names, got {fields!r}")
        keywords = fields if keywords is None else tuple(keywords)
        if isinstance(keywords, str) or len(keywords) != len(fields):
            raise ValueError(
                f"keywords must name one keyword per field: fields {fields!r}, keywords "
                f"{keywords!r}"
            )
        if not all(isinstance(k, str) and k.isidentifier() for k in keywords):
            raise ValueError(f"keywords must be Python identifiers, got {keywords!r}")
        if len(set(keywords)) != len(keywords):
            raise ValueError(f"keywords must be distinct, got {keywords!r}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        frozen_options = tuple(sorted(dict(options or {}).items()))
        clash = sorted(set(dict(frozen_options)) & set(keywords))
        if clash:
            raise ValueError(f"options {clash} are also keywords fed from fields")
        try:
            hash(frozen_options)
        except TypeError as error:
            raise TypeError(
                "options must be hashable constants (numbers, strings, tuples): they are static "
                f"configuration, got {dict(frozen_options)!r}"
            ) from error
        adapter = _adapter(metric, frozen_options, additive, merge)
        if isinstance(adapter, _FunctionsAdapter) and name is None:
            raise ValueError("wrap_metric: a MetricFunctions quadruple needs name=<a class name>")
        config = {
            "adapter": adapter,
            "fields": fields,
            "keywords": keywords,
            "prefix": prefix,
            "strict": bool(strict),
            "wrapped_name": name if name is not None else adapter.label,
        }
        object.__setattr__(self, "_config", tuple(config.items()))
        self._set_children(adapter.empty(), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    @property
    def name(self) -> str:
        """``prefix`` + the wrapped metric's class name (or the ``name`` given)."""
        return self.prefix + self.wrapped_name

    @property
    def additive(self) -> bool:
        """True when the state merges by adding its leaves (then ``all_reduce`` is one psum)."""
        return self.adapter.additive

    def _empty_state(self) -> Any:
        return self.adapter.empty()

    def _update_state(self, *arrays: jax.Array) -> tuple[Any, jax.Array]:
        inputs = dict(zip(self.keywords, arrays))
        return self.adapter.update(self.state, inputs), jnp.zeros((), jnp.int32)

    def _compute(self) -> Any:
        return self.adapter.compute(self.state)

    def merge(self, other: Metric) -> Metric:
        """The metric over the data of both, by the wrapped metric's merge. Pure and jit-able."""
        if type(other) is not type(self) or other._config != self._config:
            raise ValueError(
                f"cannot merge {other!r} into {self!r}: the wrapped metric and configuration "
                "must match"
            )
        return self._replace(
            state=self.adapter.merge(self.state, other.state),
            num_updates=self.num_updates + other.num_updates,
            num_invalid=_saturating_add(self.num_invalid, other.num_invalid),
        )

    def all_reduce(self, axis_name: str) -> Metric:
        """The metric over every device's data: ``psum`` if additive, else gather and merge."""
        return self._replace(
            state=self.adapter.all_reduce(self.state, axis_name),
            num_updates=jax.lax.psum(self.num_updates, axis_name),
            num_invalid=_saturating_psum(self.num_invalid, axis_name),
        )


def wrap_metric(
    metric: Any,
    fields: Sequence[str],
    keywords: Sequence[str] | None = None,
    *,
    prefix: str = "",
    strict: bool = True,
    name: str | None = None,
    additive: bool | None = None,
    merge: Callable[[Any, Any], Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> WrappedMetric:
    """Another library's metric as one of ours (anomalib's ``create_anomalib_metric``).

    Args:
        metric: a clu (or metrax) metric class, a ``flax.nnx`` metric (instance or class), or a
            :class:`MetricFunctions` ``(init, update, merge, compute)`` quadruple.
        fields: the batch entries to read, in the order ``update`` takes them positionally.
        keywords: the wrapped metric's keyword name for each field (default: the field names).
        prefix: prepended to the name, e.g. ``"image_"``.
        strict: False skips batches lacking a field (and ``compute`` of such a never-updated
            metric returns None), as for every metric.
        name: the name after the prefix (default: the wrapped class's name; needed for a
            quadruple).
        additive: whether the state merges by adding its leaves, which makes ``all_reduce`` one
            ``psum`` (and is the merge of nnx metrics without one). None: known metrics only.
        merge: a function ``(state, state) -> state`` used instead of the wrapped metric's merge.
        options: constant keyword arguments passed to every update (e.g. ``{"threshold": 0.5}``).

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np, jaxmetrics_ad as jm
        >>> import clu.metrics
        >>> mean_score = jm.wrap_metric(clu.metrics.Average, fields=("pred_score",),
        ...                             keywords=("values",), prefix="image_")
        >>> ev = jm.Evaluator([mean_score, jm.AUROC(prefix="image_")])
        >>> batch = {"pred_score": jnp.array([0.2, 0.4, 0.9]), "gt_label": jnp.array([0, 0, 1])}
        >>> ev = jax.jit(lambda ev, b: ev.update(b))(ev, batch)
        >>> {k: round(float(v), 4) for k, v in ev.compute().items()}
        {'image_Average': 0.5, 'image_AUROC': 1.0}
    """
    return WrappedMetric(
        metric,
        fields,
        keywords,
        prefix=prefix,
        strict=strict,
        name=name,
        additive=additive,
        merge=merge,
        options=options,
    )
