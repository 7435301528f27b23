"""Binned PIMO state (``thresholds=<int or array>``): normal pixels in a histogram plus their exact
top scores, mask pixels in a second histogram; and its readers.

The state is a fixed-size pytree (jit/scan-able, merged by :meth:`BinnedCurves.merge` and
:meth:`BinnedCurves.all_reduce`). Each reader is written once for an array module ``xp``: with jax
(inside jit) it reads the histograms in float32, with numpy (eager ``compute``, no XLA program to
compile) in float64, counts exact to 2**53.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import ModuleType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmetrics_ad.counts import running_count
from jaxmetrics_ad.histogram import ScoreHistogram, power_of_two
from jaxmetrics_ad.pimo_rule import IntegrationBand, threshold_grid, trapezoid_weights
from jaxmetrics_ad.validation import state_array

DEFAULT_TAIL_SIZE = 32768
"""Binned mode: how many of the highest normal scores are kept exactly (128 KiB)."""
_HOST_ROWS = 16  # per-image TPRs read on the host this many images at a time (bounded memory)

Array = np.ndarray | jax.Array


def mask_labels(masks: jax.Array) -> jax.Array:
    """Mask values as stored, but bool masks as 0/1 whatever their True byte (jit-safe).

    Example:
        >>> import jax.numpy as jnp
        >>> mask_labels(jnp.array([True, False])).tolist()
        [1, 0]
    """
    if masks.dtype == jnp.bool_:
        # Comparisons with 1 see the raw byte (0xFF from Pillow is not 1), and XLA folds a
        # comparison with False away; reading the byte does neither.
        return (masks.view(jnp.uint8) != 0).astype(jnp.int32)
    return masks


class BinnedCurves(struct.PyTreeNode):
    """Binned state: normal pixels in a histogram plus their exact top scores; mask pixels binned.

    ``normal`` counts every normal pixel; ``tail_scores`` holds every normal score ``>=
    tail_cutoff`` exactly (at most ``tail_size``, unordered, -inf padded), so the shared FPR is
    exact at thresholds ``>= tail_cutoff``. The cutoff is the lowest histogram edge with at most
    ``tail_size`` normal pixels above it; it only rises, and pixels below it are let go.
    ``anomalous`` has one channel per image slot (``capacity`` set: slot = arrival index, normal
    images leave theirs empty) or a single channel weighted by 1/mask size, whose weight above a
    threshold is the sum of the TPRs. Every image must have ``num_pixels`` pixels (set by the first
    update), as anomalib requires too. The histograms are auto-ranging (``thresholds`` an int, the
    number of bins) or have fixed edges (a tuple of thresholds).

    Example:
        >>> import jax.numpy as jnp
        >>> maps = jnp.array([[[0.1, 0.2]], [[0.3, 0.9]]])
        >>> masks = jnp.array([[[0, 0]], [[0, 1]]])
        >>> empty = BinnedCurves.empty(64, capacity=None, tail_size=4)
        >>> state, invalid = empty.add(maps, masks)
        >>> int(state.num_normal), int(state.num_anomalous), state.tail_scores.tolist()
        (1, 1, [0.10000000149011612, 0.20000000298023224, -inf, -inf])
    """

    normal: ScoreHistogram
    tail_scores: jax.Array  # (tail_size,) float32: every normal score >= tail_cutoff, -inf padded
    tail_cutoff: jax.Array  # float32, -inf until the tail is full
    anomalous: ScoreHistogram
    num_pixels: jax.Array  # int32: pixels per image (0 before the first update)
    num_normal: jax.Array  # int32
    num_anomalous: jax.Array  # int32
    num_images: jax.Array  # int32, may pass the capacity inside jit (then compute gives NaN)
    capacity: int | None = struct.field(pytree_node=False, default=None)

    @classmethod
    def empty(
        cls, thresholds: int | tuple[float, ...], capacity: int | None, tail_size: int
    ) -> BinnedCurves:
        """An empty state; ``capacity`` images get their own curve (None: only the mean curve).

        ``thresholds``: the number of auto-ranging bins, or the fixed thresholds (ascending).
        """

        def histogram(num_channels: int, num_weights: int = 0) -> ScoreHistogram:
            if isinstance(thresholds, int):
                return ScoreHistogram.auto(thresholds, num_channels, num_weights)
            return ScoreHistogram.fixed(thresholds, num_channels, num_weights)

        if capacity is None:
            anomalous = histogram(num_channels=1, num_weights=1)
        else:
            anomalous = histogram(num_channels=capacity)
        zero = state_array(0, (), np.int32)
        return cls(
            normal=histogram(num_channels=1),
            tail_scores=state_array(-np.inf, (tail_size,), np.float32),
            tail_cutoff=state_array(-np.inf, (), np.float32),
            anomalous=anomalous,
            num_pixels=zero,
            num_normal=zero,
            num_anomalous=zero,
            num_images=zero,
            capacity=capacity,
        )

    def add(
        self, maps: jax.Array, masks: jax.Array, keep: jax.Array | None = None
    ) -> tuple[BinnedCurves, jax.Array]:
        """Adds a batch (N, H, W); returns the state and the number of invalid pixels.

        Invalid pixels (non-finite score, mask value outside {0, 1}) are left out and counted; so
        is a whole batch whose images differ in size from earlier ones. ``keep`` (N,) leaves whole
        images out without counting them (padding).
        """
        num_images = maps.shape[0]
        num_pixels = math.prod(maps.shape[1:])
        keep = jnp.ones((num_images,), bool) if keep is None else keep
        scores = jnp.reshape(maps, (num_images, num_pixels)).astype(jnp.float32)
        labels = mask_labels(jnp.reshape(masks, (num_images, num_pixels)))
        same_size = (self.num_pixels == 0) | (self.num_pixels == num_pixels)
        readable = jnp.isfinite(scores) & ((labels == 0) | (labels == 1)) & same_size
        valid = readable & keep[:, None]
        positive = valid & (labels == 1)
        is_anomalous = jnp.any(labels == 1, axis=1) & keep
        normal_pixel = valid & ~is_anomalous[:, None]
        normal = self.normal.add(scores, jnp.where(normal_pixel, 0, -1))
        new_scores = jnp.where(normal_pixel, scores, -jnp.inf).ravel()
        tail_scores, tail_cutoff = _keep_tail(
            (self.tail_scores, new_scores),
            self.tail_cutoff,
            normal,
            self.tail_size,
        )
        if self.capacity is None:
            mask_sizes = jnp.sum(positive, axis=1, keepdims=True)
            weights = jnp.broadcast_to(1.0 / jnp.maximum(mask_sizes, 1), scores.shape)
            anomalous = self.anomalous.add(
                scores, jnp.where(positive, 0, -1), jnp.reshape(weights, (1, -1))
            )
        else:
            slots = self.num_images + jnp.cumsum(keep, dtype=jnp.int32) - 1
            stored = positive & (slots < self.capacity)[:, None]
            channels = jnp.where(stored, slots[:, None], -1)
            window = None
            if num_images <= self.capacity:  # the stored slots lie in [first, first + num_images)
                first = jnp.clip(self.num_images, 0, self.capacity - num_images)
                window = (first.astype(jnp.int32), num_images)
            anomalous = self.anomalous.add(scores, channels, window=window)
        kept_images = jnp.sum(keep, dtype=jnp.int32)
        num_anomalous = jnp.where(same_size, jnp.sum(is_anomalous), 0).astype(jnp.int32)
        num_normal = jnp.where(same_size, kept_images, 0) - num_anomalous
        state = self.replace(
            normal=normal,
            tail_scores=tail_scores,
            tail_cutoff=tail_cutoff,
            anomalous=anomalous,
            num_pixels=jnp.where(same_size, num_pixels, self.num_pixels).astype(jnp.int32),
            num_normal=self.num_normal + num_normal,
            num_anomalous=self.num_anomalous + num_anomalous,
            num_images=self.num_images + jnp.where(same_size, kept_images, 0),
        )
        return state, jnp.sum(~readable & keep[:, None]).astype(jnp.int32)

    def merge(self, other: BinnedCurves) -> BinnedCurves:
        """The state of both image sets, this state's images first (exact: histograms add)."""
        normal = self.normal.merge(other.normal)
        tail_scores, tail_cutoff = _keep_tail(
            (self.tail_scores, other.tail_scores),
            jnp.maximum(self.tail_cutoff, other.tail_cutoff),
            normal,
            self.tail_size,
        )
        return self.replace(
            normal=normal,
            tail_scores=tail_scores,
            tail_cutoff=tail_cutoff,
            anomalous=self.anomalous.merge(other._shifted(self.num_images).anomalous),
            num_pixels=jnp.maximum(self.num_pixels, other.num_pixels),
            num_normal=self.num_normal + other.num_normal,
            num_anomalous=self.num_anomalous + other.num_anomalous,
            num_images=self.num_images + other.num_images,
        )

    def all_reduce(self, axis_name: str) -> BinnedCurves:
        """Every device's images along ``axis_name``, in device order (``pmin``/``pmax``, ``psum``)."""
        counts = jax.lax.all_gather(self.num_images, axis_name)
        device = jax.lax.axis_index(axis_name)
        before = jnp.sum(jnp.where(jnp.arange(counts.shape[0]) < device, counts, 0))
        normal = self.normal.all_reduce(axis_name)
        tail_scores, tail_cutoff = _keep_tail(
            (jax.lax.all_gather(self.tail_scores, axis_name).ravel(),),
            jax.lax.pmax(self.tail_cutoff, axis_name),
            normal,
            self.tail_size,
        )
        return self.replace(
            normal=normal,
            tail_scores=tail_scores,
            tail_cutoff=tail_cutoff,
            anomalous=self._shifted(before).anomalous.all_reduce(axis_name),
            num_pixels=jax.lax.pmax(self.num_pixels, axis_name),
            num_normal=jax.lax.psum(self.num_normal, axis_name),
            num_anomalous=jax.lax.psum(self.num_anomalous, axis_name),
            num_images=jax.lax.psum(self.num_images, axis_name),
        )

    @property
    def tail_size(self) -> int:
        """Most normal scores kept exactly."""
        return self.tail_scores.shape[0]

    def overflowed(self) -> jax.Array:
        """True when more images arrived than ``capacity`` slots (never without a capacity)."""
        if self.capacity is None:
            return jnp.array(False)
        return self.num_images > self.capacity

    def _shifted(self, offset: jax.Array) -> BinnedCurves:
        """This state with its image slots moved ``offset`` places on (slots past the end drop)."""
        if self.capacity is None:
            return self
        target = jnp.arange(self.capacity, dtype=jnp.int32) + offset
        target = jnp.where(target < self.capacity, target, self.capacity)
        counts = self.anomalous.counts

        def move(words: jax.Array) -> jax.Array:
            return jnp.zeros_like(words).at[target].set(words, mode="drop")

        moved = counts.replace(lo=move(counts.lo), hi=move(counts.hi))
        return self.replace(anomalous=self.anomalous.replace(counts=moved))


