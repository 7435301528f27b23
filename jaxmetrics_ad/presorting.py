"""Presorting metrics PGn and PBn (anomalib 2.7; "Beyond Academic Benchmarks", arXiv 2503.23451).

Image level, anomalous = positive. Both read a threshold off one class's scores with the linear
quantile of :func:`torch.quantile` (numpy's default ``method="linear"``) and report how much of the
other class falls on the right side of it:

* :class:`PGn` (``fnr``): accept images scoring below the ``fnr``-quantile of the positives' scores,
  so that a fraction ``fnr`` of the anomalous images is missed; the value is the fraction of normal
  images accepted (scoring strictly below). Name ``"PG" + str(int(fnr * 100))``, e.g. ``PG5``.
* :class:`PBn` (``fpr``): reject images scoring above the ``(1 - fpr)``-quantile of the negatives'
  scores; the value is the fraction of anomalous images rejected (scoring strictly above). Name
  ``"PB" + str(int(fpr * 100))``.

Both classes must be present: without them the quantile or the fraction is undefined, so an eager
``compute`` raises ValueError naming the metric (anomalib raises too) and a jitted one returns NaN.

State and modes are those of :class:`~jaxmetrics_ad.classification.ScoreCurveMetric`:

* ``thresholds=None`` (default) — **exact**: every score is kept and the quantile is taken on the host
  in float32 with torch's arithmetic (rank ``q · (n - 1)``, then ``torch.lerp``); ``capacity=`` makes
  it jit/scan friendly.
* ``thresholds=int`` or an array — **binned**: a :class:`~jaxmetrics_ad.histogram.ScoreHistogram`
  like AUROC's, but without its exact tails (so a far outlier widens the bins here; the certified
  bound then grows and eager compute warns), hence its own state in an Evaluator. Within a bin the samples are taken as spread evenly over the part of the bin inside
  ``[score_min, score_max]``: the quantile is interpolated from them, and so is the share of the
  counted class on either side of it.

Error bound of binned mode (:meth:`PGn.error_bound`). The exact threshold is ``T = lerp(s[⌊r⌋],
s[⌈r⌉], w)`` for the sorted reference scores ``s``, rank ``r = q·(n − 1)`` and ``w = r − ⌊r⌋``. The
histogram's exact counts tell which bins hold ``s[⌊r⌋]`` and ``s[⌈r⌉]``, and every sample of a bin lies
in ``[low, high]``, the bin cut to ``[score_min, score_max]``. A lerp grows with both ends, so
``T ∈ [T_lo, T_hi] = [lerp(low₁, low₂, w), lerp(high₁, high₂, w)]`` (widened by a relative 2⁻¹⁸ for
float32 rounding), an interval at most one bin wide. A counted sample whose bin lies wholly below
``T_lo`` is surely below ``T``; one whose bin starts at or above ``T_hi`` surely is not. The exact
count ``E`` is thus in ``[A, A + U]``: ``A`` the sure ones, ``U`` those in bins overlapping
``[T_lo, T_hi]``. The estimate ``Ê`` gets ``|Ê − E| ≤ max(|Ê − A|, |A + U − Ê|)``, divided by the class
total, plus 2⁻¹⁹ for float32 rounding. This needs no assumption on how scores spread in a bin: it is
certified, and at most the share of the counted class in those few bins (ties included).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxmetrics_ad.base import Metric
from jaxmetrics_ad.classification import (
    ScoreCurveMetric,
    Thresholds,
    _checked_capacity,
    _checked_thresholds,
)
from jaxmetrics_ad.histogram import ScoreHistogram, power_of_two
from jaxmetrics_ad.host import on_host
from jaxmetrics_ad.validation import is_traced

# Relative widening of the exact threshold's enclosure, far above float32 rounding in a lerp.
_MARGIN = 2.0**-18
# Added to the error bound for float32 rounding in the binned sums and the divisions.
_ROUNDING = 2.0**-19


def _checked_rate(value: object, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{argument} must be a number in [0, 1], got {value!r}")
    rate = float(value)
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise ValueError(f"{argument} must be in [0, 1], got {rate!r}")
    return rate


def linear_quantile(sorted_values: np.ndarray, q: float) -> np.float32:
    """The ``q``-quantile of ascending float32 values with torch.quantile's float32 arithmetic.

    The rank is ``float32(q) · (n - 1)``; the two neighbouring values are blended like ``torch.lerp``
    (from the nearer end). ``n`` must be positive.

    Example:
        >>> import numpy as np
        >>> float(linear_quantile(np.array([1.0, 2.0, 4.0], np.float32), 0.75))
        3.0
    """
    values = np.asarray(sorted_values, np.float32)
    rank = np.float32(q) * np.float32(values.size - 1)
    below, above = math.floor(rank), math.ceil(rank)
    weight = rank - np.float32(below)
    start, end = values[below], values[above]
    if weight < 0.5:
        return np.float32(start + (end - start) * weight)
    return np.float32(end - (end - start) * (np.float32(1.0) - weight))


class _QuantileRate(ScoreCurveMetric):
    """Shared machinery of PGn and PBn: a quantile of one class, a rate of the other."""

    rate_argument: ClassVar[str]
    label: ClassVar[str]
    reference_channel: ClassVar[int]  # the class whose quantile is the threshold
    counts_below: ClassVar[bool]  # count the other class strictly below (True) or above

    def __init__(
        self,
        rate: float,
        thresholds: Thresholds = None,
        *,
        capacity: int | None = None,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        rate = _checked_rate(rate, self.rate_argument)
        Metric.__init__(
            self,
            fields=fields,
            prefix=prefix,
            strict=strict,
            thresholds=_checked_thresholds(thresholds),
            capacity=_checked_capacity(capacity, thresholds),
            **{self.rate_argument: rate},
        )

    def _empty_state(self) -> Any:
        # Plain bins, no exact tails: the reader below interpolates inside bins (so this metric
        # keeps its own state rather than AUROC's, whose auto-ranging bins carry tails).
        if isinstance(self.thresholds, int):
            return ScoreHistogram.auto(self.thresholds, num_channels=2)
        return super()._empty_state()

    @property
    def reader_config(self) -> tuple[str, ...]:
        """Configuration that only changes how the state is read: an Evaluator lets PGn and PBn
        metrics on the same fields and bins share one state."""
        return (self.rate_argument,)

    @property
    def rate(self) -> float:
        """The configured ``fnr`` (PGn) or ``fpr`` (PBn).

        Example:
            >>> import jaxmetrics_ad as jm
            >>> jm.PGn(fnr=0.1).rate, jm.PBn(fpr=0.2).rate
            (0.1, 0.2)
        """
        return getattr(self, self.rate_argument)

    @property
    def name(self) -> str:
        """``prefix + "PG"/"PB" + str(int(rate * 100))``, anomalib's name (the Evaluator's key).

        As in anomalib, ``int`` truncates: ``fnr=0.29`` is named ``PG28``.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> jm.PGn().name, jm.PBn(fpr=0.1, prefix="image_").name
            ('PG5', 'image_PB10')
        """
        return f"{self.prefix}{self.label}{int(self.rate * 100)}"

    @property
    def quantile_level(self) -> float:
        """The quantile of the reference class's scores used as the threshold."""
        raise NotImplementedError

    def threshold(self) -> jax.Array:
        """The threshold: the quantile of the reference class's scores (binned: interpolated).

        Eagerly it raises ValueError like ``compute`` when a class is missing.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> pg = jm.PGn(fnr=0.25).update([0.0, 1.0, 2.0, 3.0, 4.0, 9.0], [0, 1, 1, 1, 1, 0])
            >>> float(pg.threshold())  # the 0.25-quantile of 1, 2, 3, 4
            1.75
        """
        self._check_state_if_eager()
        return self._value_and_threshold()[1]

    def error_bound(self) -> jax.Array:
        """A certified bound on |binned value − exact value| (see the module docstring); 0 if exact.

        Example:
            >>> import numpy as np
            >>> import jaxmetrics_ad as jm
            >>> rng = np.random.default_rng(0)
            >>> labels = rng.integers(0, 2, 1000)
            >>> scores = rng.normal(size=1000) + 2 * labels
            >>> binned = jm.PGn(thresholds=4096).update(scores, labels)
            >>> exact = jm.PGn().update(scores, labels)
            >>> error = abs(float(binned.compute()) - float(exact.compute()))
            >>> bound = float(binned.error_bound())
            >>> error <= bound < 0.01, float(exact.error_bound())
            (True, 0.0)
        """
        if self.is_exact:
            return jnp.zeros((), jnp.float32)
        self._check_state_if_eager()
        return self._binned()[2]

    def _compute(self) -> jax.Array:
        return self._value_and_threshold()[0]

    def _check_state_if_eager(self) -> None:
        if not is_traced(*jax.tree_util.tree_leaves(self)):
            self._check_state()

    def _check_state(self) -> None:
        if self.is_exact:
            _, channels = self._host_samples()  # raises on overflow
            negatives, positives = int(np.sum(channels == 0)), int(np.sum(channels == 1))
        else:
            negatives, positives = (float(t) for t in self.state.counts.as_float().sum(axis=1))
        for count, kind in ((negatives, "negative (normal)"), (positives, "positive (anomalous)")):
            if count == 0:
                raise ValueError(f"{self.name}: no {kind} sample; the value is undefined")

    def _value_and_threshold(self) -> tuple[jax.Array, jax.Array]:
        if not self.is_exact:
            value, threshold, _ = self._binned()
            return value, threshold
        scores, channels, _ = self.state.arrays()
        result = on_host(
            self._exact_on_host, jax.ShapeDtypeStruct((2,), jnp.float32), scores, channels
        )
        result = jnp.where(self.state.overflowed(), jnp.nan, result)
        return result[0], result[1]

    def _exact_on_host(self, scores: np.ndarray, channels: np.ndarray) -> np.ndarray:
        reference = np.sort(scores[channels == self.reference_channel])
        counted = scores[channels == 1 - self.reference_channel]
        if reference.size == 0 or counted.size == 0:
            return np.full(2, np.nan, np.float32)
        threshold = linear_quantile(reference, self.quantile_level)
        hits = counted < threshold if self.counts_below else counted > threshold
        return np.array([np.sum(hits) / counted.size, threshold], np.float32)

    def _binned(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(value, threshold, error bound) read off the histogram, in jax."""
        counts = self.state.counts.as_float()
        reference = counts[self.reference_channel]
        counted = counts[1 - self.reference_channel]
        low, high, edge = self._bin_spans()
        width = high - low
        total_reference, total_counted = jnp.sum(reference), jnp.sum(counted)

        # the sorted reference scores at ⌊rank⌋ and ⌈rank⌉: their bins, and an even spread within
        rank = jnp.float32(self.quantile_level) * (total_reference - 1)
        ends = jnp.stack([jnp.floor(rank), jnp.ceil(rank)])
        weight = rank - ends[0]
        cumulative = jnp.cumsum(reference)
        bins = jnp.clip(jnp.searchsorted(cumulative, ends, side="right"), 0, reference.size - 1)
        within = (ends - (cumulative[bins] - reference[bins]) + 0.5) / reference[bins]
        threshold = _lerp(*(low[bins] + width[bins] * within), weight)

        # the share of each bin strictly below / above the threshold, samples spread evenly
        spread = jnp.clip((threshold - low) / jnp.where(width > 0, width, 1.0), 0.0, 1.0)
        if self.counts_below:
            share = jnp.where(width > 0, spread, low < threshold)
        else:
            share = jnp.where(width > 0, 1.0 - spread, low > threshold)
        estimate = jnp.sum(counted * share)

        # the exact threshold lies in [lowest, highest]: bins wholly on one side are certain
        lowest = _lerp(low[bins[0]], low[bins[1]], weight)
        highest = _lerp(high[bins[0]], high[bins[1]], weight)
        margin = _MARGIN * jnp.maximum(jnp.abs(lowest), jnp.abs(highest))
        lowest, highest = lowest - margin, highest + margin
        if self.counts_below:  # counted when < T, certainly not when >= T
            surely, surely_not = (edge <= lowest) | (high < lowest), low >= highest
        else:  # counted when > T, certainly not when <= T
            surely, surely_not = low > highest, high <= lowest
        sure = jnp.sum(jnp.where(surely, counted, 0.0))
        unsure = jnp.sum(jnp.where(surely | surely_not, 0.0, counted))
        bound = jnp.maximum(jnp.abs(estimate - sure), jnp.abs(sure + unsure - estimate))

        defined = (total_reference > 0) & (total_counted > 0)
        return (
            jnp.where(defined, estimate / total_counted, jnp.nan),
            jnp.where(defined, threshold, jnp.nan),
            jnp.where(defined, bound / total_counted + _ROUNDING, jnp.nan),
        )

    def _bin_spans(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Per bin: the closed interval ``[low, high]`` its samples lie in (the bin cut to
        ``[score_min, score_max]``), and its upper edge, which its samples lie strictly below."""
        histogram = self.state
        lower = histogram.lower_edges()
        if histogram.edges is None:
            edge = lower + power_of_two(histogram.exponent)
        else:
            edge = jnp.concatenate([lower[1:], jnp.array([jnp.inf], jnp.float32)])
        low = jnp.clip(lower, histogram.score_min, histogram.score_max)
        high = jnp.clip(edge, histogram.score_min, histogram.score_max)
        return low, high, edge


def _lerp(start: jax.Array, end: jax.Array, weight: jax.Array) -> jax.Array:
    """``torch.lerp``: blend from the nearer end."""
    return jnp.where(
        weight < 0.5, start + (end - start) * weight, end - (end - start) * (1 - weight)
    )


class PGn(_QuantileRate):
    """Presorting good rate: the fraction of normal images below the ``fnr``-quantile of anomalous ones.

    With the acceptance threshold set so that a fraction ``fnr`` of anomalous images slips through,
    PGn is the fraction of normal images accepted (scoring strictly below it). ``metric.name`` is
    ``prefix + "PG" + str(int(fnr * 100))``. Needs both classes (eagerly ValueError, NaN under jit).

    Example:
        >>> import jaxmetrics_ad as jm
        >>> pg = jm.PGn(fnr=0.5)
        >>> pg.name
        'PG50'
        >>> # positives 0.6, 0.8 -> threshold 0.7; negatives below it: 0.1, 0.5
        >>> round(float(pg([0.1, 0.5, 0.75, 0.6, 0.8], [0, 0, 0, 1, 1])), 4)
        0.6667
        >>> round(float(pg.update([0.1, 0.5, 0.75, 0.6, 0.8], [0, 0, 0, 1, 1]).threshold()), 6)
        0.7
    """

    rate_argument = "fnr"
    label = "PG"
    reference_channel = 1
    counts_below = True

    def __init__(
        self,
        fnr: float = 0.05,
        thresholds: Thresholds = None,
        *,
        capacity: int | None = None,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        super().__init__(
            fnr, thresholds, capacity=capacity, fields=fields, prefix=prefix, strict=strict
        )

    @property
    def quantile_level(self) -> float:
        """``fnr``: the threshold is this quantile of the positives' scores.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> jm.PGn(0.1).quantile_level
            0.1
        """
        return self.fnr


class PBn(_QuantileRate):
    """Presorting bad rate: the fraction of anomalous images above the ``(1 - fpr)``-quantile of normal ones.

    With the rejection threshold set so that a fraction ``fpr`` of normal images is rejected, PBn is
    the fraction of anomalous images rejected (scoring strictly above it). ``metric.name`` is
    ``prefix + "PB" + str(int(fpr * 100))``. Needs both classes (eagerly ValueError, NaN under jit).

    Example:
        >>> import jaxmetrics_ad as jm
        >>> pb = jm.PBn(fpr=0.5, prefix="image_")
        >>> pb.name
        'image_PB50'
        >>> # negatives 0.2, 0.4 -> threshold 0.3; positives above it: 0.35, 0.9
        >>> round(float(pb([0.2, 0.4, 0.1, 0.35, 0.9], [0, 0, 1, 1, 1])), 4)
        0.6667
    """

    rate_argument = "fpr"
    label = "PB"
    reference_channel = 0
    counts_below = False

    def __init__(
        self,
        fpr: float = 0.05,
        thresholds: Thresholds = None,
        *,
        capacity: int | None = None,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        super().__init__(
            fpr, thresholds, capacity=capacity, fields=fields, prefix=prefix, strict=strict
        )

    @property
    def quantile_level(self) -> float:
        """``1 - fpr``: the threshold is this quantile of the negatives' scores.

        Example:
            >>> import jaxmetrics_ad as jm
            >>> jm.PBn(0.25).quantile_level
            0.75
        """
        return 1.0 - self.fpr
