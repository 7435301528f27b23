"""Validation-fitted thresholds and SegF1 (MVTec AD 2) against independent numpy."""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import pixel_f1

import jaxmetrics_ad as jm


def validation_maps(seed: int, shape=(6, 16, 12)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.gamma(2.0, 1.5, shape) + rng.normal(0, 0.1, shape)).astype(np.float32)


def segmentation_case(seed: int, shape=(6, 16, 12)) -> tuple[np.ndarray, np.ndarray]:
    """Maps with ties; masks with defects on some images, good images without."""
    rng = np.random.default_rng(seed)
    maps = (rng.integers(0, 20, shape) / 4).astype(np.float32)
    masks = rng.random(shape) < 0.2
    masks[rng.random(shape[0]) < 0.4] = False
    maps = np.where(masks & (rng.random(shape) < 0.7), maps + 2.0, maps).astype(np.float32)
    return maps, masks


def reference_quantile(values: np.ndarray, q: float) -> float:
    """The smallest value with at least q of the values at or below it."""
    ordered = np.sort(np.ravel(values).astype(np.float64))
    for value in ordered:
        if np.count_nonzero(ordered <= value) >= q * ordered.size:
            return float(value)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [0.0, 1.0, 3.0])
def test_mean_std_threshold(seed, k):
    maps = validation_maps(seed)
    expected = maps.astype(np.float64).mean() + k * maps.astype(np.float64).std()
    assert math.isclose(jm.fit_threshold(maps, k=k), expected, rel_tol=2e-6)
    # streamed in batches of different sizes, and merged
    batches = [maps[:1], maps[1:4], maps[4:]]
    assert math.isclose(jm.fit_threshold(batches, k=k), expected, rel_tol=2e-6)
    parts = [jm.ValidationThreshold(k=k).update(b) for b in batches]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert math.isclose(float(merged.compute()), expected, rel_tol=2e-6)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99, 1.0])
def test_exact_quantile_threshold(seed, q):
    maps = validation_maps(seed)[: seed + 2]  # several pixel counts
    expected = reference_quantile(maps, q)
    assert jm.fit_threshold(maps, "quantile", q=q) == np.float32(expected)
    # at most 1 - q of the validation pixels lie above it
    assert np.mean(maps > expected) <= 1 - q + 1e-12


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("thresholds", [8, 256, [0.5, 1.0, 2.0, 4.0, 8.0]])
def test_binned_quantile_brackets_the_exact_one(seed, thresholds):
    maps = validation_maps(seed)
    for q in (0.5, 0.9, 0.99, 1.0):
        exact = np.float32(reference_quantile(maps, q))
        metric = jm.ValidationThreshold("quantile", q=q, thresholds=thresholds).update(maps)
        lower, upper = (float(v) for v in metric.quantile_bracket())
        assert lower <= exact <= upper == float(metric.compute())
        assert np.mean(maps > upper) <= 1 - q + 1e-12


def test_quantile_under_jit_and_scan():
    maps = validation_maps(0)
    expected = np.float32(reference_quantile(maps, 0.95))
    step = jax.jit(lambda m, x: m.update(x))
    metric = jm.ValidationThreshold("quantile", q=0.95, capacity=maps.size)
    for image in maps:
        metric = step(metric, image[None])
    assert float(jax.jit(lambda m: m.compute())(metric)) == expected
    final, _ = jax.lax.scan(
        lambda m, x: (m.update(x), None), jm.ValidationThreshold(k=3.0), maps[:, None]
    )
    expected = maps.astype(np.float64).mean() + 3 * maps.astype(np.float64).std()
    assert math.isclose(float(final.compute()), expected, rel_tol=2e-6)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.75, 1.5, 3.0])
