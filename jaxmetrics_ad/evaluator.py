"""The Evaluator: named metric sets per stage, fed from whole batches, itself an immutable pytree.

Like anomalib's ``Evaluator(val_metrics, test_metrics)``, it maps each metric's ``fields`` to the
entries of a batch (a Mapping, a dataclass or ``flax.struct``, a NamedTuple, any object with
attributes) and returns a flat dict ``prefix + ClassName -> value``. Unlike anomalib's, it is a pure
value: ``update`` returns a new evaluator, so it can be the carry of a jitted eval step, of
``lax.scan``, of a Flax ``TrainState``-style struct, and it reduces across devices with
:meth:`Evaluator.all_reduce` inside ``pmap``/``shard_map``.

Metrics of one stage that would keep the same state — equal :meth:`~jaxmetrics_ad.Metric.state_key`,
e.g. pixel AUROC, AUPR, F1Max and F1AdaptiveThreshold at the same ``thresholds`` — share it: the state
is computed once per batch (and, in exact mode, the samples are kept once) and handed to the others.
A metric whose state holds another's too (:meth:`~jaxmetrics_ad.Metric.state_views`: a binned AUPRO's
histogram is those curves' histogram plus a weight row) serves them: one bucketize per pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from jaxmetrics_ad.base import Metric, available_fields, read_field
from jaxmetrics_ad.classification import AUROC, DEFAULT_NUM_BINS, F1Score
from jaxmetrics_ad.numpy_updates import numpy_updates_apply
from jaxmetrics_ad.validation import as_array, checks_once, clean_bool, is_traced

STAGES = ("val", "test")
"""Stage names, in the order of the constructor's arguments (anomalib's)."""


def _state_of(leader: Metric, key: tuple) -> Any:
    """The state of a metric with state key ``key``, read off ``leader``'s (its own or a view)."""
    if leader.state_key() == key:
        return leader.state
    return leader.state_views()[key](leader.state)


def _same_leaves(state: Any, num_updates: Any, metric: Metric) -> bool:
    """Whether ``metric`` holds ``state`` after ``num_updates`` updates (False inside jit)."""
    leaves_a, tree_a = jax.tree_util.tree_flatten(state)
    leaves_b, tree_b = jax.tree_util.tree_flatten(metric.state)
    if tree_a != tree_b or is_traced(*leaves_a, *leaves_b, num_updates, metric.num_updates):
        return False
    return all(
        a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=True))
        for a, b in zip(leaves_a, leaves_b)
    ) and int(num_updates) == int(metric.num_updates)


def _share_plan(metrics: tuple[Metric, ...]) -> tuple[int, ...]:
    """For each metric, the index of the metric of the stage whose state it reads.

    A metric reads the first metric's state whose :meth:`~jaxmetrics_ad.Metric.state_views` hold
    its state key (a richer state), else the first one with its own key; and keeps its own when it
    already holds other data than it would read there.
    """
    keys = [metric.state_key() for metric in metrics]
    views = [metric.state_views() for metric in metrics]
    plan = []
    for index, metric in enumerate(metrics):
        richer = [
            j for j, held in enumerate(views) if keys[index] in held and keys[j] != keys[index]
        ]
        wanted = keys[richer[0]] if richer else keys[index]
        leader = keys.index(wanted)
        if leader != index:
            shared = _state_of(metrics[leader], keys[index])
            if not _same_leaves(shared, metrics[leader].num_updates, metric):
                leader = index  # already holds other data: keep its own state
        plan.append(leader)
    return tuple(plan)


def _checked_metrics(metrics: Sequence[Metric] | None, stage: str) -> tuple[Metric, ...]:
    if metrics is None:
        return ()
    if isinstance(metrics, Metric):
        metrics = [metrics]
    metrics = tuple(metrics)
    for metric in metrics:
        if not isinstance(metric, Metric):
            raise TypeError(
                f"{stage}_metrics: expected jaxmetrics_ad metrics, got {type(metric).__name__}"
            )
    names = [metric.name for metric in metrics]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(
                f"{stage}_metrics: two metrics are named {name!r}; give them different "
                "prefixes (e.g. prefix='image_' and prefix='pixel_')"
            )
    return metrics