def _keep_tail(
    candidates: tuple[jax.Array, ...], cutoff: jax.Array, normal: ScoreHistogram, tail_size: int
) -> tuple[jax.Array, jax.Array]:
    """The candidates at or above the raised cutoff, packed into ``tail_size`` slots, and the cutoff.

    The candidate arrays hold every normal score at or above ``cutoff`` (and -inf fillers). The new
    cutoff is the lowest edge of ``normal`` (which counts every normal pixel) with at most
    ``tail_size`` pixels at or above it, so they always fit; it never falls, so nothing needed was
    let go before. A running count packs each array in turn: O(candidates), unlike a top-k, which
    is slow on smooth maps; the arrays are not concatenated (a copy of every batch score, which
    measured as slow as the packing itself).
    """
    cutoff = jnp.maximum(cutoff, lowest_fitting_edge(normal, tail_size, jnp))
    tail = jnp.full((tail_size,), -jnp.inf, jnp.float32)
    filled = jnp.zeros((), jnp.int32)
    for scores in candidates:
        if scores.size == 0:
            continue
        kept = jnp.isfinite(scores) & (scores >= cutoff)
        ranks = running_count(kept)
        slots = jnp.where(kept, filled + ranks - 1, tail_size)
        tail = tail.at[slots].set(scores, mode="drop")
        filled = filled + ranks[-1]
    return tail, cutoff


