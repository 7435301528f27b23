"""sPRO and AU-sPRO against the numpy transcription of MVTec LOCO's definition (tests/references.py).

Random cases have many tied scores, overlapping defects, defects that saturate (A < |d|) and some
that cannot (A > |d|), empty padding masks and images without any defect.
"""

from __future__ import annotations

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import loco_auspro, loco_saturation_area, loco_spro_at, loco_spro_curve

import jaxmetrics_ad as jm

# tied scores in coarse bins: the certified bound is loose by design here (tested separately)
pytestmark = pytest.mark.filterwarnings("ignore:AUSPRO. the binned value may be off:UserWarning")

SHAPE = (5, 3, 12, 10)  # images, defect slots, height, width


def random_case(seed: int, shape=SHAPE, levels: int = 12):
    """(maps (N, H, W) float32, masks (N, D, H, W) bool, saturation (N, D) float32)."""
    rng = np.random.default_rng(seed)
    num_images, slots, height, width = shape
    maps = (rng.integers(0, levels, (num_images, height, width)) / levels).astype(np.float32)
    masks = np.zeros(shape, bool)
    saturation = np.zeros((num_images, slots), np.float32)
    for image in range(num_images):
        if rng.random() < 0.3:
            continue  # a good image: every slot empty
        for slot in range(rng.integers(1, slots + 1)):
            top, left = rng.integers(0, height - 2), rng.integers(0, width - 2)
            bottom, right = rng.integers(top + 1, height + 1), rng.integers(left + 1, width + 1)
            masks[image, slot, top:bottom, left:right] = (
                rng.random((bottom - top, right - left)) < 0.8
            )
            if not masks[image, slot].any():
                continue
            kind = rng.integers(0, 3)
            size = int(masks[image, slot].sum())
            if kind == 0:  # absolute, often below the size: saturates
                saturation[image, slot] = loco_saturation_area(
                    masks[image, slot], rng.integers(1, 2 * size + 2), False
                )
            elif kind == 1:  # relative
                saturation[image, slot] = loco_saturation_area(
                    masks[image, slot], rng.uniform(0.05, 1.0), True
                )
            else:  # given by hand, possibly larger than the defect: never saturates
                saturation[image, slot] = rng.uniform(0.5, 1.5 * size)
        # defects score higher on average, as with a real detector
        covered = masks[image].any(axis=0)
        boost = covered & (rng.random((height, width)) < 0.5)
        maps[image] = np.where(boost, np.minimum(maps[image] + 0.5, 1.0), maps[image])
    return maps, masks, saturation


def in_batches(metric: jm.Metric, maps, masks, saturation, size: int = 2) -> jm.Metric:
    for start in range(0, len(maps), size):
        part = slice(start, start + size)
        metric = metric.update(maps[part], masks[part], saturation[part])
    return metric


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_exact_equals_reference(seed, fpr_limit):
    maps, masks, saturation = random_case(seed)
    expected = loco_auspro(maps, masks, saturation, fpr_limit)
    value = in_batches(jm.AUSPRO(fpr_limit), maps, masks, saturation).compute()
    np.testing.assert_allclose(float(value), expected, rtol=0, atol=2e-7)


def test_reference_cases_exercise_the_definition():
    """The random cases hold what the brief asks for: saturation reached, overlaps, good images."""
    seen = {"saturates": 0, "overlap": 0, "good_image": 0, "never_saturates": 0}
    for seed in range(6):
        _, masks, saturation = random_case(seed)
        sizes = masks.sum(axis=(-2, -1))
        seen["saturates"] += int(np.sum((sizes > 0) & (saturation < sizes)))
        seen["never_saturates"] += int(np.sum((sizes > 0) & (saturation > sizes)))
        seen["overlap"] += int(np.sum(masks.sum(axis=1) > 1))
        seen["good_image"] += int(np.sum(~masks.any(axis=(1, 2, 3))))
    assert all(count > 0 for count in seen.values()), seen


def test_hand_computed_value():
    # defect of 3 pixels saturating at 2; background 0.0, 0.2, 0.3
    maps = np.array([[[0.9, 0.8, 0.1, 0.0, 0.2, 0.3]]], np.float32)
    masks = np.array([[[[1, 1, 1, 0, 0, 0]]]])
    assert float(jm.AUSPRO(1.0)(maps, masks, [[2]])) == 1.0
    # A = 3: (0, 1/3) (0, 2/3) (1/3, 2/3) (2/3, 2/3) (2/3, 1) (1, 1) → 7/9
    np.testing.assert_allclose(float(jm.AUSPRO(1.0)(maps, masks, [[3]])), 7 / 9, rtol=1e-6)