class Evaluator:
    """Metrics for the validation and test stages, updated from batches; an immutable pytree.

    ``Evaluator(metrics)`` holds one set (the first argument is anomalib's ``val_metrics``);
    ``Evaluator(val_metrics=..., test_metrics=...)`` holds two, and ``update``/``compute`` then take
    ``stage="val"`` or ``stage="test"``. Names within a stage must be unique (use ``prefix``).

    A strict metric raises ValueError when a batch lacks one of its fields, naming the field, the
    metric and the fields the batch has; a ``strict=False`` metric skips such batches (anomalib's
    behaviour) and, if it never saw one, is left out of :meth:`compute`'s result.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jaxmetrics_ad as jm
        >>> ev = jm.Evaluator([
        ...     jm.AUROC(thresholds=256, fields=("pred_score", "gt_label"), prefix="image_"),
        ...     jm.AUROC(thresholds=256, fields=("anomaly_map", "gt_mask"), prefix="pixel_"),
        ... ])
        >>> batch = {"pred_score": jnp.array([0.2, 0.9]), "gt_label": jnp.array([0, 1]),
        ...          "anomaly_map": jnp.array([[[0.1, 0.2]], [[0.3, 0.8]]]),
        ...          "gt_mask": jnp.array([[[0, 0]], [[0, 1]]])}
        >>> ev = jax.jit(lambda ev, batch: ev.update(batch))(ev, batch)
        >>> {name: round(float(value), 3) for name, value in ev.compute().items()}
        {'image_AUROC': 1.0, 'pixel_AUROC': 1.0}
    """

    def __init__(
        self,
        val_metrics: Sequence[Metric] | None = None,
        test_metrics: Sequence[Metric] | None = None,
    ) -> None:
        stages = (_checked_metrics(val_metrics, "val"), _checked_metrics(test_metrics, "test"))
        self._set(stages, tuple(_share_plan(metrics) for metrics in stages))

    @classmethod
    def default(cls, thresholds: int | None = DEFAULT_NUM_BINS) -> Evaluator:
        """anomalib's default test metrics: image AUROC and F1Score, pixel AUROC and F1Score.

        A batch needs ``pred_score``, ``pred_label`` and ``gt_label`` (one entry per image); the pixel
        metrics read ``anomaly_map``, ``pred_mask`` and ``gt_mask`` (N, H, W) and are ``strict=False``
        (skipped for batches without them). ``thresholds`` sets the AUROC bins; ``None`` keeps every
        sample for anomalib's exact value (eager only).

        Example:
            >>> import jaxmetrics_ad as jm
            >>> list(jm.Evaluator.default().metrics())
            ['image_AUROC', 'image_F1Score', 'pixel_AUROC', 'pixel_F1Score']
        """
        return cls(
            test_metrics=[
                AUROC(thresholds, fields=("pred_score", "gt_label"), prefix="image_"),
                F1Score(fields=("pred_label", "gt_label"), prefix="image_"),
                AUROC(thresholds, fields=("anomaly_map", "gt_mask"), prefix="pixel_", strict=False),
                F1Score(fields=("pred_mask", "gt_mask"), prefix="pixel_", strict=False),
            ]
        )

    # -- pytree plumbing -------------------------------------------------------------------------

    def _set(
        self,
        stages: tuple[tuple[Metric, ...], ...],
        plan: tuple[tuple[int, ...], ...],
        pad_to: int = 0,
    ):
        object.__setattr__(self, "_stages", stages)
        object.__setattr__(self, "_plan", plan)
        # the largest eager batch so far: smaller ones are padded to it (not part of the pytree)
        object.__setattr__(self, "_pad_to", pad_to)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Evaluator is immutable; update() returns a new evaluator")

    def _with(self, stages: tuple[tuple[Metric, ...], ...]) -> Evaluator:
        evaluator = object.__new__(Evaluator)
        evaluator._set(stages, self._plan, self._pad_to)
        return evaluator

    def _flatten_with_keys(self):
        children = tuple(
            (jax.tree_util.GetAttrKey(stage), {m.name: m for m in metrics})
            for stage, metrics in zip(STAGES, self._stages)
        )
        return children, (self._names(), self._plan)

    def _flatten(self):
        children = tuple({m.name: m for m in metrics} for metrics in self._stages)
        return children, (self._names(), self._plan)

    @classmethod
    def _unflatten(cls, aux, children):
        names, plan = aux
        stages = tuple(
            tuple(by_name[name] for name in stage_names)
            for by_name, stage_names in zip(children, names)
        )
        evaluator = object.__new__(cls)
        evaluator._set(stages, plan)
        return evaluator

    def _names(self) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(m.name for m in metrics) for metrics in self._stages)

    def _to_state_dict(self) -> dict[str, Any]:
        """Each stage's metric states by name, and under ``"sharing"`` which states are shared."""
        state: dict[str, Any] = {
            stage: {m.name: flax.serialization.to_state_dict(m) for m in metrics}
            for stage, metrics in zip(STAGES, self._stages)
        }
        state["sharing"] = {
            stage: {m.name: metrics[leader].name for m, leader in zip(metrics, plan)}
            for stage, metrics, plan in zip(STAGES, self._stages, self._plan)
        }
        return state

    def _from_state_dict(self, state: dict[str, Any]) -> Evaluator:
        """This evaluator holding a saved state: the same metrics (by name) sharing the same states.

        ValueError when the saved evaluator shared states differently (a follower metric would
        otherwise take its leader's data at the next update), or when a metric's state is another
        configuration's (see :class:`~jaxmetrics_ad.Metric`). A state saved without ``"sharing"``
        (by an older version) must hold equal states wherever this evaluator shares one.
        """
        for stage, metrics in zip(STAGES, self._stages):
            names, saved = [m.name for m in metrics], state.get(stage, {})
            if sorted(saved) != sorted(names):
                raise ValueError(
                    f"cannot restore the {stage} metrics {names} from a state holding "
                    f"{sorted(saved)}: build the Evaluator with the same metrics first"
                )
        sharing = state.get("sharing")
        if sharing is not None:
            saved_plan = tuple(
                _plan_from_names(metrics, sharing.get(stage, {}))
                for stage, metrics in zip(STAGES, self._stages)
            )
            _check_same_plan(self, saved_plan, "restore this evaluator from a state saved by one")
        stages = tuple(
            tuple(
                flax.serialization.from_state_dict(m, state[stage][m.name], name=m.name)
                for m in metrics
            )
            for stage, metrics in zip(STAGES, self._stages)
        )
        restored = self._with(stages)
        if sharing is None:
            for stage, metrics, plan in zip(STAGES, restored._stages, self._plan):
                for metric, leader in zip(metrics, plan):
                    source = metrics[leader]
                    shared = _state_of(source, metric.state_key())
                    if source is not metric and not _same_leaves(
                        shared, source.num_updates, metric
                    ):
                        raise ValueError(
                            f"cannot restore this evaluator: in {stage}, {metric.name} shares "
                            f"the state of {metrics[leader].name} here, but the saved states "
                            "differ; build the Evaluator the way the saved one was built"
                        )
        return restored

    # -- public protocol ---------------------------------------------------------------------------

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages that hold metrics, e.g. ``('test',)``."""
        return tuple(stage for stage, metrics in zip(STAGES, self._stages) if metrics)

    def metrics(self, stage: str | None = None) -> dict[str, Metric]:
        """The metrics of a stage by name (for curves, plots or a closer look).

        Example:
            >>> import jaxmetrics_ad as jm
            >>> jm.Evaluator([jm.AUROC(prefix="image_")]).metrics()["image_AUROC"].name
            'image_AUROC'
        """
        return {m.name: m for m in self._stages[self._stage_index(stage)]}

    def update(self, batch: Any, stage: str | None = None, *, valid: Any = None) -> Evaluator:
        """The evaluator with one more batch in the metrics of ``stage``. Pure and jit-able.

        ``stage`` may be left out when only one stage holds metrics. ``valid`` (bool, one entry per
        image) leaves out padded images; see :func:`pad_batch` for jitting a step over a ragged
        last batch.

        Called eagerly, the metrics with a fixed-size state that can leave padded images out (all
        binned ones) update in one jitted program (compiled once per batch layout), and a batch
        smaller than the largest one seen so far is padded to it with left-out images, so a ragged
        last batch does not compile again. The others (growing exact states) update one by one.
        """
        index = self._stage_index(stage)
        metrics = self._stages[index]
        if is_traced(*jax.tree_util.tree_leaves(self), *jax.tree_util.tree_leaves(batch)):
            return self._update_stage(index, batch, valid, eager=False)
        # eagerly, each field is value-checked and converted once, not per metric: to a jax array,
        # or kept in numpy when only eager numpy updates read it
        with checks_once():
            converted = _converted_fields(batch, metrics, self._host_fields(index, valid))
            return self._update_stage(index, converted, valid)

    def _host_fields(self, index: int, valid: Any) -> frozenset[str]:
        """The fields only eager numpy updates read (they stay numpy: no copy to a jax array)."""
        if valid is not None or not numpy_updates_apply():
            return frozenset()
        metrics, plan = self._stages[index], self._plan[index]
        leaders = [metrics[i] for i in range(len(metrics)) if plan[i] == i]
        read = {field for metric in leaders for field in metric.fields}
        in_jax = {
            field
            for metric in leaders
            if not metric._updates_in_numpy() or metric._state_grows()
            for field in metric.fields
        }
        return frozenset(read - in_jax)

    def _update_stage(self, index: int, batch: Any, valid: Any, eager: bool = True) -> Evaluator:
        metrics, plan = self._stages[index], self._plan[index]
        # the states that update in numpy (eager, CPU) have nothing to compile or pad
        in_numpy = eager and numpy_updates_apply()
        together = _in_one_program(metrics, plan, in_numpy) if valid is None and eager else ()
        if not together:
            updated = _apply_shared(metrics, plan, lambda _, m: m.update_from(batch, valid=valid))
            return self._with(self._replace_stage(index, updated))
        # the fixed-size states in one padded program, the growing ones (if any) each on its own
        part = self._part(index, together)._padded_update(index, batch)
        alone = tuple(i for i in range(len(metrics)) if i not in together)
        rest = _apply_shared(*_restricted(metrics, plan, alone), lambda _, m: m.update_from(batch))
        updated = dict(zip(together, part._stages[index])) | dict(zip(alone, rest))
        done = self._with(
            self._replace_stage(index, tuple(updated[i] for i in range(len(metrics))))
        )
        object.__setattr__(done, "_pad_to", part._pad_to)
        return done

    def _part(self, index: int, positions: tuple[int, ...]) -> Evaluator:
        """This evaluator with only the metrics at ``positions`` in stage ``index``."""
        metrics, plan = _restricted(self._stages[index], self._plan[index], positions)
        part = object.__new__(Evaluator)
        part._set(
            self._replace_stage(index, metrics),
            tuple(plan if i == index else p for i, p in enumerate(self._plan)),
            self._pad_to,
        )
        return part

    def _padded_update(self, index: int, batch: Any) -> Evaluator:
        metrics, plan = self._stages[index], self._plan[index]
        present, fields = [], {}
        for position, (metric, leader) in enumerate(zip(metrics, plan)):
            values = [read_field(batch, field) for field in metric.fields]
            if any(value is None for value in values):
                metric.update_from(batch)  # raises for a strict metric, skips otherwise
                present.append(False)
                continue
            present.append(True)
            arrays = [as_array(value, field) for value, field in zip(values, metric.fields)]
            if leader == position:
                metric._check_inputs(*arrays)  # the eager checks, on the batch as given
            fields.update(zip(metric.fields, arrays))
        if not fields:
            return self
        sizes = {array.shape[0] for array in fields.values() if array.ndim}
        if len(sizes) != 1:
            shapes = {field: tuple(array.shape) for field, array in fields.items()}
            raise ValueError(f"batch fields must share their first (image) axis, got {shapes}")
        size = max(sizes.pop(), self._pad_to)
        padded, valid = pad_batch(fields, size)
        updated = _jitted_stage_update(self, padded, valid, index, tuple(present))
        object.__setattr__(updated, "_pad_to", size)
        return updated

    def merge(self, other: Evaluator) -> Evaluator:
        """The evaluator over the data of both (every stage). Pure and jit-able."""
        if not isinstance(other, Evaluator) or other._names() != self._names():
            raise ValueError(
                f"cannot merge {other!r} into {self!r}: both must hold the same metrics"
            )
        _check_same_plan(self, other._plan, "merge an evaluator into one")
        return self._with(
            tuple(
                _apply_shared(mine, plan, lambda index, m, theirs=theirs: m.merge(theirs[index]))
                for mine, theirs, plan in zip(self._stages, other._stages, self._plan)
            )
        )

    def all_reduce(self, axis_name: str) -> Evaluator:
        """The evaluator over every device's data along ``axis_name`` (inside pmap/shard_map).

        Every device gets the result. States shared between metrics are reduced once.
        """
        return self._with(
            tuple(
                _apply_shared(metrics, plan, lambda _, m: m.all_reduce(axis_name))
                for metrics, plan in zip(self._stages, self._plan)
            )
        )

    def reset(self, stage: str | None = None) -> Evaluator:
        """Empty metrics for ``stage`` (every stage when left out), e.g. before a new epoch."""
        if stage is None:
            return self._with(tuple(tuple(m.reset() for m in ms) for ms in self._stages))
        index = self._stage_index(stage)
        return self._with(self._replace_stage(index, tuple(m.reset() for m in self._stages[index])))

    def compute(self, stage: str | None = None, *, curves: bool = False) -> dict[str, Any]:
        """``{prefix + ClassName: value}`` for the metrics of ``stage``; jit-able for binned metrics.

        With ``curves=True``, every metric with a ``curve()`` method (AUROC: ROC, AUPR: PR, ...)
        also gives ``name + "_curve"``. Eagerly, a non-strict metric that never saw a batch with
        its fields is left out (its value is None).

        Example:
            >>> import jaxmetrics_ad as jm
            >>> ev = jm.Evaluator([jm.AUROC(), jm.F1Score(prefix="pred_")])
            >>> ev = ev.update({"pred_score": [0.2, 0.7], "gt_label": [0, 1], "pred_label": [0, 1]})
            >>> fpr, tpr = ev.compute(curves=True)["AUROC_curve"]
            >>> sorted(ev.compute()), tpr.tolist()
            (['AUROC', 'pred_F1Score'], [0.0, 0.0, 1.0, 1.0])
        """
        results: dict[str, Any] = {}
        for metric in self._stages[self._stage_index(stage)]:
            value = metric.compute()
            if value is None:
                continue
            results[metric.name] = value
            if curves and hasattr(metric, "curve"):
                results[metric.name + "_curve"] = metric.curve()
        return results

    def _stage_index(self, stage: str | None) -> int:
        if stage is None:
            used = self.stages
            if len(used) > 1:
                raise ValueError(
                    f"stage: this Evaluator has metrics for {list(used)}; pass stage='val' or "
                    "stage='test'"
                )
            stage = used[0] if used else STAGES[0]
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")
        index = STAGES.index(stage)
        if not self._stages[index] and self.stages:
            raise ValueError(
                f"stage={stage!r} holds no metrics in this Evaluator (its metrics are in "
                f"{list(self.stages)}; Evaluator([...]) puts them in 'val', "
                "Evaluator(test_metrics=[...]) in 'test')"
            )
        return index

    def _replace_stage(self, index: int, metrics: tuple[Metric, ...]):
        return tuple(metrics if i == index else ms for i, ms in enumerate(self._stages))

    def __repr__(self) -> str:
        parts = []
        for stage, metrics in zip(STAGES, self._stages):
            if metrics:
                lines = "".join(f"\n    {metric!r}," for metric in metrics)
                parts.append(f"\n  {stage}_metrics=[{lines}\n  ],")
        return f"Evaluator({''.join(parts)}\n)" if parts else "Evaluator()"


jax.tree_util.register_pytree_with_keys(
    Evaluator,
    Evaluator._flatten_with_keys,
    Evaluator._unflatten,
    flatten_func=Evaluator._flatten,
)
flax.serialization.register_serialization_state(
    Evaluator, Evaluator._to_state_dict, Evaluator._from_state_dict
)


def _plan_from_names(metrics: tuple[Metric, ...], leaders: Any) -> tuple[int, ...] | None:
    """A saved ``{name: leader name}`` as a plan over ``metrics``; None when it names others."""
    index = {m.name: i for i, m in enumerate(metrics)}
    leaders = {str(k): str(v) for k, v in dict(leaders).items()}
    if sorted(leaders) != sorted(index) or not set(leaders.values()) <= set(index):
        return None
    return tuple(index[leaders[m.name]] for m in metrics)


def _check_same_plan(mine: Evaluator, plan: tuple, action: str) -> None:
    """ValueError naming each metric whose state ``plan`` shares otherwise than ``mine`` does."""
    if plan == mine._plan:
        return
    differ = []
    for stage, metrics, ours, theirs in zip(STAGES, mine._stages, mine._plan, plan):
        if theirs is None:
            differ.append(f"{stage}: the saved sharing names other metrics")
            continue
        for index, (metric, a, b) in enumerate(zip(metrics, ours, theirs)):
            if a != b:
                here = "keeps its own state" if a == index else f"shares {metrics[a].name}'s state"
                there = "keeps its own" if b == index else f"shares {metrics[b].name}'s"
                differ.append(
                    f"{stage}: {metric.name} {here} in this evaluator, {there} in the other"
                )
    raise ValueError(
        f"cannot {action} that shares metric states differently ({'; '.join(differ)}): a metric "
        "sharing another's state would take that metric's data. Build both Evaluators the same "
        "way (from fresh metrics, so that the same metrics share)"
    )


def _converted_fields(
    batch: Any, metrics: Sequence[Metric], on_host: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The batch as a dict, the fields some metric reads checked and converted once: to jax arrays,
    or to the numpy arrays they would hold for the fields ``on_host``."""
    read = {field for metric in metrics for field in metric.fields}
    converted = {}
    for name in available_fields(batch):
        value = read_field(batch, name)
        if name in read and value is not None:
            value = as_array(value, name, on_host=name in on_host)
        converted[name] = value
    return converted


