"""PRO and AUPRO against the numpy references (MVTec AD algorithm, anomalib semantics).

Compiling connected-component labelling takes seconds, and every metric configuration, input shape
and jitted function compiles it anew. So most tests share one batch shape (SHAPE) and one binned
configuration (BINS), and tests whose point is not the labelling pass precomputed region labels
(``region_labels=True``, labelled here with scipy), which compile in a fraction of that time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from references import mvtec_aupro, mvtec_pro_curve, pro_at_threshold
from scipy import ndimage

import jaxmetrics_ad as jm
from jaxmetrics_ad.histogram import METRIC_TAIL_SIZE
from jaxmetrics_ad.synthetic import make_category

LIMIT_03 = float(np.float32(0.3))  # anomalib's fpr_limit as stored (float32)
SHAPE = (6, 24, 20)
BINS = 256


def random_batch(seed: int, shape=SHAPE, levels: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Maps with many ties (``levels`` distinct values) and bool masks with several regions per
    image; about a third of the images are normal (empty mask)."""
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, levels, shape) / levels
    masks = ndimage.binary_opening(rng.random(shape) < 0.35, np.ones((1, 2, 2)))
    masks[rng.random(shape[0]) < 0.35] = False
    # defects score higher on average, as with a real detector
    maps = np.where(masks & (rng.random(shape) < 0.6), np.minimum(maps + 0.5, 1.0), maps)
    return maps.astype(np.float32), masks


def two_batches() -> tuple[np.ndarray, np.ndarray]:
    first, second = random_batch(1), random_batch(2)
    return np.concatenate([first[0], second[0]]), np.concatenate([first[1], second[1]])


def scipy_labels(masks: np.ndarray) -> np.ndarray:
    """Per-image 8-connected region labels (int32), the independent labelling."""
    eight = np.ones((3, 3))
    return np.stack([ndimage.label(mask, structure=eight)[0] for mask in masks]).astype(np.int32)


def updated(metric: jm.Metric, maps: np.ndarray, target: np.ndarray) -> jm.Metric:
    for start in range(0, len(maps), SHAPE[0]):
        metric = metric.update(maps[start : start + SHAPE[0]], target[start : start + SHAPE[0]])
    return metric


# -- exact AUPRO -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 0.5, 1.0])
def test_exact_aupro_equals_the_mvtec_algorithm_with_ties_and_normal_images(fpr_limit):
    maps, masks = two_batches()
    value = updated(jm.AUPRO(fpr_limit=fpr_limit), maps, masks).compute()
    expected = mvtec_aupro(maps, masks, np.float32(fpr_limit))
    assert abs(float(value) - expected) < 1e-6


def test_default_fpr_limit_is_anomalibs_float32_value():
    assert jm.AUPRO().fpr_limit == LIMIT_03 == 0.30000001192092896


def test_aupro_of_the_semantics_vectors_is_one_sixth():
    maps = (np.arange(2800) / 2800).reshape(1, 400, 7).astype(np.float32)
    masks = np.zeros((2, 400, 7), bool)
    masks[0, :, 3] = True
    masks[1, :, [1, 3, 5]] = True
    labels = scipy_labels(masks)
    metric = jm.AUPRO(fpr_limit=1 / 3, region_labels=True)
    for image in range(2):
        value = float(metric(maps, labels[image : image + 1]))
        assert value == pytest.approx(1 / 6, abs=2e-6)
        assert abs(value - mvtec_aupro(maps[0], masks[image], np.float32(1 / 3))) < 1e-7
    assert float(metric(np.concatenate([maps, maps]), labels)) == pytest.approx(1 / 6, abs=2e-6)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 12), st.sampled_from([0.3, 0.1, 0.7]))
def test_exact_aupro_equals_the_reference_on_random_tied_maps(seed, levels, fpr_limit):
    maps, masks = random_batch(seed, levels=levels)
    masks[0, :3, :3] = True  # at least one region
    value = float(jm.AUPRO(fpr_limit=fpr_limit)(maps, masks))
    assert abs(value - mvtec_aupro(maps, masks, np.float32(fpr_limit))) < 1e-6