def test_segf1_pooled(seed, threshold):
    maps, masks = segmentation_case(seed)
    expected = pixel_f1(maps > threshold, masks)
    metric = jm.SegF1(threshold)
    for start in range(0, len(maps), 2):
        metric = metric.update(maps[start : start + 2], masks[start : start + 2])
    np.testing.assert_allclose(float(metric.compute()), expected, rtol=1e-6)
    # merge is one pass
    halves = (
        jm.SegF1(threshold)
        .update(maps[:3], masks[:3])
        .merge(jm.SegF1(threshold).update(maps[3:], masks[3:]))
    )
    np.testing.assert_allclose(float(halves.compute()), expected, rtol=1e-6)


def reference_per_image(maps, masks, threshold, empty_score):
    scores = []
    for image_map, mask in zip(maps, masks):
        predicted = image_map > threshold
        if not predicted.any() and not mask.any():
            if empty_score is not None:
                scores.append(empty_score)
            continue
        scores.append(pixel_f1(predicted, mask))
    return float(np.mean(scores)) if scores else math.nan


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("empty_score", [1.0, 0.0, None])
def test_segf1_per_image(seed, empty_score):
    maps, masks = segmentation_case(seed)
    maps[0] = 0.0  # at least one image with nothing predicted
    masks[0] = False
    for threshold in (1.5, 3.0):
        expected = reference_per_image(maps, masks, threshold, empty_score)
        metric = jm.SegF1PerImage(threshold, empty_score=empty_score)
        first = metric.update(maps[:2], masks[:2])
        second = metric.update(maps[2:], masks[2:])
        np.testing.assert_allclose(float(first.merge(second).compute()), expected, rtol=1e-6)


def test_segf1_per_image_with_nothing_counted():
    maps = np.zeros((2, 4, 4), np.float32)
    with pytest.warns(UserWarning, match="no image counted"):
        value = jm.SegF1PerImage(0.5, empty_score=None)(maps, np.zeros((2, 4, 4)))
    assert math.isnan(float(value))
    assert float(jm.SegF1PerImage(0.5)(maps, np.zeros((2, 4, 4)))) == 1.0
    assert float(jm.SegF1(0.5)(maps, np.zeros((2, 4, 4)))) == 0.0  # as F1Score


def test_threshold_is_strict_unlike_f1score_and_next_below_gives_f1scores_value():
    maps = np.array([[[0.5, 0.6], [0.4, 0.5]]], np.float32)
    masks = np.array([[[1, 1], [0, 0]]])
    # 0.5 itself is negative: TP 1 (0.6), FN 1, FP 0
    assert float(jm.SegF1(0.5)(maps, masks)) == pytest.approx(2 / 3)
    inclusive = float(np.nextafter(np.float32(0.5), -np.inf))
    assert float(jm.SegF1(inclusive)(maps, masks)) == pytest.approx(0.8)  # TP 2, FP 1, FN 0
    assert float(jm.F1Score(0.5)(maps, masks)) == pytest.approx(0.8)  # F1Score counts >=


def test_threshold_from_fitted_metric_and_oracle_f1max():
    validation = validation_maps(1)
    fitted = jm.ValidationThreshold(k=3).update(validation)
    maps, masks = segmentation_case(1)
    via_metric = jm.SegF1(fitted)(maps, masks)
    via_float = jm.SegF1(float(fitted.compute()))(maps, masks)
    assert float(via_metric) == float(via_float)
    assert jm.SegF1(fitted).threshold == float(fitted.compute())
    oracle = jm.F1Max(fields=("anomaly_map", "gt_mask"))(maps, masks)
    assert float(oracle) >= float(via_metric) - 1e-6  # the oracle is the best over thresholds


