"""Binned AUPIMO's certified error bound (``AUPIMO.error_bound``, issue 12 item 3).

On seeded random cases (realistic maps, gamma noise, integer-tied maps, tiny images, one outlier
pixel, a small kept tail, given thresholds), |binned − exact| per image stays within the bound,
where exact is ``jm.AUPIMO()`` in exact mode and, independently, a small numpy transcription of the
AUPIMO paper's definition below.
"""

from __future__ import annotations

import functools
import warnings

import jax
import numpy as np
import pytest

import jaxmetrics_ad as jm
from jaxmetrics_ad.synthetic import make_category

K = 300_000  # anomalib's number of thresholds
WIDE = (1e-3, 1e-1)
DEFAULT = (1e-5, 1e-4)


def quiet(function):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function()


def rectangles(rng: np.random.Generator, count: int, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    masks = np.zeros((count, height, width), bool)
    for image in range(count):
        top, left = rng.integers(0, height - 1), rng.integers(0, width - 1)
        tall, wide = rng.integers(1, max(2, height // 3) + 1, 2)
        masks[image, top : top + tall, left : left + wide] = True
    return masks


@functools.cache
def case(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps (N, H, W) float32 and masks (N, H, W) bool, normal and anomalous images mixed."""
    rng = np.random.default_rng(seed)
    if kind == "smooth":
        data = make_category(num_normal=8, num_anomalous=8, size=(128, 128), seed=seed)
        return np.asarray(data.anomaly_maps, np.float32), np.asarray(data.gt_masks, bool)
    count, size = (12, (16, 16)) if kind == "tiny" else (10, (64, 64))
    maps = rng.gamma(2.0, 1.0, (2 * count, *size)).astype(np.float32)
    masks = np.zeros(maps.shape, bool)
    masks[count:] = rectangles(rng, count, size)
    maps[masks] += rng.uniform(0.0, 3.0, masks.sum()).astype(np.float32)
    if kind == "tied":
        maps = np.floor(maps * rng.uniform(1.0, 4.0)).astype(np.float32)
    if kind == "outlier":
        maps[rng.integers(0, count), 0, 0] = 1e6  # one normal pixel far above all others
    order = rng.permutation(2 * count)
    return maps[order], masks[order]


def torch_linspace(low: float, high: float, num: int) -> np.ndarray:
    """float32 thresholds as ``torch.linspace`` makes them (step rounded to float32, the first half
    counted up from ``low``, the second half down from ``high``)."""
    low32, high32 = np.float32(low), np.float32(high)
    step = np.float64((high32 - low32) / np.float32(num - 1))
    index = np.arange(num, dtype=np.float64)
    up = np.float64(low32) + step * index
    down = np.float64(high32) - step * (num - 1 - index)
    return np.where(index < num // 2, up, down).astype(np.float32)


def paper_aupimo(maps, masks, bounds, num_thresholds=K) -> np.ndarray:
    """The AUPIMO paper's definition, written out independently: per-image TPR against the shared
    FPR (mean over normal images of their FPR), thresholds between the normal min and max, the
    trapezoid over ln(FPR) between the thresholds whose FPR is nearest each bound, divided by
    ln(upper / lower) and clipped to [0, 1]; NaN for normal images."""
    lower, upper = bounds
    anomalous = masks.reshape(len(masks), -1).any(axis=1)
    normal = np.sort(maps[~anomalous].reshape(int((~anomalous).sum()), -1), axis=1)
    thresholds = torch_linspace(normal.min(), normal.max(), num_thresholds).astype(np.float64)
    per_image = [1 - np.searchsorted(row, thresholds, "left") / row.size for row in normal]
    fpr = np.mean(per_image, axis=0)
    start, stop = np.argmin(np.abs(fpr - upper)), np.argmin(np.abs(fpr - lower))
    log_fpr = np.log(fpr[start : stop + 1])
    result = np.full(len(maps), np.nan)
    for image in np.flatnonzero(anomalous):
        scores = np.sort(maps[image][masks[image]])
        tpr = 1 - np.searchsorted(scores, thresholds[start : stop + 1], "left") / scores.size
        area = np.sum((log_fpr[:-1] - log_fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2)
        result[image] = np.clip(area / np.log(upper / lower), 0, 1)
    return result


@functools.cache
def exact(kind: str, seed: int, bounds) -> np.ndarray | None:
    maps, masks = case(kind, seed)
    metric = jm.AUPIMO(num_thresholds=K, fpr_bounds=bounds, return_average=False, force=True)
    try:
        return np.asarray(quiet(metric.update(maps, masks).compute)[1].aupimos, np.float64)
    except (ValueError, RuntimeError):  # a bound outside the shared FPR range (small images)
        return None


def binned(kind: str, seed: int, bounds, thresholds, **options) -> jm.AUPIMO:
    maps, masks = case(kind, seed)
    metric = jm.AUPIMO(
        num_thresholds=K,
        fpr_bounds=bounds,
        return_average=False,
        force=True,
        thresholds=thresholds,
        capacity=len(maps),
        **options,
    )
    return metric.update(maps, masks)


def values_and_bounds(metric: jm.AUPIMO) -> tuple[np.ndarray, np.ndarray]:
    value = np.asarray(quiet(metric.compute)[1].aupimos, np.float64)
    return value, np.asarray(quiet(metric.error_bound), np.float64)


def assert_within(value, bound, reference, where=""):
    both = np.isfinite(value) & np.isfinite(reference)
    assert both.any(), where
    assert np.array_equal(np.isnan(bound), np.isnan(value)), where
    error = np.abs(value - reference)[both]
    assert np.all(error <= bound[both]), (where, error.max(), (error - bound[both]).max())


KINDS = ("smooth", "gamma", "tied", "tiny", "outlier")
CASES = [
    (kind, seed, bounds, bins)
    for kind in KINDS
    for seed in (0, 1)
    for bounds in (DEFAULT, WIDE)
    for bins in (64, 1024, 16384)
    if bounds == WIDE or kind == "smooth"  # the other maps are too small for FPR 1e-5
]


@pytest.mark.parametrize(("kind", "seed", "bounds", "bins"), CASES)
def test_bound_holds_against_exact_mode(kind, seed, bounds, bins):
    reference = exact(kind, seed, bounds)
    value, bound = values_and_bounds(binned(kind, seed, bounds, bins))
    assert_within(value, bound, reference, (kind, seed, bounds, bins))
    assert np.nanmax(bound) <= 1.0 + 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_bound_holds_against_the_paper_definition(kind):
    bounds = DEFAULT if kind == "smooth" else WIDE
    maps, masks = case(kind, 3)
    reference = paper_aupimo(maps, masks, bounds)
    exact_mode = exact(kind, 3, bounds)
    np.testing.assert_allclose(exact_mode, reference, atol=1e-6)  # the transcription is right
    for bins in (256, 4096):
        value, bound = values_and_bounds(binned(kind, 3, bounds, bins))
        assert_within(value, bound, reference, (kind, bins))


@pytest.mark.parametrize("kind", ("smooth", "gamma", "tied"))
def test_bound_holds_where_the_shared_fpr_is_read_off_the_histogram(kind):
    """A kept tail of 16 scores: the FPR inside the band is binned too, and so are the band's ends."""
    bounds = DEFAULT if kind == "smooth" else WIDE
    for bins in (256, 4096):
        metric = binned(kind, 4, bounds, bins, tail_size=16)
        value, bound = values_and_bounds(metric)
        assert_within(value, bound, exact(kind, 4, bounds), (kind, bins))


def test_bound_holds_with_given_thresholds():
    """Given thresholds are compared with exact mode on anomalib's default grid."""
    maps, _ = case("gamma", 5)
    given = np.quantile(maps, np.linspace(0.0, 1.0, 2000))
    value, bound = values_and_bounds(binned("gamma", 5, WIDE, np.unique(given)))
    assert_within(value, bound, exact("gamma", 5, WIDE))


@pytest.mark.parametrize("kind", ("smooth", "tied"))
def test_bound_of_the_mean(kind):
    """Without capacity only the mean is kept: one scalar bound on the mean AUPIMO."""
    bounds = DEFAULT if kind == "smooth" else WIDE
    maps, masks = case(kind, 6)
    reference = np.nanmean(exact(kind, 6, bounds))
    for bins in (256, 4096):
        metric = jm.AUPIMO(num_thresholds=K, fpr_bounds=bounds, force=True, thresholds=bins)
        metric = metric.update(maps, masks)
        value, bound = float(quiet(metric.compute)), quiet(metric.error_bound)
        assert bound.shape == ()
        assert abs(value - reference) <= float(bound)
        per_image, bounds_per_image = values_and_bounds(binned(kind, 6, bounds, bins))
        # the mean of per-image values is off by at most the mean of their bounds
        assert abs(np.nanmean(per_image) - reference) <= np.nanmean(bounds_per_image)


def test_tight_on_smooth_maps():
    """On realistic maps the bound is within a small factor of the error actually made."""
    reference = exact("smooth", 0, WIDE)
    value, bound = values_and_bounds(binned("smooth", 0, WIDE, 16384))
    error = np.abs(value - reference)
    assert np.nanmax(bound) < 1e-4
    assert np.nanmax(bound) <= 20 * max(np.nanmax(error), 1e-6)


def test_tied_docstring_case_reports_and_warns():
    scores = np.arange(100, dtype=np.float32).reshape(10, 10)
    maps, masks = np.stack([scores, scores]), np.stack([scores < 0, scores >= 90])
    exact_value = float(jm.AUPIMO(fpr_bounds=(0.01, 0.05))(maps, masks))
    for capacity in (None, 2):
        metric = jm.AUPIMO(fpr_bounds=(0.01, 0.05), thresholds=64, capacity=capacity)
        metric = metric.update(maps, masks)
        with pytest.warns(UserWarning, match="certified bound"):
            value = float(metric.compute())
        bound = np.nanmax(np.asarray(metric.error_bound()))
        assert abs(value - 0.3025) < 1e-3 and round(exact_value, 4) == 0.2525
        assert bound >= 0.05 - 1e-4 and abs(value - exact_value) <= bound


def test_no_warning_when_tight():
    metric = binned("smooth", 0, WIDE, 16384)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metric.compute()
    assert not [w for w in caught if "certified bound" in str(w.message)]


def test_exact_mode_bound_is_zero():
    maps, masks = case("gamma", 0)
    bound = np.asarray(jm.AUPIMO(fpr_bounds=WIDE).update(maps, masks).error_bound())
    anomalous = masks.reshape(len(masks), -1).any(axis=1)
    assert bound.shape == (len(maps),)
    assert np.all(bound[anomalous] == 0) and np.all(np.isnan(bound[~anomalous]))


@pytest.mark.parametrize("kind", ("gamma", "tied"))
def test_jit_and_eager_agree(kind):
    metric = binned(kind, 7, WIDE, 1024)
    value, bound = values_and_bounds(metric)
    jitted = np.asarray(jax.jit(lambda m: m.error_bound())(metric), np.float64)
    jitted_value = np.asarray(jax.jit(lambda m: m.compute()[1].aupimos)(metric), np.float64)
    assert jitted.shape == (len(value),)  # capacity rows, all used here
    np.testing.assert_allclose(jitted_value, value, atol=1e-6)
    finite = np.isfinite(bound)
    assert np.array_equal(finite, np.isfinite(jitted))
    # float32 inside jit: a margin of 2**-17 and boxes widened by float32 rounding of the grid
    assert np.all(jitted[finite] >= bound[finite] - 1e-6)
    if kind != "tied":  # tied scores sit on grid thresholds, where the widened boxes open up
        assert np.median(jitted[finite] - bound[finite]) <= 2e-5
    assert_within(jitted_value, jitted, exact(kind, 7, WIDE))
