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
    area = pairwise_sum(xp.where(gained > 0, gained * precision, 0.0))
    return xp.where(counts.num_positives > 0, area, xp.nan)


def pairwise_sum(values: Array) -> Array:
    """The sum over the last axis by pairwise (tree) summation, the order numpy uses.

    numpy arrays go to ``np.sum``. For jax arrays the tree is written out (pad to a power of two, add
    halves), so that the float32 rounding error is at most ``ceil(log2 n)`` units in the last place
    of the sum of magnitudes whatever the backend does with a plain reduction.

    Example:
        >>> import jax.numpy as jnp
        >>> float(pairwise_sum(jnp.arange(5.0)))
        10.0
    """
    if isinstance(values, np.ndarray):
        return np.sum(values, axis=-1)
    size = values.shape[-1]
    if size == 0:
        return jnp.zeros(values.shape[:-1], values.dtype)
    width = 1 << (size - 1).bit_length()
    padding = [(0, 0)] * (values.ndim - 1) + [(0, width - size)]
    values = jnp.pad(values, padding)
    while values.shape[-1] > 1:
        values = values[..., 0::2] + values[..., 1::2]
    return values[..., 0]


HARMONIC_DIRECT_TERMS = 64
"""Below this many terms harmonic sums are added up directly; from it on the asymptotic series."""
_EULER_GAMMA = 0.57721566490153286061


def harmonic_number(n: Array) -> Array:
    """``H(n) = 1 + 1/2 + ... + 1/n`` for (float) counts ``n >= 0``; numpy or jax, elementwise.

    Below :data:`HARMONIC_DIRECT_TERMS` the terms are added up; above, the asymptotic series
    ``ln n + γ + 1/(2n) − 1/(12n²) + 1/(120n⁴) − 1/(252n⁶)``, whose truncation error lies in
    ``(0, 1/(240 n⁸))`` (below 2e-17 for n >= 64, far under float rounding).

    Example:
        >>> import numpy as np
        >>> [round(float(h), 12) for h in harmonic_number(np.array([0.0, 1.0, 4.0, 100.0]))]
        [0.0, 1.0, 2.083333333333, 5.18737751764]
    """
    xp = _xp(n)
    terms = xp.arange(1, HARMONIC_DIRECT_TERMS + 1, dtype=n.dtype)
    direct = xp.sum(xp.where(terms <= n[..., None], 1.0 / terms, 0.0), axis=-1)
    large = xp.maximum(n, HARMONIC_DIRECT_TERMS)
    inverse = 1.0 / large
    square = inverse * inverse
    series = square * (-1.0 / 12 + square * (1.0 / 120 - square / 252))
    asymptotic = xp.log(large) + _EULER_GAMMA + inverse / 2 + series
    return xp.where(n < HARMONIC_DIRECT_TERMS, direct, asymptotic)


def _spread_asymptotic(base: Array, extra: Array) -> tuple[Array, Array]:
    """``E(base, extra)`` (see :func:`_spread`) for ``base >= 64`` by the asymptotic series, written
    so that nothing cancels: with ``y = extra / (base + extra)``,
    ``H(base + extra) − H(base) = −ln(1 − y) − y/(2 base) + d₂/12 − d₄/120 + d₆/252`` where
    ``d_k = base⁻ᵏ − (base + extra)⁻ᵏ``, and ``−ln(1 − y) − y`` is one ``log1p``. Returns the value
    and the truncation error bound ``1/(240 base⁸)``."""
    xp = _xp(base)
    top = base + extra
    share = extra / xp.maximum(top, 1.0)
    inv_base, inv_top = 1.0 / base, 1.0 / top
    d2 = share * inv_base * (inv_base + inv_top)
    sq_base, sq_top = inv_base * inv_base, inv_top * inv_top
    d4 = d2 * (sq_base + sq_top)
    d6 = d2 * (sq_base * sq_base + sq_base * sq_top + sq_top * sq_top)
    value = (-xp.log1p(-share) - share) - share * inv_base / 2 + d2 / 12 - d4 / 120 + d6 / 252
    return xp.maximum(value, 0.0), sq_base**4 / 240


def _spread(base: Array, extra: Array) -> tuple[Array, Array]:
    """:func:`_spread_terms`; in numpy only where ``extra`` is not 0 (there ``E`` and its error
    are 0: most bins of a fine grid hold no positive)."""
    if not isinstance(base, np.ndarray):
        return _spread_terms(base, extra)
    base, extra = np.broadcast_arrays(base, extra)
    value, error = np.zeros(base.shape, base.dtype), np.zeros(base.shape, base.dtype)
    some = extra != 0
    value[some], error[some] = _spread_terms(base[some], extra[some])
    return value, error


