"""Confidence intervals in one pass: a Poisson bootstrap of a binned metric, itself a metric.

:class:`Bootstrap` keeps, next to the wrapped metric's histogram, ``R`` replicate histograms. Every
image gets, in each replicate, an integer weight drawn from Poisson(1) (the *Poisson bootstrap*, a
streaming stand-in for resampling n images with replacement), and each of its samples (its score
for an image metric, every pixel for a pixel metric) counts that many times in that replicate. The
histogram counts stay exact integers, so the state has a fixed size, merges by addition and reduces
across devices with ``psum`` like every other state; ``compute`` reads the metric once per
replicate and returns the value on the data itself with the percentile interval of the replicates.
There is no second pass over the data and no sample is kept.

**Weights.** Image ``k`` gets the weights of ``R`` uniforms ``uniform(fold_in(PRNGKey(seed), k),
(R,))`` through the inverse Poisson(1) CDF (at most 10: the float32 CDF reaches 1 there; the
probability of more is 1e-8): they depend on the seed and the image's id only. With ``image_ids`` (a unique integer per image, e.g.
its index in the dataset) the state is therefore the same, bit for bit, whatever the batching, the
order of the images, the merges or the sharding. Without them, an image's id is the number of
images this state had seen before it: one stream of updates still gives the same state however it
is batched, but two states updated independently (two devices, two processes) number their
images from 0 both, so images at the same position get the same weights in every replicate. Such
weights are not independent and the interval comes out wrong; merging two such states eagerly
warns. Under ``pmap``/``shard_map``, pass ``image_ids`` (e.g. ``device_index * images_per_device +
local index``) or ``id_field``.

**Which metrics.** Any binned (``thresholds=<int>`` or explicit thresholds) score-curve metric with
a scalar value: :class:`~jaxmetrics_ad.AUROC`, :class:`~jaxmetrics_ad.AUPR`,
:class:`~jaxmetrics_ad.F1Max`, :class:`~jaxmetrics_ad.F1AdaptiveThreshold` (the interval of the
threshold), on image scores ``(N,)`` or on maps ``(N, H, W)`` (the leading axis indexes images).
Exact mode (``thresholds=None``), curves (BinaryPrecisionRecallCurve), AUPRO, PRO, PIMO/AUPIMO and
the others raise TypeError: they keep no histogram of plain counts to weight.

**Cost.** The state holds ``(2R + 2) × B`` two-word counts, ``16 (R + 1) B`` bytes: 260 MB for
``R = 1000`` replicates of ``B = 16384`` bins, 16 MB at ``B = 1024``. A pixel update spends one
integer product of the ``(n, R)`` weights with the per-image histograms, ``n × 2B``; an image
update one scatter of ``n × 2R`` weights. Eager compute reads the replicates on the host with
numpy in float64 (~0.2 ms each for B = 1024); inside ``jax.jit`` they are read with ``vmap``.
A weighted per-batch count of one bin must stay below 2**31 (a batch of up to ~10**8 samples).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmetrics_ad.base import Metric, _saturating_add, available_fields, read_field
from jaxmetrics_ad.classification import BinaryPrecisionRecallCurve, ScoreCurveMetric
from jaxmetrics_ad.counts import WideCount
from jaxmetrics_ad.histogram import ScoreHistogram
from jaxmetrics_ad.validation import as_array, binary_channel, is_traced

# Poisson(1) CDF at k = 0..19 in float32: from k = 10 on it rounds to 1, above any float32
# uniform, so weights stop at 10 (P(X > 10) = 1e-8, below the uniform's resolution anyway).
_POISSON_CDF = np.cumsum(
    [math.exp(-1.0) / math.factorial(k) for k in range(20)], dtype=np.float64
).astype(np.float32)

DEFAULT_REPLICATES = 1000
"""Replicates of a :class:`Bootstrap` unless told otherwise (percentile endpoints settle by then)."""


class BootstrapResult(struct.PyTreeNode):
    """What :meth:`Bootstrap.compute` returns: the value, its interval, the replicate values.

    ``value`` is the wrapped metric on the data itself; ``(lower, upper)`` the percentile interval
    of the finite replicate values at ``confidence`` (numpy's default linear interpolation).
    ``replicates`` holds every replicate's value (NaN where a replicate leaves the metric
    undefined, e.g. AUROC of a replicate that drew no positive image).

    Example:
        >>> import jax.numpy as jnp
        >>> r = BootstrapResult(jnp.float32(0.8), jnp.float32(0.7), jnp.float32(0.9),
        ...                     jnp.array([0.7, 0.8, 0.9]), confidence=0.95)
        >>> r
        BootstrapResult(value=0.8, 95% interval=(0.7, 0.9), 3 replicates)
        >>> [round(float(v), 3) for v in r.interval_at(0.5)]
        [0.75, 0.85]
    """

    value: jax.Array
    lower: jax.Array
    upper: jax.Array
    replicates: jax.Array
    confidence: float = struct.field(pytree_node=False, default=0.95)

    @property
    def interval(self) -> tuple[jax.Array, jax.Array]:
        """``(lower, upper)``."""
        return self.lower, self.upper

    @property
    def num_valid(self) -> jax.Array:
        """Replicates with a finite value (those the interval is taken over)."""
        return jnp.sum(jnp.isfinite(self.replicates))

    def interval_at(self, confidence: float) -> tuple[jax.Array, jax.Array]:
        """The percentile interval of the replicates at another ``confidence`` (no recompute)."""
        return _percentile_interval(self.replicates, _checked_confidence(confidence))

    def __repr__(self) -> str:
        if is_traced(self.value) or not hasattr(self.value, "shape"):
            return f"BootstrapResult(confidence={self.confidence})"
        value, lower, upper = (f"{float(v):.6g}" for v in (self.value, self.lower, self.upper))
        count = int(np.size(self.replicates))
        return (
            f"BootstrapResult(value={value}, {100 * self.confidence:g}% interval=({lower}, "
            f"{upper}), {count} replicates)"
        )


class BootstrapState(struct.PyTreeNode):
    """The histogram (channels 0, 1: the data; ``2 + 2r``, ``3 + 2r``: replicate ``r``) and the
    image counters behind the default image ids."""

    histogram: ScoreHistogram
    num_images: jax.Array  # int32: images seen, the id of the next one without image_ids
    default_ids: jax.Array  # int32: images that got a default id

    def merge(self, other: BootstrapState) -> BootstrapState:
        """Both states' images; warns (eagerly) when both numbered their images by default."""
        leaves = (self.default_ids, other.default_ids)
        if not is_traced(*leaves) and int(self.default_ids) > 0 and int(other.default_ids) > 0:
            warnings.warn(
                "Bootstrap.merge: both states numbered their images from 0 (no image_ids), so "
                "images at the same position share their bootstrap weights and the interval is "
                "unreliable; pass unique image_ids (e.g. dataset indices) to update",
                UserWarning,
                stacklevel=3,
            )
        return BootstrapState(
            histogram=self.histogram.merge(other.histogram),
            num_images=self.num_images + other.num_images,
            default_ids=self.default_ids + other.default_ids,
        )

    def all_reduce(self, axis_name: str) -> BootstrapState:
        """The state over every device along ``axis_name`` (inside pmap/shard_map)."""
        return BootstrapState(
            histogram=self.histogram.all_reduce(axis_name),
            num_images=jax.lax.psum(self.num_images, axis_name),
            default_ids=jax.lax.psum(self.default_ids, axis_name),
        )