def test_overlapping_defects_count_separately():
    maps = np.array([[[0.9, 0.8, 0.7, 0.1]]], np.float32)
    same = np.array([[[[1, 1, 0, 0]], [[1, 1, 0, 0]]]])
    one = same[:, :1]
    for limit in (0.5, 1.0):
        twice = jm.AUSPRO(limit)(maps, same, [[2, 2]])
        np.testing.assert_allclose(float(twice), float(jm.AUSPRO(limit)(maps, one, [[2]])))
    # the background is what no mask covers: pixels 2 and 3 here
    fpr, spro = jm.AUSPRO().update(maps, same, [[2, 1]]).curve()
    assert fpr.tolist()[-1] == 1.0 and spro.tolist()[-1] == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_exact_curve_matches_reference_points(seed):
    maps, masks, saturation = random_case(seed)
    fpr, spro = jm.AUSPRO().update(maps, masks, saturation).curve()
    ref_fpr, ref_spro = loco_spro_curve(maps, masks, saturation)
    # both curves span the same sPRO interval at each FPR (vertical steps at defect-only scores)
    fpr, spro = np.asarray(fpr, np.float64), np.asarray(spro, np.float64)
    for value in np.unique(ref_fpr):
        ours = spro[np.abs(fpr - value) < 1e-6]
        theirs = ref_spro[ref_fpr == value]
        np.testing.assert_allclose(
            [ours.min(), ours.max()], [theirs.min(), theirs.max()], atol=1e-6
        )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bins", [3, 16, 256])
def test_binned_error_within_certified_bound(seed, bins):
    # continuous scores too, so that bins hold mixtures of background and defect pixels
    maps, masks, saturation = random_case(seed, levels=1000 if seed % 2 else 12)
    for limit in (0.05, 0.3, 1.0):
        exact = loco_auspro(maps, masks, saturation, limit)
        binned = in_batches(jm.AUSPRO(limit, thresholds=bins), maps, masks, saturation)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # coarse bins warn that the bound is loose
            value, bound = float(binned.compute()), float(binned.error_bound())
        assert abs(value - exact) <= bound + 2e-6, (limit, value, exact, bound)
        if bins == 3:
            assert bound > 0


def test_binned_at_scores_is_exact():
    """Fixed thresholds at every distinct score: each bin holds one tie block, whose exact curve is
    the bin's diagonal, so binned equals exact (the bound cannot tell and stays positive)."""
    maps, masks, saturation = random_case(0)
    edges = np.unique(maps)
    binned = jm.AUSPRO(0.3, thresholds=edges).update(maps, masks, saturation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bound is loose here
        value = float(binned.compute())
    np.testing.assert_allclose(value, loco_auspro(maps, masks, saturation, 0.3), atol=2e-6)


def test_merge_is_one_pass():
    maps, masks, saturation = random_case(3)
    for metric in (jm.AUSPRO(0.3), jm.AUSPRO(0.3, thresholds=4096), jm.SPRO(0.5)):
        whole = metric.update(maps, masks, saturation).compute()
        first = metric.update(maps[:2], masks[:2], saturation[:2])
        second = metric.update(maps[2:], masks[2:], saturation[2:])
        np.testing.assert_allclose(float(first.merge(second).compute()), float(whole), atol=1e-6)


def test_jit_exact_capacity_and_binned():
    maps, masks, saturation = random_case(4)
    expected = loco_auspro(maps, masks, saturation, 0.3)
    step = jax.jit(lambda m, a, b, c: m.update(a, b, c))
    compute = jax.jit(lambda m: m.compute())
    capacity = maps.size * (1 + SHAPE[1])
    binned = jm.AUSPRO(0.3, thresholds=4096)
    eager_binned = binned.update(maps, masks, saturation).compute()
    for metric, want in ((jm.AUSPRO(0.3, capacity=capacity), expected), (binned, eager_binned)):
        for start in range(0, len(maps), 1):
            part = slice(start, start + 1)
            metric = step(metric, maps[part], masks[part], saturation[part])
        np.testing.assert_allclose(float(compute(metric)), float(want), atol=2e-7)
    # the fixed buffer stores only background pixels and defect pixels of rank below A
    exact = jm.AUSPRO(0.3, capacity=capacity).update(maps, masks, saturation)
    background = int(np.sum(~masks.any(axis=1)))
    ranks = np.minimum(masks.sum(axis=(-2, -1)), np.ceil(saturation)).sum()
    assert int(exact.state.samples.count) == background + int(ranks)


def test_scan_over_batches():
    maps, masks, saturation = random_case(5)
    metric = jm.AUSPRO(0.3, capacity=maps.size * 4)

    def body(m, batch):
        return m.update(*batch), None

    batches = tuple(a.reshape(5, 1, *a.shape[1:]) for a in (maps, masks, saturation))
    final, _ = jax.lax.scan(body, metric, batches)
    np.testing.assert_allclose(
        float(final.compute()), loco_auspro(maps, masks, saturation, 0.3), atol=2e-7
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.75])
def test_spro_at_threshold(seed, threshold):
    maps, masks, saturation = random_case(seed)
    value = in_batches(jm.SPRO(threshold), maps, masks, saturation).compute()
    np.testing.assert_allclose(
        float(value), loco_spro_at(maps, masks, saturation, threshold), atol=1e-6
    )
    # binary predictions give the same overlap as the maps they come from
    predicted = (maps >= threshold).astype(np.int32)
    np.testing.assert_allclose(
        float(jm.SPRO()(predicted, masks, saturation)), float(value), atol=1e-6
    )