# -- readers: one code for jax (float32, jit-able) and numpy (float64, eager) ---------------------


class _Bins(NamedTuple):
    """A histogram's arrays in one array module: jax as stored, or numpy float64."""

    counts: Array  # (C, B) float
    weights: Array  # (W, B) float
    lower_edges: Array  # (B,) the threshold of each bin, ascending (-inf first for fixed edges)
    top: Array  # () the upper edge of the last bin (auto-ranging; unused for fixed edges)
    score_min: Array  # () lowest score seen
    exponent: Any  # bin width 2**exponent (auto-ranging)
    offset: Any  # grid offset (auto-ranging)
    edges: Array | None  # (B-1,) fixed thresholds, or None when auto-ranging


def _bins(histogram: ScoreHistogram, xp: ModuleType, with_counts: bool = True) -> _Bins:
    """The histogram's arrays (numpy: counts None unless ``with_counts``)."""
    fixed = None if histogram.edges is None else xp.asarray(histogram.edges, xp.float32)
    if xp is jnp:
        top = (histogram.offset + histogram.num_bins).astype(jnp.float32) * power_of_two(
            histogram.exponent
        )
        return _Bins(
            histogram.counts.as_float(),
            histogram.weights,
            histogram.lower_edges(),
            top,
            histogram.score_min,
            histogram.exponent,
            histogram.offset,
            fixed,
        )
    counts = histogram.counts.as_float64() if with_counts else None
    exponent, offset = int(histogram.exponent), int(histogram.offset)
    if fixed is None:  # the float32 values jax computes: the index is rounded to float32 first
        index = (offset + np.arange(histogram.num_bins + 1)).astype(np.float32)
        edges = np.ldexp(index, exponent).astype(np.float32).astype(np.float64)
        lower, top = edges[:-1], edges[-1]
    else:
        lower = np.concatenate([[-np.inf], fixed.astype(np.float64)])
        top = np.float64(np.ldexp(np.float32(offset + histogram.num_bins), exponent))
    return _Bins(
        counts,
        np.asarray(histogram.weights, np.float64),
        lower,
        top,
        np.float64(histogram.score_min),
        exponent,
        offset,
        fixed,
    )