def _in_one_program(
    metrics: tuple[Metric, ...], plan: tuple[int, ...], in_numpy: bool = False
) -> tuple[int, ...]:
    """Positions of the metrics an eager update runs in one padded program: those whose state
    (their leader's) has a fixed size and can leave padded images out, and does not update in
    numpy (``in_numpy``: eagerly on CPU, see ``numpy_updates``)."""
    return tuple(
        i
        for i in range(len(metrics))
        if metrics[plan[i]].masks_samples
        and not metrics[plan[i]]._state_grows()
        and not (in_numpy and metrics[plan[i]]._updates_in_numpy())
    )


def _restricted(
    metrics: tuple[Metric, ...], plan: tuple[int, ...], positions: tuple[int, ...]
) -> tuple[tuple[Metric, ...], tuple[int, ...]]:
    """The metrics at ``positions`` and their plan renumbered (each one's leader is among them)."""
    where = {position: k for k, position in enumerate(positions)}
    return tuple(metrics[p] for p in positions), tuple(where[plan[p]] for p in positions)


def _apply_shared(
    metrics: tuple[Metric, ...], plan: tuple[int, ...], step: Callable[[int, Metric], Metric]
) -> tuple[Metric, ...]:
    """``step(index, metric)`` applied to each metric that leads its state; the others read theirs
    off their leader's (see :func:`_share_plan`).

    ``plan[i]`` is the index of the metric whose state metric ``i`` reads (itself when it leads),
    so the shared work (a histogram update, a reduction) runs once per state.
    """
    led = {
        index: step(index, metric) for index, metric in enumerate(metrics) if plan[index] == index
    }
    done = []
    for index, metric in enumerate(metrics):
        if index in led:
            done.append(led[index])
            continue
        source = led[plan[index]]
        done.append(
            metric._replace(
                state=_state_of(source, metric.state_key()),
                num_updates=source.num_updates,
                num_invalid=source.num_invalid,
            )
        )
    return tuple(done)


