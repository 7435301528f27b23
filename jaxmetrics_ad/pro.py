"""PRO and AUPRO: how much of each ground-truth defect region is detected, at one threshold or as an area.

Both average over the 8-connected regions of the ground-truth masks (``scipy.ndimage.label`` with a
3×3 structure, as MVTec AD and anomalib do; :func:`~jaxmetrics_ad.regions.connected_components`
labels them inside ``jax.jit``: with scipy through a host callback on CPU, with ``jax.lax`` elsewhere,
or as ``labeller=`` says). Every region of every image seen counts once, whatever its size.

* :class:`PRO` — the mean over regions of the fraction of the region scoring ``>= threshold``.
* :class:`AUPRO` — the MVTec AD per-region-overlap curve (PRO against the false positive rate of the
  background pixels, one point per distinct score), cut at ``fpr_limit`` and integrated. The PRO at
  threshold ``t`` equals ``Σ_{region pixels scoring >= t} 1/|region of the pixel|`` divided by the
  number of regions, so the curve is a score histogram with one count channel for background pixels
  and one *weight* channel of ``1/|region|`` (plus the region count): fixed size, merged by addition.

Region sizes come from each batch's labels with a segment sum. Labels of ground truth never change,
so callers may pass them precomputed: with ``region_labels=True`` the second field holds int region
labels per image (0 = background, any positive id = one region, ids need not be consecutive but must
lie in ``[0, H·W]``, e.g. the output of ``scipy.ndimage.label`` or ``connected_components``).
Maps and masks may carry a singleton channel axis, (N, 1, H, W), as anomalib's batches do.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmetrics_ad import numpy_updates
from jaxmetrics_ad.base import Metric
from jaxmetrics_ad.buffer import ChunkedBuffer, FixedBuffer
from jaxmetrics_ad.classification import AUROC, Thresholds, _checked_capacity, _checked_thresholds
from jaxmetrics_ad.histogram import METRIC_TAIL_SIZE, ScoreHistogram
from jaxmetrics_ad.host import on_host
from jaxmetrics_ad.regions import Labeller, check_labeller, connected_components
from jaxmetrics_ad.validation import (
    check_binary,
    check_finite,
    check_same_shape,
    is_traced,
    per_sample,
    state_array,
)

_BACKGROUND, _REGION = 0, 1


def _nonzero(array: jax.Array) -> jax.Array:
    """``array != 0``; a bool array read by its byte, so that a True stored as 0xFF (as Pillow
    gives for 1-bit images) is True inside jit too (XLA folds ``== True`` / ``!= False`` away)."""
    if array.dtype == jnp.bool_:
        return array.view(jnp.uint8) != 0
    return array != 0


def _without_channel(array: jax.Array) -> jax.Array:
    """(N, 1, H, W) as (N, H, W); any other shape unchanged."""
    if array.ndim == 4 and array.shape[1] == 1:
        return array[:, 0]
    return array


class Regions(NamedTuple):
    """The ground-truth regions of one batch of N images of H×W pixels."""

    labels: jax.Array  # int32 (N, H, W): 0 = background, regions numbered per image
    sizes: jax.Array  # int32 (N, H, W): size of the pixel's region, 0 on background
    segment_ids: jax.Array  # int32 (N, H, W): image·H·W + label − 1; N·H·W on background
    segment_sizes: jax.Array  # int32 (N, H·W): pixels of label 1, 2, ... of each image
    num_regions: jax.Array  # int32 scalar: regions in the batch
    num_invalid: jax.Array  # int32 scalar: mask values that are neither 0 nor 1 (or bad labels)


@functools.partial(jax.jit, static_argnames=("region_labels", "labeller"))
def _batch_regions(target: jax.Array, region_labels: bool, labeller: str = "auto") -> Regions:
    """Regions of a batch of masks (N, H, W) or (H, W), or of precomputed labels (``region_labels``).

    Binary masks are labelled with 8-connectivity by ``labeller`` (see
    :mod:`jaxmetrics_ad.regions`); precomputed labels are used as they are (values outside
    ``[0, H·W]`` count as invalid and as background).
    """
    target = jnp.reshape(target, (-1, *target.shape[-2:]))
    num_images, height, width = target.shape
    pixels = height * width
    if region_labels:
        invalid = (target < 0) | (target > pixels)
        labels = jnp.where(invalid, 0, target).astype(jnp.int32)
    else:
        invalid = jnp.zeros(target.shape, bool)
        if target.dtype != jnp.bool_:
            invalid = (target != 0) & (target != 1)
        labels, _ = connected_components(_nonzero(target), labeller=labeller)
    # Background pixels get an out-of-range id that the scatter drops and the gather fills with 0:
    # measured ~2x faster on CPU than giving the background a segment of its own.
    image_offsets = jnp.arange(num_images, dtype=jnp.int32) * pixels
    segment_ids = jnp.where(labels > 0, labels - 1 + image_offsets[:, None, None], labels.size)
    segment_sizes = jnp.zeros(labels.size, jnp.int32).at[segment_ids.ravel()].add(1, mode="drop")
    sizes = segment_sizes.at[segment_ids].get(mode="fill", fill_value=0)
    return Regions(
        labels=labels,
        sizes=sizes,
        segment_ids=segment_ids,
        segment_sizes=segment_sizes.reshape(num_images, pixels),
        num_regions=jnp.sum(segment_sizes > 0).astype(jnp.int32),
        num_invalid=jnp.sum(invalid).astype(jnp.int32),
    )


def _check_image_inputs(
    maps: jax.Array, target: jax.Array, fields: Sequence[str], region_labels: bool
) -> None:
    """Shapes always; values when concrete (see :mod:`jaxmetrics_ad.validation`)."""
    maps_field, target_field = fields
    maps, target = _without_channel(maps), _without_channel(target)
    for array, field in ((maps, maps_field), (target, target_field)):
        if array.ndim not in (2, 3):
            raise ValueError(
                f"{field}: expected images of shape (N, H, W), (N, 1, H, W) or (H, W), got shape "
                f"{array.shape}"
            )
    check_same_shape(maps, maps_field, target, target_field)
    if jnp.issubdtype(maps.dtype, jnp.floating):
        check_finite(maps, maps_field)
    if not region_labels:
        check_binary(target, target_field)
        return
    if not jnp.issubdtype(target.dtype, jnp.integer):
        raise TypeError(
            f"{target_field}: region_labels=True expects integer region labels (0 = background), "
            f"got dtype {target.dtype}"
        )
    if is_traced(target):
        return
    pixels = target.shape[-1] * target.shape[-2]
    bad = (target < 0) | (target > pixels)
    count = int(jnp.sum(bad))
    if count:
        example = target.ravel()[jnp.argmax(bad.ravel())].item()
        raise ValueError(
            f"{target_field}: region labels must lie in [0, H·W] = [0, {pixels}], found {count} "
            f"other values (e.g. {example})"
        )


def _labeller_config(labeller: object) -> dict[str, str]:
    """The configuration entry of ``labeller=``: none for the default ``"auto"``.

    The labeller changes how labels are computed, never the labels, the state or the value, so the
    default leaves the configuration (``repr``, saved states) as it was before the option existed.
    """
    check_labeller(labeller)
    return {} if labeller == "auto" else {"labeller": labeller}


def _configured_labeller(metric: Metric) -> str:
    return dict(metric._config).get("labeller", "auto")


class RegionOverlap(struct.PyTreeNode):
    """Sum over regions of the fraction predicted positive, and the number of regions."""

    overlap_sum: jax.Array  # float32 scalar
    num_regions: jax.Array  # int32 scalar

    def merge(self, other: RegionOverlap) -> RegionOverlap:
        """The sums over both."""
        return RegionOverlap(
            self.overlap_sum + other.overlap_sum, self.num_regions + other.num_regions
        )

    def all_reduce(self, axis_name: str) -> RegionOverlap:
        """The sums over every device along ``axis_name``."""
        return RegionOverlap(
            jax.lax.psum(self.overlap_sum, axis_name), jax.lax.psum(self.num_regions, axis_name)
        )


class PRO(Metric):
    """Per-region overlap at one threshold: the mean over all ground-truth regions of the fraction of
    the region predicted positive (anomalib's PRO).

    Float maps are predicted positive where ``map >= threshold`` (the rule of every metric here;
    anomalib's PRO uses ``>``); int or bool maps are predictions
    already: 0/1 or bool, where 1 (True) is positive; other integers (e.g. 0/255 PNG masks) raise
    ValueError eagerly and make the value NaN inside jit (divide such masks by 255 first). Regions of all images seen count once each; with no region at all
    the value is 1.0, as in anomalib. The state is two scalars (overlap sum, region count), merged
    by addition and ``psum``.

    Args:
        threshold: the binarisation threshold of float maps.
        region_labels: the second field holds int region labels instead of binary masks (see the
            module docstring).
        labeller: how binary masks are labelled: ``"auto"`` (``scipy.ndimage.label`` on the host
            when running on CPU, the ``jax.lax`` labeller elsewhere), ``"host"`` or ``"lax"``; the
            labels, hence the values, are identical (see :mod:`jaxmetrics_ad.regions`).

    Example:
        >>> import numpy as np, jaxmetrics_ad as jm
        >>> maps = np.array([[0.9, 0.2, 0.0], [0.0, 0.0, 0.0], [0.0, 0.7, 0.1]])
        >>> masks = np.array([[1, 1, 0], [0, 0, 0], [0, 1, 1]])
        >>> float(jm.PRO()(maps, masks))  # two regions, each half detected
        0.5
    """

    default_fields = ("anomaly_map", "gt_mask")
    masks_samples = True

    def __init__(
        self,
        threshold: float = 0.5,
        *,
        region_labels: bool = False,
        labeller: Labeller = "auto",
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        super().__init__(
            fields=fields,
            prefix=prefix,
            strict=strict,
            threshold=float(threshold),
            region_labels=bool(region_labels),
            **_labeller_config(labeller),
        )

    @property
    def labeller(self) -> str:
        """How binary masks are labelled: ``"auto"``, ``"host"`` or ``"lax"``."""
        return _configured_labeller(self)

    def _empty_state(self) -> RegionOverlap:
        return RegionOverlap(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

    def _check_inputs(self, maps: jax.Array, target: jax.Array) -> None:
        _check_image_inputs(maps, target, self.fields, self.region_labels)
        if not jnp.issubdtype(maps.dtype, jnp.floating):
            check_binary(maps, self.fields[0])

    def _update_state(self, maps: jax.Array, target: jax.Array, valid: jax.Array | None = None):
        maps, target = _without_padding(*_without_channels(maps, target), valid)
        regions = _batch_regions(target, self.region_labels, self.labeller)
        maps = jnp.reshape(maps, regions.labels.shape)
        if jnp.issubdtype(maps.dtype, jnp.floating):
            predicted, invalid = maps >= self.threshold, ~jnp.isfinite(maps)
        elif maps.dtype == jnp.bool_:
            predicted, invalid = _nonzero(maps), jnp.zeros(maps.shape, bool)
        else:
            predicted, invalid = maps != 0, (maps != 0) & (maps != 1)
        hits = jnp.zeros(regions.segment_sizes.size, jnp.int32)
        hits = hits.at[regions.segment_ids.ravel()].add(
            predicted.ravel().astype(jnp.int32), mode="drop"
        )
        sizes = regions.segment_sizes.ravel()
        fractions = jnp.where(sizes > 0, hits / jnp.maximum(sizes, 1), 0.0)
        batch = RegionOverlap(jnp.sum(fractions).astype(jnp.float32), regions.num_regions)
        num_invalid = jnp.sum(invalid).astype(jnp.int32) + regions.num_invalid
        return self.state.merge(batch), num_invalid

    def _compute(self) -> jax.Array:
        regions = self.state.num_regions
        mean = self.state.overlap_sum / jnp.maximum(regions, 1).astype(jnp.float32)
        return jnp.where(regions > 0, mean, 1.0)


class ProBlocks(NamedTuple):
    """The exact PRO curve at each distinct background score ``t``, descending (numpy float64).

    ``fpr_gt``/``pro_gt`` count the pixels scoring ``> t``, ``fpr_ge``/``pro_ge`` those ``>= t``:
    the curve steps from the first point to the second at ``t``. Region pixels between two
    background scores only move the curve up, which adds no area.
    """

    fpr_gt: np.ndarray
    fpr_ge: np.ndarray
    pro_gt: np.ndarray
    pro_ge: np.ndarray
    pro_total: float


def exact_pro_blocks(
    scores: np.ndarray,
    channels: np.ndarray,
    region_sizes: np.ndarray,
    num_regions: int,
    fpr_limit: float | None = None,
) -> ProBlocks:
    """The MVTec AD PRO curve by background score, computed on the host in float64.

    ``channels`` is 0 for background pixels, 1 for region pixels and negative for samples to skip;
    ``region_sizes`` the size of each region pixel's region. With ``fpr_limit`` only the blocks up
    to the first one whose FPR exceeds the limit are returned: those are all an area up to the limit
    needs, and finding them takes a partition plus a sort of that part of the background only (the
    region pixels, few in anomaly detection, are only searched among the sorted blocks).

    Example:
        >>> import numpy as np
        >>> blocks = exact_pro_blocks(np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 0, 0, 0]),
        ...                           np.array([1, 0, 0, 0]), num_regions=1)
        >>> blocks.fpr_ge.tolist(), blocks.pro_ge.tolist()
        ([0.6666666666666666, 1.0], [1.0, 1.0])
    """
    channels = np.asarray(channels)
    scores = np.asarray(scores)
    is_region = channels == _REGION
    region_scores = scores[is_region]
    region_weights = 1.0 / np.asarray(region_sizes)[is_region].astype(np.float64)
    background = scores[channels == _BACKGROUND]
    num_background = background.size
    if fpr_limit is not None:
        # Two more than the limit allows, so that the first block beyond the limit is kept whole.
        needed = int(fpr_limit * num_background) + 2
        if needed < num_background:
            background = np.partition(background, num_background - needed)
            kth = background[num_background - needed]
            ties_below = np.count_nonzero(background[: num_background - needed] == kth)
            background = np.concatenate(
                (np.full(ties_below, kth), background[num_background - needed :])
            )
    background = np.sort(background)
    num_regions = max(int(num_regions), 1)
    block_starts = np.flatnonzero(np.concatenate(([True], background[1:] != background[:-1])))
    values = background[block_starts]  # distinct background scores, ascending
    num_blocks = values.size

    def pro_of_top(side: str) -> np.ndarray:
        # A region pixel counts at every block whose score it reaches: bin each pixel by the number
        # of blocks below it, then sum from the top. Region pixels are few, so this beats searching
        # every block among them (measured ~3x).
        blocks_below = np.searchsorted(values, region_scores, side=side)
        per_block = np.bincount(blocks_below, region_weights, minlength=num_blocks + 1)
        from_top = np.cumsum(per_block[::-1])[::-1]
        return np.minimum(from_top[1:] / num_regions, 1.0)[::-1]

    count_ge = (background.size - block_starts)[::-1].astype(np.float64)
    count_gt = np.concatenate(([0.0], count_ge[:-1]))
    denominator = max(num_background, 1)
    return ProBlocks(
        fpr_gt=count_gt / denominator,
        fpr_ge=count_ge / denominator,
        pro_gt=pro_of_top("left"),
        pro_ge=pro_of_top("right"),
        pro_total=min(float(np.sum(region_weights)) / num_regions, 1.0),
    )


def exact_aupro(
    scores: np.ndarray,
    channels: np.ndarray,
    region_sizes: np.ndarray,
    num_regions: int,
    fpr_limit: float,
) -> float:
    """Area under the exact PRO curve up to ``fpr_limit`` divided by it (the MVTec AD algorithm).

    The trapezoid rule over the curve's points, PRO linearly interpolated where the curve crosses
    the limit; 0.0 without background or region (anomalib's convention). Arguments as in
    :func:`exact_pro_blocks`.

    Example:
        >>> import numpy as np
        >>> exact_aupro(np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 0, 0, 0]),
        ...             np.array([1, 0, 0, 0]), num_regions=1, fpr_limit=0.5)
        1.0
    """
    channels = np.asarray(channels)
    if int(num_regions) == 0 or not np.any(channels == _BACKGROUND):
        return 0.0
    blocks = exact_pro_blocks(scores, channels, region_sizes, num_regions, fpr_limit)
    inside = blocks.fpr_ge <= fpr_limit
    steps = (blocks.fpr_ge - blocks.fpr_gt) * (blocks.pro_gt + blocks.pro_ge) / 2
    area = float(np.sum(steps[inside]))
    crossing = int(np.sum(inside))
    if crossing < inside.size and blocks.fpr_gt[crossing] < fpr_limit:
        x0, x1 = blocks.fpr_gt[crossing], blocks.fpr_ge[crossing]
        y0, y1 = blocks.pro_gt[crossing], blocks.pro_ge[crossing]
        y_at_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at_limit) * (fpr_limit - x0)
    return float(area / fpr_limit)


def _binned_area_up_to(fpr: Any, pro: Any, fpr_limit: float) -> Any:
    """Trapezoid area under the points (fpr, pro), fpr ascending, up to ``fpr_limit``.

    The segment that crosses the limit is cut there with PRO linearly interpolated, as the exact
    algorithm does. numpy arrays in, numpy out (eager compute); jax arrays in, jax out.
    """
    xp = np if isinstance(fpr, np.ndarray) else jnp
    x0, x1, y0, y1 = fpr[:-1], fpr[1:], pro[:-1], pro[1:]
    x_end = xp.minimum(x1, fpr_limit)
    width = xp.maximum(x_end - x0, 0.0)
    fraction = xp.where(x1 > x0, width / xp.where(x1 > x0, x1 - x0, 1.0), 0.0)
    y_end = y0 + (y1 - y0) * fraction
    return xp.sum(width * (y0 + y_end) / 2)


def _binned_curve(state: RegionCurveState) -> tuple[Any, Any]:
    """(fpr, pro) at (0, 0) and at each bin's lower edge, descending (binned state).

    Under a trace in jax; eagerly in numpy float64, which compiles nothing (see
    :meth:`Metric._computes_on_host`).
    """
    if is_traced(*jax.tree_util.tree_leaves(state)):
        return _jitted_binned_curve(state)
    _, counts, weights = state.samples.cumulative_on_host()
    return _curve_points(counts, weights, max(int(state.num_regions), 1), np)


@jax.jit
def _jitted_binned_curve(state: RegionCurveState) -> tuple[jax.Array, jax.Array]:
    _, counts, weights = state.samples.cumulative()
    num_regions = jnp.maximum(state.num_regions, 1).astype(jnp.float32)
    return _curve_points(counts, weights, num_regions, jnp)


def _curve_points(counts: Any, weights: Any, num_regions: Any, xp: Any) -> tuple[Any, Any]:
    num_background = xp.maximum(counts[0, -1], 1.0)
    zero = xp.zeros((1,), counts.dtype)
    fpr = xp.concatenate([zero, counts[0] / num_background])
    pro = xp.concatenate([zero, xp.minimum(weights[0] / num_regions, 1.0)])
    return fpr, pro


def _is_defined(state: RegionCurveState) -> Any:
    """Whether a binned state holds a background pixel and a region (else AUPRO is 0)."""
    background = state.samples.total_counts()[0] > 0  # tails included
    if not is_traced(*jax.tree_util.tree_leaves(state)):
        return bool(background) and int(state.num_regions) > 0
    return background & (state.num_regions > 0)


def _binned_error_bound(state: RegionCurveState, fpr_limit: float) -> Any:
    """See :meth:`AUPRO.error_bound`."""
    fpr, pro = _binned_curve(state)
    xp = np if isinstance(fpr, np.ndarray) else jnp
    x0, x1, height = fpr[:-1], fpr[1:], pro[1:] - pro[:-1]
    inside = x1 <= fpr_limit
    cut = ~inside & (x0 < fpr_limit)
    bound = xp.where(inside, (x1 - x0) * height / 2, 0.0)
    bound = bound + xp.where(cut, (fpr_limit - x0) * height, 0.0)
    return xp.where(_is_defined(state), xp.sum(bound) / fpr_limit, 0.0)


class RegionCurveState(struct.PyTreeNode):
    """AUPRO's state: the samples (a histogram when binned, a buffer when exact) and a region count.

    Binned: channel 0 counts background pixels, channel 1 region pixels, weight 0 sums 1/|region|.
    Exact: every pixel's score and channel, with its region's size as weight 0 (1/size is taken on
    the host in float64, so the exact value does not suffer float32 rounding of the weights; sizes
    are exact up to 2**24 pixels per region).
    """

    samples: Any  # ScoreHistogram | ChunkedBuffer | FixedBuffer
    num_regions: jax.Array  # int32 scalar

    @property
    def grows(self) -> bool:
        """True when the samples grow with every update (eager exact mode)."""
        return getattr(self.samples, "grows", False)

    def merge(self, other: RegionCurveState) -> RegionCurveState:
        """The samples and regions of both."""
        return RegionCurveState(
            self.samples.merge(other.samples), self.num_regions + other.num_regions
        )

    def all_reduce(self, axis_name: str) -> RegionCurveState:
        """The samples and regions of every device along ``axis_name``."""
        return RegionCurveState(
            self.samples.all_reduce(axis_name), jax.lax.psum(self.num_regions, axis_name)
        )


class RegionCurveMetric(Metric):
    """Base of the metrics read off a :class:`RegionCurveState` (AUPRO, AU-sPRO): one curve of a
    per-region overlap against the background FPR, integrated up to ``fpr_limit``.

    Subclasses build the samples (``_update_state``) and say how an exact state holds each
    sample's region size (:meth:`_exact_sizes`); compute, :meth:`curve`, :meth:`error_bound`
    and the eager checks are shared.

    Example:
        >>> import jaxmetrics_ad as jm
        >>> issubclass(jm.AUPRO, RegionCurveMetric)
        True
    """

    exact_weights: ClassVar[int] = 1
    """Weight rows an exact state keeps per sample."""
    sample_word: ClassVar[str] = "pixels"
    region_word: ClassVar[str] = "ground-truth region"
    undefined_text: ClassVar[str] = "AUPRO is undefined and set to 0 (as in anomalib)"

    @staticmethod
    def _exact_sizes(channels: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Per sample, the size whose inverse weighs it in the exact curve (host, numpy)."""
        return weights[0]

    @property
    def is_exact(self) -> bool:
        """True when the metric keeps the samples (``thresholds=None``)."""
        return self.thresholds is None

    def _empty_state(self) -> RegionCurveState:
        if self.thresholds is None:
            if self.capacity is None:
                samples = ChunkedBuffer.empty(num_weights=self.exact_weights)
            else:
                samples = FixedBuffer.empty(self.capacity, num_weights=self.exact_weights)
        elif isinstance(self.thresholds, int):
            samples = ScoreHistogram.auto(
                self.thresholds, num_channels=2, num_weights=1, tail_size=METRIC_TAIL_SIZE
            )
        else:
            samples = ScoreHistogram.fixed(self.thresholds, num_channels=2, num_weights=1)
        return RegionCurveState(samples, state_array(0, (), np.int32))

    def _computes_on_host(self) -> bool:
        return True

    def _compute(self) -> jax.Array:
        if not self.is_exact:
            fpr, pro = _binned_curve(self.state)
            area = _binned_area_up_to(fpr, pro, self.fpr_limit) / self.fpr_limit
            xp = np if isinstance(area, np.generic | np.ndarray) else jnp
            return xp.where(_is_defined(self.state), area, 0.0)
        scores, channels, weights = self.state.samples.arrays()
        fpr_limit = self.fpr_limit

        exact_sizes = self._exact_sizes

        def host(scores, channels, weights, num_regions) -> np.ndarray:
            sizes = exact_sizes(channels, weights)
            return np.float32(exact_aupro(scores, channels, sizes, num_regions, fpr_limit))

        value = on_host(
            host,
            jax.ShapeDtypeStruct((), jnp.float32),
            scores,
            channels,
            weights,
            self.state.num_regions,
        )
        return jnp.where(self.state.samples.overflowed(), jnp.nan, value)

    def curve(self) -> tuple[jax.Array, jax.Array]:
        """(fpr, pro) points of the whole PRO curve from (0, 0) to FPR 1, for plotting.

        The full curve, not cut at ``fpr_limit`` (:func:`~jaxmetrics_ad.plotting.plot_pro` marks and
        shades the limit). Binned: one point per bin plus (0, 0), fixed length, jit-able. Exact: two
        points per distinct background score (before and after its tie block), eager only. NaN
        when invalid samples were given inside jit, like :meth:`compute`.

        Example:
            >>> import numpy as np, jaxmetrics_ad as jm
            >>> maps, masks = np.array([[[0.9, 0.8], [0.8, 0.1]]]), np.array([[[1, 0], [0, 0]]])
            >>> fpr, pro = jm.AUPRO().update(maps, masks).curve()
            >>> [round(v, 3) for v in fpr.tolist()], pro.tolist()
            ([0.0, 0.0, 0.667, 0.667, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
        """
        if not self.is_exact:
            fpr, pro = (jnp.asarray(v, jnp.float32) for v in _binned_curve(self.state))
            return self._poison_if_invalid(fpr), self._poison_if_invalid(pro)
        if is_traced(*jax.tree_util.tree_leaves(self.state)):
            raise TypeError(
                f"{self.name}: the exact curve has a data-dependent length; "
                "use binned thresholds=<int> inside jit"
            )
        self._check_state()
        scores, channels, weights = (np.asarray(a) for a in self.state.samples.arrays())
        sizes = self._exact_sizes(channels, weights)
        blocks = exact_pro_blocks(scores, channels, sizes, int(self.state.num_regions))
        fpr = np.stack([blocks.fpr_gt, blocks.fpr_ge], axis=-1).ravel()
        pro = np.stack([blocks.pro_gt, blocks.pro_ge], axis=-1).ravel()
        fpr = np.concatenate(([0.0], fpr, [1.0]))
        pro = np.concatenate(([0.0], pro, [blocks.pro_total]))
        fpr, pro = jnp.asarray(fpr, jnp.float32), jnp.asarray(pro, jnp.float32)
        return self._poison_if_invalid(fpr), self._poison_if_invalid(pro)

    def error_bound(self) -> jax.Array:
        """An upper bound on |binned AUPRO − exact AUPRO| (0 in exact mode), up to float32 rounding.

        Inside a bin the exact curve runs from the bin's first corner to its second and stays in
        the box they span, while the binned curve is the diagonal: a bin wholly below the limit is
        off by at most half its box, ``Δfpr·Δpro / 2``; the bin that the limit cuts by at most
        ``(limit − fpr_before)·Δpro``. The sum is divided by the limit. NaN when invalid samples
        were given inside jit (the exact value is undefined then, so no bound holds).

        Example:
            >>> import numpy as np, jaxmetrics_ad as jm
            >>> maps, masks = np.array([[[0.9, 0.8], [0.8, 0.1]]]), np.array([[[1, 0], [0, 0]]])
            >>> float(jm.AUPRO(thresholds=1024).update(maps, masks).error_bound())  # no shared bin
            0.0
        """
        if self.is_exact:
            return self._poison_if_invalid(jnp.zeros((), jnp.float32))
        bound = _binned_error_bound(self.state, self.fpr_limit)
        if not is_traced(bound):  # numpy: no eager XLA op to compile
            return self._poison_if_invalid(np.asarray(bound, np.float32))
        return self._poison_if_invalid(bound.astype(jnp.float32))

    def _check_state(self) -> None:
        if self.is_exact:
            if bool(self.state.samples.overflowed()):
                raise ValueError(
                    f"{self.name}: more {self.sample_word} were added than capacity={self.capacity}"
                )
            has_background = _has_background(self.state.samples)
        else:
            has_background = bool(self.state.samples.total_counts()[0] > 0)
        if not has_background or int(self.state.num_regions) == 0:
            missing = self.region_word if has_background else "background pixel"
            warnings.warn(
                f"{self.name}: no {missing}; {self.undefined_text}",
                UserWarning,
                stacklevel=3,
            )


