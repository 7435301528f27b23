"""Tests that the numpy references reproduce the published PRO, AUPRO and AUPIMO test vectors."""

import warnings

import numpy as np
import pytest
from references import (
    aupimo_reference,
    float32_linspace,
    mvtec_aupro,
    mvtec_pro_curve,
    pro_at_threshold,
)
from skimage import measure

# --- PRO at one threshold ---------------------------------------------------------------------


def test_pro_vector_regions_on_odd_rows_with_row_scores():
    masks = np.zeros((10, 5), dtype=bool)
    for row, width in zip(range(1, 10, 2), range(1, 6), strict=True):
        masks[row, :width] = True
    maps = np.repeat((np.arange(10) / 10 + 0.05)[:, None], 5, axis=1)
    thresholds = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    pros = [pro_at_threshold(maps[None], masks[None], threshold) for threshold in thresholds]
    np.testing.assert_allclose(pros, [1.0, 0.8, 0.6, 0.4, 0.2, 0.0])


def test_pro_without_any_region_is_one():
    assert pro_at_threshold(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), dtype=bool)) == 1.0


def test_pro_matches_a_per_region_loop_with_skimage_labels():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 12, 12))
    masks = rng.random((3, 12, 12)) > 0.7
    overlaps = []
    for image_map, image_mask in zip(maps, masks, strict=True):
        labels = measure.label(image_mask, connectivity=2)
        for region_id in range(1, labels.max() + 1):
            overlaps.append(np.mean(image_map[labels == region_id] > 0.4))
    assert pro_at_threshold(maps, masks, 0.4) == pytest.approx(np.mean(overlaps), rel=1e-12)


# --- AUPRO (MVTec AD algorithm) ---------------------------------------------------------------


def _column_masks(columns):
    mask = np.zeros((400, 7), dtype=bool)
    mask[:, columns] = True
    return mask


@pytest.mark.parametrize(
    "masks",
    [
        _column_masks([3])[None],
        _column_masks([1, 3, 5])[None],
        np.stack([_column_masks([3]), _column_masks([1, 3, 5])]),
    ],
    ids=["one-region", "three-regions", "both-images"],
)
def test_aupro_vector_interleaved_regions_gives_one_sixth(masks):
    one_map = (np.arange(2800) / 2800).reshape(400, 7)
    maps = np.broadcast_to(one_map, masks.shape)
    assert mvtec_aupro(maps, masks, fpr_limit=1 / 3) == pytest.approx(1 / 6, abs=2e-6)


def test_aupro_vector_one_region_matches_the_recorded_value():
    maps = (np.arange(2800) / 2800).reshape(1, 400, 7)
    masks = _column_masks([3])[None]
    assert mvtec_aupro(maps, masks, fpr_limit=1 / 3) == pytest.approx(0.1666656, abs=1e-7)


def _brute_force_pro_curve(maps, masks):
    """(FPR, PRO) at each distinct score by thresholding every region directly; (0, 0) first."""
    labelled = [measure.label(mask, connectivity=2) for mask in masks]
    regions = [
        image_map[labels == region_id]
        for image_map, labels in zip(maps, labelled, strict=True)
        for region_id in range(1, labels.max() + 1)
    ]
    background = maps[~masks]
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        fprs.append(np.mean(background >= threshold))
        pros.append(np.mean([np.mean(region >= threshold) for region in regions]))
    return np.array(fprs), np.array(pros)


def _area_of_segments_up_to(fprs, pros, fpr_limit):
    """Sum the trapezoids segment by segment, cutting the one that crosses the limit."""
    area = 0.0
    for x0, x1, y0, y1 in zip(fprs[:-1], fprs[1:], pros[:-1], pros[1:], strict=True):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area