def test_spro_without_defects_is_one():
    maps = np.zeros((1, 4, 4), np.float32)
    assert float(jm.SPRO()(maps, np.zeros((1, 2, 4, 4), bool), np.zeros((1, 2)))) == 1.0


def test_degenerate_cases_warn_and_give_zero():
    maps = np.zeros((1, 4, 4), np.float32)
    for thresholds in (None, 32):
        with pytest.warns(UserWarning, match="no defect"):
            value = jm.AUSPRO(thresholds=thresholds)(maps, np.zeros((1, 1, 4, 4)), [[0]])
        assert float(value) == 0.0
        with pytest.warns(UserWarning, match="no background"):
            value = jm.AUSPRO(thresholds=thresholds)(maps, np.ones((1, 1, 4, 4)), [[3]])
        assert float(value) == 0.0


def test_single_image_and_channel_axis():
    maps, masks, saturation = random_case(1)
    one = jm.AUSPRO(0.3).update(maps[1], masks[1], saturation[1]).compute()
    expected = loco_auspro(maps[1:2], masks[1:2], saturation[1:2], 0.3)
    np.testing.assert_allclose(float(one), expected, atol=2e-7)
    with_channel = jm.AUSPRO(0.3)(maps[:, None], masks, saturation)
    np.testing.assert_allclose(
        float(with_channel), loco_auspro(maps, masks, saturation, 0.3), atol=2e-7
    )


def test_bad_inputs_name_the_field():
    maps, masks, saturation = random_case(2)
    metric = jm.AUSPRO()
    with pytest.raises(ValueError, match="defect_masks: expected masks of shape"):
        metric.update(maps, masks[:, 0], saturation)
    with pytest.raises(ValueError, match="saturation_area: expected shape"):
        metric.update(maps, masks, saturation[:, :1])
    with pytest.raises(ValueError, match="anomaly_map: expected maps"):
        metric.update(maps[0, 0], masks, saturation)
    with pytest.raises(ValueError, match="defect_masks: labels must be 0/1"):
        metric.update(maps, masks.astype(np.uint8) * 255, saturation)
    nan_maps = maps.copy()
    nan_maps[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="anomaly_map: 1 of"):
        metric.update(nan_maps, masks, saturation)
    bad = saturation.copy()
    image, slot = np.argwhere(masks.any(axis=(-2, -1)))[0]
    bad[image, slot] = 0
    with pytest.raises(ValueError, match=f"saturation_area: defect {slot} of image {image}"):
        metric.update(maps, masks, bad)
    with pytest.raises(ValueError, match="fpr_limit"):
        jm.AUSPRO(fpr_limit=0.0)
    with pytest.raises(ValueError, match="capacity"):
        jm.AUSPRO(thresholds=16, capacity=10)
    with pytest.raises(ValueError, match="capacity=10"):
        jm.AUSPRO(capacity=10).update(maps, masks, saturation)


