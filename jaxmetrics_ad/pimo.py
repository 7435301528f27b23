"""PIMO curves and AUPIMO scores: per-image recall against the shared FPR of the normal images.

Definitions (the AUPIMO paper's reference code as shipped in anomalib 2.7). An image is *normal* when
its ground-truth mask is empty, *anomalous* otherwise; a pixel is positive when ``score >= t``.

* Thresholds: ``num_thresholds`` values evenly spaced between the min and max score of the normal
  images, built in float32 the way ``torch.linspace`` does.
* Shared FPR at ``t``: the mean over normal images of each one's fraction of pixels scoring ``>= t``.
* PIMO of an anomalous image: its TPR (fraction of its mask scoring ``>= t``) at every threshold.
* AUPIMO of an anomalous image: the trapezoid area under its TPR against ``ln(shared FPR)`` between
  the thresholds whose shared FPR is nearest the two ``fpr_bounds`` (no interpolation), divided by
  ``ln(upper / lower)`` and clipped to [0, 1]. Normal images get NaN.

Errors and warnings follow anomalib: no normal or no anomalous image, or a bound outside the shared
FPR range → ValueError; both bounds met at one threshold, or at most 30 points in the integration
range without ``force=True`` → RuntimeError (with it, a RuntimeWarning); a bound met more than 1%
off, non-finite ln(FPR) points dropped, or fewer than 300 points → UserWarning. Masks must be bool
or integer 0/1 (float masks → TypeError, as in anomalib); maps and masks may carry a singleton
channel axis, (N, 1, H, W). ``AUPIMOResult.num_thresholds`` is, as in anomalib, the number of
points integrated, not the curve's. (anomalib's ``AUPIMOResult.image_classes`` is inverted; ours
is not.)

**Exact mode** (``num_bins=None``, the default; eager only). Reproduces anomalib to ~1e-7 per image.
Per anomalous image it keeps the scores of its mask pixels; of the normal images, their minimum and
one pooled upper tail of their pixels. The shared FPR is a mean of per-image FPRs, i.e. a sum over
normal pixels scoring ``>= t`` of ``1 / (pixels of the image × normal images)``, so the pooled tail
gives it exactly at every threshold above the highest score let go, whatever the number of images.
What is kept follows from what the result needs: PIMO and ``AUPIMO(return_average=False)`` return
the whole curve and keep every normal pixel; the mean AUPIMO needs the curve only where the shared
FPR is at most the upper bound ``U``, so once more than :data:`EXACT_KEEP_ALL_PIXELS` normal pixels
are held, it lets go of the lowest ones while the rest still carry a shared FPR of
``min(1, TAIL_MARGIN · U)`` over the images seen (ten times what is needed, so that normal images
arriving later with lower scores, which dilute it, are covered; at ``U = 1`` nothing is let go).
That keeps about ``TAIL_MARGIN · U`` of the normal pixels (0.1% at the default bounds). Should later
images still dilute the kept tail below ``U`` (ten times as many normal images as before, scoring
far lower), ``compute`` raises ValueError rather than return a wrong number. Compute runs on the
host with numpy in float64 (``np.sort`` + ``np.searchsorted``: O(pixels · log) time, never a
thresholds × pixels array).

**Streaming mode** (``num_bins=B``): fixed-size state, jit/scan-able, merged exactly by ``merge``
and ``all_reduce`` (``pmin``/``pmax`` + ``psum``; image order: this state's, then the other's, or
device order). Every image must have the same size (as in anomalib). Normal pixels are counted in
an auto-ranging :class:`~jaxmetrics_ad.histogram.ScoreHistogram` of ``B`` bins, and every normal
score at or above a cutoff is kept exactly (at most ``tail_size``, default 32,768: the cutoff is the
lowest bin edge with that few normal pixels above it), so the shared FPR is exact wherever fewer
than ``tail_size`` normal pixels score higher — that covers the AUPIMO band up to ~3e8 normal
pixels at the default bounds, where snapping the bounds to the nearest threshold needs it (read
off the histogram instead, the mean AUPIMO was 6e-4 off on the maps below). Mask
pixels of anomalous images go to a second histogram: one channel per image (``capacity`` images at
most, needed for per-image results; ``capacity × B × 8`` bytes) or, for the mean AUPIMO alone, one
channel weighted by 1/mask size (no image limit: the mean of the areas is the area of the mean TPR).
Compute builds anomalib's thresholds from the exact normal min/max (equal up to one float32 ulp),
reads the TPRs at them by linear interpolation inside the bins, and applies the same integration
rule, as one weighted sum over bins (O(K + images · B)). Measured against exact on
``make_category`` maps (300 images of 256×256, 100 normal, K = 300,000): mean AUPIMO within 4e-6
(``B = 4096``) and 4e-7 (``B = 16384``); per-image AUPIMO within 2.4e-4 (``B = 1024``), 1.7e-4
(``B = 4096``) and 6e-5 (``B = 16384``); see ``benchmarks/bench_pimo.py``. Inside jit, cases that
raise eagerly give NaN instead.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmetrics_ad.base import Metric
from jaxmetrics_ad.histogram import ScoreHistogram
from jaxmetrics_ad.validation import check_binary, check_finite, check_same_shape, is_traced

# anomalib refuses to integrate over this few points (unless forced) and warns below the second.
MIN_INTEGRATION_POINTS = 30
RECOMMENDED_INTEGRATION_POINTS = 300
DEFAULT_TAIL_SIZE = 32768
"""Streaming mode: how many of the highest normal scores are kept exactly (128 KiB)."""
# anomalib warns when the shared FPR met at a bound is off from it by more than this (relative).
BOUND_RTOL = 1e-2
EXACT_KEEP_ALL_PIXELS = 1 << 22
"""Exact mean AUPIMO: normal pixels held (16 MiB) before the lowest are let go (see the module)."""
TAIL_MARGIN = 10.0
"""Exact mean AUPIMO: the kept normal tail carries this many times the upper FPR bound."""


class PIMOResult(struct.PyTreeNode):
    """PIMO curves, field for field as anomalib's ``PIMOResult``.

    ``thresholds`` (K,) ascending; ``shared_fpr`` (K,) descending (NaN where an exact-mode tail does
    not reach); ``per_image_tprs`` (N, K), NaN rows for normal images.

    Example:
        >>> import jax.numpy as jnp
        >>> r = PIMOResult(jnp.zeros(2), jnp.ones(2), jnp.array([[jnp.nan] * 2, [1.0, 0.5]]))
        >>> r.image_classes.tolist()
        [0, 1]
    """

    thresholds: jax.Array
    shared_fpr: jax.Array
    per_image_tprs: jax.Array

    @property
    def image_classes(self) -> jax.Array:
        """1 for anomalous images (a TPR curve), 0 for normal ones (a NaN row)."""
        return (~jnp.all(jnp.isnan(self.per_image_tprs), axis=1)).astype(jnp.int32)


class AUPIMOResult(struct.PyTreeNode):
    """AUPIMO scores, field for field as anomalib's ``AUPIMOResult``; NaN for normal images.

    ``thresh_lower_bound`` / ``thresh_upper_bound`` are the thresholds where the upper / lower FPR
    bound was met (a low FPR needs a high threshold). ``num_thresholds`` is, as in anomalib, the
    number of curve points integrated (inside the bounds, finite ln(shared FPR)), not the number of
    thresholds of the curve; an int, or an int32 array when computed inside jit.

    Example:
        >>> import jax.numpy as jnp
        >>> r = AUPIMOResult(1e-5, 1e-4, 3000, 0.5, 0.9, jnp.array([jnp.nan, 0.25]))
        >>> r.image_classes.tolist(), r.fpr_bounds
        ([0, 1], (1e-05, 0.0001))
    """

    fpr_lower_bound: float = struct.field(pytree_node=False)
    fpr_upper_bound: float = struct.field(pytree_node=False)
    num_thresholds: int | jax.Array  # points integrated: traced inside jit
    thresh_lower_bound: jax.Array
    thresh_upper_bound: jax.Array
    aupimos: jax.Array

    @property
    def fpr_bounds(self) -> tuple[float, float]:
        """(lower, upper) FPR bounds of the integration range."""
        return self.fpr_lower_bound, self.fpr_upper_bound

    @property
    def image_classes(self) -> jax.Array:
        """1 for anomalous images (a finite AUPIMO), 0 for normal ones (NaN)."""
        return (~jnp.isnan(self.aupimos)).astype(jnp.int32)


# -- anomalib's threshold grid ---------------------------------------------------------------------


def anomalib_thresholds(lowest: float, highest: float, num_thresholds: int) -> np.ndarray:
    """``num_thresholds`` float32 values from ``lowest`` to ``highest`` as ``torch.linspace`` makes.

    The step is rounded to float32; the first half counts up from ``lowest``, the second half down
    from ``highest``, each value rounded to float32 once (numpy's linspace differs in the last bit
    for about half of them, which changes which pixels clear a threshold).

    Example:
        >>> anomalib_thresholds(1.0, 7.0, 7).tolist()
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    """
    low, high = np.float32(lowest), np.float32(highest)
    step = np.float64(np.float32((high - low) / np.float32(num_thresholds - 1)))
    index = np.arange(num_thresholds, dtype=np.float64)
    from_low = np.float64(low) + step * index
    from_high = np.float64(high) - step * (num_thresholds - 1 - index)
    return np.where(index < num_thresholds // 2, from_low, from_high).astype(np.float32)


def _anomalib_thresholds_jax(lowest: jax.Array, highest: jax.Array, num: int) -> jax.Array:
    """The same grid in float32 arithmetic (jit-able; may differ in the last bit)."""
    step = (highest - lowest) / jnp.float32(num - 1)
    index = jnp.arange(num, dtype=jnp.float32)
    return jnp.where(
        index < num // 2, lowest + step * index, highest - step * (num - 1 - index)
    ).astype(jnp.float32)


# -- the AUPIMO integration rule (numpy, with anomalib's errors and warnings) ----------------------


def _nearest_index(shared_fpr: np.ndarray, level: float, first: int) -> int:
    """Index of the shared FPR nearest ``level`` among indices >= ``first`` (first on ties).

    At level 1.0 many thresholds reach FPR 1: like the reference code, take the highest one.
    """
    known = shared_fpr[first:]
    if not known.min() <= level <= known.max():
        raise ValueError(
            f"fpr_bounds value {level} is outside the shared FPR range "
            f"[{known.min()}, {known.max()}]"
        )
    if level == 1.0:
        return first + int(np.flatnonzero(known == 1.0).max())
    return first + int(np.argmin(np.abs(known - level)))


def _integration_range(
    shared_fpr: np.ndarray, fpr_bounds: tuple[float, float], force: bool, name: str
) -> tuple[int, int, np.ndarray]:
    """(low threshold index, high threshold index, finite-point mask of the slice), or raise.

    ``shared_fpr`` is float64, descending, NaN below the thresholds the exact tails cover.
    """
    lower_fpr, upper_fpr = fpr_bounds
    covered = np.flatnonzero(~np.isnan(shared_fpr))
    first = int(covered[0]) if covered.size else len(shared_fpr)
    if first == len(shared_fpr) or (first > 0 and shared_fpr[first] < upper_fpr):
        reached = shared_fpr[first] if first < len(shared_fpr) else 0.0
        raise ValueError(
            f"{name}: the kept upper tail of the normal pixels reaches a shared FPR of only "
            f"{reached:.3g}, below the upper FPR bound {upper_fpr}: normal images added late scored "
            "far lower than the early ones, which the tail let go of; update in shuffled order, or "
            "use return_average=False (keeps every normal pixel)"
        )
    # A low FPR bound is met at a high threshold: the bounds swap when mapped to thresholds.
    high_index = _nearest_index(shared_fpr, lower_fpr, first)
    low_index = _nearest_index(shared_fpr, upper_fpr, first)
    for bound, index in ((lower_fpr, high_index), (upper_fpr, low_index)):
        if not np.isclose(shared_fpr[index], bound, rtol=BOUND_RTOL):
            warnings.warn(
                f"{name}: FPR bound {bound} is not met within {BOUND_RTOL:.0%}: the nearest shared "
                f"FPR is {shared_fpr[index]}",
                UserWarning,
                stacklevel=4,
            )
    if low_index >= high_index:
        raise RuntimeError(
            f"{name}: fpr_bounds {fpr_bounds} are met at threshold indices {low_index} and "
            f"{high_index}, which must be strictly increasing; increase num_thresholds"
        )
    finite = np.isfinite(np.log(shared_fpr[low_index : high_index + 1]))
    if not finite.any():
        raise RuntimeError(f"{name}: no finite ln(shared FPR) in the integration range")
    if not finite.all():
        warnings.warn(
            f"{name}: dropping {int((~finite).sum())} non-finite ln(shared FPR) points",
            UserWarning,
            stacklevel=4,
        )
    num_points = int(finite.sum())
    if num_points <= MIN_INTEGRATION_POINTS:
        message = (
            f"{name}: only {num_points} points in the FPR integration range (more than "
            f"{MIN_INTEGRATION_POINTS} needed); increase num_thresholds"
        )
        if not force:
            raise RuntimeError(message + " or pass force=True")
        warnings.warn(message + "; computation was forced", RuntimeWarning, stacklevel=4)
    if num_points < RECOMMENDED_INTEGRATION_POINTS:
        warnings.warn(
            f"{name}: AUPIMO may be inaccurate with only {num_points} points in the FPR "
            f"integration range (fewer than {RECOMMENDED_INTEGRATION_POINTS})",
            UserWarning,
            stacklevel=4,
        )
    return low_index, high_index, finite


def _areas(tprs: np.ndarray, shared_fpr: np.ndarray, integration) -> np.ndarray:
    """Normalised trapezoid areas of TPR rows (already sliced) against ln(shared FPR), clipped."""
    low_index, high_index, finite = integration
    # Reverse so that ln(FPR) ascends and the areas come out positive.
    log_fpr = np.log(shared_fpr[low_index : high_index + 1][finite])[::-1]
    return np.trapezoid(tprs[:, finite][:, ::-1], log_fpr, axis=1)


# -- exact mode: kept score tails on the host ------------------------------------------------------


class _TailBatch(NamedTuple):
    """What exact mode keeps of one batch (numpy arrays, host memory)."""

    normal_scores: np.ndarray  # (kept,) float32: the batch's kept normal pixels, pooled
    num_normal: np.ndarray  # () int64: normal images in the batch
    normal_min: np.ndarray  # () float32: their lowest score (inf without a normal image)
    anomalous_scores: np.ndarray  # (mask pixels,) float32, image after image
    anomalous_sizes: np.ndarray  # (anomalous images,) int64: mask size of each
    is_anomalous: np.ndarray  # (images,) bool, in input order
    num_pixels: np.ndarray  # () int64: pixels per image in this batch


def _host_mask(masks: Any) -> np.ndarray:
    """A numpy bool mask, ``True`` where non-zero (a bool byte of 0xFF, as Pillow gives, is True)."""
    masks = np.asarray(masks)
    if masks.dtype == np.bool_:
        return masks.view(np.uint8) != 0
    return masks != 0


def _mask_labels(masks: jax.Array) -> jax.Array:
    """Mask values as stored, but bool masks as 0/1 whatever their True byte (jit-safe)."""
    if masks.dtype == jnp.bool_:
        # Comparisons with 1 see the raw byte (0xFF from Pillow is not 1), and XLA folds a
        # comparison with False away; reading the byte does neither.
        return (masks.view(jnp.uint8) != 0).astype(jnp.int32)
    return masks


class ExactTails(struct.PyTreeNode):
    """Exact-mode state: the normal pixels' pooled upper tail and anomalous images' mask scores.

    Host numpy arrays, one :class:`_TailBatch` per update (the state grows, so it is used eagerly).
    ``keep_fpr`` is the shared FPR (over the normal images seen) that the kept normal pixels must
    carry once more than :data:`EXACT_KEEP_ALL_PIXELS` are held; 1.0 keeps every normal pixel.
    ``let_go_max`` is the highest normal score let go: the shared FPR is exact above it.

    Example:
        >>> import numpy as np
        >>> maps = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
        >>> masks = np.array([[[0, 0], [0, 0]], [[0, 1], [0, 0]]])
        >>> state = ExactTails.empty(keep_fpr=1.0).add(maps, masks)
        >>> state.batches[0].normal_scores.tolist(), state.batches[0].anomalous_scores.tolist()
        ([0.0, 1.0, 2.0, 3.0], [5.0])
        >>> state.shared_fpr(np.array([0.5, 2.0, 3.5])).tolist()
        [0.75, 0.5, 0.0]
    """

    batches: tuple[_TailBatch, ...]
    let_go_max: np.ndarray  # () float64, -inf while nothing was let go
    keep_fpr: float = struct.field(pytree_node=False, default=1.0)
    grows: ClassVar[bool] = True  # shapes change with every update: never jit it

    @classmethod
    def empty(cls, keep_fpr: float) -> ExactTails:
        """A state holding no image."""
        return cls(batches=(), let_go_max=np.asarray(-np.inf), keep_fpr=keep_fpr)

    def add(self, maps: Any, masks: Any) -> ExactTails:
        """Keeps what exact compute needs of a batch of maps (N, H, W) and binary masks (N, H, W)."""
        maps = np.asarray(maps, dtype=np.float32)
        masks = _host_mask(masks)
        num_images = maps.shape[0]
        num_pixels = int(np.prod(maps.shape[1:]))
        flat_maps = maps.reshape(num_images, num_pixels)
        flat_masks = masks.reshape(num_images, num_pixels)
        is_anomalous = flat_masks.any(axis=1)
        normal = flat_maps[~is_anomalous].ravel()
        batch = _TailBatch(
            # Scores at or below one already let go never count where the shared FPR is known.
            normal_scores=normal[normal > self.let_go_max],
            num_normal=np.asarray(num_images - int(is_anomalous.sum()), np.int64),
            normal_min=np.asarray(normal.min(initial=np.inf), np.float32),
            anomalous_scores=flat_maps[is_anomalous][flat_masks[is_anomalous]],
            anomalous_sizes=flat_masks[is_anomalous].sum(axis=1),
            is_anomalous=is_anomalous,
            num_pixels=np.asarray(num_pixels, np.int64),
        )
        state = self.replace(batches=(*self.batches, batch))
        if self.keep_fpr < 1.0 and state.num_kept() > EXACT_KEEP_ALL_PIXELS:
            state = state.trimmed()
        return state

    def trimmed(self) -> ExactTails:
        """The state without the lowest normal pixels, keeping a shared FPR of ``keep_fpr``.

        Each normal pixel adds ``1 / (its image's pixels)`` to the sum of the normal images' FPRs
        at every threshold it clears; the highest pixels are kept until that sum reaches
        ``keep_fpr`` times the number of normal images (ties with the last one included).
        """
        scores = np.concatenate([b.normal_scores for b in self.batches])
        weights = np.concatenate(
            [np.full(b.normal_scores.size, 1.0 / int(b.num_pixels)) for b in self.batches]
        )
        needed = self.keep_fpr * self.num_normal()
        # The tail holds at most this many pixels (each weighs at least 1 / the largest image):
        # select them in linear time, sort only those.
        largest = max(int(b.num_pixels) for b in self.batches)
        count = min(scores.size, math.ceil(needed * largest) + 1)
        top = np.argpartition(scores, scores.size - count)[scores.size - count :]
        descending = top[np.argsort(scores[top], kind="stable")[::-1]]
        carried = np.cumsum(weights[descending])
        last = int(np.searchsorted(carried, needed, side="left"))
        if last >= descending.size:
            return self
        cutoff = scores[descending[last]]
        let_go = scores[scores < cutoff]
        if not let_go.size:
            return self
        batches = tuple(
            b._replace(normal_scores=b.normal_scores[b.normal_scores >= cutoff])
            for b in self.batches
        )
        let_go_max = max(float(self.let_go_max), float(let_go.max()))
        return self.replace(batches=batches, let_go_max=np.asarray(let_go_max))

    def merge(self, other: ExactTails) -> ExactTails:
        """The batches of both, this state's images first."""
        let_go_max = np.maximum(self.let_go_max, other.let_go_max)
        return self.replace(batches=self.batches + other.batches, let_go_max=let_go_max)

    def all_reduce(self, axis_name: str) -> ExactTails:
        """Not available: exact mode keeps host arrays of data-dependent size."""
        raise TypeError(
            "exact PIMO/AUPIMO keeps host arrays of data-dependent size and cannot all_reduce "
            f"over {axis_name!r}; merge() per-device metrics on the host, or use num_bins=<int>"
        )

    def num_normal(self) -> int:
        """Normal images seen."""
        return sum(int(b.num_normal) for b in self.batches)

    def num_kept(self) -> int:
        """Normal pixels held."""
        return sum(b.normal_scores.size for b in self.batches)

    def image_classes(self) -> np.ndarray:
        """(images,) 1 for anomalous, 0 for normal, in input order."""
        if not self.batches:
            return np.zeros(0, np.int64)
        return np.concatenate([b.is_anomalous for b in self.batches]).astype(np.int64)

    def thresholds(self, num_thresholds: int) -> np.ndarray:
        """anomalib's grid between the normal images' min and max (ValueError if constant)."""
        lowest = min(float(b.normal_min) for b in self.batches)
        highest = max(float(b.normal_scores.max(initial=-np.inf)) for b in self.batches)
        if not lowest < highest:
            raise ValueError("maps of the normal images are constant: no threshold range")
        return anomalib_thresholds(lowest, highest, num_thresholds)

    def shared_fpr(self, thresholds: np.ndarray) -> np.ndarray:
        """float64 shared FPR at each threshold; NaN at or below the highest score let go."""
        scores_by_size: dict[int, list[np.ndarray]] = {}
        for batch in self.batches:
            scores_by_size.setdefault(int(batch.num_pixels), []).append(batch.normal_scores)
        # Images of one size share a sort: their summed counts divided by the size.
        fpr_sum = np.zeros(len(thresholds))
        for num_pixels, scores in scores_by_size.items():
            scores = np.sort(np.concatenate(scores))
            at_or_above = len(scores) - np.searchsorted(scores, thresholds, side="left")
            fpr_sum += at_or_above / num_pixels
        shared_fpr = fpr_sum / self.num_normal()
        shared_fpr[thresholds <= self.let_go_max] = np.nan
        return shared_fpr

    def anomalous_scores(self) -> list[np.ndarray]:
        """The sorted mask scores of each anomalous image, in input order."""
        images = []
        for batch in self.batches:
            starts = np.cumsum(batch.anomalous_sizes) - batch.anomalous_sizes
            for start, size in zip(starts, batch.anomalous_sizes):
                images.append(np.sort(batch.anomalous_scores[start : start + size]))
        return images


def _fraction_at_or_above(sorted_scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """float64 fraction of the (ascending, non-empty) scores that are ``>= thresholds``."""
    below = np.searchsorted(sorted_scores, thresholds, side="left")
    return (len(sorted_scores) - below) / len(sorted_scores)


# -- streaming mode: two auto-ranging histograms ---------------------------------------------------


class BinnedCurves(struct.PyTreeNode):
    """Streaming state: normal pixels in a histogram plus their exact top scores; mask pixels binned.

    ``normal`` counts every normal pixel; ``tail_scores`` holds every normal score ``>=
    tail_cutoff`` exactly (at most ``tail_size``, unordered, -inf padded), so the shared FPR is exact
    at thresholds ``>= tail_cutoff``. The cutoff is the lowest histogram edge with at most
    ``tail_size`` normal pixels above it; it only rises, and pixels below it are let go. ``anomalous`` has one channel per image slot
    (``capacity`` set: slot = arrival index, normal images leave theirs empty) or a single channel
    weighted by 1/mask size, whose weight above a threshold is the sum of the TPRs. Every image must
    have ``num_pixels`` pixels (set by the first update), as anomalib requires too.

    Example:
        >>> import jax.numpy as jnp
        >>> maps = jnp.array([[[0.1, 0.2]], [[0.3, 0.9]]])
        >>> masks = jnp.array([[[0, 0]], [[0, 1]]])
        >>> empty = BinnedCurves.empty(num_bins=64, capacity=None, tail_size=4)
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
    def empty(cls, num_bins: int, capacity: int | None, tail_size: int) -> BinnedCurves:
        """An empty state; ``capacity`` images get their own curve (None: only the mean curve)."""
        if capacity is None:
            anomalous = ScoreHistogram.auto(num_bins, num_channels=1, num_weights=1)
        else:
            anomalous = ScoreHistogram.auto(num_bins, num_channels=capacity)
        zero = jnp.zeros((), jnp.int32)
        return cls(
            normal=ScoreHistogram.auto(num_bins, num_channels=1),
            tail_scores=jnp.full((tail_size,), -jnp.inf, jnp.float32),
            tail_cutoff=jnp.array(-jnp.inf, jnp.float32),
            anomalous=anomalous,
            num_pixels=zero,
            num_normal=zero,
            num_anomalous=zero,
            num_images=zero,
            capacity=capacity,
        )

    def add(self, maps: jax.Array, masks: jax.Array) -> tuple[BinnedCurves, jax.Array]:
        """Adds a batch (N, H, W); returns the state and the number of invalid pixels.

        Invalid pixels (non-finite score, mask value outside {0, 1}) are left out and counted; so
        is a whole batch whose images differ in size from earlier ones.
        """
        num_images = maps.shape[0]
        num_pixels = math.prod(maps.shape[1:])
        scores = jnp.reshape(maps, (num_images, num_pixels)).astype(jnp.float32)
        labels = _mask_labels(jnp.reshape(masks, (num_images, num_pixels)))
        same_size = (self.num_pixels == 0) | (self.num_pixels == num_pixels)
        valid = jnp.isfinite(scores) & ((labels == 0) | (labels == 1)) & same_size
        positive = valid & (labels == 1)
        is_anomalous = jnp.any(labels == 1, axis=1)
        normal_pixel = valid & ~is_anomalous[:, None]
        normal = self.normal.add(scores, jnp.where(normal_pixel, 0, -1))
        new_scores = jnp.where(normal_pixel, scores, -jnp.inf).ravel()
        tail_scores, tail_cutoff = _keep_tail(
            jnp.concatenate([self.tail_scores, new_scores]),
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
            slots = self.num_images + jnp.arange(num_images, dtype=jnp.int32)
            stored = positive & (slots < self.capacity)[:, None]
            anomalous = self.anomalous.add(scores, jnp.where(stored, slots[:, None], -1))
        num_anomalous = jnp.where(same_size, jnp.sum(is_anomalous), 0).astype(jnp.int32)
        num_normal = jnp.where(same_size, num_images, 0) - num_anomalous
        state = self.replace(
            normal=normal,
            tail_scores=tail_scores,
            tail_cutoff=tail_cutoff,
            anomalous=anomalous,
            num_pixels=jnp.where(same_size, num_pixels, self.num_pixels).astype(jnp.int32),
            num_normal=self.num_normal + num_normal,
            num_anomalous=self.num_anomalous + num_anomalous,
            num_images=self.num_images + jnp.where(same_size, num_images, 0),
        )
        return state, jnp.sum(~valid).astype(jnp.int32)

    def merge(self, other: BinnedCurves) -> BinnedCurves:
        """The state of both image sets, this state's images first (exact: histograms add)."""
        normal = self.normal.merge(other.normal)
        tail_scores, tail_cutoff = _keep_tail(
            jnp.concatenate([self.tail_scores, other.tail_scores]),
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
            jax.lax.all_gather(self.tail_scores, axis_name).ravel(),
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
    candidates: jax.Array, cutoff: jax.Array, normal: ScoreHistogram, tail_size: int
) -> tuple[jax.Array, jax.Array]:
    """The candidates at or above the raised cutoff, packed into ``tail_size`` slots, and the cutoff.

    The candidates hold every normal score at or above ``cutoff`` (and -inf fillers). The new cutoff
    is the lowest edge of ``normal`` (which counts every normal pixel) with at most ``tail_size``
    pixels at or above it, so they always fit; it never falls, so nothing needed was let go before.
    A cumulative sum packs them: O(candidates), unlike a top-k, which is slow on smooth maps.
    """
    cutoff = jnp.maximum(cutoff, _lowest_fitting_edge(normal, tail_size))
    kept = jnp.isfinite(candidates) & (candidates >= cutoff)
    slots = jnp.where(kept, jnp.cumsum(kept) - 1, tail_size)
    tail = jnp.full((tail_size,), -jnp.inf, jnp.float32).at[slots].set(candidates, mode="drop")
    return tail, cutoff


def _lowest_fitting_edge(normal: ScoreHistogram, tail_size: int) -> jax.Array:
    """The lowest edge of ``normal`` with at most ``tail_size`` normal pixels at or above it.

    -inf while every normal score fits in the tail. Coarser grids' edges are edges of every finer
    grid and counts only grow, so this edge of the final histogram is at or above every cutoff used
    on the way: the kept tail holds every normal score at or above it, whatever the order of updates
    and merges.
    """
    _, at_or_above = _curve_points(normal, normal.counts.as_float())
    crowded_bins = jnp.sum(at_or_above[0, :-1] > tail_size)
    edges = jnp.append(normal.lower_edges(), jnp.inf)
    # With no crowded bin every normal score fits: the tail is complete, exact at any threshold.
    return jnp.where(crowded_bins > 0, edges[crowded_bins], -jnp.inf)


def _curve_points(histogram: ScoreHistogram, counts: jax.Array):
    """Knots (B+1,) ascending and the amount at or above each, (rows, B+1) ending in 0.

    Knot 0 is the lowest score seen rather than the lower edge of bin 0, so the curve is exact there.
    """
    knots = (
        jnp.append(
            histogram.lower_edges(),
            jnp.ldexp(
                (histogram.offset + histogram.num_bins).astype(jnp.float32), histogram.exponent
            ),
        )
        .at[0]
        .set(histogram.score_min)
    )
    at_or_above = jnp.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    return knots, jnp.pad(at_or_above, ((0, 0), (0, 1)))


def _interpolation(histogram: ScoreHistogram, knots: jax.Array, thresholds: jax.Array):
    """(left knot index, weight of the right knot) for reading a curve linearly at ``thresholds``.

    Bins are power-of-two wide and aligned, so a threshold's bin is found by scaling, not search.
    """
    cell = jnp.floor(jnp.ldexp(thresholds, -histogram.exponent))
    index = jnp.clip(cell - histogram.offset.astype(jnp.float32), 0, histogram.num_bins - 1)
    index = index.astype(jnp.int32)
    left, right = knots[index], knots[index + 1]
    return index, jnp.clip((thresholds - left) / (right - left), 0.0, 1.0)


def _read(points: jax.Array, index: jax.Array, weight: jax.Array) -> jax.Array:
    """Rows of curve ``points`` (rows, B+1) read at the interpolation positions."""
    return points[:, index] * (1.0 - weight) + points[:, index + 1] * weight


def _binned_shared_fpr(state: BinnedCurves, num_thresholds: int):
    """(thresholds, shared FPR) at anomalib's grid (jit-able).

    Exact from the kept tail scores at or above their cutoff, read off the histogram below it.
    """
    normal = state.normal
    thresholds = _anomalib_thresholds_jax(normal.score_min, normal.score_max, num_thresholds)
    knots, above = _curve_points(normal, normal.counts.as_float())
    index, weight = _interpolation(normal, knots, thresholds)
    # Dividing by the total count makes the FPR exactly 1 at the lowest normal score.
    binned = _read(above, index, weight)[0] / above[0, 0]
    ascending = jnp.sort(state.tail_scores)
    kept_above = state.tail_size - jnp.searchsorted(ascending, thresholds, side="left")
    exact = kept_above.astype(jnp.float32) / above[0, 0]
    # The final histogram's edge, not the stored cutoff (which depends on the order of merges), so
    # that merge and all_reduce give bit for bit the result of one pass.
    exact_from = jnp.maximum(state.tail_cutoff, _lowest_fitting_edge(normal, state.tail_size))
    return thresholds, jnp.where(thresholds >= exact_from, exact, binned)


_binned_shared_fpr_jit = jax.jit(_binned_shared_fpr, static_argnums=1)


def _binned_per_image_tprs(state: BinnedCurves, thresholds: jax.Array) -> jax.Array:
    """(capacity, K) TPRs read off the per-image histogram; NaN rows for normal or unused slots."""
    anomalous = state.anomalous
    knots, above = _curve_points(anomalous, anomalous.counts.as_float())
    index, weight = _interpolation(anomalous, knots, thresholds)
    sizes = above[:, :1]
    return jnp.where(sizes > 0, _read(above, index, weight) / jnp.maximum(sizes, 1.0), jnp.nan)


def _binned_integration(shared_fpr: jax.Array, fpr_bounds: tuple[float, float], force: bool):
    """(low index, high index, usable) by anomalib's rule, in jax (no errors: ``usable`` is False)."""
    lower_fpr, upper_fpr = fpr_bounds
    high_index = jnp.argmin(jnp.abs(shared_fpr - lower_fpr))
    if upper_fpr == 1.0:
        last = shared_fpr.shape[0] - 1
        low_index = last - jnp.argmax((shared_fpr == 1.0)[::-1])
    else:
        low_index = jnp.argmin(jnp.abs(shared_fpr - upper_fpr))
    in_range = (jnp.min(shared_fpr) <= lower_fpr) & (upper_fpr <= jnp.max(shared_fpr))
    enough = (high_index - low_index + 1 > MIN_INTEGRATION_POINTS) | force
    return low_index, high_index, in_range & (low_index < high_index) & enough


def _binned_areas(
    state: BinnedCurves, thresholds: jax.Array, shared_fpr: jax.Array, integration
) -> jax.Array:
    """Trapezoid areas under each TPR curve (or the mean one) against ln(shared FPR).

    The trapezoid is linear in the TPR values and each value is linear in the curve's knots, so the
    areas are one product of the knot curves with a vector of per-knot coefficients.
    """
    low_index, high_index, _ = integration
    log_fpr = jnp.log(shared_fpr)
    step = jnp.arange(shared_fpr.shape[0] - 1)
    widths = jnp.where((step >= low_index) & (step < high_index), log_fpr[:-1] - log_fpr[1:], 0.0)
    coefficients = 0.5 * (jnp.pad(widths, (0, 1)) + jnp.pad(widths, (1, 0)))
    anomalous = state.anomalous
    if state.capacity is None:
        knots, above = _curve_points(anomalous, anomalous.weights)
        above = above / state.num_anomalous
    else:
        knots, above = _curve_points(anomalous, anomalous.counts.as_float())
        above = above / jnp.maximum(above[:, :1], 1.0)
    index, weight = _interpolation(anomalous, knots, thresholds)
    per_knot = (
        jnp.zeros(knots.shape[0], jnp.float32)
        .at[index]
        .add(coefficients * (1.0 - weight))
        .at[index + 1]
        .add(coefficients * weight)
    )
    return above @ per_knot


# -- the metrics -----------------------------------------------------------------------------------


def _checked_config(
    num_thresholds: int, num_bins: int | None, capacity: int | None, tail_size: int
) -> None:
    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not is_int(num_thresholds) or num_thresholds < 2:
        raise ValueError(f"num_thresholds must be an int >= 2, got {num_thresholds!r}")
    if num_bins is not None and (not is_int(num_bins) or num_bins < 3):
        raise ValueError(f"num_bins must be None (exact) or an int >= 3, got {num_bins!r}")
    if capacity is not None and (not is_int(capacity) or capacity < 1):
        raise ValueError(f"capacity must be None or a positive int, got {capacity!r}")
    if capacity is not None and num_bins is None:
        raise ValueError("capacity applies to streaming mode only (num_bins=<int>)")
    if not is_int(tail_size) or tail_size < 1:
        raise ValueError(f"tail_size must be a positive int, got {tail_size!r}")


def _image_batch(array: jax.Array, field: str) -> jax.Array:
    """``array`` as (N, H, W), its singleton channel axis dropped; ValueError naming ``field``."""
    if array.ndim == 4 and array.shape[1] == 1:
        return array[:, 0]
    if array.ndim != 3:
        raise ValueError(f"{field}: expected shape (N, H, W) or (N, 1, H, W), got {array.shape}")
    return array


class _PerImageOverlapMetric(Metric):
    """Shared state, input checks and image-class checks of PIMO and AUPIMO."""

    default_fields = ("anomaly_map", "gt_mask")

    @property
    def is_exact(self) -> bool:
        """True in exact mode (``num_bins=None``)."""
        return self.num_bins is None

    def _empty_state(self) -> ExactTails | BinnedCurves:
        if self.is_exact:
            return ExactTails.empty(self.tail_fraction)
        return BinnedCurves.empty(self.num_bins, self.capacity, self.tail_size)

    def _check_inputs(self, maps: jax.Array, masks: jax.Array) -> None:
        maps_field, masks_field = self.fields
        maps, masks = _image_batch(maps, maps_field), _image_batch(masks, masks_field)
        check_same_shape(maps, maps_field, masks, masks_field)
        if not jnp.issubdtype(maps.dtype, jnp.floating):
            raise TypeError(f"{maps_field}: expected floating-point scores, got dtype {maps.dtype}")
        if not (masks.dtype == jnp.bool_ or jnp.issubdtype(masks.dtype, jnp.integer)):
            raise TypeError(
                f"{masks_field}: expected bool or integer 0/1 masks (as anomalib), got dtype "
                f"{masks.dtype}"
            )
        check_finite(maps, maps_field)
        check_binary(masks, masks_field)
        if not self.is_exact and not is_traced(self.state.num_pixels):
            seen, given = int(self.state.num_pixels), math.prod(maps.shape[1:])
            if seen not in (0, given):
                raise ValueError(
                    f"{maps_field}: images of {given} pixels after images of {seen}; streaming "
                    "mode needs one image size"
                )

    def _update_state(self, maps: jax.Array, masks: jax.Array):
        maps, masks = _image_batch(maps, self.fields[0]), _image_batch(masks, self.fields[1])
        if self.is_exact:
            if is_traced(maps, masks):
                raise TypeError(
                    f"{self.name}: exact mode keeps data-dependent amounts on the host; update it "
                    "eagerly, or use num_bins=<int> inside jit"
                )
            return self.state.add(maps, masks), jnp.zeros((), jnp.int32)
        return self.state.add(maps, masks)

    def _check_state(self) -> None:
        if self.is_exact:
            classes = self.state.image_classes()
            num_normal, num_anomalous = int((classes == 0).sum()), int((classes == 1).sum())
        else:
            if bool(self.state.overflowed()):
                raise ValueError(
                    f"{self.name}: {int(self.state.num_images)} images exceed capacity="
                    f"{self.capacity}"
                )
            num_normal, num_anomalous = int(self.state.num_normal), int(self.state.num_anomalous)
        if num_normal == 0:
            raise ValueError(f"{self.name}: needs at least one normal image (an empty gt_mask)")
        if num_anomalous == 0:
            raise ValueError(
                f"{self.name}: needs at least one anomalous image (a non-empty gt_mask)"
            )
        if not self.is_exact and not self.state.normal.score_min < self.state.normal.score_max:
            raise ValueError(f"{self.name}: maps of the normal images are constant")

    def _exact_curves(self) -> tuple[np.ndarray, np.ndarray]:
        if is_traced(*jax.tree_util.tree_leaves(self.state)):
            raise TypeError(f"{self.name}: exact mode computes eagerly; use num_bins=<int> in jit")
        thresholds = self.state.thresholds(self.num_thresholds)
        return thresholds, self.state.shared_fpr(thresholds.astype(np.float64))

    def _exact_per_image_tprs(self, thresholds: np.ndarray) -> np.ndarray:
        classes = self.state.image_classes()
        tprs = np.full((len(classes), len(thresholds)), np.nan, np.float32)
        for row, scores in zip(np.flatnonzero(classes), self.state.anomalous_scores()):
            # Count each score once at the last threshold it clears, then sum from the top: O(K)
            # per image rather than a search per threshold.
            cleared = np.searchsorted(thresholds, scores, side="right")
            counts = np.bincount(cleared, minlength=len(thresholds) + 1)
            at_or_above = np.cumsum(counts[::-1])[::-1][1:]
            tprs[row] = at_or_above / len(scores)
        return tprs

    def _binned_pimo(self) -> PIMOResult:
        thresholds, shared_fpr = _binned_shared_fpr(self.state, self.num_thresholds)
        tprs = _binned_per_image_tprs(self.state, thresholds)
        return PIMOResult(thresholds, shared_fpr, self._poison(tprs))

    def _poison(self, values: jax.Array) -> jax.Array:
        """NaN where the streaming state cannot give a value (a missing class, overflow)."""
        state = self.state
        undefined = (
            (state.num_normal == 0)
            | (state.num_anomalous == 0)
            | state.overflowed()
            | ~(state.normal.score_min < state.normal.score_max)
        )
        return jnp.where(undefined, jnp.nan, values)

    def compute(self) -> Any:
        """The value (see the class docstring); eagerly, streaming per-image rows stop at the
        number of images seen (inside jit there are ``capacity`` rows, NaN past that number)."""
        value = super().compute()
        if value is None or self.is_exact or is_traced(*jax.tree_util.tree_leaves(self)):
            return value
        num_images = int(self.state.num_images)

        def trim(result: Any) -> Any:
            if isinstance(result, PIMOResult):
                return result.replace(per_image_tprs=result.per_image_tprs[:num_images])
            if isinstance(result, AUPIMOResult):
                return result.replace(
                    aupimos=result.aupimos[:num_images], num_thresholds=int(result.num_thresholds)
                )
            return result

        if isinstance(value, tuple):
            return tuple(trim(v) for v in value)
        return trim(value)


class PIMO(_PerImageOverlapMetric):
    """Per-image overlap curves: each anomalous image's TPR against the normal images' shared FPR.

    ``update(anomaly_map (N, H, W) float, gt_mask (N, H, W) bool or {0, 1})``;
    ``compute() -> PIMOResult(thresholds (K,), shared_fpr (K,), per_image_tprs (N, K))`` with NaN
    rows for normal images (see the module docstring for both modes).

    Args:
        num_thresholds: K, thresholds evenly spaced between the normal images' min and max score.
        num_bins: None for exact mode; an int for streaming mode with that many bins per histogram.
        capacity: streaming mode only, required: the most images the metric will see.
        tail_fraction: exact mode: 1.0 (the default) keeps every normal pixel; a smaller value is
            the shared FPR that the kept upper tail of the normal pixels carries once more than
            :data:`EXACT_KEEP_ALL_PIXELS` are held (``shared_fpr`` is NaN where it does not reach).
            It exists so that a PIMO can share the state of an ``AUPIMO`` (pass its
            :attr:`AUPIMO.tail_fraction`); for a curve of its own, leave it.
        tail_size: streaming mode: how many of the highest normal scores are kept exactly.

    Example:
        >>> import numpy as np, jaxmetrics_ad as jm
        >>> maps = np.array([[[1.0, 2.0], [3.0, 4.0]]] * 2)
        >>> masks = np.array([[[0, 0], [0, 0]], [[0, 0], [1, 1]]])
        >>> result = jm.PIMO(num_thresholds=4)(maps, masks)
        >>> result.shared_fpr.tolist(), result.per_image_tprs[1].tolist()
        ([1.0, 0.75, 0.5, 0.25], [1.0, 1.0, 1.0, 0.5])
    """

    def __init__(
        self,
        num_thresholds: int = 300_000,
        *,
        num_bins: int | None = None,
        capacity: int | None = None,
        tail_fraction: float = 1.0,
        tail_size: int = DEFAULT_TAIL_SIZE,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        _checked_config(num_thresholds, num_bins, capacity, tail_size)
        if isinstance(tail_fraction, bool) or not 0.0 < tail_fraction <= 1.0:
            raise ValueError(f"tail_fraction must be in (0, 1], got {tail_fraction!r}")
        if num_bins is not None and capacity is None:
            raise ValueError("PIMO in streaming mode needs capacity=<the most images it will see>")
        super().__init__(
            fields=fields,
            prefix=prefix,
            strict=strict,
            num_thresholds=num_thresholds,
            num_bins=num_bins,
            capacity=capacity,
            tail_fraction=float(tail_fraction),
            tail_size=tail_size,
        )

    def _compute(self) -> PIMOResult:
        if not self.is_exact:
            return self._binned_pimo()
        thresholds, shared_fpr = self._exact_curves()
        return PIMOResult(thresholds, shared_fpr, self._exact_per_image_tprs(thresholds))


class AUPIMO(_PerImageOverlapMetric):
    """Area under each anomalous image's PIMO curve for shared FPR in ``fpr_bounds`` (log scale).

    ``update(anomaly_map (N, H, W) float, gt_mask (N, H, W) bool or {0, 1})``. ``compute()`` returns
    the mean AUPIMO over anomalous images (``return_average=True``) or ``(PIMOResult,
    AUPIMOResult)`` with NaN for normal images. See the module docstring for the two modes, the
    errors and warnings (``force=True`` integrates over 30 or fewer points with a warning).

    Args:
        num_thresholds: K, thresholds evenly spaced between the normal images' min and max score.
        fpr_bounds: (lower, upper) shared FPR range of the integral, 0 < lower < upper <= 1.
        return_average: mean over anomalous images, or the per-image results.
        force: compute even with too few points in the integration range (with a warning).
        num_bins: None for exact mode; an int for streaming mode with that many bins per histogram.
        capacity: streaming mode: the most images it will see (needed for ``return_average=False``;
            without it only the mean is kept, for any number of images).
        tail_size: streaming mode: how many of the highest normal scores are kept exactly.

    Example:
        >>> import numpy as np, jaxmetrics_ad as jm
        >>> scores = np.arange(100, dtype=np.float32).reshape(10, 10)
        >>> maps = np.stack([scores, scores])
        >>> masks = np.stack([scores < 0, scores >= 90])  # a normal image, then an anomalous one
        >>> round(float(jm.AUPIMO(fpr_bounds=(0.01, 0.05))(maps, masks)), 4)
        0.2525
    """

    def __init__(
        self,
        num_thresholds: int = 300_000,
        fpr_bounds: tuple[float, float] = (1e-5, 1e-4),
        return_average: bool = True,
        force: bool = False,
        *,
        num_bins: int | None = None,
        capacity: int | None = None,
        tail_size: int = DEFAULT_TAIL_SIZE,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        _checked_config(num_thresholds, num_bins, capacity, tail_size)
        bounds = tuple(float(b) for b in fpr_bounds)
        if len(bounds) != 2 or not 0.0 < bounds[0] < bounds[1] <= 1.0:
            raise ValueError(
                f"fpr_bounds must be (lower, upper) with 0 < lower < upper <= 1, got {fpr_bounds!r}"
            )
        if num_bins is not None and capacity is None and not return_average:
            raise ValueError(
                "AUPIMO(return_average=False) in streaming mode needs capacity=<the most images>"
            )
        super().__init__(
            fields=fields,
            prefix=prefix,
            strict=strict,
            num_thresholds=num_thresholds,
            fpr_bounds=bounds,
            return_average=bool(return_average),
            force=bool(force),
            num_bins=num_bins,
            capacity=capacity,
            tail_size=tail_size,
        )

    @property
    def tail_fraction(self) -> float:
        """Exact mode: the shared FPR its kept normal tail carries (see the module docstring).

        Derived from what the result needs: 1.0 (every normal pixel) when the whole PIMO curve is
        returned (``return_average=False``), else ``min(1, TAIL_MARGIN · upper FPR bound)``.
        """
        if not self.return_average:
            return 1.0
        return min(1.0, TAIL_MARGIN * self.fpr_bounds[1])

    def _check_state(self) -> None:
        super()._check_state()
        if not self.is_exact:
            _, shared_fpr = _binned_shared_fpr_jit(self.state, self.num_thresholds)
            shared_fpr = np.asarray(shared_fpr, np.float64)
            _integration_range(shared_fpr, self.fpr_bounds, self.force, self.name)

    def _normaliser(self) -> float:
        lower, upper = self.fpr_bounds
        return math.log(upper / lower)

    def _compute(self) -> Any:
        if self.is_exact:
            return self._exact_compute()
        return self._binned_compute()

    def _exact_compute(self) -> Any:
        thresholds, shared_fpr = self._exact_curves()
        integration = _integration_range(shared_fpr, self.fpr_bounds, self.force, self.name)
        low_index, high_index, _ = integration
        classes = self.state.image_classes()
        if self.return_average:
            band = thresholds[low_index : high_index + 1].astype(np.float64)
            # One image at a time: the band may hold most of the K thresholds.
            areas = [
                _areas(_fraction_at_or_above(s, band)[None], shared_fpr, integration)[0]
                for s in self.state.anomalous_scores()
            ]
            aupimos = np.clip(np.array(areas) / self._normaliser(), 0, 1)
            return jnp.asarray(aupimos.mean(), jnp.float32)
        per_image_tprs = self._exact_per_image_tprs(thresholds)
        band = per_image_tprs[classes == 1, low_index : high_index + 1].astype(np.float64)
        aupimos = np.full(len(classes), np.nan)
        aupimos[classes == 1] = np.clip(
            _areas(band, shared_fpr, integration) / self._normaliser(), 0, 1
        )
        return (
            PIMOResult(thresholds, shared_fpr, per_image_tprs),
            self._aupimo_result(thresholds, integration, aupimos, int(integration[2].sum())),
        )

    def _aupimo_result(self, thresholds, integration, aupimos, num_points) -> AUPIMOResult:
        low_index, high_index, _ = integration
        lower, upper = self.fpr_bounds
        return AUPIMOResult(
            fpr_lower_bound=lower,
            fpr_upper_bound=upper,
            num_thresholds=num_points,
            thresh_lower_bound=thresholds[low_index],
            thresh_upper_bound=thresholds[high_index],
            aupimos=aupimos,
        )

    def _binned_compute(self) -> Any:
        thresholds, shared_fpr = _binned_shared_fpr(self.state, self.num_thresholds)
        integration = _binned_integration(shared_fpr, self.fpr_bounds, self.force)
        areas = _binned_areas(self.state, thresholds, shared_fpr, integration)
        aupimos = jnp.clip(areas / self._normaliser(), 0.0, 1.0)
        usable = integration[2]
        if self.capacity is not None:
            sizes = self.state.anomalous.counts.as_float().sum(axis=1)
            aupimos = jnp.where(sizes > 0, aupimos, jnp.nan)
            aupimos = self._poison(jnp.where(usable, aupimos, jnp.nan))
            if self.return_average:
                return jnp.nanmean(aupimos)
            low_index, high_index, _ = integration
            step = jnp.arange(shared_fpr.shape[0])
            in_range = (step >= low_index) & (step <= high_index) & (shared_fpr > 0)
            num_points = jnp.sum(in_range).astype(jnp.int32)
            pimo = self._binned_pimo()
            return pimo, self._aupimo_result(thresholds, integration, aupimos, num_points)
        return self._poison(jnp.where(usable, aupimos[0], jnp.nan))