def _checked_confidence(confidence: Any) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real):
        raise TypeError(f"confidence: expected a float in (0, 1), got {confidence!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence: expected a float in (0, 1), got {float(confidence)}")
    return float(confidence)


def _percentile_interval(values: Any, confidence: float) -> tuple[Any, Any]:
    quantiles = ((1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0)
    if isinstance(values, np.ndarray):
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return np.float64(np.nan), np.float64(np.nan)
        return tuple(np.quantile(finite, quantiles))
    values = jnp.where(jnp.isfinite(values), values, jnp.nan)
    lower, upper = jnp.nanquantile(values, jnp.asarray(quantiles, values.dtype))
    return lower, upper


class Bootstrap(Metric):
    """A binned metric with a Poisson-bootstrap confidence interval, computed in the same pass.

    ``Bootstrap(metric, R)`` updates like ``metric`` (same fields) and, optionally, takes
    ``image_ids``; ``compute()`` returns a :class:`BootstrapResult` with ``metric``'s value on the
    data and the percentile interval of ``R`` replicates at ``confidence``. See the module
    docstring for the weights, the supported metrics and the memory.

    Args:
        metric: an empty binned score-curve metric (AUROC, AUPR, F1Max, F1AdaptiveThreshold with
            ``thresholds=<int>`` or explicit thresholds); its fields, prefix and strictness are kept.
        num_replicates: R, the number of bootstrap replicates.
        seed: seed of the Poisson weights.
        confidence: the level of the interval.
        id_field: a batch field holding the image ids, read by :meth:`update_from`.

    Example:
        >>> import numpy as np, jaxmetrics_ad as jm
        >>> rng = np.random.default_rng(0)
        >>> labels = rng.integers(0, 2, 200)
        >>> scores = rng.normal(labels, 1.0).astype(np.float32)
        >>> boot = jm.Bootstrap(jm.AUROC(thresholds=1024), num_replicates=200, seed=1)
        >>> result = boot.update(scores, labels, image_ids=np.arange(200)).compute()
        >>> bool(result.lower < result.value < result.upper), round(float(result.value), 3)
        (True, 0.757)
        >>> boot.name
        'AUROC_bootstrap'
    """

    reader_config = ("confidence",)
    masks_samples = True

    def __init__(
        self,
        metric: ScoreCurveMetric,
        num_replicates: int = DEFAULT_REPLICATES,
        *,
        seed: int = 0,
        confidence: float = 0.95,
        id_field: str | None = None,
    ) -> None:
        _check_wrappable(metric)
        if (
            isinstance(num_replicates, bool)
            or not isinstance(num_replicates, numbers.Integral)
            or int(num_replicates) < 2
        ):
            raise ValueError(f"num_replicates: expected an int >= 2, got {num_replicates!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed: expected an int, got {seed!r}")
        if id_field is not None and not isinstance(id_field, str):
            raise TypeError(f"id_field: expected a field name or None, got {id_field!r}")
        super().__init__(
            fields=metric.fields,
            prefix=metric.prefix,
            strict=metric.strict,
            inner=(type(metric), tuple(kv for kv in metric._config if kv[0] != "prefix")),
            num_replicates=int(num_replicates),
            seed=int(seed),
            confidence=_checked_confidence(confidence),
            id_field=id_field,
        )

    # -- configuration ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The wrapped metric's name + ``"_bootstrap"``."""
        return self.metric.name + "_bootstrap"

    @property
    def metric(self) -> ScoreCurveMetric:
        """The wrapped metric, empty."""
        cls, config = self.inner
        config = tuple((k, self.prefix if k == "prefix" else v) for k, v in _with_prefix(config))
        empty = jnp.zeros((), jnp.int32)
        return cls._unflatten(config, (None, empty, empty)).reset()

    def _empty_state(self) -> BootstrapState:
        return BootstrapState(
            histogram=self._histogram(2 + 2 * self.num_replicates),
            num_images=jnp.zeros((), jnp.int32),
            default_ids=jnp.zeros((), jnp.int32),
        )

    def _histogram(self, num_channels: int, num_weights: int = 0) -> ScoreHistogram:
        edges = self.metric.state.edges
        if edges is None:
            return ScoreHistogram.auto(self.metric.thresholds, num_channels, num_weights)
        return ScoreHistogram.fixed(edges, num_channels, num_weights)

    def replicate_weights(self, image_ids: Any) -> jax.Array:
        """The Poisson(1) weights ``(n, R)`` (int32) of the images with these ids; jit-able.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> boot = jm.Bootstrap(jm.AUROC(thresholds=64), num_replicates=4, seed=3)
            >>> boot.replicate_weights([0, 1]).shape
            (2, 4)
        """
        ids = jnp.ravel(jnp.asarray(image_ids)).astype(jnp.uint32)
        base = jax.random.PRNGKey(self.seed)
        replicates = self.num_replicates
        cdf = jnp.asarray(_POISSON_CDF)

        def weights(image_id: jax.Array) -> jax.Array:
            uniform = jax.random.uniform(jax.random.fold_in(base, image_id), (replicates,))
            # inverse CDF: the number of k with CDF(k) <= u (no loop, so shard_map and vmap
            # see one fixed program; jax.random.poisson's rejection loop does not pass shard_map)
            return jnp.sum(cdf[None, :] <= uniform[:, None], axis=1, dtype=jnp.int32)

        return jax.vmap(weights)(ids)

    # -- update -----------------------------------------------------------------------------------

    def update(self, *inputs: Any, image_ids: Any = None, valid: Any = None) -> Bootstrap:
        """The metric with one more batch: the wrapped metric's inputs (leading axis: images) and,
        optionally, one unique integer id per image (see the module docstring). ``valid`` (bool,
        one per image) leaves out padded images, as for every metric. Pure and jit-able.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> boot = jm.Bootstrap(jm.AUROC(thresholds=64), num_replicates=8)
            >>> boot = boot.update([0.2, 0.7, 0.0], [0, 1, 0], image_ids=[10, 11, 0],
            ...                    valid=[True, True, False])
            >>> int(boot.state.num_images), float(boot.compute().value)
            (2, 1.0)
        """
        if len(inputs) != len(self.fields):
            raise TypeError(
                f"{self.name}.update takes {len(self.fields)} arrays {self.fields}, got {len(inputs)}"
            )
        arrays = [as_array(x, field) for x, field in zip(inputs, self.fields)]
        num_images = arrays[0].shape[:1] if arrays[0].ndim else (1,)
        ids = None if image_ids is None else self._checked_ids(image_ids, arrays[0])
        if valid is not None:
            valid = as_array(valid, "valid")
            if valid.dtype != jnp.bool_ or jnp.ravel(valid).shape != num_images:
                raise ValueError(
                    f"valid: expected a bool array of shape {num_images} (one entry per image), "
                    f"got {valid.dtype} {valid.shape}"
                )
            valid = jnp.ravel(valid)
        if valid is None or is_traced(valid, *arrays):
            self._check_inputs(*arrays)
        else:  # eager checks see the images that count, not the padding
            rows = np.asarray(valid)
            self._check_inputs(
                *(jnp.asarray(np.asarray(a).reshape(-1, *a.shape[1:])[rows]) for a in arrays)
            )
        if is_traced(*arrays, *jax.tree_util.tree_leaves((self, ids, valid))):
            return self._update_unchecked(*arrays, ids, valid)
        return _jitted_update(self, arrays[0], arrays[1], ids, valid)

    def update_from(self, batch: Any, valid: Any = None) -> Bootstrap:
        """:meth:`update` from a batch (a Mapping or an object), the image ids read from
        ``id_field`` when one is configured. A missing field raises ValueError (``strict=True``)
        or skips the batch."""
        wanted = (*self.fields, *(() if self.id_field is None else (self.id_field,)))
        values = [read_field(batch, field) for field in wanted]
        missing = [field for field, value in zip(wanted, values) if value is None]
        if missing:
            if not self.strict:
                return self
            raise ValueError(
                f"{self.name}: the batch has no field {missing[0]!r} (this metric reads "
                f"{list(wanted)}; the batch has {available_fields(batch)})"
            )
        ids = values[2] if self.id_field is not None else None
        return self.update(values[0], values[1], image_ids=ids, valid=valid)

    def _update_unchecked(
        self,
        preds: jax.Array,
        target: jax.Array,
        ids: jax.Array | None = None,
        valid: jax.Array | None = None,
    ) -> Bootstrap:
        state, num_invalid = self._update_state(preds, target, ids, valid)
        return self._replace(
            state=state,
            num_updates=self.num_updates + 1,
            num_invalid=_saturating_add(self.num_invalid, num_invalid),
        )

    def _checked_ids(self, image_ids: Any, scores: jax.Array) -> jax.Array:
        ids = as_array(image_ids, "image_ids")
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"image_ids: expected integers, got dtype {ids.dtype}")
        expected = scores.shape[:1] if scores.ndim else (1,)
        if jnp.ravel(ids).shape != expected or ids.ndim > 1:
            raise ValueError(
                f"image_ids: expected one id per image, shape {expected} (the leading axis of "
                f"{self.fields[0]}, shape {scores.shape}), got shape {ids.shape}"
            )
        return jnp.ravel(ids)

    def _check_inputs(self, preds: jax.Array, target: jax.Array) -> None:
        self.metric._check_inputs(preds, target)

    def _update_state(
        self,
        preds: jax.Array,
        target: jax.Array,
        ids: jax.Array | None = None,
        valid: jax.Array | None = None,
    ) -> tuple[BootstrapState, jax.Array]:
        if preds.ndim == 0:
            preds, target = preds[None], target[None]
        num_images = preds.shape[0]
        keep = jnp.ones(num_images, bool) if valid is None else valid
        counted = jnp.sum(keep).astype(jnp.int32)
        state = self.state
        default = ids is None
        if default:  # the valid images numbered on from the images seen
            ids = state.num_images + jnp.cumsum(keep.astype(jnp.int32)) - 1
        weights = self.replicate_weights(ids)  # (n, R)
        channel, _ = binary_channel(preds, target)
        keep = jnp.reshape(keep, (num_images,) + (1,) * (preds.ndim - 1))
        num_invalid = jnp.sum((channel < 0) & keep).astype(jnp.int32)
        channel = jnp.where(keep, channel, -1)
        if preds.ndim == 1:
            batch = self._weighted_samples(preds, channel, weights)
        else:
            batch = self._weighted_images(preds, channel, weights)
        new_state = BootstrapState(
            histogram=state.histogram.merge(batch),
            num_images=state.num_images + counted,
            default_ids=state.default_ids + (counted if default else 0),
        )
        return new_state, num_invalid

    def _weighted_samples(
        self, scores: jax.Array, channel: jax.Array, weights: jax.Array
    ) -> ScoreHistogram:
        """One sample per image: each replicate's counts are a weight channel of one histogram."""
        replicates = self.num_replicates
        # row 2r + c holds image i's weight in replicate r when its class is c
        # left-out samples (invalid, padding) weigh 0: the histogram drops them anyway, and a
        # zero adds nothing wherever it lands
        classes = jax.nn.one_hot(jnp.where(channel >= 0, channel, 2), 2, dtype=jnp.float32)
        rows = weights.astype(jnp.float32)[:, :, None] * classes[:, None, :]  # (n, R, 2)
        batch = self._histogram(2, 2 * replicates).add(
            scores, channel, rows.reshape(scores.shape[0], 2 * replicates).T
        )
        replicate_counts = jnp.round(batch.weights).astype(jnp.uint32)
        return self._with_counts(batch, batch.counts.lo, replicate_counts)

    def _weighted_images(
        self, scores: jax.Array, channel: jax.Array, weights: jax.Array
    ) -> ScoreHistogram:
        """Many samples per image: per-image histograms, then one product with the weights."""
        num_images = scores.shape[0]
        image = jnp.arange(num_images, dtype=jnp.int32).reshape((-1,) + (1,) * (scores.ndim - 1))
        image_channel = jnp.where(channel >= 0, 2 * image + channel, -1)
        batch = self._histogram(2 * num_images).add(scores, image_channel)
        per_image = batch.counts.lo.astype(jnp.int32).reshape(num_images, -1)  # (n, 2B)
        replicate_counts = jax.lax.dot_general(
            weights.T, per_image, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32
        )  # (R, 2B)
        num_bins = batch.num_bins
        point = jnp.sum(per_image.reshape(num_images, 2, num_bins), axis=0)
        return self._with_counts(
            batch,
            point.astype(jnp.uint32),
            replicate_counts.reshape(2 * self.num_replicates, num_bins).astype(jnp.uint32),
        )

    def _with_counts(
        self, batch: ScoreHistogram, point: jax.Array, replicates: jax.Array
    ) -> ScoreHistogram:
        """``batch``'s bins holding these counts (channels 0, 1, then the replicates')."""
        lo = jnp.concatenate([point.astype(jnp.uint32), replicates.astype(jnp.uint32)])
        return batch.replace(
            counts=WideCount(lo=lo, hi=jnp.zeros_like(lo)),
            weights=jnp.zeros((0, batch.num_bins), jnp.float32),
        )

    # -- compute ----------------------------------------------------------------------------------

    def _computes_on_host(self) -> bool:
        return True

    def _compute(self) -> BootstrapResult:
        replicates = self.num_replicates
        template = self.metric
        histogram = self.state.histogram
        counters = (self.num_updates, self.num_invalid)
        if not is_traced(*jax.tree_util.tree_leaves(self)):  # read on the host, numpy
            histogram, counters = jax.tree_util.tree_map(np.asarray, (histogram, counters))
        lo, hi = histogram.counts.lo, histogram.counts.hi

        def reader(lo: Any, hi: Any) -> ScoreCurveMetric:
            """The wrapped metric holding one channel pair of the histogram."""
            state = histogram.replace(counts=WideCount(lo=lo, hi=hi))
            return template._replace(state=state, num_updates=counters[0], num_invalid=counters[1])

        if isinstance(lo, jax.Array):  # traced
            value = reader(lo[:2], hi[:2]).compute()
            shape = (replicates, 2, lo.shape[-1])
            values = jax.vmap(lambda lo, hi: reader(lo, hi).compute())(
                lo[2:].reshape(shape), hi[2:].reshape(shape)
            )
            lower, upper = _percentile_interval(values, self.confidence)
            return BootstrapResult(value, lower, upper, values, confidence=self.confidence)
        value = reader(lo[:2], hi[:2]).compute()  # warns like the wrapped metric
        values = np.empty(replicates, np.float64)
        with warnings.catch_warnings():  # a replicate without one class is NaN: left out
            warnings.simplefilter("ignore")
            for r in range(replicates):
                rows = slice(2 + 2 * r, 4 + 2 * r)
                values[r] = float(reader(lo[rows], hi[rows]).compute())
        lower, upper = _percentile_interval(values, self.confidence)
        return BootstrapResult(
            jnp.asarray(value, jnp.float32),
            jnp.asarray(lower, jnp.float32),
            jnp.asarray(upper, jnp.float32),
            jnp.asarray(values, jnp.float32),
            confidence=self.confidence,
        )

    def __repr__(self) -> str:
        text = (
            f"Bootstrap({self.metric!r}, num_replicates={self.num_replicates}, seed={self.seed}, "
            f"confidence={self.confidence:g})"
        )
        full = super().__repr__()
        comment = full.find("  # ")
        return text + (full[comment:] if comment >= 0 else "")