@pytest.mark.parametrize("seed", range(5))
def test_aupro_matches_brute_force_thresholding_with_ties(seed):
    rng = np.random.default_rng(seed)
    maps = np.round(rng.random((3, 9, 9)) * 6) / 6  # few distinct scores → many ties
    masks = rng.random((3, 9, 9)) > 0.75
    fprs, pros = _brute_force_pro_curve(maps, masks)
    curve_fprs, curve_pros = mvtec_pro_curve(maps, masks)
    np.testing.assert_allclose(curve_fprs, fprs, atol=1e-12)
    np.testing.assert_allclose(curve_pros, pros, atol=1e-12)
    for fpr_limit in (0.05, np.float32(0.3), 1.0):
        expected = _area_of_segments_up_to(fprs, pros, float(fpr_limit)) / float(fpr_limit)
        assert mvtec_aupro(maps, masks, fpr_limit) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("mask_value", [False, True], ids=["no-region", "no-background"])
def test_aupro_without_region_or_background_is_zero(mask_value):
    masks = np.full((2, 5, 5), mask_value)
    assert mvtec_aupro(np.random.default_rng(0).random((2, 5, 5)), masks) == 0.0
    with pytest.raises(ValueError, match="masks"):
        mvtec_pro_curve(np.zeros((2, 5, 5)), masks)


def test_aupro_rejects_limit_outside_unit_interval():
    with pytest.raises(ValueError, match="fpr_limit"):
        mvtec_aupro(np.zeros((4, 4)), np.eye(4, dtype=bool), fpr_limit=1.5)


# --- PIMO / AUPIMO ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def decade_images():
    """Three 1000×1000 images sharing one map whose scores 7..1 cover 1, 9, 90, …, 900000 pixels.

    Masks: empty (normal), full, and the first 100000 pixels (exactly the scores >= 2).
    """
    scores = np.ones(1_000_000, dtype=np.float32)
    for num_top_pixels in (100_000, 10_000, 1_000, 100, 10, 1):
        scores[:num_top_pixels] += 1
    maps = np.stack([scores.reshape(1000, 1000)] * 3)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[1] = True
    masks[2].ravel()[:100_000] = True
    return maps, masks


def _aupimo_forced(maps, masks, fpr_bounds, num_thresholds=7):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return aupimo_reference(maps, masks, num_thresholds, fpr_bounds=fpr_bounds, force=True)


def test_pimo_vector_thresholds_shared_fpr_and_tprs(decade_images):
    result = _aupimo_forced(*decade_images, fpr_bounds=(1e-5, 1e-4))
    decades = 10.0 ** -np.arange(7)
    np.testing.assert_array_equal(result.thresholds, np.arange(1, 8, dtype=np.float32))
    np.testing.assert_allclose(result.shared_fpr, decades, rtol=1e-12)
    assert np.isnan(result.per_image_tprs[0]).all()
    np.testing.assert_allclose(result.per_image_tprs[1], result.shared_fpr, rtol=1e-12)
    np.testing.assert_allclose(result.per_image_tprs[2], np.clip(10 * decades, 0, 1), rtol=1e-12)
    np.testing.assert_array_equal(result.image_classes, [0, 1, 1])


# The semantics file rounds the middle case to .0305 / .305; the trapezoids give .03025 / .3025,
# which is also what the AUPIMO reference tests compute.
@pytest.mark.parametrize(
    ("fpr_bounds", "expected_aupimos", "expected_thresh_bounds"),
    [
        ((1e-1, 1.0), [0.55, 1.0], (1.0, 2.0)),
        ((1e-3, 1e-1), [0.03025, 0.3025], (2.0, 4.0)),
        ((1e-5, 1e-4), [5.5e-5, 5.5e-4], (5.0, 6.0)),
    ],
)
def test_aupimo_vector_forced(decade_images, fpr_bounds, expected_aupimos, expected_thresh_bounds):
    result = _aupimo_forced(*decade_images, fpr_bounds=fpr_bounds)
    assert np.isnan(result.aupimos[0])
    np.testing.assert_allclose(result.aupimos[1:], expected_aupimos, rtol=1e-9)
    assert (result.thresh_lower_bound, result.thresh_upper_bound) == expected_thresh_bounds