def _knots(bins: _Bins, xp: ModuleType) -> Array:
    """The curves' knots (B+1,), ascending: knot 0 is the lowest score seen rather than the lower
    edge of bin 0, so the curve is exact there."""
    lower = bins.lower_edges
    knots = xp.concatenate(
        [xp.reshape(bins.score_min, (1,)), lower[1:], xp.reshape(bins.top, (1,))]
    )
    return knots.astype(lower.dtype)


def _curve_points(bins: _Bins, counts: Array, xp: ModuleType) -> tuple[Array, Array]:
    """Knots (B+1,) ascending (:func:`_knots`) and the amount at or above each, (rows, B+1)
    ending in 0."""
    knots = _knots(bins, xp)
    at_or_above = xp.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    return knots, xp.pad(at_or_above, ((0, 0), (0, 1)))


def _interpolation(
    bins: _Bins, knots: Array, thresholds: Array, xp: ModuleType
) -> tuple[Array, Array]:
    """(left knot index, weight of the right knot) for reading a curve linearly at ``thresholds``.

    Auto-ranging bins are power-of-two wide and aligned, so a threshold's bin is found by scaling,
    not search. With fixed edges, a curve is read as a step at the edge at or below the threshold
    (exact at the edges themselves, the only thresholds read there).
    """
    num_bins = bins.lower_edges.shape[0]
    if bins.edges is not None:
        index = xp.searchsorted(bins.edges, thresholds, side="right")
        return index, xp.zeros(thresholds.shape, knots.dtype)
    wide = thresholds.astype(knots.dtype)
    cell = xp.floor(xp.ldexp(wide, -bins.exponent))
    offset = xp.asarray(bins.offset).astype(knots.dtype)
    index = xp.clip(cell - offset, 0, num_bins - 1).astype(xp.int32)
    left, right = knots[index], knots[index + 1]
    return index, xp.clip((wide - left) / (right - left), 0.0, 1.0)


