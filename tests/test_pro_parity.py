"""PRO / AUPRO parity with anomalib's input layouts, Pillow masks, and NaN readers after bad input.

Batches have the shape and binned configuration of tests/test_pro.py, so that compilations are
shared when both files run.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from references import mvtec_aupro, pro_at_threshold
from test_pro import BINS, LIMIT_03, random_batch

import jaxmetrics_ad as jm


def pillow_bool(masks: np.ndarray) -> np.ndarray:
    """``masks`` as bool arrays whose True byte is 0xFF, as Pillow returns 1-bit PNG masks."""
    return (masks.astype(np.uint8) * 255).view(bool)


def jitted_update(metric, maps, masks):
    return jax.jit(lambda m, a, b: m.update(a, b))(metric, maps, masks)


def jitted(method, metric):
    return jax.jit(lambda m: method(m))(metric)


# -- (N, 1, H, W): the layout of anomalib's batches and of its own AUPRO test ---------------------


@pytest.mark.parametrize("thresholds", [None, BINS])
@pytest.mark.parametrize("mask_layout", ["NHW", "N1HW"])
def test_aupro_takes_a_singleton_channel_axis(thresholds, mask_layout):
    maps, masks = random_batch(3)
    target = masks[:, None] if mask_layout == "N1HW" else masks
    value = jm.AUPRO(thresholds=thresholds).update(maps[:, None], target).compute()
    expected = jm.AUPRO(thresholds=thresholds).update(maps, masks).compute()
    assert float(value) == float(expected)
    if thresholds is None:
        assert abs(float(value) - mvtec_aupro(maps, masks, LIMIT_03)) < 1e-6


def test_aupro_of_the_semantics_vector_in_anomalib_layout_is_one_sixth():
    maps = (np.arange(2800) / 2800).reshape(1, 1, 400, 7).astype(np.float32)
    masks = np.zeros((1, 1, 400, 7), np.int32)
    masks[..., 3] = 1
    assert float(jm.AUPRO(fpr_limit=1 / 3)(maps, masks)) == pytest.approx(1 / 6, abs=2e-6)


@pytest.mark.parametrize("mask_layout", ["NHW", "N1HW"])
def test_pro_takes_a_singleton_channel_axis(mask_layout):
    maps, masks = random_batch(4)
    target = masks[:, None] if mask_layout == "N1HW" else masks
    value = jm.PRO(threshold=0.5)(maps[:, None], target)
    assert abs(float(value) - pro_at_threshold(maps, masks, 0.5)) < 1e-6


@pytest.mark.parametrize("metric", [jm.AUPRO(), jm.PRO()])
def test_other_four_dimensional_shapes_raise_naming_the_field(metric):
    maps, masks = random_batch(4)
    with pytest.raises(ValueError, match=r"anomaly_map.*\(N, 1, H, W\)"):
        metric.update(np.stack([maps, maps], axis=1), masks)
    with pytest.raises(ValueError, match=r"gt_mask.*\(N, 1, H, W\)"):
        metric.update(maps, np.stack([masks, masks], axis=1))


# -- bool masks whose True byte is 0xFF (Pillow) --------------------------------------------------


def test_pillow_bool_masks_inside_jit_equal_clean_masks_for_binned_aupro():
    maps, masks = random_batch(5)
    dirty = pillow_bool(masks)
    assert dirty.view(np.uint8).max() == 255
    clean = jitted_update(jm.AUPRO(thresholds=BINS), maps, masks)
    stepped = jitted_update(jm.AUPRO(thresholds=BINS), maps, dirty)
    assert int(stepped.num_invalid) == 0
    assert float(stepped.compute()) == float(clean.compute())
    assert int(stepped.state.num_regions) == int(clean.state.num_regions)


def test_pillow_bool_masks_and_predictions_inside_jit_for_pro():
    maps, masks = random_batch(5)
    predictions = maps >= 0.5
    expected = pro_at_threshold(maps, masks, 0.5)
    stepped = jitted_update(jm.PRO(), pillow_bool(predictions), pillow_bool(masks))
    assert int(stepped.num_invalid) == 0
    assert abs(float(stepped.compute()) - expected) < 1e-6
    eager = jm.PRO()(pillow_bool(predictions), pillow_bool(masks))
    assert abs(float(eager) - expected) < 1e-6


def test_pillow_bool_masks_eagerly_for_exact_aupro():
    maps, masks = random_batch(5)
    value = jm.AUPRO()(maps, pillow_bool(masks))
    assert abs(float(value) - mvtec_aupro(maps, masks, LIMIT_03)) < 1e-6


# -- every reader of a state poisoned inside jit is NaN -------------------------------------------


def poisoned(metric):
    maps, masks = random_batch(9)
    bad = masks.astype(np.int8)
    bad[0, 0, 0] = 2
    return jitted_update(metric, maps, bad)


def test_binned_aupro_readers_are_nan_after_invalid_input_inside_jit():
    metric = poisoned(jm.AUPRO(thresholds=BINS))
    assert np.isnan(jitted(lambda m: m.compute(), metric))
    fpr, pro = jitted(lambda m: m.curve(), metric)
    assert np.isnan(fpr).all() and np.isnan(pro).all()
    assert np.isnan(jitted(lambda m: m.error_bound(), metric))
    # eagerly too: the curve and the bound are NaN, the value raises
    assert np.isnan(metric.curve()[1]).all() and np.isnan(metric.error_bound())
    with pytest.raises(ValueError, match="invalid"):
        metric.compute()


def test_exact_aupro_readers_are_nan_after_invalid_input_inside_jit():
    metric = poisoned(jm.AUPRO(capacity=int(np.prod(random_batch(9)[0].shape))))
    assert np.isnan(jitted(lambda m: m.compute(), metric))
    fpr, pro = metric.curve()
    assert np.isnan(fpr).all() and np.isnan(pro).all()
    assert np.isnan(metric.error_bound())


def test_clean_readers_stay_finite():
    maps, masks = random_batch(9)
    metric = jitted_update(jm.AUPRO(thresholds=BINS), maps, masks)
    fpr, pro = metric.curve()
    assert np.isfinite(fpr).all() and np.isfinite(pro).all()
    assert np.isfinite(metric.error_bound())