def test_pimo_curves_match_direct_thresholding_of_every_pixel():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(5, 16, 16)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[3, 4:10, 4:10] = True
    masks[4, :5, :] = True
    result = _aupimo_forced(maps, masks, fpr_bounds=(0.05, 0.5), num_thresholds=64)
    predicted = maps[:, None] >= result.thresholds[None, :, None, None]  # (N, K, H, W)
    fprs = (predicted & ~masks[:, None]).sum(axis=(2, 3)) / (~masks).sum(axis=(1, 2))[:, None]
    anomalous_hits = (predicted & masks[:, None]).sum(axis=(2, 3))
    tprs = anomalous_hits[3:] / masks[3:].sum(axis=(1, 2))[:, None]
    np.testing.assert_allclose(result.shared_fpr, fprs[:3].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(result.per_image_tprs[3:], tprs, rtol=1e-12)
    assert np.isnan(result.per_image_tprs[:3]).all()
    assert result.thresholds[0] == maps[:3].min() and result.thresholds[-1] == maps[:3].max()


def test_float32_linspace_keeps_endpoints_and_stays_within_one_float32_ulp_of_exact():
    start, end = np.float32(-0.37), np.float32(2.9)
    thresholds = float32_linspace(start, end, 1001)
    assert thresholds.dtype == np.float32
    assert thresholds[0] == start and thresholds[-1] == end
    assert (np.diff(thresholds) > 0).all()
    exact = np.linspace(np.float64(start), np.float64(end), 1001)
    assert np.abs(thresholds - exact).max() <= np.spacing(end)


# --- AUPIMO errors and warnings ---------------------------------------------------------------


def _small_decade_images():
    """Like the decade images on 10×10: scores 3, 2, 1 on 1, 9, 90 pixels; shared FPR 1, .1, .01."""
    scores = np.ones(100, dtype=np.float32)
    scores[:10] = 2
    scores[0] = 3
    maps = np.stack([scores.reshape(10, 10)] * 2)
    masks = np.stack([np.zeros((10, 10), dtype=bool), np.ones((10, 10), dtype=bool)])
    return maps, masks


def test_aupimo_requires_a_normal_image():
    maps, masks = _small_decade_images()
    with pytest.raises(ValueError, match="normal"):
        aupimo_reference(maps, np.ones_like(masks), 3, fpr_bounds=(0.01, 0.1), force=True)


def test_aupimo_requires_an_anomalous_image():
    maps, masks = _small_decade_images()
    with pytest.raises(ValueError, match="anomalous"):
        aupimo_reference(maps, np.zeros_like(masks), 3, fpr_bounds=(0.01, 0.1), force=True)


def test_aupimo_rejects_bound_outside_shared_fpr_range():
    with pytest.raises(ValueError, match="outside the shared FPR range"):
        aupimo_reference(*_small_decade_images(), 3, fpr_bounds=(1e-3, 1e-1), force=True)


@pytest.mark.filterwarnings("ignore:AUPIMO may be inaccurate")
def test_aupimo_refuses_few_points_unless_forced():
    maps, masks = _small_decade_images()
    with pytest.raises(RuntimeError, match="points"):
        aupimo_reference(maps, masks, 3, fpr_bounds=(0.01, 0.1))
    with pytest.warns(UserWarning, match="forced"):
        result = aupimo_reference(maps, masks, 3, fpr_bounds=(0.01, 0.1), force=True)
    assert result.aupimos[1] == pytest.approx(0.055, rel=1e-12)
    assert result.num_points == 2


@pytest.mark.filterwarnings("ignore:.*points in the FPR integration range")
def test_aupimo_warns_when_bound_is_not_met_within_one_percent():
    with pytest.warns(UserWarning, match="not met within 1%"):
        _ = aupimo_reference(*_small_decade_images(), 3, fpr_bounds=(0.012, 0.1), force=True)


def test_aupimo_rejects_bounds_meeting_the_same_threshold():
    with pytest.raises(RuntimeError, match="threshold indices"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aupimo_reference(*_small_decade_images(), 3, fpr_bounds=(0.011, 0.012), force=True)
