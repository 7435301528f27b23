"""Plain numpy reference implementations of PRO, AUPRO and PIMO/AUPIMO, used as test yardsticks.

These are test references, not library code: written straight from the published algorithms (the
MVTec AD evaluation script for the PRO curve, the AUPIMO paper's reference code for PIMO/AUPIMO) and
the anomalib 2.7 semantics recorded in ``shared/reference/anomalib_semantics.md``. They use plain
numpy and scipy in float64, hold every pixel in memory, and favour being obviously correct over
being fast. They never import ``jaxmetrics_ad``.

Conventions shared by all functions: ``maps`` are anomaly scores of shape (N, H, W) or (H, W);
``masks`` are ground truth of the same shape, bool or {0, 1}; regions are 8-connected components
of each image's mask (``scipy.ndimage.label`` with a 3×3 structure), never spanning two images.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=int)

# anomalib's AUPIMO refuses to integrate over this few points (unless forced) and warns below
# the second count: too few thresholds fall inside the FPR bounds for a trustworthy area.
AUPIMO_MIN_POINTS = 30
AUPIMO_RECOMMENDED_POINTS = 300


def _as_image_batch(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate maps and masks; return float64 scores and bool masks of shape (N, H, W)."""
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None]
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W) or (H, W), got shape {maps.shape}")
    if masks.shape != maps.shape:
        raise ValueError(f"masks must have the shape of maps {maps.shape}, got {masks.shape}")
    if not np.issubdtype(maps.dtype, np.floating):
        raise TypeError(f"maps must be floating point, got dtype {maps.dtype}")
    if masks.dtype != bool and not np.isin(masks, (0, 1)).all():
        raise ValueError("masks must be bool or contain only 0 and 1")
    return maps.astype(np.float64), masks.astype(bool)


def _label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Label each image's 8-connected regions with ids unique over the batch (0 = no region)."""
    labels = np.zeros(masks.shape, dtype=np.int64)
    num_regions = 0
    for image_index, mask in enumerate(masks):
        image_labels, image_num_regions = ndimage.label(mask, structure=EIGHT_CONNECTED)
        labels[image_index] = np.where(image_labels > 0, image_labels + num_regions, 0)
        num_regions += image_num_regions
    return labels, num_regions


