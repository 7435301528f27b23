"""PIMO / AUPIMO parity with anomalib 2.7 (issue 9): any FPR bounds in exact mode, the integration
point count, anomalib's input layouts and dtypes, Pillow masks inside jit, NaN after bad input.

Expected values are anomalib's own test expectations on its synthetic case (recorded in
shared/reference/anomalib_semantics.md) or the numpy reference of tests/references.py.
"""

from __future__ import annotations

import functools
import warnings

import jax
import numpy as np
import pytest
from references import aupimo_reference
from test_pimo import BOUNDS, NUM_BINS, NUM_THRESHOLDS, category, quietly, reference

import jaxmetrics_ad as jm


@functools.cache
def anomalib_case():
    """anomalib's test case: one normal and two anomalous 1000×1000 images sharing one map.

    Scores 7 (1 px), 6 (9 px), 5 (90), 4 (900), 3 (9,000), 2 (90,000), 1 (900,000), in raster
    order; masks: none / every pixel / the first 100,000 pixels (the scores >= 2).
    """
    counts = [1, 9, 90, 900, 9_000, 90_000, 900_000]
    scores = np.repeat(np.arange(7, 0, -1, dtype=np.float32), counts).reshape(1000, 1000)
    maps = np.stack([scores] * 3)
    masks = np.stack([np.zeros_like(scores, bool), np.ones_like(scores, bool), scores >= 2])
    return maps, masks


# anomalib's tests/unit/metrics/pimo/test_pimo.py: fpr_bounds -> expected AUPIMOs (trapezia).
ANOMALIB_AUPIMOS = {
    (1e-1, 1.0): [np.nan, (0.10 + 1.0) / 2, 1.0],
    (1e-3, 1e-1): [np.nan, ((1e-3 + 1e-2) / 2 + (1e-2 + 1e-1) / 2) / 2, 0.3025],
    (1e-5, 1e-4): [np.nan, (1e-5 + 1e-4) / 2, (1e-4 + 1e-3) / 2],
}
# Thresholds 1..7 meet shared FPR 10^0..10^-6: the bounds (upper, lower) sit at these indices, and
# anomalib integrates over the points between them, both included.
INTEGRATION_POINTS = {(1e-1, 1.0): 2, (1e-3, 1e-1): 3, (1e-5, 1e-4): 2}
SHARED_FPR = 10.0 ** -np.arange(7)


@pytest.mark.parametrize("scale", [1.0, 10.0])
@pytest.mark.parametrize("bounds", list(ANOMALIB_AUPIMOS))
def test_exact_aupimo_of_anomalibs_case_for_any_bounds(bounds, scale):
    maps, masks = anomalib_case()
    metric = jm.AUPIMO(7, bounds, return_average=False, force=True)
    with pytest.warns(RuntimeWarning, match="forced"):
        pimo, aupimo = metric(scale * maps, masks)
    np.testing.assert_allclose(aupimo.aupimos, ANOMALIB_AUPIMOS[bounds], rtol=1e-5)
    # The whole curve, as anomalib returns it (no NaN where a kept tail would not reach).
    np.testing.assert_allclose(pimo.shared_fpr, SHARED_FPR, rtol=1e-6)
    np.testing.assert_allclose(pimo.thresholds, scale * np.arange(1, 8))
    # anomalib: "not the same as the number of thresholds in the curve ... always less".
    assert aupimo.num_thresholds == INTEGRATION_POINTS[bounds] < 7
    assert isinstance(aupimo.num_thresholds, int)
    low, high = float(aupimo.thresh_lower_bound), float(aupimo.thresh_upper_bound)
    assert scale * maps.min() <= low < high <= scale * maps.max()