def _read(points: Array, index: Array, weight: Array) -> Array:
    """Rows of curve ``points`` (rows, B+1) read at the interpolation positions."""
    return points[:, index] * (1.0 - weight) + points[:, index + 1] * weight


def lowest_fitting_edge(normal: ScoreHistogram, tail_size: int, xp: ModuleType = jnp) -> Array:
    """The lowest edge of ``normal`` with at most ``tail_size`` normal pixels at or above it.

    -inf while every normal score fits in the tail. Coarser grids' edges are edges of every finer
    grid and counts only grow, so this edge of the final histogram is at or above every cutoff used
    on the way: the kept tail holds every normal score at or above it, whatever the order of updates
    and merges.
    """
    bins = _bins(normal, xp)
    _, at_or_above = _curve_points(bins, bins.counts, xp)
    crowded_bins = xp.sum(at_or_above[0, :-1] > tail_size)
    edges = xp.concatenate([bins.lower_edges, xp.asarray([xp.inf], bins.lower_edges.dtype)])
    # With no crowded bin every normal score fits: the tail is complete, exact at any threshold.
    return xp.where(crowded_bins > 0, edges[crowded_bins], -xp.inf)


def curve_thresholds(state: BinnedCurves, num_thresholds: int, xp: ModuleType = jnp) -> Array:
    """The K float32 thresholds of the curves: anomalib's grid between the normal images' min and
    max (auto-ranging bins), or the fixed edges."""
    if state.normal.edges is not None:
        return xp.asarray(state.normal.edges, xp.float32)
    low, high = state.normal.score_min, state.normal.score_max
    if xp is np:
        low, high = np.float32(low), np.float32(high)
    return threshold_grid(low, high, num_thresholds, xp)


def shared_fpr(state: BinnedCurves, thresholds: Array, xp: ModuleType = jnp) -> Array:
    """The shared FPR at ascending ``thresholds`` (float32 with jax, float64 with numpy).

    Exact from the kept tail scores at or above their cutoff, read off the histogram below it.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> maps = jnp.array([[[0.1, 0.2]], [[0.3, 0.9]]])
        >>> state, _ = BinnedCurves.empty(64, None, 4).add(maps, jnp.array([[[0, 0]], [[0, 1]]]))
        >>> shared_fpr(state, np.float32([0.1, 0.15, 0.2]), np).tolist()
        [1.0, 0.5, 0.5]
    """
    bins = _bins(state.normal, xp)
    knots, above = _curve_points(bins, bins.counts, xp)
    index, weight = _interpolation(bins, knots, thresholds, xp)
    # Dividing by the total count makes the FPR exactly 1 at the lowest normal score.
    binned = _read(above, index, weight)[0] / above[0, 0]
    ascending = xp.sort(xp.asarray(state.tail_scores))
    kept_above = state.tail_size - xp.searchsorted(ascending, thresholds, side="left")
    exact = kept_above.astype(above.dtype) / above[0, 0]
    # The final histogram's edge, not the stored cutoff (which depends on the order of merges), so
    # that merge and all_reduce give bit for bit the result of one pass.
    exact_from = xp.maximum(
        xp.asarray(state.tail_cutoff), lowest_fitting_edge(state.normal, state.tail_size, xp)
    )
    return xp.where(thresholds >= exact_from, exact, binned)