def test_jit_and_valid_padding():
    maps, masks = segmentation_case(2)
    step = jax.jit(lambda m, a, b, v: m.update(a, b, valid=v))
    for metric in (jm.SegF1(1.5), jm.SegF1PerImage(1.5), jm.SegF1PerImage(1.5, empty_score=None)):
        eager = metric.update(maps[:5], masks[:5]).compute()
        padded = (np.concatenate([maps[:5], maps[5:] * 0 + 9.0]), masks)
        valid = np.arange(len(maps)) < 5
        jitted = step(metric, *padded, valid)
        np.testing.assert_allclose(float(jax.jit(lambda m: m.compute())(jitted)), float(eager))
        np.testing.assert_allclose(
            float(metric.update(*padded, valid=valid).compute()), float(eager)
        )
    values = validation_maps(0)
    padded = np.concatenate([values, values * 0 + 100.0])
    valid = np.arange(len(padded)) < len(values)
    assert math.isclose(
        float(jm.ValidationThreshold().update(padded, valid=valid).compute()),
        jm.fit_threshold(values),
        rel_tol=1e-6,
    )


def test_invalid_inputs_inside_jit_poison_the_value():
    maps, masks = segmentation_case(3)
    maps[0, 0, 0] = np.nan
    step = jax.jit(lambda m, *a: m.update(*a))
    for metric, args in (
        (jm.SegF1(1.0), (maps, masks)),
        (jm.SegF1PerImage(1.0), (maps, masks)),
        (jm.ValidationThreshold(), (maps,)),
        (jm.ValidationThreshold("quantile", q=0.9, thresholds=64), (maps,)),
        (jm.ValidationThreshold("quantile", q=0.9, capacity=maps.size), (maps,)),
    ):
        poisoned = step(metric, *args)
        assert bool(jnp.isnan(jax.jit(lambda m: m.compute())(poisoned)))
        with pytest.raises(ValueError, match="invalid samples"):
            poisoned.compute()


def test_bad_inputs_name_the_field():
    maps, masks = segmentation_case(0)
    with pytest.raises(ValueError, match=r"anomaly_map has shape .* but gt_mask"):
        jm.SegF1(1.0).update(maps, masks[:, :3])
    with pytest.raises(ValueError, match="gt_mask: labels must be 0/1"):
        jm.SegF1(1.0).update(maps, masks * 2)
    nan_maps = maps.copy()
    nan_maps[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="anomaly_map: 1 of"):
        jm.SegF1PerImage(1.0).update(nan_maps, masks)
    with pytest.raises(ValueError, match="anomaly_map: 1 of"):
        jm.ValidationThreshold().update(nan_maps)
    with pytest.raises(TypeError, match="anomaly_map: expected anomaly scores, got dtype bool"):
        jm.SegF1(0.5).update(masks, masks)
    with pytest.raises(ValueError, match="anomaly_map: expected maps of shape"):
        jm.SegF1(0.5).update(maps.ravel(), masks.ravel())
    with pytest.raises(ValueError, match="threshold: expected a finite number"):
        jm.SegF1(float("nan"))
    with pytest.raises(TypeError, match="threshold"):
        jm.SegF1("0.5")
    with pytest.raises(TypeError, match="traced value"):
        jax.jit(lambda t: jm.SegF1(t).state.lo)(1.0)
    with pytest.raises(ValueError, match="q: method='quantile' needs"):
        jm.ValidationThreshold("quantile")
    with pytest.raises(ValueError, match="q: expected a number in"):
        jm.ValidationThreshold("quantile", q=1.5)
    with pytest.raises(ValueError, match="apply to method='quantile' only"):
        jm.ValidationThreshold(q=0.9)
    with pytest.raises(ValueError, match="method: expected"):
        jm.ValidationThreshold("otsu")
    with pytest.raises(ValueError, match="empty_score"):
        jm.SegF1PerImage(0.5, empty_score=2.0)
    with pytest.raises(ValueError, match="capacity=4"):
        jm.ValidationThreshold("quantile", q=0.5, capacity=4).update(maps)


def test_no_warning_for_binned_quantile_in_score_units():
    """The quantile's bracket is in score units: it is not an error bound to warn about."""
    maps = validation_maps(0) * 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jm.ValidationThreshold("quantile", q=0.9, thresholds=16).update(maps).compute()
