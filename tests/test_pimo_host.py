"""Binned PIMO / AUPIMO read eagerly with numpy (float64) equal the jitted jax reader (float32).

An eager ``compute`` of a binned state compiles no XLA program (issue 12): the same readers
(``jaxmetrics_ad.pimo_binned``) run with numpy instead of jax.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.monitoring
import numpy as np
import pytest

import jaxmetrics_ad as jm
from jaxmetrics_ad.synthetic import make_category

# One image shape and four configurations for the whole file: each compiles its update and its
# jitted compute once.
SIZE = (32, 32)
NUM_IMAGES = 16
OPTIONS = {"num_thresholds": 3000, "thresholds": 256}
BOUNDS = (1e-2, 1e-1)
CONFIGURATIONS = {
    "pimo": lambda: jm.PIMO(**OPTIONS, capacity=NUM_IMAGES),
    "mean": lambda: jm.AUPIMO(**OPTIONS, fpr_bounds=BOUNDS, force=True),
    "mean_with_capacity": lambda: jm.AUPIMO(
        **OPTIONS, fpr_bounds=BOUNDS, force=True, capacity=NUM_IMAGES
    ),
    "per_image": lambda: jm.AUPIMO(
        **OPTIONS, fpr_bounds=BOUNDS, force=True, return_average=False, capacity=NUM_IMAGES
    ),
}


@functools.cache
def case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Realistic maps (even seeds) or noise with random rectangles as masks (odd seeds)."""
    if seed % 2 == 0:
        data = make_category(num_normal=8, num_anomalous=8, size=SIZE, seed=seed)
        return np.asarray(data.anomaly_maps), np.asarray(data.gt_masks)
    rng = np.random.default_rng(seed)
    maps = rng.gamma(2.0, 1.0, (NUM_IMAGES, *SIZE)).astype(np.float32) * rng.uniform(0.5, 2)
    masks = np.zeros(maps.shape, bool)
    for image in range(NUM_IMAGES // 2, NUM_IMAGES):
        top, left = rng.integers(0, 24, 2)
        height, width = rng.integers(1, 9, 2)
        masks[image, top : top + height, left : left + width] = True
        maps[image][masks[image]] += rng.uniform(0.0, 3.0)
    order = rng.permutation(NUM_IMAGES)
    return maps[order], masks[order]


@functools.cache
def jitted_compute():
    return jax.jit(lambda metric: metric.compute())


def updated(kind: str, seed: int):
    maps, masks = case(seed)
    metric = CONFIGURATIONS[kind]()
    return metric.update(maps[:8], masks[:8]).update(maps[8:], masks[8:])


def quietly(function, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args)


def assert_close(eager, jitted, atol=1e-7):
    eager, jitted = np.asarray(eager, np.float64), np.asarray(jitted, np.float64)
    np.testing.assert_array_equal(np.isnan(eager), np.isnan(jitted))
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", list(CONFIGURATIONS))
def test_eager_numpy_compute_equals_the_jitted_one(kind, seed):
    metric = updated(kind, seed)
    eager = quietly(metric.compute)
    jitted = jitted_compute()(metric)
    if kind in ("mean", "mean_with_capacity"):
        assert_close(eager, jitted)
        return
    pimo, aupimo = (eager, None) if kind == "pimo" else eager
    jitted_pimo, jitted_aupimo = (jitted, None) if kind == "pimo" else jitted
    assert_close(pimo.thresholds, jitted_pimo.thresholds)
    assert_close(pimo.shared_fpr, jitted_pimo.shared_fpr)
    # Eagerly the grid is anomalib's to the bit, inside jit it is built in float32 and may be one
    # ulp off: where a bin of a small mask is steep, the interpolated TPR moves by slope × ulp.
    assert_close(pimo.per_image_tprs, jitted_pimo.per_image_tprs, atol=1e-5)
    if aupimo is not None:
        assert aupimo.num_thresholds == int(jitted_aupimo.num_thresholds)
        assert_close(aupimo.thresh_lower_bound, jitted_aupimo.thresh_lower_bound)
        assert_close(aupimo.thresh_upper_bound, jitted_aupimo.thresh_upper_bound)
        assert_close(aupimo.aupimos, jitted_aupimo.aupimos)


@pytest.mark.parametrize("kind", list(CONFIGURATIONS))
def test_eager_compute_compiles_no_xla_program(kind):
    metric = updated(kind, 0)
    jax.block_until_ready(metric)
    compiles = []

    def listener(event: str, seconds: float, **kwargs) -> None:
        if event.endswith("backend_compile_duration"):
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        value = quietly(metric.compute)
        jax.block_until_ready(value)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []
    # jax arrays as inside jit, but AUPIMOResult.num_thresholds an int (as in anomalib)
    leaves = jax.tree_util.tree_leaves(value)
    assert all(isinstance(leaf, (jax.Array, int)) for leaf in leaves)


def test_readings_shared_within_a_compute_follow_the_metric_object():
    maps, masks = case(2)
    first = CONFIGURATIONS["mean_with_capacity"]().update(maps[:8], masks[:8])
    both = first.update(maps[8:], masks[8:])
    value_first = quietly(first.compute)
    value_both = quietly(both.compute)  # a new object: its own readings, not first's
    fresh = CONFIGURATIONS["mean_with_capacity"]().update(maps[8:], masks[8:])
    fresh = fresh.update(maps[:8], masks[:8])
    assert float(value_both) == float(quietly(fresh.compute))
    assert float(value_first) != float(value_both)
    assert float(quietly(first.compute)) == float(value_first)  # read again, after the others
    bound = first.error_bound()  # the bound of first's values, not of both's
    quietly(both.compute)
    again = CONFIGURATIONS["mean_with_capacity"]().update(maps[:8], masks[:8]).error_bound()
    np.testing.assert_array_equal(bound, again)


# -- one spelling: thresholds=None | int | array, as AUROC's ---------------------------------------


def test_num_bins_is_a_deprecated_spelling_of_thresholds():
    with pytest.warns(DeprecationWarning, match="thresholds="):
        old = jm.AUPIMO(**{**OPTIONS, "thresholds": None}, num_bins=256, fpr_bounds=BOUNDS)
    new = jm.AUPIMO(**OPTIONS, fpr_bounds=BOUNDS)
    assert old.config == new.config and old.thresholds == 256 and old.num_bins == 256
    with pytest.raises(TypeError, match="not both"), pytest.warns(DeprecationWarning):
        jm.PIMO(thresholds=64, num_bins=64, capacity=2)
    assert jm.PIMO().num_bins is None and not jm.PIMO(thresholds=[0.5], capacity=2).is_exact


@pytest.mark.parametrize(
    "arguments",
    [
        {"thresholds": 2},
        {"thresholds": [0.5, 0.2], "capacity": 2},
        {"thresholds": [0.1, 0.2], "num_thresholds": 7, "capacity": 2},
        {"thresholds": None, "capacity": 2},
    ],
)
def test_bad_thresholds_raise(arguments):
    with pytest.raises(ValueError):
        jm.PIMO(**arguments)


def test_given_thresholds_read_exact_curves_there():
    maps, masks = case(0)
    given = np.linspace(maps.min(), maps.max(), 2000)[10:-10]
    binned = jm.PIMO(thresholds=given, capacity=NUM_IMAGES)(maps, masks)
    assert binned.thresholds.shape == (len(given),)
    np.testing.assert_array_equal(binned.thresholds, given.astype(np.float32))
    normal = ~masks.any(axis=(1, 2))
    at = binned.thresholds[None, None, None, :]
    expected_fpr = np.mean(np.mean(maps[normal][..., None] >= at, axis=(1, 2)), axis=0)
    np.testing.assert_allclose(binned.shared_fpr, expected_fpr, rtol=1e-6)
    image = np.flatnonzero(~normal)[0]
    scores = maps[image][masks[image]]
    expected_tpr = np.mean(scores[:, None] >= binned.thresholds[None, :], axis=0)
    np.testing.assert_allclose(binned.per_image_tprs[image], expected_tpr, atol=1e-7)
    # the jitted reader agrees (float32 arithmetic)
    metric = jm.PIMO(thresholds=given, capacity=NUM_IMAGES).update(maps, masks)
    jitted = jax.jit(lambda m: m.compute())(metric)
    np.testing.assert_allclose(jitted.shared_fpr, binned.shared_fpr, rtol=1e-6)
    np.testing.assert_allclose(jitted.per_image_tprs, binned.per_image_tprs, atol=1e-6)


def test_aupimo_at_given_thresholds_equals_exact_mode_on_the_same_grid():
    maps, masks = case(0)
    normal = ~masks.any(axis=(1, 2))
    exact = jm.AUPIMO(3000, BOUNDS, return_average=False, force=True)
    _, expected = quietly(exact, maps, masks)
    grid = jm.pimo.anomalib_thresholds(maps[normal].min(), maps[normal].max(), 3000)
    given = jm.AUPIMO(
        fpr_bounds=BOUNDS, return_average=False, force=True, thresholds=grid, capacity=NUM_IMAGES
    )
    _, result = quietly(given, maps, masks)
    assert result.num_thresholds == expected.num_thresholds
    np.testing.assert_allclose(result.aupimos, expected.aupimos, rtol=1e-5, atol=1e-7)