def per_image_tprs(state: BinnedCurves, thresholds: Array, xp: ModuleType = jnp) -> Array:
    """(capacity, K) float32 TPRs read off the per-image histogram; NaN rows for normal or unused
    slots. With numpy, read in float64 a few images at a time."""
    bins = _bins(state.anomalous, xp)
    knots, above = _curve_points(bins, bins.counts, xp)
    index, weight = _interpolation(bins, knots, thresholds, xp)
    sizes = above[:, :1]
    if xp is jnp:
        return jnp.where(sizes > 0, _read(above, index, weight) / jnp.maximum(sizes, 1.0), jnp.nan)
    tprs = np.full((above.shape[0], thresholds.shape[0]), np.nan, np.float32)
    rows = np.flatnonzero(sizes[:, 0] > 0)
    curves = above[rows] / sizes[rows]
    steps = np.diff(curves, axis=1)
    for start in range(0, rows.size, _HOST_ROWS):
        chunk = slice(start, start + _HOST_ROWS)
        # the value at the left knot plus the weighted step to the right one: two gathers
        left = np.take(curves[chunk], index, axis=1)
        tprs[rows[chunk]] = left + np.take(steps[chunk], index, axis=1) * weight
    return tprs


def areas(
    state: BinnedCurves,
    thresholds: Array,
    shared_fpr: Array,
    band: IntegrationBand,
    xp: ModuleType = jnp,
) -> Array:
    """Trapezoid areas under each TPR curve (or the mean one) against ln(shared FPR).

    The trapezoid is linear in the TPR values and each value is linear in the curve's knots, so the
    areas are one product of the knot curves with a vector of per-knot coefficients: O(K + images ·
    B), never an images × K array.
    """
    coefficients = trapezoid_weights(shared_fpr, band, xp)
    bins = _bins(state.anomalous, xp, with_counts=False)
    knots = _knots(bins, xp)
    index, weight = _interpolation(bins, knots, thresholds, xp)
    size = knots.shape[0]
    if xp is jnp:
        per_knot = (
            jnp.zeros(size, jnp.float32)
            .at[index]
            .add(coefficients * (1.0 - weight))
            .at[index + 1]
            .add(coefficients * weight)
        )
    else:
        per_knot = np.bincount(index, coefficients * (1.0 - weight), minlength=size)
        per_knot += np.bincount(index + 1, coefficients * weight, minlength=size)
    return _curves_times(state, per_knot[:, None], xp)[:, 0]


def _curves_times(state: BinnedCurves, vectors: Array, xp: ModuleType) -> Array:
    """``curves @ vectors`` (rows, V) for the anomalous curves (rows, B+1) of
    :func:`_curve_points`, each normalised: by the number of anomalous images (the weighted mean
    curve, no capacity) or by its image's mask size.

    In numpy, with the counts per image (the large case), the curves are never made: a curve's
    knot ``j`` holds the counts of bins ``j`` and above, so ``curve @ v = counts @ cumsum(v)[:B]``,
    read a few images at a time.
    """
    if xp is jnp or state.capacity is None:
        bins = _bins(state.anomalous, xp)
        if state.capacity is None:
            _, curves = _curve_points(bins, bins.weights, xp)
            curves = curves / xp.asarray(state.num_anomalous)
        else:
            _, curves = _curve_points(bins, bins.counts, xp)
            curves = curves / xp.maximum(curves[:, :1], 1.0)
        return curves @ vectors
    prefix = np.cumsum(vectors, axis=0)[:-1]
    products, sizes = [], []
    for counts in _host_count_rows(state.anomalous):
        products.append(counts @ prefix)
        sizes.append(counts.sum(axis=1))
    return np.concatenate(products) / np.maximum(np.concatenate(sizes), 1.0)[:, None]