def pro_at_threshold(maps: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> float:
    """Per-region overlap at one threshold: mean over regions of the fraction predicted positive.

    A pixel is predicted positive when its score is at least ``threshold`` (the rule of every metric
    of ours; anomalib binarises with ``>``). Every region of every image counts once, whatever its
    size. Without any region the overlap is defined as 1.0, as in anomalib.

    >>> maps = np.array([[0.9, 0.2, 0.0], [0.0, 0.0, 0.0], [0.0, 0.7, 0.1]])
    >>> masks = np.array([[1, 1, 0], [0, 0, 0], [0, 1, 1]])
    >>> pro_at_threshold(maps, masks)  # regions: {.9, .2} → 1/2, {.7, .1} → 1/2
    0.5
    """
    maps, masks = _as_image_batch(maps, masks)
    labels, num_regions = _label_regions(masks)
    if num_regions == 0:
        return 1.0
    region_ids = labels.ravel()
    predicted = (maps >= threshold).ravel().astype(np.float64)  # our rule (anomalib: >)
    region_sizes = np.bincount(region_ids, minlength=num_regions + 1)[1:]
    hits_per_region = np.bincount(region_ids, weights=predicted, minlength=num_regions + 1)[1:]
    return float(np.mean(hits_per_region / region_sizes))


def _pixel_steps(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per pixel: its FPR step weight (1 if background) and its PRO step weight (1/|its region|).

    Also returns the number of background pixels and the number of regions, the two normalisers
    of the MVTec AD PRO curve.
    """
    labels, num_regions = _label_regions(masks)
    region_sizes = np.bincount(labels.ravel(), minlength=num_regions + 1)
    inverse_region_sizes = np.zeros(num_regions + 1)
    inverse_region_sizes[1:] = 1.0 / region_sizes[1:]
    background_weight = (labels == 0).astype(np.float64)
    region_weight = inverse_region_sizes[labels]
    return background_weight, region_weight, int(region_sizes[0]), num_regions


def mvtec_pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The MVTec AD PRO curve: (FPR, PRO) at every distinct score, lowering the threshold.

    All pixels of all images are visited in one descending order of score. Each background pixel
    raises the FPR by 1/#background; each pixel of a region raises the PRO by
    1/(|region| · #regions), so the PRO is the mean over regions of the fraction of the region
    scoring at or above the threshold. Pixels with equal scores enter together: only the last
    point of each tie block is kept. (0, 0) is prepended. Raises ValueError when the masks have no
    background or no region, where the curve is undefined.

    >>> maps = np.array([[0.9, 0.8], [0.8, 0.1]])
    >>> masks = np.array([[1, 0], [0, 0]])
    >>> fpr, pro = mvtec_pro_curve(maps, masks)
    >>> fpr.tolist(), pro.tolist()
    ([0.0, 0.0, 0.6666666666666666, 1.0], [0.0, 1.0, 1.0, 1.0])
    """
    maps, masks = _as_image_batch(maps, masks)
    background_weight, region_weight, num_background, num_regions = _pixel_steps(masks)
    if num_background == 0 or num_regions == 0:
        raise ValueError("masks must contain at least one background pixel and one region")
    scores = maps.ravel()
    # Any order within a tie block will do: only the running sums at its end are kept.
    descending = np.argsort(-scores)
    sorted_scores = scores[descending]
    fpr = np.cumsum(background_weight.ravel()[descending]) / num_background
    pro = np.cumsum(region_weight.ravel()[descending]) / num_regions
    last_of_tie_block = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    # The running sums may overshoot 1 by rounding; the MVTec script clips them.
    fpr = np.minimum(fpr[last_of_tie_block], 1.0)
    pro = np.minimum(pro[last_of_tie_block], 1.0)
    return np.concatenate(([0.0], fpr)), np.concatenate(([0.0], pro))


def _trapezoid_up_to(x: np.ndarray, y: np.ndarray, x_limit: float) -> float:
    """Trapezoid area under y(x) for x in [x[0], x_limit], y linearly interpolated at the cut.

    ``x`` must be non-decreasing, as the FPR of a PRO curve is.
    """
    inside = x <= x_limit
    area = np.trapezoid(y[inside], x[inside])
    num_inside = int(inside.sum())
    if num_inside < len(x) and x[num_inside - 1] < x_limit:
        x_before, x_after = x[num_inside - 1], x[num_inside]
        y_before, y_after = y[num_inside - 1], y[num_inside]
        y_at_limit = y_before + (y_after - y_before) * (x_limit - x_before) / (x_after - x_before)
        area += 0.5 * (y_before + y_at_limit) * (x_limit - x_before)
    return area


def mvtec_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the MVTec AD PRO curve up to ``fpr_limit``.

    The curve of :func:`mvtec_pro_curve` is cut at ``fpr_limit`` (PRO linearly interpolated at the
    cut), integrated with the trapezoid rule and divided by ``fpr_limit``. No background pixel or
    no region at all gives 0.0, as in anomalib. anomalib stores its limit as float32, so pass
    ``np.float32(0.3)`` (= 0.30000001192...) to reproduce its numbers; the limit is used as given.

    >>> maps = np.array([[0.9, 0.8], [0.8, 0.1]])
    >>> masks = np.array([[1, 0], [0, 0]])
    >>> mvtec_aupro(maps, masks, fpr_limit=0.5)
    1.0
    """
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    maps, masks = _as_image_batch(maps, masks)
    _, _, num_background, num_regions = _pixel_steps(masks)
    if num_background == 0 or num_regions == 0:
        return 0.0
    fpr, pro = mvtec_pro_curve(maps, masks)
    return float(_trapezoid_up_to(fpr, pro, fpr_limit) / fpr_limit)


def float32_linspace(start: float, end: float, num: int) -> np.ndarray:
    """``num`` evenly spaced float32 values from ``start`` to ``end``, built as torch.linspace does.

    The step is computed in float32; the first half counts up from ``start`` and the second half
    counts down from ``end``, each value rounded to float32 once. numpy's linspace differs from it
    in the last bit for about half of the values, which changes which pixels clear a threshold.

    >>> float32_linspace(1.0, 7.0, 7).tolist()
    [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    """
    if num < 2:
        raise ValueError(f"num must be at least 2, got {num}")
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float32((end32 - start32) / np.float32(num - 1))
    indices = np.arange(num, dtype=np.float64)
    halfway = num // 2
    from_start = np.float64(start32) + np.float64(step) * indices[:halfway]
    from_end = np.float64(end32) - np.float64(step) * (num - 1 - indices[halfway:])
    return np.concatenate((from_start, from_end)).astype(np.float32)


def _fraction_at_or_above(sorted_scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Fraction of the (non-empty, ascending) ``sorted_scores`` that are >= each threshold."""
    num_below = np.searchsorted(sorted_scores, thresholds, side="left")
    return (len(sorted_scores) - num_below) / len(sorted_scores)


@dataclass(frozen=True)
class AupimoReference:
    """PIMO curves and AUPIMO scores, field for field as anomalib's PIMO/AUPIMO results.

    ``thresholds`` (K,) ascending float32 values; ``shared_fpr`` (K,) descending;
    ``per_image_tprs`` (N, K), NaN rows for normal images; ``image_classes`` (N,) 0 normal,
    1 anomalous; ``aupimos`` (N,), NaN for normal images; ``thresh_lower_bound`` and
    ``thresh_upper_bound`` the thresholds where the upper and lower FPR bounds were met;
    ``num_points`` the number of curve points integrated.
    """

    thresholds: np.ndarray
    shared_fpr: np.ndarray
    per_image_tprs: np.ndarray
    image_classes: np.ndarray
    aupimos: np.ndarray
    thresh_lower_bound: float
    thresh_upper_bound: float
    num_points: int


def _index_at_shared_fpr(shared_fpr: np.ndarray, fpr_level: float) -> int:
    """Index of the threshold whose shared FPR is closest to ``fpr_level`` (first on ties).

    At level 1.0 many thresholds may reach FPR 1; like the reference code, take the highest one.
    """
    if not shared_fpr.min() <= fpr_level <= shared_fpr.max():
        raise ValueError(
            f"fpr_bounds value {fpr_level} is outside the shared FPR range "
            f"[{shared_fpr.min()}, {shared_fpr.max()}]"
        )
    if fpr_level == 1.0:
        return int(np.flatnonzero(shared_fpr == 1.0).max())
    return int(np.argmin(np.abs(shared_fpr - fpr_level)))


def aupimo_reference(
    maps: np.ndarray,
    masks: np.ndarray,
    num_thresholds: int = 300_000,
    fpr_bounds: tuple[float, float] = (1e-5, 1e-4),
    force: bool = False,
) -> AupimoReference:
    """PIMO curves and AUPIMO scores following the AUPIMO reference code as shipped in anomalib.

    Thresholds: :func:`float32_linspace` between the min and max score of the normal images (those
    with an empty mask); like anomalib's, maps are expected to hold float32 values. A pixel is
    positive when its score is >= the threshold. Each normal image's FPR and each anomalous image's
    TPR are computed in float64; the shared FPR is the mean of the normal images' FPRs. Each
    anomalous image's AUPIMO is the trapezoid area under its TPR against ln(shared FPR) between the
    thresholds whose shared FPR is nearest the two bounds (no interpolation), divided by
    ln(upper / lower) and clipped to [0, 1].

    Raises ValueError without a normal or an anomalous image, or when a bound lies outside the
    shared FPR range; RuntimeError when the bounds meet the same threshold, or when at most 30
    points are integrated and ``force`` is false. Warns when a bound is met more than 1% off,
    when non-finite points are dropped, and when fewer than 300 points are integrated.

    >>> scores = np.ones(100)
    >>> scores[:10] = 2.0
    >>> scores[0] = 3.0
    >>> maps = np.stack([scores.reshape(10, 10)] * 2)
    >>> masks = np.stack([np.zeros((10, 10)), np.ones((10, 10))])
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     result = aupimo_reference(maps, masks, 3, fpr_bounds=(0.01, 0.1), force=True)
    >>> result.shared_fpr.tolist(), round(float(result.aupimos[1]), 6)
    ([1.0, 0.1, 0.01], 0.055)
    """
    maps, masks = _as_image_batch(maps, masks)
    lower_fpr, upper_fpr = (float(bound) for bound in fpr_bounds)
    if not 0.0 < lower_fpr < upper_fpr <= 1.0:
        raise ValueError(f"fpr_bounds must satisfy 0 < lower < upper <= 1, got {fpr_bounds}")
    image_classes = masks.reshape(len(masks), -1).any(axis=1).astype(np.int64)
    if not (image_classes == 0).any():
        raise ValueError("masks must include at least one normal image (an empty mask)")
    if not (image_classes == 1).any():
        raise ValueError("masks must include at least one anomalous image (a non-empty mask)")

    normal_maps = maps[image_classes == 0]
    if not normal_maps.min() < normal_maps.max():
        raise ValueError("maps of the normal images must not be constant: no threshold range")
    thresholds = float32_linspace(normal_maps.min(), normal_maps.max(), num_thresholds)
    thresholds_f64 = thresholds.astype(np.float64)

    fpr_sum = np.zeros(num_thresholds)
    per_image_tprs = np.full((len(maps), num_thresholds), np.nan)
    for image_index, (image_map, image_mask) in enumerate(zip(maps, masks, strict=True)):
        if image_classes[image_index] == 0:
            fpr_sum += _fraction_at_or_above(np.sort(image_map.ravel()), thresholds_f64)
        else:
            anomalous_scores = np.sort(image_map[image_mask])
            per_image_tprs[image_index] = _fraction_at_or_above(anomalous_scores, thresholds_f64)
    shared_fpr = fpr_sum / np.count_nonzero(image_classes == 0)

    # A low FPR bound is met at a high threshold: the bounds swap when mapped to thresholds.
    upper_index = _index_at_shared_fpr(shared_fpr, lower_fpr)
    lower_index = _index_at_shared_fpr(shared_fpr, upper_fpr)
    for bound, index in ((lower_fpr, upper_index), (upper_fpr, lower_index)):
        if not np.isclose(shared_fpr[index], bound, rtol=1e-2):
            warnings.warn(
                f"FPR bound {bound} is not met within 1%: the nearest shared FPR is "
                f"{shared_fpr[index]}",
                stacklevel=2,
            )
    if lower_index >= upper_index:
        raise RuntimeError(
            f"fpr_bounds {fpr_bounds} map to threshold indices {lower_index} and {upper_index}, "
            "which are not strictly increasing; use more thresholds"
        )

    # Reverse the inclusive slice so that ln(shared FPR) ascends and the area is positive.
    log_fpr = np.log(shared_fpr[lower_index : upper_index + 1][::-1])
    tprs = per_image_tprs[:, lower_index : upper_index + 1][:, ::-1]
    finite = np.isfinite(log_fpr)
    if not finite.any():
        raise RuntimeError("no finite ln(shared FPR) in the integration range; use more thresholds")
    if not finite.all():
        warnings.warn("dropping non-finite ln(shared FPR) points from the area", stacklevel=2)
        log_fpr, tprs = log_fpr[finite], tprs[:, finite]
    num_points = len(log_fpr)
    if num_points <= AUPIMO_MIN_POINTS:
        message = (
            f"only {num_points} points in the FPR integration range (more than "
            f"{AUPIMO_MIN_POINTS} needed); increase num_thresholds"
        )
        if not force:
            raise RuntimeError(message)
        warnings.warn(message + "; computation was forced", stacklevel=2)
    if num_points < AUPIMO_RECOMMENDED_POINTS:
        warnings.warn(
            f"AUPIMO may be inaccurate: only {num_points} points in the FPR integration range",
            stacklevel=2,
        )
    areas = np.trapezoid(tprs, log_fpr, axis=1)
    aupimos = np.clip(areas / np.log(upper_fpr / lower_fpr), 0.0, 1.0)
    return AupimoReference(
        thresholds=thresholds,
        shared_fpr=shared_fpr,
        per_image_tprs=per_image_tprs,
        image_classes=image_classes,
        aupimos=aupimos,
        thresh_lower_bound=float(thresholds[lower_index]),
        thresh_upper_bound=float(thresholds[upper_index]),
        num_points=num_points,
    )


# -- sPRO / AU-sPRO (MVTec LOCO AD) and SegF1 (MVTec AD 2) ------------------------------------------


def loco_saturation_area(mask: np.ndarray, threshold: float, relative: bool) -> float:
    """MVTec LOCO's saturation area of one defect mask: ``min(τ, |d|)`` (absolute) or
    ``int(τ · |d|)`` (relative), the latter at least 1 (0 would make sPRO 0/0).

    >>> loco_saturation_area(np.ones((2, 5), bool), 0.25, True), loco_saturation_area(np.ones((2, 5)), 30, False)
    (2.0, 10.0)
    """
    size = int(np.count_nonzero(mask))
    if relative:
        return float(max(int(threshold * size), 1))
    return float(min(threshold, size))


def _defect_list(masks: np.ndarray, saturation: np.ndarray):
    """(image index, bool mask (H, W), saturation area) of every non-empty defect mask."""
    defects = []
    for image in range(masks.shape[0]):
        for slot in range(masks.shape[1]):
            mask = masks[image, slot].astype(bool)
            if mask.any():
                defects.append((image, mask, float(saturation[image, slot])))
    return defects


def loco_spro_curve(
    maps: np.ndarray, masks: np.ndarray, saturation: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The sPRO curve, straight from its definition: one point per distinct score ``t`` (highest
    first) after (0, 0): FPR = background pixels scoring ``>= t`` / background pixels, sPRO = mean
    over defects of ``min(|{p in d : s(p) >= t}| / A_d, 1)``.

    ``maps`` (N, H, W); ``masks`` (N, D, H, W), empty masks being padding; ``saturation`` (N, D)
    areas in pixels. Background: pixels no mask of their image covers. O(thresholds × pixels).

    >>> maps = np.array([[[0.9, 0.8, 0.1]]])
    >>> fpr, spro = loco_spro_curve(maps, np.array([[[[1, 1, 0]]]]), np.array([[1.0]]))
    >>> fpr.tolist(), spro.tolist()
    ([0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0])
    """
    maps = np.asarray(maps, np.float64)
    masks = np.asarray(masks).astype(bool)
    defects = _defect_list(masks, np.asarray(saturation, np.float64))
    background = ~masks.any(axis=1)
    num_background = int(background.sum())
    if num_background == 0 or not defects:
        raise ValueError("the curve needs a background pixel and a defect")
    fpr, spro = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fpr.append(float(np.sum(background & (maps >= t))) / num_background)
        overlaps = [
            min(np.count_nonzero(mask & (maps[image] >= t)) / area, 1.0)
            for image, mask, area in defects
        ]
        spro.append(float(np.mean(overlaps)))
    return np.array(fpr), np.array(spro)


def loco_auspro(
    maps: np.ndarray, masks: np.ndarray, saturation: np.ndarray, fpr_limit: float = 0.05
) -> float:
    """Area under :func:`loco_spro_curve` up to ``fpr_limit`` (trapezoid, sPRO interpolated at the
    cut) divided by it; 0.0 without background or defect.

    >>> maps = np.array([[[0.9, 0.8, 0.1, 0.0, 0.2, 0.3]]])
    >>> round(loco_auspro(maps, np.array([[[[1, 1, 1, 0, 0, 0]]]]), np.array([[3.0]]), 1.0), 4)
    0.7778
    """
    masks = np.asarray(masks).astype(bool)
    if not (~masks.any(axis=1)).any() or not _defect_list(masks, np.asarray(saturation)):
        return 0.0
    fpr, spro = loco_spro_curve(maps, masks, saturation)
    return float(_trapezoid_up_to(fpr, spro, fpr_limit) / fpr_limit)


def loco_spro_at(
    maps: np.ndarray, masks: np.ndarray, saturation: np.ndarray, threshold: float
) -> float:
    """Mean over defects of ``min(|{p in d : s(p) >= threshold}| / A_d, 1)``; 1.0 without defects.

    >>> loco_spro_at(np.array([[[0.9, 0.1]]]), np.array([[[[1, 1]]]]), np.array([[2.0]]), 0.5)
    0.5
    """
    maps = np.asarray(maps, np.float64)
    defects = _defect_list(np.asarray(masks).astype(bool), np.asarray(saturation, np.float64))
    if not defects:
        return 1.0
    return float(
        np.mean(
            [
                min(np.count_nonzero(mask & (maps[image] >= threshold)) / area, 1.0)
                for image, mask, area in defects
            ]
        )
    )


def pixel_f1(predicted: np.ndarray, actual: np.ndarray) -> float:
    """``2 TP / (2 TP + FP + FN)`` of boolean arrays; 0.0 when nothing is predicted nor present.

    >>> pixel_f1(np.array([1, 1, 0], bool), np.array([1, 0, 1], bool))
    0.5
    """
    predicted, actual = np.asarray(predicted, bool), np.asarray(actual, bool)
    tp = np.count_nonzero(predicted & actual)
    denominator = 2 * tp + np.count_nonzero(predicted != actual)
    return float(2 * tp / denominator) if denominator else 0.0