@pytest.mark.parametrize("bounds", list(ANOMALIB_AUPIMOS))
def test_exact_mean_aupimo_of_anomalibs_case_for_any_bounds(bounds, monkeypatch):
    # Let go of normal pixels from the first update on: what is kept must follow from the bounds.
    monkeypatch.setattr(jm.pimo, "EXACT_KEEP_ALL_PIXELS", 0)
    maps, masks = anomalib_case()
    with pytest.warns(RuntimeWarning, match="forced"):
        value = jm.AUPIMO(7, bounds, force=True)(maps, masks)
    assert float(value) == pytest.approx(np.nanmean(ANOMALIB_AUPIMOS[bounds]), rel=1e-5)


@pytest.mark.parametrize("bounds", [(1e-3, 1e-2), (1e-3, 1e-1), (0.1, 1.0)])
def test_exact_mean_aupimo_for_wide_bounds_matches_reference_when_tails_are_trimmed(
    bounds, monkeypatch
):
    monkeypatch.setattr(jm.pimo, "EXACT_KEEP_ALL_PIXELS", 0)
    maps, masks = category(0)
    metric = jm.AUPIMO(NUM_THRESHOLDS, bounds)
    for start in range(0, len(maps), 4):
        metric = metric.update(maps[start : start + 4], masks[start : start + 4])
    # An upper bound of 0.01 needs a tail carrying 0.1 of the shared FPR; 0.1 or more needs all.
    trimmed = np.isfinite(metric.state.let_go_max)
    assert trimmed == (bounds[1] < 0.1)
    expected = quietly(aupimo_reference, maps, masks, NUM_THRESHOLDS, bounds)
    assert abs(float(quietly(metric.compute)) - np.nanmean(expected.aupimos)) < 1e-6


def test_default_bounds_on_one_noisy_normal_image_need_no_tail_setting():
    # anomalib's edge test: its case with noise, default bounds and 300,000 thresholds computes.
    maps, masks = anomalib_case()
    noisy = maps * np.random.default_rng(42).uniform(1.0, 1.1, maps.shape).astype(np.float32)
    expected = quietly(aupimo_reference, noisy, masks)
    value = quietly(jm.AUPIMO(), noisy, masks)
    assert abs(float(value) - np.nanmean(expected.aupimos)) < 1e-6


def test_tail_fraction_is_no_longer_an_aupimo_argument():
    with pytest.raises(TypeError):
        jm.AUPIMO(tail_fraction=0.05)
    assert jm.AUPIMO().tail_fraction == pytest.approx(1e-3)
    assert jm.AUPIMO(fpr_bounds=(1e-3, 1e-1)).tail_fraction == 1.0
    assert jm.AUPIMO(return_average=False).tail_fraction == 1.0


def test_binned_num_thresholds_counts_the_integration_points():
    maps, masks = category(0)
    expected = reference(0)
    metric = jm.AUPIMO(
        NUM_THRESHOLDS, BOUNDS, return_average=False, thresholds=NUM_BINS, capacity=32
    ).update(maps, masks)
    _, aupimo = quietly(metric.compute)
    assert isinstance(aupimo.num_thresholds, int)
    assert abs(aupimo.num_thresholds - expected.num_points) <= 2
    _, traced = jax.jit(lambda m: m.compute())(metric)
    assert int(traced.num_thresholds) == aupimo.num_thresholds


# -- anomalib's layouts and dtypes ----------------------------------------------------------------


@pytest.mark.parametrize("num_bins", [None, NUM_BINS])
@pytest.mark.parametrize("mask_layout", ["NHW", "N1HW"])
def test_aupimo_takes_a_singleton_channel_axis(num_bins, mask_layout):
    maps, masks = category(0)
    target = masks[:, None] if mask_layout == "N1HW" else masks
    metric = jm.AUPIMO(NUM_THRESHOLDS, BOUNDS, thresholds=num_bins)
    value = quietly(metric.update(maps[:, None], target).compute)
    assert float(value) == float(quietly(metric.update(maps, masks).compute))


def test_pimo_takes_a_singleton_channel_axis():
    maps, masks = anomalib_case()
    result = jm.PIMO(7)(maps[:, None], masks[:, None])
    np.testing.assert_allclose(result.shared_fpr, SHARED_FPR, rtol=1e-6)


