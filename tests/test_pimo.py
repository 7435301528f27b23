"""PIMO / AUPIMO against the numpy transcription of anomalib's reference code (tests/references.py)."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import aupimo_reference

import jaxmetrics_ad as jm
from jaxmetrics_ad.synthetic import make_category

# Streaming configurations are shared between tests: each distinct one costs a few seconds of
# XLA compilation on this CPU.
NUM_THRESHOLDS = 30_000
BOUNDS = (1e-4, 1e-3)
NUM_BINS = 4096
CAPACITY = 32


@functools.cache
def category(seed: int = 0):
    """24 realistic 128×128 maps, 12 normal: about 10,000 thresholds fall inside BOUNDS."""
    data = make_category(num_normal=12, num_anomalous=12, size=(128, 128), seed=seed)
    return data.anomaly_maps, data.gt_masks


@functools.cache
def reference(seed: int = 0, num_thresholds: int = NUM_THRESHOLDS, bounds=BOUNDS):
    maps, masks = category(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return aupimo_reference(maps, masks, num_thresholds, fpr_bounds=bounds)


def in_batches(metric, maps, masks, batch_size=12):
    for start in range(0, len(maps), batch_size):
        metric = metric.update(maps[start : start + batch_size], masks[start : start + batch_size])
    return metric


def quietly(function, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args)


# -- exact mode ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_aupimo_matches_reference_per_image(seed):
    maps, masks = category(seed)
    expected = reference(seed)
    metric = jm.AUPIMO(NUM_THRESHOLDS, BOUNDS, return_average=False)
    pimo, aupimo = quietly(in_batches(metric, maps, masks).compute)
    np.testing.assert_array_equal(np.isnan(aupimo.aupimos), np.isnan(expected.aupimos))
    np.testing.assert_allclose(aupimo.aupimos, expected.aupimos, atol=1e-6)
    np.testing.assert_array_equal(pimo.thresholds, expected.thresholds)
    # AUPIMO keeps only the normal images' score tails: the curve is known from the band on.
    known = ~np.isnan(np.asarray(pimo.shared_fpr))
    assert np.all(expected.shared_fpr[~known] > BOUNDS[1])
    np.testing.assert_allclose(pimo.shared_fpr[known], expected.shared_fpr[known], rtol=1e-6)
    np.testing.assert_allclose(pimo.per_image_tprs, expected.per_image_tprs, atol=1e-7)
    assert float(aupimo.thresh_lower_bound) == expected.thresh_lower_bound
    assert float(aupimo.thresh_upper_bound) == expected.thresh_upper_bound
    assert aupimo.image_classes.tolist() == expected.image_classes.tolist()
    assert pimo.image_classes.tolist() == expected.image_classes.tolist()


def test_exact_mean_aupimo_matches_reference():
    maps, masks = category(0)
    value = quietly(in_batches(jm.AUPIMO(NUM_THRESHOLDS, BOUNDS), maps, masks).compute)
    assert abs(float(value) - np.nanmean(reference(0).aupimos)) < 1e-6


def test_exact_aupimo_with_anomalib_defaults_matches_reference():
    data = make_category(num_normal=4, num_anomalous=4, size=(256, 256), seed=3)
    maps, masks = data.anomaly_maps, data.gt_masks
    expected = quietly(aupimo_reference, maps, masks)
    _, aupimo = quietly(jm.AUPIMO(return_average=False), maps, masks)
    np.testing.assert_allclose(aupimo.aupimos, expected.aupimos, atol=1e-6)
    # As in anomalib: the number of points integrated, not the curve's 300,000 thresholds.
    assert aupimo.num_thresholds == expected.num_points < 300_000
    assert aupimo.fpr_bounds == (1e-5, 1e-4)


def test_exact_pimo_matches_reference_curves():
    maps, masks = category(1)
    expected = reference(1)
    result = in_batches(jm.PIMO(NUM_THRESHOLDS), maps, masks, batch_size=5).compute()
    np.testing.assert_allclose(result.shared_fpr, expected.shared_fpr, rtol=1e-6)
    np.testing.assert_allclose(result.per_image_tprs, expected.per_image_tprs, atol=1e-7)


def test_exact_mean_keeps_only_a_score_tail_and_mask_pixels(monkeypatch):
    monkeypatch.setattr(jm.pimo, "EXACT_KEEP_ALL_PIXELS", 0)  # let go from the first update on
    maps, masks = category(0)
    metric = in_batches(jm.AUPIMO(NUM_THRESHOLDS, BOUNDS), maps, masks, batch_size=6)
    kept = sum(b.normal_scores.size + b.anomalous_scores.size for b in metric.state.batches)
    assert kept < 0.05 * maps.size
    assert abs(float(quietly(metric.compute)) - np.nanmean(reference(0).aupimos)) < 1e-6


def test_pimo_with_short_tails_is_nan_where_they_do_not_reach(monkeypatch):
    monkeypatch.setattr(jm.pimo, "EXACT_KEEP_ALL_PIXELS", 0)
    maps, masks = category(0)
    expected = reference(0)
    result = jm.PIMO(NUM_THRESHOLDS, tail_fraction=0.01)(maps, masks)
    known = ~np.isnan(np.asarray(result.shared_fpr))
    assert 0 < known.sum() < NUM_THRESHOLDS and known[-1] and not known[0]
    np.testing.assert_allclose(result.shared_fpr[known], expected.shared_fpr[known], rtol=1e-6)
    assert np.nanmax(expected.shared_fpr[~known]) > 1e-3


def test_exact_mean_aupimo_refuses_a_tail_diluted_by_much_lower_later_images(monkeypatch):
    # One bright normal image first, then many dark ones: the tail kept after the first update
    # cannot carry the bound over all of them. Never a wrong number: a ValueError saying what to do.
    monkeypatch.setattr(jm.pimo, "EXACT_KEEP_ALL_PIXELS", 0)
    maps, masks = category(0)
    normal = np.flatnonzero(~masks.any(axis=(1, 2)))
    bright = maps.copy()
    bright[normal[0]] += 10.0
    order = np.concatenate([normal[:1], np.flatnonzero(masks.any(axis=(1, 2))), normal[1:]])
    first, rest = order[:1], order[1:]
    metric = jm.AUPIMO(NUM_THRESHOLDS, BOUNDS).update(bright[first], masks[first])
    metric = metric.update(bright[rest], masks[rest])
    with pytest.raises(ValueError, match="return_average=False"):
        metric.compute()
    per_image = jm.AUPIMO(NUM_THRESHOLDS, BOUNDS, return_average=False).update(
        bright[first], masks[first]
    )
    _, aupimo = quietly(per_image.update(bright[rest], masks[rest]).compute)
    expected = quietly(aupimo_reference, bright[order], masks[order], NUM_THRESHOLDS, BOUNDS)
    np.testing.assert_allclose(aupimo.aupimos, expected.aupimos, atol=1e-6)


# -- the vectors of the semantics notes: three 1000×1000 images sharing one map -------------------


@functools.cache
def staircase():
    """1 px scores 7, 9 px 6, 90 px 5, ... 900,000 px 1 (raster order); masks none/all/≥2."""
    counts = [1, 9, 90, 900, 9_000, 90_000, 900_000]
    scores = np.repeat(np.arange(7, 0, -1, dtype=np.float32), counts).reshape(1000, 1000)
    maps = np.stack([scores] * 3)
    masks = np.stack([np.zeros_like(scores, bool), np.ones_like(scores, bool), scores >= 2])
    return maps, masks


def test_semantics_vector_pimo_curves():
    maps, masks = staircase()
    result = jm.PIMO(num_thresholds=7)(maps, masks)
    shared_fpr = 10.0 ** -np.arange(7)
    assert result.thresholds.tolist() == [1, 2, 3, 4, 5, 6, 7]
    np.testing.assert_allclose(result.shared_fpr, shared_fpr, rtol=1e-6)
    np.testing.assert_allclose(result.per_image_tprs[1], shared_fpr, rtol=1e-6)
    np.testing.assert_allclose(result.per_image_tprs[2], np.clip(10 * shared_fpr, 0, 1), rtol=1e-6)
    assert np.isnan(result.per_image_tprs[0]).all()


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ((1e-1, 1.0), (0.55, 1.0)),
        ((1e-3, 1e-1), (0.03025, 0.3025)),
        ((1e-5, 1e-4), (5.5e-5, 5.5e-4)),
    ],
)
def test_semantics_vector_aupimo(bounds, expected):
    maps, masks = staircase()
    metric = jm.AUPIMO(7, bounds, return_average=False, force=True)
    with pytest.warns(RuntimeWarning, match="forced"):
        _, aupimo = metric(maps, masks)
    assert np.isnan(aupimo.aupimos[0])
    np.testing.assert_allclose(aupimo.aupimos[1:], expected, rtol=1e-5)


def test_semantics_vector_without_force_raises():
    maps, masks = staircase()
    with pytest.raises(RuntimeError, match="force"):
        jm.AUPIMO(7, (1e-5, 1e-4))(maps, masks)


# -- validations, warnings, force ----------------------------------------------------------------


def test_too_few_points_raise_unless_forced_like_the_reference():
    maps, masks = category(0)
    with pytest.raises(RuntimeError, match="points"):
        jm.AUPIMO(50, BOUNDS)(maps, masks)
    with pytest.warns(RuntimeWarning, match="forced"):
        _, aupimo = jm.AUPIMO(50, BOUNDS, return_average=False, force=True)(maps, masks)
    expected = quietly(aupimo_reference, maps, masks, 50, BOUNDS, True)
    np.testing.assert_allclose(aupimo.aupimos, expected.aupimos, atol=1e-6)


def test_bound_met_off_by_more_than_one_percent_warns():
    maps, masks = category(0)
    with pytest.warns(UserWarning, match="not met within 1%"):
        jm.AUPIMO(2000, (1e-5, 1e-3), force=True)(maps, masks)


def test_bound_below_the_shared_fpr_range_raises():
    maps, masks = category(0)
    with pytest.raises(ValueError, match="outside the shared FPR range"):
        jm.AUPIMO(NUM_THRESHOLDS, (1e-9, 1e-3))(maps, masks)


@pytest.mark.parametrize("num_bins", [None, NUM_BINS])
def test_needs_normal_and_anomalous_images(num_bins):
    maps, masks = category(0)
    normal = ~masks.any(axis=(1, 2))
    metric = jm.AUPIMO(NUM_THRESHOLDS, BOUNDS, thresholds=num_bins)
    with pytest.raises(ValueError, match="anomalous image"):
        metric(maps[normal][:12], masks[normal][:12])
    with pytest.raises(ValueError, match="normal image"):
        metric(maps[~normal][:12], masks[~normal][:12])


def test_bad_inputs_raise_clear_errors():
    maps, masks = category(0)
    metric = jm.AUPIMO()
    with pytest.raises(ValueError, match="shape"):
        metric.update(maps[:2], masks[:3])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        metric.update(maps[0], masks[0])
    with pytest.raises(ValueError, match="0/1"):
        metric.update(maps[:2], masks[:2].astype(np.int32) * 2)
    with pytest.raises(TypeError, match="floating"):
        metric.update(maps[:2].astype(np.int32), masks[:2])
    with pytest.raises(ValueError, match="NaN"):
        metric.update(np.full_like(maps[:2], np.nan), masks[:2])


def test_masks_may_be_zero_one_integers():
    maps, masks = category(0)
    as_bool = quietly(jm.AUPIMO(NUM_THRESHOLDS, BOUNDS), maps, masks)
    as_int = quietly(jm.AUPIMO(NUM_THRESHOLDS, BOUNDS), maps, masks.astype(np.uint8))
    assert float(as_bool) == float(as_int)


@pytest.mark.parametrize(
    "arguments",
    [
        {"fpr_bounds": (1e-4, 1e-5)},
        {"fpr_bounds": (0.0, 1e-4)},
        {"num_thresholds": 1},
        {"capacity": 10},
        {"thresholds": 2},
        {"thresholds": 64, "return_average": False},
    ],
)
def test_bad_configuration_raises(arguments):
    with pytest.raises(ValueError):
        jm.AUPIMO(**arguments)


def test_pimo_tail_fraction_must_be_a_share():
    with pytest.raises(ValueError, match="tail_fraction"):
        jm.PIMO(tail_fraction=0.0)


def test_streaming_pimo_needs_a_capacity():
    with pytest.raises(ValueError, match="capacity"):
        jm.PIMO(thresholds=64)


def test_exact_mode_refuses_jit_and_all_reduce():
    maps, masks = category(0)
    metric = jm.AUPIMO()
    with pytest.raises(TypeError, match="eagerly"):
        jax.jit(lambda m, a, b: m.update(a, b))(metric, maps[:2], masks[:2])
    with pytest.raises(TypeError, match="all_reduce"):
        metric.update(maps[:2], masks[:2]).state.all_reduce("devices")


# -- streaming mode --------------------------------------------------------------------------------


def streaming_mean():
    return jm.AUPIMO(NUM_THRESHOLDS, BOUNDS, thresholds=NUM_BINS)


def streaming_per_image():
    return jm.AUPIMO(
        NUM_THRESHOLDS, BOUNDS, return_average=False, thresholds=NUM_BINS, capacity=CAPACITY
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_is_within_the_documented_error(seed):
    maps, masks = category(seed)
    expected = reference(seed)
    mean = quietly(in_batches(streaming_mean(), maps, masks).compute)
    assert abs(float(mean) - np.nanmean(expected.aupimos)) < 5e-5
    pimo, aupimo = quietly(in_batches(streaming_per_image(), maps, masks).compute)
    assert aupimo.aupimos.shape == (len(maps),)
    np.testing.assert_array_equal(np.isnan(aupimo.aupimos), np.isnan(expected.aupimos))
    np.testing.assert_allclose(aupimo.aupimos, expected.aupimos, atol=5e-4)
    # The shared FPR in the band comes from the exactly kept tail scores.
    band = (expected.shared_fpr <= BOUNDS[1] * 2) & (expected.shared_fpr >= BOUNDS[0] / 2)
    np.testing.assert_allclose(pimo.shared_fpr[band], expected.shared_fpr[band], rtol=1e-5)
    # Inside a bin, interpolation spreads the TPR steps of the mask pixels it holds evenly.
    tpr_errors = np.abs(pimo.per_image_tprs - expected.per_image_tprs)
    assert np.nanmean(tpr_errors) < 2e-4 and np.nanmax(tpr_errors) < 0.1


def test_streaming_merge_and_all_reduce_equal_one_pass():
    maps, masks = category(0)
    one_pass = in_batches(streaming_per_image(), maps, masks)
    first = streaming_per_image().update(maps[:12], masks[:12])
    second = streaming_per_image().update(maps[12:], masks[12:])
    # Jitted: eagerly, every operation of the re-binning would compile on its own.
    merged = jax.jit(lambda a, b: a.merge(b))(first, second)
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), first, second)
    all_reduce = jax.vmap(lambda m: m.all_reduce("devices"), axis_name="devices")
    reduced = jax.jit(all_reduce)(stacked)
    reduced = jax.tree_util.tree_map(lambda leaf: leaf[1], reduced)
    expected = quietly(one_pass.compute)[1].aupimos
    for metric in (merged, reduced):
        np.testing.assert_array_equal(quietly(metric.compute)[1].aupimos, expected)
        assert np.array_equal(metric.state.normal.counts.lo, one_pass.state.normal.counts.lo)


def test_exact_merge_equals_one_pass():
    maps, masks = category(1)
    metric = jm.AUPIMO(NUM_THRESHOLDS, BOUNDS, return_average=False)
    merged = metric.update(maps[:7], masks[:7]).merge(metric.update(maps[7:], masks[7:]))
    np.testing.assert_array_equal(
        quietly(merged.compute)[1].aupimos, quietly(metric.update(maps, masks).compute)[1].aupimos
    )


def test_streaming_compute_inside_jit_equals_eager_and_nan_when_undefined():
    maps, masks = category(0)
    metric = in_batches(streaming_mean(), maps, masks)
    # eagerly read with numpy in float64, inside jit in float32 (tests/test_pimo_host.py)
    eager, jitted = float(quietly(metric.compute)), float(jax.jit(type(metric).compute)(metric))
    assert eager == pytest.approx(jitted, rel=1e-6)
    normal = ~masks.any(axis=(1, 2))
    normal_only = streaming_mean().update(maps[normal], masks[normal])
    assert np.isnan(float(jax.jit(type(normal_only).compute)(normal_only)))


def test_streaming_update_traces_once_inside_jit():
    maps, masks = category(0)
    traces = []

    @jax.jit
    def step(metric, batch_maps, batch_masks):
        traces.append(1)
        return metric.update(batch_maps, batch_masks)

    metric = streaming_mean()
    for start in range(0, 24, 12):
        metric = step(metric, maps[start : start + 12], masks[start : start + 12])
    assert len(traces) == 1
    assert abs(float(quietly(metric.compute)) - np.nanmean(reference(0).aupimos)) < 5e-5


def test_streaming_capacity_overflow_and_size_change_raise():
    maps, masks = category(0)
    too_many = in_batches(streaming_per_image(), maps, masks).update(maps[:12], masks[:12])
    with pytest.raises(ValueError, match=f"capacity={CAPACITY}"):
        too_many.compute()
    with pytest.raises(ValueError, match="one image size"):
        streaming_mean().update(maps[:12], masks[:12]).update(maps[:12, :64], masks[:12, :64])


def test_binned_per_image_rows_written_batch_by_batch_equal_one_update_of_all():
    data = make_category(num_normal=4, num_anomalous=6, size=(24, 24), seed=5)
    empty = jm.AUPIMO(thresholds=256, capacity=10, return_average=False)
    whole = empty.update(data.anomaly_maps, data.gt_masks)
    step = jax.jit(lambda metric, maps, masks, valid: metric.update(maps, masks, valid=valid))
    batched = empty
    for first in range(0, 10, 4):  # the last batch (2 images, 2 padded) ends past the capacity
        batch, valid = jm.pad_batch(
            {
                "maps": data.anomaly_maps[first : first + 4],
                "masks": data.gt_masks[first : first + 4],
            },
            4,
        )
        batched = step(batched, batch["maps"], batch["masks"], valid)
    for mine, theirs in zip(jax.tree.leaves(batched.state), jax.tree.leaves(whole.state)):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