@jax.jit
def _jitted_update(
    metric: Bootstrap,
    preds: jax.Array,
    target: jax.Array,
    ids: jax.Array | None,
    valid: jax.Array | None,
) -> Bootstrap:
    return metric._update_unchecked(preds, target, ids, valid)


def _with_prefix(config: tuple) -> tuple:
    """The wrapped metric's configuration with its ``prefix`` entry back, where Metric puts it."""
    entries = list(config)
    position = next(i for i, (key, _) in enumerate(entries) if key == "fields") + 1
    return (*entries[:position], ("prefix", ""), *entries[position:])


def _check_wrappable(metric: Any) -> None:
    if not isinstance(metric, Metric):
        raise TypeError(f"Bootstrap: expected a jaxmetrics_ad metric, got {type(metric).__name__}")
    name = type(metric).__name__
    if not isinstance(metric, ScoreCurveMetric) or isinstance(metric, BinaryPrecisionRecallCurve):
        raise TypeError(
            f"Bootstrap: {name} is not supported; wrap a binned AUROC, AUPR, F1Max or "
            "F1AdaptiveThreshold (a histogram of counts with a scalar value)"
        )
    if metric.is_exact:
        raise TypeError(
            f"Bootstrap: {name}(thresholds=None) keeps every sample; wrap a binned one "
            f"({name}(thresholds=1024), or explicit thresholds)"
        )
    if not is_traced(metric.num_updates) and int(np.max(np.asarray(metric.num_updates))) > 0:
        raise ValueError(f"Bootstrap: wrap an empty {name} (it holds {metric!r})")


def bootstrap_interval(
    metric: ScoreCurveMetric,
    *inputs: Any,
    num_replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """One-shot: ``Bootstrap(metric, ...)`` over these inputs alone (images numbered 0..n-1).

    Example:
        >>> import jaxmetrics_ad as jm
        >>> r = bootstrap_interval(jm.AUROC(thresholds=64), [0.1, 0.9, 0.2, 0.8], [0, 1, 0, 1],
        ...                        num_replicates=50)
        >>> float(r.value), r.replicates.shape  # replicates that drew one class only are NaN
        (1.0, (50,))
    """
    boot = Bootstrap(metric, num_replicates, seed=seed, confidence=confidence)
    return boot.update(*inputs).compute()


__all__: Sequence[str] = ("Bootstrap", "BootstrapResult", "BootstrapState", "bootstrap_interval")