def _spread_terms(base: Array, extra: Array) -> tuple[Array, Array]:
    """``E(b, p) = Σ_{i=1..p} (1/(b+i) − 1/(b+p)) = H(b+p) − H(b) − p/(b+p) >= 0`` per entry, and a
    bound on its series truncation error.

    Three stable ways, chosen per entry (K = :data:`HARMONIC_DIRECT_TERMS`):
    ``p <= K``: the non-negative terms ``(p−i)/((b+i)(b+p))`` added up; ``b >= K``:
    :func:`_spread_asymptotic`; ``b < K < p``: the terms with ``b+i <= K`` added up,
    ``Σ_{m=b+1..K} (b+p−m)/(m(b+p))``, plus ``E(K, b+p−K)`` (the rest) by the series. Every piece is
    small compared with ``p/(b+p)``, so the absolute rounding error of ``(b−a)/P · E`` is a few
    units in the last place of ``p/P``: no catastrophic cancellation in float32 either.
    """
    xp = _xp(base)
    k = HARMONIC_DIRECT_TERMS
    index = xp.arange(1, k + 1, dtype=base.dtype)
    b, p = base[..., None], extra[..., None]
    top = xp.maximum(b + p, 1.0)
    small_p = xp.sum(xp.where(index < p, (p - index) / ((b + index) * top), 0.0), axis=-1)
    head = xp.sum(xp.where(index > b, (b + p - index) / (index * top), 0.0), axis=-1)
    large_b, large_b_error = _spread_asymptotic(xp.maximum(base, k), extra)
    tail, tail_error = _spread_asymptotic(xp.full_like(base, k), xp.maximum(base + extra - k, 0.0))
    value = xp.where(extra <= k, small_p, xp.where(base >= k, large_b, head + tail))
    error = xp.where(extra <= k, 0.0, xp.where(base >= k, large_b_error, tail_error))
    return value, error


def average_precision_spread(counts: ThresholdCounts) -> tuple[Array, Array, Array]:
    """How far the exact average precision can lie below and above the binned one, per the blocks.

    Returns ``(below, above, truncation)``: over every arrangement of the samples inside each block
    (consecutive thresholds delimit a block whose internal order is unknown; ties allowed, scored as
    scikit-learn does, one step per distinct score), the exact AP lies in
    ``[AP_binned − below, AP_binned + above]`` up to the float rounding of these sums and the series
    truncation error ``truncation`` (at most ~1e-15 in total). NaN-free; divided by the number of
    positives, so inf/NaN without positives.

    Why. Let a block hold ``p`` positives and ``n`` negatives below ``A`` positives and ``B``
    negatives (counts at the threshold above), and ``P`` positives in all. Nothing outside the block
    depends on the order inside it, so AP is a sum of independent per-block contributions. Binned,
    the block is one tie: ``c = p (A+p) / (A+B+p+n) / P``. Exactly, each positive of the block
    contributes ``(A+i)/(A+B+i+m) / P`` where ``i`` positives and ``m`` negatives of the block score
    at or above it (for a tie, the counts at the end of its group: ``i`` is at least the positive's
    own rank ``r``, ``m`` at most ``n``). That is increasing in ``i``, decreasing in ``m``, so

    * it is at most ``(A+p)/(A+B+p)``: ``c_max = p (A+p)/(A+B+p) / P``, reached when the block's
      positives share one score above its negatives (all positives first with distinct scores
      gives less when ``A+B > 0``: a tie of positives can raise AP). ``above = Σ (c_max − c)
      = Σ p (A+p) n / ((A+B+p)(A+B+p+n)) / P``.
    * it is at least ``(A+r)/(A+B+n+r)``: ``c_min = Σ_{r=1..p} (A+r)/(A+B+n+r) / P``, reached by
      all negatives first, distinct scores. With ``a = A``, ``b = A+B+n``:
      ``c − c_min = (b−a) Σ_{r=1..p} (1/(b+r) − 1/(b+p)) / P = (b−a) (H(b+p) − H(b) − p/(b+p)) / P``
      (harmonic numbers ``H``, :func:`_spread`).

    Example:
        >>> import numpy as np
        >>> # one block: a positive and a negative tied; exactly AP is 1 (positive first) or 1/2
        >>> c = counts_from_cumulative(np.array([0.0]), np.array([1.0]), np.array([1.0]))
        >>> float(average_precision(c)), [float(v) for v in average_precision_spread(c)]
        (0.5, [0.0, 0.5, 0.0])
    """
    xp = _xp(counts.tp_ge)
    above_p, above_n = counts.tp_gt, counts.fp_gt
    pos, neg = counts.tp_ge - above_p, counts.fp_ge - above_n
    num_positives = counts.num_positives
    with np.errstate(divide="ignore", invalid="ignore"):
        gained = pos / num_positives
        without = xp.maximum(above_p + above_n + pos, 1.0)
        with_all = xp.maximum(above_p + above_n + pos + neg, 1.0)
        above = gained * ((above_p + pos) / without) * (neg / with_all)
        spread, truncation = _spread(above_p + above_n + neg, pos)
        scale = (above_n + neg) / num_positives
        below = scale * spread
        truncation = scale * truncation
    return pairwise_sum(below), pairwise_sum(above), pairwise_sum(truncation)


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


def f1_upper_bounds(counts: ThresholdCounts) -> Array:
    """Per block, an upper bound on F1 at any threshold inside it (−1 where it holds no positive).

    A threshold inside block ``j`` predicts the ``A`` positives and ``B`` negatives above the block
    and some of its ``p`` positives and ``n`` negatives: ``TP <= A + p``, ``FP >= B``. F1 is
    increasing in TP and decreasing in FP — also anomalib's ``2PR/(P+R+1e-10)``, which increases in
    both precision and recall (∂/∂P = 2R(R+ε)/(P+R+ε)² >= 0) — so it is at most F1 at
    ``(A+p, B)``. The exact maximum sits at a positive's score, so blocks without one are left out.

    Example:
        >>> import numpy as np
        >>> c = counts_from_cumulative(np.array([1.0, 0.0]), np.array([1.0, 2.0]), np.array([1.0, 2.0]))
        >>> [round(float(v), 4) for v in f1_upper_bounds(c)]
        [0.6667, 0.8]
    """
    xp = _xp(counts.tp_ge)
    optimistic = f1_scores(counts._replace(fp_ge=counts.fp_gt))
    return xp.where(counts.tp_ge > counts.tp_gt, optimistic, -1.0)