def _host_count_rows(histogram: ScoreHistogram) -> Iterator[np.ndarray]:
    """The counts as float64, :data:`_HOST_ROWS` rows at a time (exact up to 2**53)."""
    lo, hi = np.asarray(histogram.counts.lo), np.asarray(histogram.counts.hi)
    wide = bool(hi.any())
    for start in range(0, lo.shape[0], _HOST_ROWS):
        rows = slice(start, start + _HOST_ROWS)
        counts = lo[rows].astype(np.float64)
        if wide:
            counts += hi[rows].astype(np.float64) * 2.0**32
        yield counts


def mask_sizes(state: BinnedCurves, xp: ModuleType = jnp) -> Array:
    """(capacity,) mask pixels of each image slot (0 for normal images and unused slots)."""
    if xp is np:
        return np.concatenate([counts.sum(axis=1) for counts in _host_count_rows(state.anomalous)])
    return _bins(state.anomalous, xp).counts.sum(axis=1)


# -- certified bound on the difference to exact mode ----------------------------------------------


def _bracket(bins: _Bins, knots: Array, below: Array, above: Array, xp: ModuleType) -> tuple:
    """Knot indices ``(upper, lower)`` such that, for every threshold ``t`` in ``[below, above]``
    (elementwise), the amount at or above ``t`` lies between ``points[:, lower]`` and
    ``points[:, upper]`` of :func:`_curve_points`.

    A threshold in bin ``k`` (``knots[k] <= t < knots[k + 1]``, as the histogram bins its samples)
    has at most the amount at or above ``knots[k]`` and at least that at or above ``knots[k + 1]``;
    exactly the former when ``t <= knots[k]`` (a bin edge, or at or below the lowest score).
    """
    upper, _ = _interpolation(bins, knots, below, xp)
    index, _ = _interpolation(bins, knots, above, xp)
    lower = index + (above.astype(knots.dtype) > knots[index]).astype(index.dtype)
    return upper, lower


def _running(values: Array, xp: ModuleType, smallest: bool, reverse: bool) -> Array:
    """Running minimum (``smallest``) or maximum along the threshold axis, from either end."""
    if xp is jnp:
        scan = jax.lax.cummin if smallest else jax.lax.cummax
        return scan(values, axis=0, reverse=reverse)
    ufunc = np.minimum if smallest else np.maximum
    if reverse:
        return ufunc.accumulate(values[::-1])[::-1]
    return ufunc.accumulate(values)


def _per_knot(index: Array, coefficients: Array, size: int, xp: ModuleType) -> Array:
    if xp is jnp:
        return jnp.zeros(size, coefficients.dtype).at[index].add(coefficients)
    return np.bincount(index, coefficients, minlength=size)


class AreaBounds(NamedTuple):
    """Bounds on the exact trapezoid areas (not yet normalised), one per anomalous curve row."""

    lower: Array  # (rows,) at most the exact area
    upper: Array  # (rows,) at least the exact area
    widest: Array  # () the widest ln(FPR) range the exact band can span