@pytest.mark.parametrize("metric", [jm.PIMO(7), jm.AUPIMO(7)])
def test_other_shapes_raise_naming_the_field(metric):
    maps, masks = category(0)
    with pytest.raises(ValueError, match=r"anomaly_map.*\(N, 1, H, W\)"):
        metric.update(np.stack([maps, maps], axis=1), masks)
    with pytest.raises(ValueError, match=r"gt_mask.*\(N, 1, H, W\)"):
        metric.update(maps, masks[:, None, None])


@pytest.mark.parametrize("num_bins", [None, NUM_BINS])
@pytest.mark.parametrize("cls", [jm.PIMO, jm.AUPIMO])
def test_float_masks_raise_type_error_naming_the_field(cls, num_bins):
    maps, masks = category(0)
    capacity = None if num_bins is None or cls is jm.AUPIMO else 32
    with pytest.raises(TypeError, match="gt_mask"):
        cls(thresholds=num_bins, capacity=capacity).update(maps, masks.astype(np.float32))


def test_forced_aupimo_warns_with_runtime_warning():
    maps, masks = category(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jm.AUPIMO(50, BOUNDS, force=True)(maps, masks)
    forced = [w for w in caught if "forced" in str(w.message)]
    assert len(forced) == 1 and forced[0].category is RuntimeWarning


# -- bool masks whose True byte is 0xFF (Pillow's 1-bit PNG masks) -------------------------------


def pillow_bool(masks: np.ndarray) -> np.ndarray:
    return (masks.astype(np.uint8) * 255).view(bool)


def test_pillow_bool_masks_inside_jit_equal_clean_masks_for_binned_aupimo():
    maps, masks = category(0)
    dirty = pillow_bool(masks)
    assert dirty.view(np.uint8).max() == 255
    step = jax.jit(lambda m, a, b: m.update(a, b))
    metric = jm.AUPIMO(NUM_THRESHOLDS, BOUNDS, thresholds=NUM_BINS)
    clean, stepped = step(metric, maps, masks), step(metric, maps, dirty)
    assert int(stepped.num_invalid) == 0
    assert int(stepped.state.num_anomalous) == int(clean.state.num_anomalous)
    assert float(quietly(stepped.compute)) == float(quietly(clean.compute))


def test_pillow_bool_masks_eagerly_equal_clean_masks():
    maps, masks = category(0)
    dirty = pillow_bool(masks)
    for metric in (
        jm.AUPIMO(NUM_THRESHOLDS, BOUNDS),
        jm.AUPIMO(NUM_THRESHOLDS, BOUNDS, thresholds=NUM_BINS),
    ):
        assert float(quietly(metric, maps, dirty)) == float(quietly(metric, maps, masks))


# -- every reader of a state poisoned inside jit is NaN -------------------------------------------


def test_streaming_readers_are_nan_after_invalid_input_inside_jit():
    maps, masks = category(0)
    bad = masks.astype(np.int8)
    bad[0, 0, 0] = 2
    step = jax.jit(lambda m, a, b: m.update(a, b))
    for metric in (
        jm.PIMO(NUM_THRESHOLDS, thresholds=NUM_BINS, capacity=32),
        jm.AUPIMO(NUM_THRESHOLDS, BOUNDS, return_average=False, thresholds=NUM_BINS, capacity=32),
        jm.AUPIMO(NUM_THRESHOLDS, BOUNDS, thresholds=NUM_BINS),
    ):
        stepped = step(metric, maps, bad)
        floats = jax.tree_util.tree_leaves(jax.jit(lambda m: m.compute())(stepped))
        floats = [leaf for leaf in floats if np.issubdtype(np.asarray(leaf).dtype, np.floating)]
        assert floats and all(np.isnan(leaf).all() for leaf in floats)
        with pytest.raises(ValueError, match="invalid"):
            stepped.compute()