def pad_batch(batch: dict[str, Any], size: int) -> tuple[dict[str, jax.Array], jax.Array]:
    """``batch`` with every array's first (image) axis padded with zeros to ``size``, and ``valid``.

    Use it to jit an evaluation step once for every batch, the ragged last one included: pass
    ``valid`` on to :meth:`Evaluator.update` (or :meth:`Metric.update`), which leaves the padded
    images out. Entries that are not arrays with an image axis are kept as they are.

    Example:
        >>> import jax, numpy as np, jaxmetrics_ad as jm
        >>> ev = jm.Evaluator([jm.AUROC(thresholds=64)])
        >>> step = jax.jit(lambda ev, batch, valid: ev.update(batch, valid=valid))
        >>> batch, valid = jm.pad_batch({"pred_score": np.array([0.2, 0.8]), "gt_label": np.array([0, 1])}, 4)
        >>> valid.tolist()
        [True, True, False, False]
        >>> float(step(ev, batch, valid).compute()["AUROC"])
        1.0
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size: expected a positive int, got {size!r}")
    padded, count = {}, None
    for field, value in batch.items():
        array = value if isinstance(value, jax.Array) else np.asarray(value)
        if array.ndim == 0 or array.dtype.kind not in "biuf":
            padded[field] = value
            continue
        if count is not None and array.shape[0] != count:
            raise ValueError(
                f"{field}: expected {count} images like the other fields, got {array.shape[0]}"
            )
        count = array.shape[0]
        if count > size:
            raise ValueError(f"{field}: {count} images do not fit in a batch of {size}")
        widths = [(0, size - count)] + [(0, 0)] * (array.ndim - 1)
        if size == count:
            padded[field] = array
        else:  # on the host: an eager jnp.pad would compile once per field and shape
            host = np.asarray(array)  # bools re-made from their bytes below, no eager jax op
            host = host.view(np.uint8) != 0 if host.dtype == bool else host
            padded[field] = jax.device_put(np.pad(host, widths))  # as the unpadded batches are
    valid = np.arange(size) < (count if count is not None else size)
    return padded, jnp.asarray(valid)


def _stage_update(
    evaluator: Evaluator,
    fields: dict[str, jax.Array],
    valid: jax.Array,
    index: int,
    present: tuple[bool, ...],
) -> Evaluator:
    metrics = evaluator._stages[index]
    wanted = dict(zip((m.name for m in metrics), present))

    def step(_: int, metric: Metric) -> Metric:
        if not wanted[metric.name]:
            return metric
        arrays = (clean_bool(jnp.asarray(fields[f])) for f in metric.fields)
        return metric._update_unchecked(*arrays, valid=valid)

    updated = _apply_shared(metrics, evaluator._plan[index], step)
    return evaluator._with(evaluator._replace_stage(index, updated))


_jitted_stage_update = jax.jit(_stage_update, static_argnums=(3, 4))
