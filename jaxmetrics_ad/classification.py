"""Score-curve metrics: AUROC, AUPR, F1Max, F1AdaptiveThreshold, BinaryPrecisionRecallCurve, F1Score.

All of them read one state, chosen by ``thresholds`` (as in torchmetrics):

* ``None`` — **exact**: every sample is kept (:mod:`jaxmetrics_ad.buffer`) and compute sorts on the host
  with numpy (jit-able through ``jax.pure_callback``); equals scikit-learn to ~1e-12. Give
  ``capacity=`` to use it inside ``jax.jit``/``lax.scan``.
* an ``int`` — **binned**: an auto-ranging :class:`~jaxmetrics_ad.histogram.ScoreHistogram` of that many
  bins, plus the :data:`~jaxmetrics_ad.histogram.METRIC_TAIL_SIZE` highest and lowest scores kept
  exactly outside the bins (a few far outliers do not widen them: one pixel at 1e9 among scores in
  [0, 1.3] leaves AUROC where it was); fixed shapes, merges by addition and ``psum``, whatever the
  order. A bin (or a tail score) acts as a block of samples whose order
  inside is unknown, and every binned value reports a certified bound on its distance to the exact
  value (``thresholds=None``), ``error_bound()``: the extreme arrangements inside the blocks. For the
  ROC area it is ``0.5 Σ_b pos_b neg_b / (P N)`` (:meth:`AUROC.error_bound`); for AUPR and F1Max see
  :meth:`AUPR.error_bound` and :meth:`F1Max.error_bound`; F1Max and F1AdaptiveThreshold bound their
  threshold with ``threshold_bound()``. With :data:`DEFAULT_NUM_BINS` the measured AUROC error on
  realistic scores is below 1e-5.
* an array — binned at exactly those thresholds (a sample is positive when ``score >= threshold``).

Scores are never transformed: unlike torchmetrics and anomalib, no sigmoid is applied to scores
outside [0, 1] (theirs makes the result depend on how data is split into batches).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxmetrics_ad import numpy_updates
from jaxmetrics_ad.base import Metric, state_reader
from jaxmetrics_ad.buffer import ChunkedBuffer, FixedBuffer
from jaxmetrics_ad.counts import WideCount
from jaxmetrics_ad.curves import (
    ThresholdCounts,
    average_precision,
    average_precision_spread,
    best_f1,
    counts_from_cumulative,
    exact_counts,
    f1_upper_bounds,
    precision_recall,
    roc_auc,
    roc_curve,
)
from jaxmetrics_ad.histogram import METRIC_TAIL_SIZE, ScoreHistogram
from jaxmetrics_ad.host import on_host
from jaxmetrics_ad.validation import (
    as_array,
    binary_channel,
    check_binary,
    check_finite,
    check_same_shape,
    is_traced,
    per_sample,
)

DEFAULT_NUM_BINS = 16384
"""Bins of a binned metric built with ``thresholds=DEFAULT_NUM_BINS`` (what the CLI uses)."""

Thresholds = int | Sequence[float] | jax.Array | np.ndarray | None


def _checked_thresholds(thresholds: Thresholds) -> int | tuple[float, ...] | None:
    if thresholds is None:
        return None
    if isinstance(thresholds, (bool, np.bool_)):
        raise TypeError("thresholds: expected None, an int or a 1-D array, got a bool")
    if isinstance(thresholds, numbers.Integral) or (
        isinstance(thresholds, (np.ndarray, jax.Array))
        and thresholds.ndim == 0
        and np.issubdtype(thresholds.dtype, np.integer)
    ):
        if int(thresholds) < 3:
            raise ValueError(f"thresholds: expected at least 3 bins, got {int(thresholds)}")
        return int(thresholds)
    try:
        values = np.asarray(thresholds, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"thresholds: expected None, an int or a 1-D array of floats, got {thresholds!r}"
        ) from error
    if values.ndim == 0:
        raise TypeError(
            f"thresholds: expected None, an int (number of bins) or a 1-D array of thresholds, "
            f"got the single float {float(values)!r}; wrap it in a list for one threshold"
        )
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"thresholds: expected a non-empty 1-D array, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
        raise ValueError("thresholds: values must be finite and strictly increasing")
    as_float32 = values.astype(np.float32)
    if np.any(np.diff(as_float32) <= 0):
        raise ValueError("thresholds: values must stay distinct in float32 (scores are float32)")
    return tuple(float(v) for v in as_float32)


def _checked_capacity(capacity: int | None, thresholds: object) -> int | None:
    """``capacity`` as an int (numpy ints accepted); it only applies to exact mode."""
    if capacity is None:
        return None
    if thresholds is not None:
        raise ValueError(
            f"capacity={capacity!r} applies to exact mode only (thresholds=None); a binned metric "
            "(thresholds given) has a fixed-size state already"
        )
    if isinstance(capacity, (bool, np.bool_)) or not isinstance(capacity, numbers.Integral):
        raise TypeError(
            f"capacity: expected a positive int (number of samples) or None, got {capacity!r}"
        )
    if int(capacity) < 1:
        raise ValueError(
            f"capacity: expected a positive int (number of samples), got {int(capacity)}"
        )
    return int(capacity)


def _warn_one_class(name: str, num_positives: float, num_negatives: float, consequence: str):
    if num_positives == 0 or num_negatives == 0:
        missing = "positive" if num_positives == 0 else "negative"
        warnings.warn(f"{name}: no {missing} sample; {consequence}", UserWarning, stacklevel=4)


def _rounding_margin(size: int, unit: float) -> float:
    """A stated allowance for the float rounding of a bound and of the value it is compared with.

    Each per-threshold term of the readers takes a handful of operations (relative error a few
    ``unit``) and, scaled, is at most its share of the positives; sums are pairwise (``log2`` depth
    each, the value's and the bound's). ``unit`` is 2**-53 on the host (float64) and 2**-24 inside
    jit (float32, where counts are exact integers below 2**24 samples).
    """
    return (16 + 2 * max(1, int(size) - 1).bit_length()) * unit


_HOST_UNIT, _TRACED_UNIT = 2.0**-53, 2.0**-24
_F1_ROUNDING = 16
"""F1 at a threshold takes a handful of roundings (relative error a few units, F1 <= 1): the value
and an upper bound evaluated by the same formula differ from the exact ones by less than 16 units."""


def _rounded_up(bound: Any) -> jax.Array:
    """A float64 bound as the float32 at or above it (NaN stays NaN)."""
    bound = np.float64(bound)
    single = np.float32(bound)
    if single < bound:
        single = np.nextafter(single, np.float32(np.inf))
    return jax.device_put(np.asarray(single, np.float32))  # no eager XLA op to compile


def _returned(value: Any) -> np.float64:
    """A host (float64) value as ``compute`` returns it: rounded to float32."""
    return np.float64(np.float32(value))


def _block_counts(counts: ThresholdCounts) -> tuple[Any, Any]:
    """Positives and negatives of each block (between consecutive thresholds) of ``counts``."""
    return counts.tp_ge - counts.tp_gt, counts.fp_ge - counts.fp_gt


class ScoreCurveMetric(Metric):
    """Base of the metrics that read a curve over score thresholds (see the module docstring).

    Example:
        >>> import jaxmetrics_ad as jm
        >>> m = jm.AUROC(thresholds=256).update([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        >>> m.threshold_counts().num_positives.item()
        2.0
    """

    one_class_consequence: ClassVar[str] = "the value is undefined"
    masks_samples = True

    def __init__(
        self,
        thresholds: Thresholds = None,
        *,
        capacity: int | None = None,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        super().__init__(
            fields=fields,
            prefix=prefix,
            strict=strict,
            thresholds=_checked_thresholds(thresholds),
            capacity=_checked_capacity(capacity, thresholds),
        )

    @property
    def is_exact(self) -> bool:
        """True when the metric keeps every sample (``thresholds=None``)."""
        return self.thresholds is None

    def _empty_state(self) -> Any:
        if self.thresholds is None:
            if self.capacity is None:
                return ChunkedBuffer.empty()
            return FixedBuffer.empty(self.capacity)
        if isinstance(self.thresholds, int):
            return ScoreHistogram.auto(self.thresholds, num_channels=2, tail_size=METRIC_TAIL_SIZE)
        return ScoreHistogram.fixed(self.thresholds, num_channels=2)

    def _check_inputs(self, preds: jax.Array, target: jax.Array) -> None:
        scores_field, target_field = self.fields
        check_same_shape(preds, scores_field, target, target_field)
        check_finite(preds, scores_field)
        check_binary(target, target_field)
        if isinstance(self.state, FixedBuffer):
            self.state.check_room(preds.size)

    def _update_state(self, preds: jax.Array, target: jax.Array, valid: jax.Array | None = None):
        channel, num_invalid = binary_channel(preds, target, per_sample(valid, preds.shape))
        return self.state.add(preds, channel), num_invalid

    def _updates_in_numpy(self) -> bool:
        return (
            isinstance(self.state, (ScoreHistogram, FixedBuffer))
            and type(self)._update_state is ScoreCurveMetric._update_state
            and self.state.weights.shape[0] == 0
        )

    def _update_state_in_numpy(self, preds: np.ndarray, target: np.ndarray):
        channel, num_invalid = numpy_updates.binary_channel(preds, target)
        if isinstance(self.state, FixedBuffer):
            return numpy_updates.fixed_buffer_add(self.state, preds, channel), num_invalid
        return numpy_updates.histogram_add(self.state, preds, channel), num_invalid

    @state_reader
    def threshold_counts(self, at: str = "positives") -> ThresholdCounts:
        """The counts every reader uses: numpy float64 (exact, eager only) or jax float32 (binned)."""
        if not self.is_exact:
            if is_traced(*jax.tree_util.tree_leaves(self.state)):
                thresholds, counts, _ = self.state.cumulative()
            else:  # numpy, float64: no compile (see Metric._computes_on_host)
                thresholds, counts, _ = self.state.cumulative_on_host()
            return counts_from_cumulative(thresholds, counts[1], counts[0])
        if is_traced(*jax.tree_util.tree_leaves(self.state)):
            raise TypeError(
                f"{self.name}: exact curves have a data-dependent length; "
                "use binned thresholds=<int> inside jit"
            )
        scores, channels = self._host_samples()
        return exact_counts(scores, channels, at=at)

    def _host_samples(self) -> tuple[np.ndarray, np.ndarray]:
        if bool(self.state.overflowed()):
            raise ValueError(f"{self.name}: more samples were added than capacity={self.capacity}")
        scores, channels, _ = self.state.arrays()
        scores, channels = np.asarray(scores), np.asarray(channels)
        keep = channels >= 0
        return scores[keep], channels[keep]

    def _scalar(self, reader: Callable[[ThresholdCounts], Any]) -> jax.Array:
        """``reader`` applied to the counts: in jax for binned, on the host (float64) for exact."""
        if not self.is_exact:
            return reader(self.threshold_counts())
        scores, channels, _ = self.state.arrays()

        def host(scores: np.ndarray, channels: np.ndarray) -> np.ndarray:
            keep = channels >= 0
            return np.float32(reader(exact_counts(scores[keep], channels[keep])))

        if not is_traced(scores, channels):  # numpy: no eager XLA op to compile
            value = host(np.asarray(scores), np.asarray(channels))
            return np.float32(np.nan) if bool(self.state.overflowed()) else value
        value = on_host(host, jax.ShapeDtypeStruct((), jnp.float32), scores, channels)
        return jnp.where(self.state.overflowed(), jnp.nan, value)

    def _computes_on_host(self) -> bool:
        return True

    def _best_f1(self, index: int) -> jax.Array:
        """Entry ``index`` of (F1 maximum, lowest threshold attaining it), read from the state.

        Given thresholds follow anomalib: exactly those thresholds are the candidates (not the open
        bin below the first), empty bins included. Exact and auto-ranging states skip thresholds
        where no sample lies, so the threshold is a score (exact) or the lower edge of its bin.
        """
        if self.is_exact or isinstance(self.thresholds, int):
            return self._scalar(lambda counts: best_f1(counts)[index])
        return self._binned_best_f1(self.threshold_counts())[index]

    def _binned_best_f1(self, counts: ThresholdCounts) -> tuple[Any, Any]:
        """(F1 maximum, its threshold) of binned ``counts``, as :meth:`_best_f1` computes them."""
        if isinstance(self.thresholds, int):
            return best_f1(counts)
        candidates = ThresholdCounts(*(field[:-1] for field in counts[:5]), *counts[5:])
        return best_f1(candidates, every_threshold=True)

    def _f1_threshold_interval(self, counts: ThresholdCounts, value: Any) -> tuple[Any, Any]:
        """``[low, high]`` holding the exact (``thresholds=None``) F1-maximising threshold.

        The exact maximum is at least the binned ``value`` and sits at a positive's score, so its
        block has a positive and an F1 upper bound (:func:`~jaxmetrics_ad.curves.f1_upper_bounds`) of
        at least ``value``: the interval spans every such block, from its lower threshold to the
        threshold above it (the highest score for the top block; the lowest score replaces the
        ``-inf`` of the open bin below given thresholds). (inf, -inf) when no block qualifies.
        """
        host = isinstance(counts.tp_ge, np.ndarray)
        xp = np if host else jnp
        margin = _F1_ROUNDING * (_HOST_UNIT if host else _TRACED_UNIT)
        candidate = f1_upper_bounds(counts) + margin >= value
        score_min = getattr(self.state, "score_min", -np.inf)
        score_max = getattr(self.state, "score_max", np.inf)
        if host:
            score_min, score_max = np.float64(score_min), np.float64(score_max)
        thresholds = xp.asarray(counts.thresholds, counts.tp_ge.dtype)
        lower = xp.where(xp.isneginf(thresholds), score_min, thresholds)
        upper = xp.concatenate(
            [xp.reshape(xp.asarray(score_max, thresholds.dtype), (1,)), thresholds[:-1]]
        )
        low = xp.min(xp.where(candidate, lower, xp.inf), initial=np.inf)
        high = xp.max(xp.where(candidate, upper, -xp.inf), initial=-np.inf)
        return low, high

    def _threshold_bound_from(self, counts: ThresholdCounts, threshold: Any, low: Any, high: Any):
        """``max(threshold − low, high − threshold)`` rounded up to float32; NaN if low > high."""
        if isinstance(counts.tp_ge, np.ndarray):
            threshold = np.float64(np.asarray(threshold))
            with np.errstate(invalid="ignore"):
                bound = np.maximum(threshold - low, high - threshold)
            return _rounded_up(np.where(low <= high, bound, np.nan))
        threshold = jnp.asarray(threshold, jnp.float32)
        bound = jnp.maximum(threshold - low, high - threshold) * (1 + 4 * _TRACED_UNIT)
        return jnp.where(low <= high, bound, jnp.nan)

    def _check_state(self) -> None:
        if self.is_exact:
            _, channels = self._host_samples()
            positives, negatives = int(np.sum(channels == 1)), int(np.sum(channels == 0))
        else:
            negatives, positives = (float(t) for t in self.state.total_counts())
        _warn_one_class(self.name, positives, negatives, self.one_class_consequence)


class AUROC(ScoreCurveMetric):
    """Area under the ROC curve (equals scikit-learn's ``roc_auc_score`` in exact mode).

    One class only: NaN with a warning (anomalib returns 0.0; the area is undefined).

    Example:
        >>> import jaxmetrics_ad as jm
        >>> float(jm.AUROC()([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]))
        0.75
    """

    one_class_consequence = "AUROC is undefined (NaN)"

    def _compute(self) -> jax.Array:
        return self._scalar(roc_auc)

    @state_reader
    def curve(self) -> tuple[jax.Array, jax.Array]:
        """(fpr, tpr) points of the ROC curve from (0, 0) to (1, 1), for plotting (eager for exact).

        Example:
            >>> import jaxmetrics_ad as jm
            >>> fpr, tpr = jm.AUROC().update([0.1, 0.9], [0, 1]).curve()
            >>> fpr.tolist(), tpr.tolist()
            ([0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0])
        """
        fpr, tpr = roc_curve(self.threshold_counts())
        return jnp.asarray(fpr, jnp.float32), jnp.asarray(tpr, jnp.float32)

    @state_reader
    def error_bound(self) -> jax.Array:
        """An upper bound on |binned AUROC − exact AUROC|: ``0.5 Σ_b pos_b neg_b / (P N)``; 0 if exact.

        Pairs of a positive and a negative in the same block (between consecutive thresholds of
        :meth:`threshold_counts`) count 1/2 in the binned area and 0, 1/2 or 1 in the exact one, so
        this bound always holds.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> float(jm.AUROC(thresholds=64).update([0.0, 1.0, 0.5], [0, 1, 0]).error_bound())
            0.0
        """
        if self.is_exact:
            return jnp.zeros((), jnp.float32)
        counts = self.threshold_counts()
        positives, negatives = _block_counts(counts)
        pairs = counts.num_positives * counts.num_negatives
        if isinstance(counts.tp_ge, np.ndarray):
            with np.errstate(invalid="ignore", divide="ignore"):
                bound = 0.5 * np.sum(positives * negatives) / pairs
            return jax.device_put(np.asarray(bound, np.float32))  # no eager XLA op to compile
        return 0.5 * jnp.sum(positives * negatives) / pairs


class AUPR(ScoreCurveMetric):
    """Area under the precision-recall curve as step-wise average precision.

    Equals scikit-learn's ``average_precision_score`` and anomalib 2.7's AUPR (anomalib ≤ 2.6 used a
    trapezoid instead). No positive sample: NaN with a warning.

    Example:
        >>> import jaxmetrics_ad as jm
        >>> round(float(jm.AUPR()([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])), 4)
        0.8333
    """

    one_class_consequence = "AUPR is NaN without positives, 1 without negatives"

    def _compute(self) -> jax.Array:
        return self._scalar(average_precision)

    @state_reader
    def curve(self) -> tuple[jax.Array, jax.Array]:
        """(recall, precision) at each threshold, for plotting (eager for exact)."""
        precision, recall = precision_recall(self.threshold_counts(at="all"))
        return jnp.asarray(recall, jnp.float32), jnp.asarray(precision, jnp.float32)

    @state_reader
    def error_bound(self) -> jax.Array:
        """A certified bound on |binned AUPR − exact AUPR| (exact: ``thresholds=None``); 0 if exact.

        Each block of samples between consecutive thresholds is read as one tie; the exact order
        inside it is unknown. Over every arrangement inside the blocks — distinct scores or ties,
        scored as scikit-learn does (one step per distinct score) — the exact AP lies in
        ``[AP − below, AP + above]`` (:func:`~jaxmetrics_ad.curves.average_precision_spread` has
        the closed forms and the proof): *above* is reached when each block's positives tie at its
        top, *below* when its negatives all come first. The bound is
        ``max(above, below)`` plus the float32 rounding of the returned value; eagerly the sums are
        float64 and the bound is rounded up to a float32; inside jit they are float32 and a stated
        margin of ``(16 + 2 ceil(log2 T))·2⁻²⁴`` is added (T thresholds; ~2.6e-6 for 16384 bins;
        counts exact below 2**24 samples). NaN without positives.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> scores, labels = [0.1, 0.4, 0.35, 0.8, 0.31], [0, 0, 1, 1, 0]
            >>> binned = jm.AUPR(thresholds=[0.0, 0.3, 0.6]).update(scores, labels)
            >>> exact = float(jm.AUPR()(scores, labels))
            >>> import warnings
            >>> with warnings.catch_warnings(record=True) as caught:  # 4 bins: a loose bound warns
            ...     # (few samples in auto-ranging bins would sit in the exact tails: bound 0)
            ...     warnings.simplefilter("always")
            ...     value = float(binned.compute())
            >>> bound = float(binned.error_bound())
            >>> round(value, 4), round(exact, 4), round(bound, 4), abs(value - exact) <= bound
            (0.75, 0.8333, 0.25, True)
            >>> "may be off by up to 0.25" in str(caught[0].message)
            True
        """
        if self.is_exact:
            return jnp.zeros((), jnp.float32)
        counts = self.threshold_counts()
        below, above, truncation = average_precision_spread(counts)
        size = counts.tp_ge.shape[0]
        if isinstance(counts.tp_ge, np.ndarray):
            with np.errstate(divide="ignore", invalid="ignore"):  # no positive: NaN, said once
                value = average_precision(counts)
            shift = value - _returned(value)  # compute() returns float32
            bound = np.maximum(above + shift, below - shift)
            bound = bound + truncation + _rounding_margin(size, _HOST_UNIT)
            return _rounded_up(np.where(counts.num_positives > 0, bound, np.nan))
        bound = jnp.maximum(below, above) + truncation + _rounding_margin(size, _TRACED_UNIT)
        return jnp.where(counts.num_positives > 0, bound, jnp.nan)


class F1Max(ScoreCurveMetric):
    """The maximum F1 over all thresholds; :meth:`threshold` gives the (lowest) threshold attaining it.

    F1 uses anomalib's ``2PR / (P + R + 1e-10)``; a sample is positive when ``score >= threshold``.

    Example:
        >>> import jaxmetrics_ad as jm
        >>> m = jm.F1Max().update([0.1, 0.5, 0.9, 0.1], [0, 1, 1, 1])
        >>> round(float(m.compute()), 4), round(float(m.threshold()), 4)
        (0.8571, 0.1)
    """

    one_class_consequence = "F1Max is 0 without positives, 1 without negatives"

    def _compute(self) -> jax.Array:
        return self._best_f1(0)

    @state_reader
    def threshold(self) -> jax.Array:
        """The lowest threshold at which F1 reaches its maximum (NaN without positives)."""
        return self._best_f1(1)

    @state_reader
    def error_bound(self) -> jax.Array:
        """A certified bound on |binned F1Max − exact F1Max| (exact: ``thresholds=None``); 0 if exact.

        A binned candidate threshold is a real threshold, so binned F1Max <= exact F1Max. The exact
        maximum sits at a threshold inside some block (between consecutive thresholds) holding a
        positive; there F1 is at most F1 with all of that block's positives and none of its
        negatives added to the counts above it (:func:`~jaxmetrics_ad.curves.f1_upper_bounds`;
        anomalib's ``2PR/(P+R+1e-10)`` is monotone in P and R too, so the 1e-10 keeps the
        direction). The bound is ``max_j UB_j − F1Max``, plus the float32 rounding of the returned
        value (eagerly: float64, rounded up to a float32; inside jit: float32 plus 16·2⁻²⁴ for
        the rounding of the F1 formula).

        With given thresholds the value is anomalib's F1Max at exactly those thresholds, computed
        without error; the bound still measures the distance to the exact (every-score) F1Max,
        the open bin below the first threshold included.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> scores, labels = [0.1, 0.5, 0.9, 0.12, 0.3, 0.32], [0, 1, 1, 1, 0, 1]
            >>> binned = jm.F1Max(thresholds=[0.0, 0.25, 0.5, 0.75]).update(scores, labels)
            >>> exact = float(jm.F1Max()(scores, labels))
            >>> import warnings
            >>> with warnings.catch_warnings():  # 4 bins: the loose bound warns
            ...     warnings.simplefilter("ignore")
            ...     value = float(binned.compute())
            >>> bound = float(binned.error_bound())  # reached: exact − binned = 0.0889
            >>> round(value, 4), round(exact, 4), round(bound, 4), value <= exact <= value + bound
            (0.8, 0.8889, 0.0889, True)
        """
        if self.is_exact:
            return jnp.zeros((), jnp.float32)
        counts = self.threshold_counts()
        with np.errstate(divide="ignore", invalid="ignore"):  # one class: said once, by compute
            value = self._binned_best_f1(counts)[0]
            upper = f1_upper_bounds(counts)
        if isinstance(counts.tp_ge, np.ndarray):
            upper = np.max(upper, initial=0.0)
            returned = _returned(value)
            bound = max(upper - returned, returned - value, 0.0)
            return _rounded_up(bound + _F1_ROUNDING * _HOST_UNIT)
        upper = jnp.max(upper, initial=0.0)
        return jnp.maximum(upper - value, 0.0) + _F1_ROUNDING * _TRACED_UNIT

    @state_reader
    def threshold_bound(self) -> jax.Array:
        """A certified bound on |binned threshold − exact threshold|, in score units; 0 if exact.

        The exact threshold (the lowest score attaining the exact F1Max) lies in a block holding a
        positive whose F1 upper bound (see :meth:`error_bound`) reaches the binned F1Max; the
        bound is the farthest edge of those blocks from :meth:`threshold` (the highest / lowest
        score stands in for the open ends). NaN without positives (no threshold is defined).
        Not compared with ``LOOSE_BOUND``: it is in score units.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> scores, labels = [0.1, 0.5, 0.9, 0.12, 0.3, 0.32], [0, 1, 1, 1, 0, 1]
            >>> binned = jm.F1Max(thresholds=[0.0, 0.25, 0.5, 0.75]).update(scores, labels)
            >>> exact = float(jm.F1Max().update(scores, labels).threshold())
            >>> threshold, bound = float(binned.threshold()), float(binned.threshold_bound())
            >>> threshold, round(exact, 4), bound, abs(threshold - exact) <= bound
            (0.0, 0.12, 0.5, True)
        """
        if self.is_exact:
            return jnp.zeros((), jnp.float32)
        counts = self.threshold_counts()
        with np.errstate(divide="ignore", invalid="ignore"):
            value, threshold = self._binned_best_f1(counts)
            low, high = self._f1_threshold_interval(counts, value)
        return self._threshold_bound_from(counts, threshold, low, high)


class F1AdaptiveThreshold(ScoreCurveMetric):
    """The threshold that maximises F1 (the lowest one on ties), anomalib's adaptive threshold.

    With no positive sample it falls back to the highest score, with no negative sample to the lowest
    score (a warning says so when computed eagerly); with given thresholds, to the highest / lowest
    of them, and the candidates are exactly those thresholds, as in anomalib.

    Example:
        >>> import jaxmetrics_ad as jm
        >>> float(jm.F1AdaptiveThreshold()([2.3, 1.6, 2.6, 7.9, 3.3], [0, 0, 0, 1, 1]))
        3.299999952316284
    """

    one_class_consequence = (
        "the threshold falls back to the highest (no positive) or lowest (no negative) score"
    )

    def _compute(self) -> jax.Array:
        threshold = self._best_f1(1)
        lowest, highest, has_negatives, has_positives = self._score_range_and_classes()
        overflowed = self._overflowed()
        parts = (threshold, lowest, highest, has_negatives, has_positives, overflowed)
        xp = jnp if is_traced(*parts) else np  # numpy: no eager XLA op to compile
        threshold = xp.where(has_positives, threshold, highest)
        threshold = xp.where(has_negatives, threshold, lowest)
        # the fallbacks above must not hide a value that is undefined for another reason
        return xp.where(overflowed, np.float32(np.nan), threshold).astype(np.float32)

    @state_reader
    def threshold_bound(self) -> jax.Array:
        """A certified bound on |binned value − exact value| in score units; 0 if exact.

        With both classes, as :meth:`F1Max.threshold_bound`; with one class the exact fallback is
        the highest (no positive) or lowest (no negative) score, kept exactly by the state, so the
        bound is the distance of this value to it (0 for auto-ranging bins; for given thresholds,
        which fall back to the highest / lowest threshold as anomalib does, that distance).

        Example:
            >>> import jaxmetrics_ad as jm
            >>> scores, labels = [2.3, 1.6, 2.6, 7.9, 3.3], [0, 0, 0, 1, 1]
            >>> binned = jm.F1AdaptiveThreshold(thresholds=[1.0, 3.0, 5.0, 7.0]).update(scores, labels)
            >>> value, bound = float(binned.compute()), float(binned.threshold_bound())
            >>> value, bound, abs(value - 3.3) <= bound
            (3.0, 2.0, True)
        """
        if self.is_exact:
            return jnp.zeros((), jnp.float32)
        counts = self.threshold_counts()
        with np.errstate(divide="ignore", invalid="ignore"):
            value = self._binned_best_f1(counts)[0]
            low, high = self._f1_threshold_interval(counts, value)
            threshold = self._compute()
        xp = np if isinstance(counts.tp_ge, np.ndarray) else jnp
        lowest, highest = self.state.score_min, self.state.score_max
        if xp is np:
            lowest, highest = np.float64(lowest), np.float64(highest)
        for missing, fallback in (
            (counts.num_positives == 0, highest),
            (counts.num_negatives == 0, lowest),
        ):
            low = xp.where(missing, fallback, low)
            high = xp.where(missing, fallback, high)
        return self._threshold_bound_from(counts, threshold, low, high)

    def _overflowed(self) -> jax.Array:
        return self.state.overflowed() if self.is_exact else jnp.array(False)

    def _score_range_and_classes(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Lowest and highest score and whether a negative / a positive was seen, without a sort."""
        if not self.is_exact:
            negatives, positives = self.state.total_counts()  # tails included
            if self.state.edges is not None:  # anomalib: the lowest / highest given threshold
                lowest, highest = (jnp.float32(self.state.edges[i]) for i in (0, -1))
            else:
                lowest, highest = self.state.score_min, self.state.score_max
            return lowest, highest, negatives > 0, positives > 0
        scores, channels, _ = self.state.arrays()
        xp = jnp if is_traced(scores, channels) else np  # numpy: no eager XLA op to compile
        scores, channels = xp.asarray(scores), xp.asarray(channels)
        kept = channels >= 0
        return (
            xp.min(xp.where(kept, scores, np.float32(np.inf)), initial=np.float32(np.inf)),
            xp.max(xp.where(kept, scores, np.float32(-np.inf)), initial=np.float32(-np.inf)),
            xp.any(channels == 0),
            xp.any(channels == 1),
        )


class BinaryPrecisionRecallCurve(ScoreCurveMetric):
    """Precision, recall and thresholds (ascending), torchmetrics' layout, never a sigmoid.

    ``compute`` returns ``(precision, recall, thresholds)``: precision and recall have one more entry
    than thresholds, the final point (P=1, R=0). Exact mode uses every distinct score as a threshold
    (eager only: the length depends on the data); binned mode one threshold per bin, with precision
    NaN where nothing is predicted positive. No positive sample: recall is 1 with a warning.

    Example:
        >>> import jaxmetrics_ad as jm
        >>> p, r, t = jm.BinaryPrecisionRecallCurve()([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        >>> [round(v, 3) for v in p.tolist()], r.tolist()
        ([0.5, 0.667, 0.5, 1.0, 1.0], [1.0, 1.0, 0.5, 0.5, 0.0])
    """

    one_class_consequence = "recall is set to 1 where undefined (no positive), as in torchmetrics"

    def _compute(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        counts = self.threshold_counts(at="all")
        precision, recall = precision_recall(counts)
        xp = np if isinstance(counts.tp_ge, np.ndarray) else jnp
        recall = xp.where(counts.num_positives > 0, recall, 1.0)
        thresholds = counts.thresholds
        if not self.is_exact and self.state.edges is not None:
            # drop the open bin below the first threshold
            precision, recall, thresholds = precision[:-1], recall[:-1], thresholds[:-1]
        precision = jnp.concatenate([jnp.asarray(precision[::-1], jnp.float32), jnp.ones(1)])
        recall = jnp.concatenate([jnp.asarray(recall[::-1], jnp.float32), jnp.zeros(1)])
        return precision, recall, jnp.asarray(thresholds[::-1], jnp.float32)


class F1Score(Metric):
    """F1 of predicted labels: float scores become ``score >= threshold``; int/bool inputs are labels.

    ``>=`` is the rule of every metric here (a sample is positive when it scores at or above the
    threshold), so ``F1Score(threshold=F1AdaptiveThreshold's value)`` reproduces F1Max; anomalib and
    torchmetrics binarise with ``>``.

    Zero division (no positive predicted or present) gives 0, as in torchmetrics.

    Example:
        >>> import jaxmetrics_ad as jm
        >>> float(jm.F1Score()([0, 0, 1, 1], [0, 1, 1, 1]))  # 2 TP, 0 FP, 1 FN
        0.800000011920929
    """

    default_fields = ("pred_label", "gt_label")
    masks_samples = True

    def __init__(
        self,
        threshold: float = 0.5,
        *,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real):
            raise TypeError(f"threshold: expected a finite float, got {threshold!r}")
        if not np.isfinite(float(threshold)):
            raise ValueError(f"threshold: expected a finite float, got {float(threshold)}")
        super().__init__(fields=fields, prefix=prefix, strict=strict, threshold=float(threshold))

    def _empty_state(self) -> WideCount:
        return WideCount.zeros((3,))  # true positives, false positives, false negatives

    def _check_inputs(self, preds: jax.Array, target: jax.Array) -> None:
        preds_field, target_field = self.fields
        check_same_shape(preds, preds_field, target, target_field)
        check_binary(target, target_field)
        if jnp.issubdtype(preds.dtype, jnp.floating):
            check_finite(preds, preds_field)
        else:
            check_binary(preds, preds_field)

    def _update_state(self, preds: jax.Array, target: jax.Array, valid: jax.Array | None = None):
        keep = per_sample(valid, preds.shape)
        keep = jnp.ones(preds.shape, bool) if keep is None else keep
        if jnp.issubdtype(preds.dtype, jnp.floating):
            predicted = preds >= self.threshold
            valid_preds = jnp.isfinite(preds)
        else:
            predicted = preds == 1
            valid_preds = (preds == 0) | (preds == 1)
        valid = valid_preds & ((target == 0) | (target == 1)) & keep
        actual = target == 1
        counts = jnp.stack(
            [
                jnp.sum(valid & predicted & actual),
                jnp.sum(valid & predicted & ~actual),
                jnp.sum(valid & ~predicted & actual),
            ]
        ).astype(jnp.int32)
        return self.state.add(counts), jnp.sum(~valid & keep).astype(jnp.int32)

    def _compute(self) -> jax.Array:
        true_pos, false_pos, false_neg = self.state.as_float()
        denominator = 2 * true_pos + false_pos + false_neg
        return jnp.where(denominator > 0, 2 * true_pos / jnp.maximum(denominator, 1), 0.0)


def binned_pr_curve(
    scores: jax.Array, labels: jax.Array, thresholds: int | Sequence[float] = DEFAULT_NUM_BINS
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Binned (precision, recall, thresholds) of one score set, thresholds ascending; vmap-able.

    Pure jax with fixed output shapes, so ``jax.vmap`` gives one curve per row (per image, per
    category). Precision is NaN where nothing is predicted positive; recall NaN without positives.
    NaN/inf scores or labels outside {0, 1} raise ValueError eagerly; inside jit/vmap they make
    that row's whole curve NaN.
    With an int, each row gets its own auto-ranging bins.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> scores = jnp.array([[0.1, 0.9, 0.8], [0.7, 0.2, 0.3]])
        >>> labels = jnp.array([[0, 1, 1], [1, 0, 0]])
        >>> p, r, t = jax.vmap(lambda s, y: binned_pr_curve(s, y, jnp.array([0.5])))(scores, labels)
        >>> p.tolist(), r.tolist()
        ([[1.0], [1.0]], [[1.0], [1.0]])
    """
    if isinstance(thresholds, int):
        histogram = ScoreHistogram.auto(thresholds, num_channels=2)
    else:
        histogram = ScoreHistogram.fixed(np.asarray(thresholds), num_channels=2)
    scores, labels = as_array(scores, "scores"), as_array(labels, "labels")
    check_same_shape(scores, "scores", labels, "labels")
    check_finite(scores, "scores")
    check_binary(labels, "labels")
    channel, num_invalid = binary_channel(scores.astype(jnp.float32), labels)
    histogram = histogram.add(scores, channel)
    edges, counts, _ = histogram.cumulative()
    precision, recall = precision_recall(counts_from_cumulative(edges, counts[1], counts[0]))
    # inside jit invalid samples cannot raise: the whole curve is NaN rather than silently short
    precision = jnp.where(num_invalid > 0, jnp.nan, precision)
    recall = jnp.where(num_invalid > 0, jnp.nan, recall)
    if histogram.edges is not None:
        precision, recall, edges = precision[:-1], recall[:-1], edges[:-1]
    return precision[::-1], recall[::-1], edges[::-1]