class AUPRO(RegionCurveMetric):
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised by it (MVTec AD's AUPRO).

    The curve has one point per distinct score: x is the fraction of background pixels scoring at or
    above it (FPR), y the mean over all ground-truth regions of the fraction of the region scoring at
    or above it (PRO); tied scores enter together, (0, 0) comes first. The area up to ``fpr_limit``
    (PRO linearly interpolated at the cut) is divided by ``fpr_limit``. Without any background pixel
    or any region the value is 0, as in anomalib (with a warning when computed eagerly).

    ``fpr_limit`` is rounded to float32 as anomalib stores it (0.3 → 0.30000001192...), so the
    default reproduces anomalib's number to the last digits.

    ``thresholds`` picks the state, as for :class:`~jaxmetrics_ad.AUROC`:

    * ``None`` — **exact**: every pixel's score, background/region channel and region size are kept
      (9 bytes per pixel) and compute runs the MVTec AD algorithm on the host in float64 (through
      ``jax.pure_callback``, so it also works inside jit); in float64 it agrees with the MVTec AD
      evaluation script to ~1e-13, and it is returned as float32. Only the background above the
      limit's threshold is sorted: compute takes about 1 s for 300 images of 256×256 on a 2-core
      CPU, where the script's global argsort takes about 8 s. ``capacity=`` (in pixels) gives a
      fixed-size buffer for ``jax.jit``/``lax.scan``.
    * an ``int`` — **binned**: an auto-ranging score histogram of that many bins with a background
      count, a region-pixel count and a ``1/|region|`` weight sum per bin, plus the region count;
      the :data:`~jaxmetrics_ad.histogram.METRIC_TAIL_SIZE` highest and lowest pixels are kept
      exactly outside the bins, so a few hot pixels do not widen them.
      Fixed size whatever the number of images; merges by addition and ``psum``. Each bin acts as a
      block of tied scores, so the curve is exact at bin edges and straight inside a bin;
      :meth:`error_bound` returns a guaranteed bound on the difference to the exact area. Measured
      on realistic maps (:func:`~jaxmetrics_ad.synthetic.make_category`, 300 images of 256×256,
      three seeds): with :data:`~jaxmetrics_ad.DEFAULT_NUM_BINS` bins |binned − exact| ≤ 3e-7
      (bound ≤ 4e-5); with 1024 bins ≤ 7e-6 (bound ≤ 6e-4).
    * an array — binned at exactly those thresholds (a pixel counts when ``score >= threshold``).

    Args:
        fpr_limit: upper FPR bound of the integration, in (0, 1].
        thresholds: ``None`` (exact), a number of bins, or ascending thresholds.
        capacity: exact mode only: pixels a fixed-size buffer holds (for jit/scan).
        region_labels: the second field holds int region labels instead of binary masks (see the
            module docstring).
        labeller: how binary masks are labelled, as for :class:`PRO`; the value does not depend
            on it.

    Example:
        >>> import numpy as np, jaxmetrics_ad as jm
        >>> maps = np.array([[[0.9, 0.8], [0.8, 0.1]]])
        >>> masks = np.array([[[1, 0], [0, 0]]])
        >>> float(jm.AUPRO(fpr_limit=0.5)(maps, masks))
        1.0
        >>> binned = jm.AUPRO(thresholds=1024).update(maps, masks)
        >>> round(float(binned.compute()), 4), round(float(binned.error_bound()), 4)
        (1.0, 0.0)
    """

    default_fields = ("anomaly_map", "gt_mask")
    masks_samples = True

    def __init__(
        self,
        fpr_limit: float = 0.3,
        thresholds: Thresholds = None,
        *,
        capacity: int | None = None,
        region_labels: bool = False,
        labeller: Labeller = "auto",
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        if isinstance(fpr_limit, bool) or not 0.0 < float(fpr_limit) <= 1.0:
            raise ValueError(f"fpr_limit must be a number in (0, 1], got {fpr_limit!r}")
        capacity = _checked_capacity(capacity, thresholds)
        thresholds = _checked_thresholds(thresholds)
        super().__init__(
            fields=fields,
            prefix=prefix,
            strict=strict,
            fpr_limit=float(np.float32(fpr_limit)),
            thresholds=thresholds,
            capacity=capacity,
            region_labels=bool(region_labels),
            **_labeller_config(labeller),
        )

    @property
    def labeller(self) -> str:
        """How binary masks are labelled: ``"auto"``, ``"host"`` or ``"lax"``."""
        return _configured_labeller(self)

    def state_views(self) -> dict[tuple, Any]:
        """Binned on binary masks, the histogram is pixel AUROC's (AUPR's, F1Max's, ...) at the same
        ``thresholds`` on the same fields, plus the 1/|region| weight row: it serves them too.

        The same pixels land in the same channels (background 0, region 1, non-finite or padded
        left out) and bins; both count the same invalid values.
        """
        if self.is_exact or self.region_labels:
            return {}
        return {_binary_curve_key(self.thresholds, self.fields, self.strict): _pixel_histogram}

    def _check_inputs(self, maps: jax.Array, target: jax.Array) -> None:
        _check_image_inputs(maps, target, self.fields, self.region_labels)

    def _update_state(self, maps: jax.Array, target: jax.Array, valid: jax.Array | None = None):
        maps, target = _without_padding(*_without_channels(maps, target), valid)
        scores, channels, weights, num_regions, num_invalid = _pixel_samples(
            maps, target, self.region_labels, self.is_exact, self.labeller
        )
        if valid is not None:  # padded pixels are neither background nor region
            keep = jnp.ravel(per_sample(valid, maps.shape))
            channels = jnp.where(keep, channels, -1)
        samples = self.state.samples.add(scores, channels, weights)
        return RegionCurveState(samples, self.state.num_regions + num_regions), num_invalid

    def _updates_in_numpy(self) -> bool:
        return not self.is_exact and not self.region_labels and self.labeller != "lax"

    def _update_state_in_numpy(self, maps: np.ndarray, target: np.ndarray):
        maps, target = _without_channel(maps), _without_channel(target)
        mask, invalid = numpy_updates.foreground(target)
        regions = numpy_updates.in_background(numpy_updates.region_weights, mask)
        scores, channels, num_invalid = numpy_updates.pixel_channels(maps, mask, invalid)
        samples = numpy_updates.histogram_add(
            self.state.samples, scores, channels, lambda: regions.result()[:2]
        )
        num_regions = regions.result()[2]
        total = numpy_updates.scalar(int(self.state.num_regions) + int(num_regions), np.int32)
        return RegionCurveState(samples, total), num_invalid


@functools.cache
def _binary_curve_key(thresholds: Thresholds, fields: tuple[str, ...], strict: bool) -> tuple:
    """The state key of the pixel curve metrics (AUROC, AUPR, ...) at these settings."""
    return AUROC(thresholds, fields=fields, strict=strict).state_key()


def _pixel_histogram(state: RegionCurveState) -> ScoreHistogram:
    """A binned AUPRO state as the pixel curve metrics keep it: its histogram, no weight row."""
    samples = state.samples
    weights, tail_weights = samples.weights, samples.tail_weights
    if not is_traced(weights, tail_weights):  # numpy slices: no eager XLA op to compile
        weights, tail_weights = np.asarray(weights), np.asarray(tail_weights)
    return samples.replace(weights=weights[:0], tail_weights=tail_weights[:0])


def _has_background(buffer: ChunkedBuffer | FixedBuffer) -> bool:
    """Whether an exact buffer holds a background pixel, without concatenating its chunks."""
    if isinstance(buffer, ChunkedBuffer):
        return any(np.any(np.asarray(channels) == _BACKGROUND) for _, channels, _ in buffer.chunks)
    return bool(np.any(np.asarray(buffer.channels) == _BACKGROUND))


def _without_channels(maps: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _without_channel(maps), _without_channel(target)


def _without_padding(
    maps: jax.Array, target: jax.Array, valid: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """Maps and targets with the images where ``valid`` is False blanked (no region, score 0)."""
    if valid is None:
        return maps, target
    maps = jnp.where(per_sample(valid, maps.shape), maps, jnp.zeros((), maps.dtype))
    target = jnp.where(per_sample(valid, target.shape), target, jnp.zeros((), target.dtype))
    return maps, target


@functools.partial(jax.jit, static_argnames=("region_labels", "exact", "labeller"))
def _pixel_samples(
    maps: jax.Array, target: jax.Array, region_labels: bool, exact: bool, labeller: str = "auto"
):
    """Per pixel: score, channel (0 background, 1 region, -1 invalid) and weight row; plus the
    batch's region count and invalid-value count. The weight is 1/|region| (binned) or |region|
    (exact: inverted on the host in float64).
    """
    regions = _batch_regions(target, region_labels, labeller)
    scores = jnp.ravel(maps).astype(jnp.float32)
    finite = jnp.isfinite(scores)
    in_region = jnp.ravel(regions.labels) > 0
    channels = jnp.where(finite, in_region.astype(jnp.int32), -1)
    sizes = jnp.ravel(regions.sizes).astype(jnp.float32)
    weights = sizes if exact else jnp.where(in_region, 1.0 / jnp.maximum(sizes, 1.0), 0.0)
    num_invalid = jnp.sum(~finite).astype(jnp.int32) + regions.num_invalid
    return scores, channels, weights[None, :], regions.num_regions, num_invalid