def test_invalid_inputs_inside_jit_poison_the_value():
    maps, masks, saturation = random_case(2)
    step = jax.jit(lambda m, a, b, c: m.update(a, b, c))
    bad = saturation.copy()
    bad[masks.any(axis=(-2, -1))] = -1.0
    for metric in (jm.AUSPRO(thresholds=64), jm.AUSPRO(capacity=maps.size * 4), jm.SPRO()):
        poisoned = step(metric, maps, masks, bad)
        assert bool(jnp.isnan(jax.jit(lambda m: m.compute())(poisoned)))
        with pytest.raises(ValueError, match="invalid samples"):
            poisoned.compute()


def test_saturation_areas_match_reference():
    _, masks, _ = random_case(0)
    rng = np.random.default_rng(0)
    tau = np.where(rng.random(masks.shape[:2]) < 0.5, rng.uniform(0.01, 1, masks.shape[:2]), 7)
    relative = tau < 1
    areas = jm.saturation_areas(masks, tau, relative)
    for image, slot in np.ndindex(masks.shape[:2]):
        mask = masks[image, slot]
        expected = loco_saturation_area(mask, tau[image, slot], relative[image, slot])
        assert areas[image, slot] == (expected if mask.any() else 0.0)
    with pytest.raises(ValueError, match="relative saturation threshold"):
        jm.saturation_areas(masks, 2.0, True)
    with pytest.raises(ValueError, match="positive"):
        jm.saturation_areas(masks, 0.0, False)


def test_defects_from_ground_truth_file(tmp_path):
    config = [
        {
            "defect_name": "a",
            "pixel_value": 255,
            "saturation_threshold": 5,
            "relative_saturation": False,
        },
        {
            "defect_name": "b",
            "pixel_value": 200,
            "saturation_threshold": 0.5,
            "relative_saturation": True,
        },
    ]
    path = tmp_path / "defects_config.json"
    path.write_text(json.dumps(config))
    first, second = np.zeros((6, 6), np.uint8), np.zeros((6, 6), np.uint8)
    first[:3, :3], second[2:, 2:] = 255, 200
    masks, areas = jm.defects_from_ground_truth([first, second], path, max_defects=3)
    assert masks.shape == (3, 6, 6) and masks[0].sum() == 9 and not masks[2].any()
    assert areas.tolist() == [5.0, 8.0, 0.0]
    good_masks, good_areas = jm.defects_from_ground_truth([np.zeros((6, 6))], config, 3)
    assert not good_masks.any() and not good_areas.any()
    with pytest.raises(ValueError, match="pixel value 7 is not in defects_config"):
        jm.defects_from_ground_truth([np.full((6, 6), 7)], config)
    with pytest.raises(ValueError, match="exceed max_defects=1"):
        jm.defects_from_ground_truth([first, second], config, max_defects=1)
    mixed = first.copy()
    mixed[5, 5] = 200
    with pytest.raises(ValueError, match="one defect per image"):
        jm.defects_from_ground_truth([mixed], config)


def test_valid_leaves_padded_images_out():
    maps, masks, saturation = random_case(1)
    padded = (
        np.concatenate([maps[:3], np.zeros_like(maps[:2])]),
        np.concatenate([masks[:3], np.ones_like(masks[:2])]),
        np.concatenate([saturation[:3], np.ones_like(saturation[:2])]),
    )
    valid = np.arange(5) < 3
    step = jax.jit(lambda m, a, b, c, v: m.update(a, b, c, valid=v))
    for metric in (
        jm.AUSPRO(0.3, capacity=maps.size * 4),
        jm.AUSPRO(0.3, thresholds=64),
        jm.SPRO(),
    ):
        expected = float(metric.update(maps[:3], masks[:3], saturation[:3]).compute())
        np.testing.assert_allclose(float(step(metric, *padded, valid).compute()), expected)
        np.testing.assert_allclose(float(metric.update(*padded, valid=valid).compute()), expected)
    assert float(jm.AUSPRO(0.3)(maps[:3], masks[:3], saturation[:3])) == pytest.approx(
        loco_auspro(maps[:3], masks[:3], saturation[:3], 0.3), abs=2e-7
    )