def test_exact_curve_holds_the_reference_points_and_area():
    maps, masks = random_batch(3)
    fpr, pro = (np.asarray(a, np.float64) for a in jm.AUPRO().update(maps, masks).curve())
    expected_fpr, expected_pro = mvtec_pro_curve(maps, masks)
    expected_points = set(zip(np.float32(expected_fpr).tolist(), np.float32(expected_pro).tolist()))
    assert set(zip(fpr.tolist(), pro.tolist())) <= expected_points
    assert (fpr[0], pro[0], fpr[-1], pro[-1]) == pytest.approx((0, 0, 1, 1))
    assert np.trapezoid(pro, fpr) == pytest.approx(np.trapezoid(expected_pro, expected_fpr), 1e-6)


def test_exact_merge_equals_one_pass():
    maps, masks = two_batches()
    merged = jm.AUPRO().update(maps[:6], masks[:6]).merge(jm.AUPRO().update(maps[6:], masks[6:]))
    assert abs(float(merged.compute()) - mvtec_aupro(maps, masks, LIMIT_03)) < 1e-6


def test_exact_aupro_with_capacity_runs_in_jit_and_scan_and_flags_overflow():
    maps, masks = two_batches()
    batches = (maps.reshape(2, *SHAPE), scipy_labels(masks).reshape(2, *SHAPE))

    @jax.jit
    def evaluate(metric, batches):
        scanned, _ = jax.lax.scan(lambda m, batch: (m.update(*batch), None), metric, batches)
        return scanned, scanned.compute()

    _, value = evaluate(jm.AUPRO(capacity=maps.size, region_labels=True), batches)
    assert abs(float(value) - mvtec_aupro(maps, masks, LIMIT_03)) < 1e-6
    overflowed, value = evaluate(jm.AUPRO(capacity=maps.size // 2 - 1, region_labels=True), batches)
    assert np.isnan(value)
    with pytest.raises(ValueError, match="capacity"):
        overflowed.compute()


# -- binned AUPRO ------------------------------------------------------------------------------------


@jax.jit
@chex.assert_max_traces(n=1)
def jitted_update(metric, maps, masks):
    """The binned update with masks, compiled once for the whole file (int8 masks, SHAPE)."""
    return metric.update(maps, masks)


def test_default_binned_aupro_is_within_its_bound_and_1e_4_of_exact_on_realistic_maps():
    category = make_category(num_normal=10, num_anomalous=20, size=(128, 128), seed=3)
    maps, masks = category.anomaly_maps, category.gt_masks
    labels = scipy_labels(masks)
    exact = mvtec_aupro(maps, masks, LIMIT_03)
    binned = jm.AUPRO(thresholds=jm.DEFAULT_NUM_BINS, region_labels=True).update(maps, labels)
    error = abs(float(binned.compute()) - exact)
    assert error <= float(binned.error_bound()) + 1e-6
    assert error < 1e-4


def test_binned_aupro_at_every_distinct_score_equals_exact():
    # With every distinct score as a threshold, the bins are exactly the tie blocks.
    maps, masks = two_batches()
    metric = jm.AUPRO(thresholds=np.unique(maps), region_labels=True)
    binned = updated(metric, maps, scipy_labels(masks))
    assert float(binned.compute()) == pytest.approx(mvtec_aupro(maps, masks, LIMIT_03), abs=1e-6)


def test_binned_curve_runs_from_origin_to_one_with_one_point_per_bin_and_tail_slot():
    maps, masks = random_batch(4)
    fpr, pro = jitted_update(jm.AUPRO(thresholds=BINS), maps, masks.astype(np.int8)).curve()
    assert fpr.shape == pro.shape == (BINS + 2 * METRIC_TAIL_SIZE + 1,)
    assert (float(fpr[0]), float(pro[0])) == (0.0, 0.0)
    assert float(fpr[-1]) == pytest.approx(1.0) and float(pro[-1]) == pytest.approx(1.0)
    assert bool(jnp.all(jnp.diff(fpr) >= 0)) and bool(jnp.all(jnp.diff(pro) >= -1e-7))


def test_binned_update_traces_once_and_merges_like_one_pass():
    maps, masks = two_batches()
    masks = masks.astype(np.int8)
    empty = jm.AUPRO(thresholds=BINS)
    one_pass = jitted_update(jitted_update(empty, maps[:6], masks[:6]), maps[6:], masks[6:])
    merged = jitted_update(empty, maps[:6], masks[:6]).merge(
        jitted_update(empty, maps[6:], masks[6:])
    )
    # counts exact; the 1/|region| sums are float32 and tail samples reach the bins in another order
    chex.assert_trees_all_equal(merged.state.samples.counts, one_pass.state.samples.counts)
    chex.assert_trees_all_close(merged.state, one_pass.state, rtol=1e-6)
    assert float(merged.compute()) == pytest.approx(float(one_pass.compute()), abs=1e-6)
    assert float(one_pass.compute()) == pytest.approx(mvtec_aupro(maps, masks, LIMIT_03), abs=0.02)


def test_non_binary_masks_inside_jit_make_the_value_nan():
    maps, masks = random_batch(9)
    stepped = jitted_update(jm.AUPRO(thresholds=BINS), maps, masks.astype(np.int8) * 2)
    assert np.isnan(jax.jit(lambda m: m.compute())(stepped))
    with pytest.raises(ValueError, match="invalid"):
        stepped.compute()


def test_binned_aupro_in_lax_scan_equals_eager():
    maps, masks = two_batches()
    labels = scipy_labels(masks)
    metric = jm.AUPRO(thresholds=BINS, region_labels=True)
    scanned, _ = jax.lax.scan(
        lambda m, batch: (m.update(*batch), None),
        metric,
        (maps.reshape(2, *SHAPE), labels.reshape(2, *SHAPE)),
    )
    assert float(scanned.compute()) == float(updated(metric, maps, labels).compute())


# -- precomputed labels -------------------------------------------------------------------------------


@pytest.mark.parametrize("thresholds", [None, BINS])
def test_precomputed_region_labels_give_the_same_value_as_masks(thresholds):
    maps, masks = random_batch(5)
    labels = scipy_labels(masks) * 7  # ids need not be consecutive
    if thresholds is None:
        from_masks = jm.AUPRO()(maps, masks)
    else:
        from_masks = jitted_update(jm.AUPRO(thresholds=BINS), maps, masks.astype(np.int8)).compute()
    from_labels = jm.AUPRO(thresholds=thresholds, region_labels=True)(maps, labels)
    assert float(from_labels) == float(from_masks)


def test_region_labels_must_be_integers_within_the_image():
    maps, masks = random_batch(5)
    metric = jm.AUPRO(region_labels=True, fields=("anomaly_map", "gt_regions"))
    with pytest.raises(TypeError, match=r"gt_regions.*integer"):
        metric.update(maps, masks)
    with pytest.raises(ValueError, match=r"gt_regions.*\[0, 480\].*-1"):
        metric.update(maps, np.full(SHAPE, -1))


# -- PRO ------------------------------------------------------------------------------------------------


def test_pro_of_the_semantics_vector():
    preds = np.repeat(np.arange(10)[:, None] / 10 + 0.05, 5, axis=1).astype(np.float32)
    mask = np.zeros((10, 5), bool)
    for width, row in enumerate(range(1, 10, 2), start=1):
        mask[row, :width] = True
    labels = scipy_labels(mask[None])[0]
    values = [
        float(jm.PRO(threshold=t, region_labels=True)(preds, labels))
        for t in (0, 0.2, 0.4, 0.6, 0.8, 1)
    ]
    np.testing.assert_allclose(values, [1, 0.8, 0.6, 0.4, 0.2, 0], atol=1e-6)


def test_pro_equals_the_reference_over_batches():
    maps, masks = two_batches()
    value = updated(jm.PRO(), maps, masks).compute()
    assert float(value) == pytest.approx(pro_at_threshold(maps, masks), abs=1e-6)
    for threshold in (0.25, 0.8):
        value = updated(jm.PRO(threshold, region_labels=True), maps, scipy_labels(masks)).compute()
        assert float(value) == pytest.approx(pro_at_threshold(maps, masks, threshold), abs=1e-6)


def test_pro_takes_int_and_bool_predictions_as_labels_and_is_one_without_regions():
    maps, masks = random_batch(6)
    labels = scipy_labels(masks)
    expected = pro_at_threshold(maps, masks)
    metric = jm.PRO(region_labels=True)
    assert float(metric(maps >= 0.5, labels)) == pytest.approx(expected, abs=1e-6)
    assert float(metric((maps >= 0.5).astype(np.int32), labels)) == pytest.approx(
        expected, abs=1e-6
    )
    assert float(jm.PRO()(maps, np.zeros_like(masks))) == 1.0


def test_pro_merges_by_addition_and_flags_invalid_labels_inside_jit():
    maps, masks = two_batches()
    merged = jm.PRO().update(maps[:6], masks[:6]).merge(jm.PRO().update(maps[6:], masks[6:]))
    assert float(merged.compute()) == pytest.approx(pro_at_threshold(maps, masks), abs=1e-6)
    bad_labels = np.full(SHAPE, -1, np.int32)
    stepped = jax.jit(lambda m, x, y: m.update(x, y))(
        jm.PRO(region_labels=True), maps[:6], bad_labels
    )
    assert np.isnan(jax.jit(lambda m: m.compute())(stepped))


# -- edge cases and bad inputs ----------------------------------------------------------------------


def aupro_of(thresholds: int | None, maps: np.ndarray, masks: np.ndarray) -> jax.Array:
    """Exact AUPRO eagerly, or binned through the file's one compiled update (another bin count
    is another configuration, so it compiles its own update)."""
    if thresholds is None:
        return jm.AUPRO()(maps, masks)
    update = jitted_update if thresholds == BINS else jax.jit(jm.AUPRO.update)
    return update(jm.AUPRO(thresholds=thresholds), maps, masks.astype(np.int8)).compute()


@pytest.mark.parametrize("thresholds", [None, BINS])
def test_aupro_without_region_or_background_is_zero_with_a_warning(thresholds):
    maps, _ = random_batch(7)
    for masks, missing in ((np.zeros(SHAPE, bool), "region"), (np.ones(SHAPE, bool), "background")):
        with pytest.warns(UserWarning, match=missing):
            assert float(aupro_of(thresholds, maps, masks)) == 0.0


@pytest.mark.parametrize(("thresholds", "levels"), [(None, 16), (jm.DEFAULT_NUM_BINS, 2**20)])
def test_no_warning_on_ordinary_data(thresholds, levels):
    # Binned: near-continuous scores. On heavily tied maps (16 levels) the certified bound, which
    # assumes nothing about scores inside a bin, is ~0.03 whatever the bin count, and it warns.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aupro_of(thresholds, *random_batch(1, levels=levels))


@pytest.mark.parametrize("metric", [jm.AUPRO(), jm.AUPRO(thresholds=BINS), jm.PRO()])
def test_bad_inputs_raise_errors_naming_the_field(metric):
    maps, masks = random_batch(8)
    with pytest.raises(ValueError, match=r"anomaly_map.*\(N, H, W\)"):
        metric.update(maps[0, 0], masks[0, 0])
    with pytest.raises(ValueError, match=r"gt_mask.*\(N, H, W\)"):
        metric.update(maps, np.stack([masks, masks], axis=1))  # two channels: not squeezed
    with pytest.raises(ValueError, match="must match"):
        metric.update(maps, masks[:, :-1])
    with pytest.raises(ValueError, match=r"gt_mask.*0/1"):
        metric.update(maps, masks.astype(np.int32) * 2)
    with pytest.raises(ValueError, match=r"anomaly_map.*NaN"):
        metric.update(np.where(masks, np.nan, maps), masks)


def test_configuration_errors():
    for fpr_limit in (0.0, 1.5):
        with pytest.raises(ValueError, match="fpr_limit"):
            jm.AUPRO(fpr_limit=fpr_limit)
    with pytest.raises(ValueError, match="capacity"):
        jm.AUPRO(thresholds=64, capacity=100)


# -- devices -----------------------------------------------------------------------------------------

PMAP_SCRIPT = textwrap.dedent(
    """
    import sys, jax, numpy as np
    sys.path.insert(0, {tests!r})
    from test_pro import random_batch, scipy_labels
    import jaxmetrics_ad as jm
    assert jax.device_count() == 8
    maps, masks = random_batch(11, shape=(16, 24, 20))
    labels = scipy_labels(masks)
    metrics = [
        jm.AUPRO(thresholds=256, region_labels=True),
        jm.PRO(region_labels=True),
        jm.AUPRO(capacity=2 * 24 * 20, region_labels=True),
    ]
    single = [
        float(jm.AUPRO(thresholds=256, region_labels=True)(maps, labels)),
        float(jm.PRO(region_labels=True)(maps, labels)),
        float(jm.AUPRO(region_labels=True)(maps, labels)),
    ]

    def step(maps, labels):
        return [m.update(maps, labels).all_reduce("d").compute() for m in metrics]

    split = lambda x: x.reshape(8, 2, 24, 20)
    reduced = jax.pmap(step, axis_name="d")(split(maps), split(labels))
    # counts add exactly; float32 sums of 1/|region| may differ in the last bit with the order
    for value, expected in zip(reduced, single):
        np.testing.assert_allclose(value, np.full(8, expected), rtol=0, atol=1e-6)
    print("ok")
    """
)


def test_all_reduce_over_eight_devices_equals_one_device():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    script = PMAP_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