def area_bounds(
    state: BinnedCurves,
    grid: Array,
    fpr_bounds: tuple[float, float],
    slack: Any = 0.0,
    xp: ModuleType = jnp,
) -> AreaBounds:
    """Certified bounds on exact mode's AUPIMO areas from what the binned state knows.

    Exact mode integrates the trapezoid through the points ``(ln FPR(t_j), TPR(t_j))`` of the
    threshold ``grid`` (within ``slack`` of each given threshold: 0 on the host, where the grid is
    exact mode's bit for bit) between the points whose FPR is nearest the bounds. The binned state
    brackets each point: the shared FPR by the normal histogram's bin (exact from the kept tail),
    every TPR by its histogram bin (:func:`_bracket`). Both are non-increasing in ``t``, so the
    trapezoid's height over ln(FPR) ``x`` is a non-decreasing step function ``H``; on a segment
    ``(x_{j+1}, x_j)``, ``H`` is at most the mean of the upper TPRs at ``j`` and ``j + 1`` as soon as
    the lowest possible ``x_{j+1}`` is below ``x``, and at least the mean of the lower TPRs while
    the highest possible ``x_j`` is above it. Integrating those envelopes over the widest (upper
    bound) and the narrowest (lower bound) range that the ends of the exact band allow gives the
    bounds. An end's FPR is within ``d`` of its bound, ``d`` the smallest worst-case distance of
    any grid point's FPR from it, and is the FPR of a point that can be that near (where the tail
    gives FPRs exactly, those are the nearest points themselves). O(K + rows · B), like
    :func:`areas`.
    """
    lower_fpr, upper_fpr = fpr_bounds
    below, above = grid - slack, grid + slack
    normal = _bins(state.normal, xp)
    knots, counted = _curve_points(normal, normal.counts, xp)
    total = counted[0, 0]
    upper_index, lower_index = _bracket(normal, knots, below, above, xp)
    ascending = xp.sort(xp.asarray(state.tail_scores))
    exact_from = xp.maximum(
        xp.asarray(state.tail_cutoff), lowest_fitting_edge(state.normal, state.tail_size, xp)
    )

    def kept_at_or_above(t: Array) -> Array:
        return (state.tail_size - xp.searchsorted(ascending, t, side="left")).astype(total.dtype)

    fpr_high = xp.where(below >= exact_from, kept_at_or_above(below), counted[0, upper_index])
    fpr_low = xp.where(above >= exact_from, kept_at_or_above(above), counted[0, lower_index])
    # The exact grid ends at the highest normal score: no point has an FPR below one pixel's.
    fpr_high = _running(xp.minimum(fpr_high / total, 1.0), xp, smallest=True, reverse=False)
    fpr_low = _running(xp.maximum(fpr_low / total, 1.0 / total), xp, smallest=False, reverse=True)
    log_low, log_high = xp.log(fpr_low), xp.log(fpr_high)

    def end(level: float) -> tuple[Array, Array]:
        """The range of ln(FPR) at the band's end nearest ``level``."""
        if level == 1.0:  # the last threshold with an FPR of exactly 1
            zero = xp.zeros((), log_low.dtype)
            return zero, zero
        # The nearest point is at most ``distance`` away; only points that can be that near can
        # be it (with a rounding allowance: exact mode sums its FPR differently).
        farthest = xp.maximum(xp.abs(fpr_high - level), xp.abs(fpr_low - level))
        distance = xp.min(farthest)
        straddles = (fpr_low <= level) & (level <= fpr_high)
        nearest = xp.where(
            straddles, 0.0, xp.minimum(xp.abs(fpr_high - level), xp.abs(fpr_low - level))
        )
        candidate = nearest <= distance + 16 * xp.finfo(fpr_low.dtype).eps * level
        lowest = xp.min(xp.where(candidate, xp.maximum(fpr_low, level - distance), xp.inf))
        highest = xp.max(xp.where(candidate, xp.minimum(fpr_high, level + distance), -xp.inf))
        return xp.log(lowest), xp.log(highest)

    top_low, top_high = end(upper_fpr)
    bottom_low, bottom_high = end(lower_fpr)
    infinity = xp.full((1,), xp.inf, log_low.dtype)
    ceiling = xp.concatenate([infinity, log_low[1:-1]])
    widths_high = xp.minimum(ceiling, top_high) - xp.maximum(log_low[1:], bottom_low)
    widths_low = xp.minimum(log_high[:-1], top_low) - xp.maximum(log_high[1:], bottom_high)

    def per_point(widths: Array) -> Array:
        widths = xp.maximum(widths, 0.0)
        return 0.5 * (xp.pad(widths, (0, 1)) + xp.pad(widths, (1, 0)))

    anomalous = _bins(state.anomalous, xp, with_counts=False)
    knots = _knots(anomalous, xp)
    upper_index, lower_index = _bracket(anomalous, knots, below, above, xp)
    size = knots.shape[0]
    per_knot = xp.stack(
        [
            _per_knot(upper_index, per_point(widths_high), size, xp),
            _per_knot(lower_index, per_point(widths_low), size, xp),
        ],
        axis=1,
    )
    upper, lower = xp.moveaxis(_curves_times(state, per_knot, xp), 1, 0)
    return AreaBounds(lower, upper, top_high - bottom_low)
