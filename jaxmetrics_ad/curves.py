"""Curve readers: ROC area, average precision and F1 from counts at descending thresholds.

Every classification curve here is read from one primitive, :class:`ThresholdCounts`: for thresholds
``t_0 > t_1 > ...`` the number of positives and negatives scoring ``>= t_j`` and ``> t_j``. Binned
metrics get it from a :class:`~jaxmetrics_ad.histogram.ScoreHistogram` (bins act as tie blocks), exact
metrics from one sort on the host (:func:`exact_counts`). The readers accept numpy (float64, exact mode)
or jax arrays (float32, binned mode, jit-able) and use the matching array module.

Edge cases live here, once: with no positive or no negative sample the ROC area is undefined (NaN);
with no positive the average precision is undefined (NaN).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

Array = Any  # a numpy or jax array; readers keep the kind they are given

# anomalib's F1 adds this to the denominator; keeping it reproduces its ties exactly.
F1_EPSILON = 1e-10


def _xp(array: Array):
    return np if isinstance(array, np.ndarray) else jnp


class ThresholdCounts(NamedTuple):
    """Positives and negatives at or above (``ge``) and strictly above (``gt``) each threshold.

    ``thresholds`` descend; the last entry of ``tp_ge``/``fp_ge`` need not be the totals, which are
    given separately, because exact counts keep only the thresholds where a positive sits.
    """

    thresholds: Array
    tp_ge: Array
    fp_ge: Array
    tp_gt: Array
    fp_gt: Array
    num_positives: Array
    num_negatives: Array


def counts_from_cumulative(thresholds: Array, positives_ge: Array, negatives_ge: Array):
    """ThresholdCounts from cumulative counts of every bin (the binned case: bins are tie blocks).

    Example:
        >>> import numpy as np
        >>> c = counts_from_cumulative(np.array([2.0, 1.0]), np.array([1.0, 1.0]), np.array([0.0, 1.0]))
        >>> float(roc_auc(c))
        1.0
    """
    xp = _xp(positives_ge)
    zero = xp.zeros((1,), positives_ge.dtype)
    return ThresholdCounts(
        thresholds=thresholds,
        tp_ge=positives_ge,
        fp_ge=negatives_ge,
        tp_gt=xp.concatenate([zero, positives_ge[:-1]]),
        fp_gt=xp.concatenate([zero, negatives_ge[:-1]]),
        num_positives=positives_ge[-1],
        num_negatives=negatives_ge[-1],
    )


def exact_counts(scores: np.ndarray, labels: np.ndarray, at: str = "positives") -> ThresholdCounts:
    """Exact ThresholdCounts by sorting on the host (numpy, float64 results).

    ``at="positives"`` keeps only the distinct scores of positive samples as thresholds: the ROC area,
    average precision and F1 maximum only change there, and it is much cheaper than one threshold per
    distinct score when positives are rare (pixels). ``at="all"`` keeps every distinct score (full
    curves). numpy's sort is used because it measures ~30x faster than XLA's on CPU.

    Example:
        >>> import numpy as np
        >>> c = exact_counts(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
        >>> c.thresholds.tolist(), c.tp_ge.tolist(), c.fp_ge.tolist()
        ([0.800000011920929, 0.3499999940395355], [1.0, 2.0], [0.0, 1.0])
    """
    scores = np.asarray(scores, np.float32)
    is_positive = np.asarray(labels) == 1
    positives = np.sort(scores[is_positive])
    negatives = np.sort(scores[~is_positive])
    source = positives if at == "positives" else np.sort(scores)
    thresholds = (
        source[np.concatenate([source[1:] != source[:-1], [True]])][::-1] if len(source) else source
    )

    def at_or_above(values: np.ndarray, side: str) -> np.ndarray:
        return (len(values) - np.searchsorted(values, thresholds, side=side)).astype(np.float64)

    return ThresholdCounts(
        thresholds=thresholds,
        tp_ge=at_or_above(positives, "left"),
        fp_ge=at_or_above(negatives, "left"),
        tp_gt=at_or_above(positives, "right"),
        fp_gt=at_or_above(negatives, "right"),
        num_positives=np.float64(len(positives)),
        num_negatives=np.float64(len(negatives)),
    )


def roc_curve(counts: ThresholdCounts) -> tuple[Array, Array]:
    """(fpr, tpr) points of the ROC curve from (0, 0) to (1, 1), ties drawn as diagonal segments.

    Example:
        >>> import numpy as np
        >>> fpr, tpr = roc_curve(exact_counts(np.array([0.1, 0.9]), np.array([0, 1])))
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0])
    """
    xp = _xp(counts.tp_ge)
    zero = xp.zeros((1,), counts.tp_ge.dtype)
    fp = xp.stack([counts.fp_gt, counts.fp_ge], axis=-1).reshape(-1)
    tp = xp.stack([counts.tp_gt, counts.tp_ge], axis=-1).reshape(-1)
    fp = xp.concatenate([zero, fp, counts.num_negatives[None]])
    tp = xp.concatenate([zero, tp, counts.num_positives[None]])
    return fp / counts.num_negatives, tp / counts.num_positives


def roc_auc(counts: ThresholdCounts) -> Array:
    """Area under the ROC curve by the trapezoid rule (equals scikit-learn's ``roc_auc_score``).

    NaN when either class is missing.

    Example:
        >>> import numpy as np
        >>> float(roc_auc(exact_counts(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))))
        0.75
    """
    xp = _xp(counts.tp_ge)
    fpr, tpr = roc_curve(counts)
    area = xp.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1])) / 2
    defined = (counts.num_positives > 0) & (counts.num_negatives > 0)
    return xp.where(defined, area, xp.nan)


def precision_recall(counts: ThresholdCounts) -> tuple[Array, Array]:
    """Precision and recall at each threshold (precision NaN where nothing is predicted positive).

    Example:
        >>> import numpy as np
        >>> p, r = precision_recall(exact_counts(np.array([0.2, 0.8]), np.array([0, 1]), at="all"))
        >>> p.tolist(), r.tolist()
        ([1.0, 0.5], [1.0, 1.0])
    """
    xp = _xp(counts.tp_ge)
    predicted = counts.tp_ge + counts.fp_ge
    precision = counts.tp_ge / xp.where(predicted > 0, predicted, xp.nan)
    recall = counts.tp_ge / counts.num_positives
    return precision, recall


def average_precision(counts: ThresholdCounts) -> Array:
    """Step-wise average precision, sum of (R_j - R_{j-1}) P_j: scikit-learn's and anomalib 2.7's AUPR.

    NaN when there is no positive.

    Example:
        >>> import numpy as np
        >>> float(average_precision(exact_counts(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))))
        0.8333333333333333
    """
    xp = _xp(counts.tp_ge)
    precision, _ = precision_recall(counts)
    gained = (counts.tp_ge - counts.tp_gt) / counts.num_positives
    area = xp.sum(xp.where(gained > 0, gained * precision, 0.0))
    return xp.where(counts.num_positives > 0, area, xp.nan)


def f1_scores(counts: ThresholdCounts) -> Array:
    """F1 at each threshold, ``2PR / (P + R + 1e-10)`` (anomalib's formula), 0 where undefined."""
    xp = _xp(counts.tp_ge)
    precision, recall = precision_recall(counts)
    f1 = 2 * precision * recall / (precision + recall + F1_EPSILON)
    return xp.where(xp.isfinite(f1), f1, 0.0)


def best_f1(counts: ThresholdCounts, every_threshold: bool = False) -> tuple[Array, Array]:
    """The maximum F1 and the lowest threshold that attains it (anomalib's F1Max rule).

    By default thresholds holding no sample (empty bins) are skipped, so an auto-ranging binned
    threshold is the lower edge of the bin of the score an exact computation would pick. With
    ``every_threshold=True`` every threshold is a candidate (anomalib's rule for given thresholds:
    an empty bin ties with the bin above it, and the lower threshold wins).

    With no threshold at all (no positive in exact mode) returns (0, NaN).

    Example:
        >>> import numpy as np
        >>> f1, t = best_f1(exact_counts(np.array([0.1, 0.5, 0.9, 0.1]), np.array([0, 1, 1, 1])))
        >>> round(float(f1), 4), float(t)
        (0.8571, 0.10000000149011612)
    """
    xp = _xp(counts.tp_ge)
    # Only thresholds that hold a sample count: an empty bin would tie with the bin above it.
    occupied = (counts.tp_ge - counts.tp_gt + counts.fp_ge - counts.fp_gt) > 0
    f1 = f1_scores(counts) if every_threshold else xp.where(occupied, f1_scores(counts), -1.0)
    if f1.shape[0] == 0:
        return xp.asarray(0.0), xp.asarray(xp.nan)
    # Thresholds descend, so the lowest threshold among ties is the last maximum.
    last = f1.shape[0] - 1 - xp.argmax(f1[::-1])
    return f1[last], counts.thresholds[last]
