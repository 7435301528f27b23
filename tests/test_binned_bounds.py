"""Certified error bounds of binned AUPR, F1Max (value and threshold) and AUROC (issue 12 item 3).

Every binned value must lie within ``error_bound()`` of the exact one (scikit-learn's average
precision; an independent numpy F1Max over every distinct score), inside jit as well as eagerly, and
the bound must be reachable: the worst arrangements inside one bin are built here and reach it.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

import jaxmetrics_ad as jm
from jaxmetrics_ad.curves import (
    _spread,
    average_precision_spread,
    counts_from_cumulative,
    harmonic_number,
    pairwise_sum,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*binned value may be off:UserWarning")


# -- independent references ----------------------------------------------------------------------


def f1_max_reference(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(max F1, lowest threshold attaining it) over every distinct score, anomalib's F1 formula."""
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    ranked, positive = scores[order], labels[order]
    last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]
    tp = np.cumsum(positive)[last_of_tie].astype(np.float64)
    fp = np.cumsum(1 - positive)[last_of_tie].astype(np.float64)
    thresholds = ranked[last_of_tie]
    if labels.sum() == 0:
        return 0.0, float("nan")
    precision, recall = tp / (tp + fp), tp / labels.sum()
    f1 = 2 * precision * recall / (precision + recall + 1e-10)
    f1 = np.where(np.isfinite(f1), f1, 0.0)
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))
    return float(f1[best]), float(thresholds[best])


def f1_at_thresholds(scores, labels, thresholds) -> float:
    """anomalib's F1Max with given thresholds: the candidates are exactly those thresholds."""
    scores = scores.astype(np.float32)
    best = 0.0
    for t in np.asarray(thresholds, np.float32):
        predicted = scores >= t
        tp = float(np.sum(predicted & (labels == 1)))
        fp = float(np.sum(predicted & (labels == 0)))
        if tp + fp == 0:
            continue
        precision, recall = tp / (tp + fp), tp / labels.sum()
        denominator = precision + recall + 1e-10
        best = max(best, 2 * precision * recall / denominator)
    return best


def make_case(kind: str, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(size) < 0.2).astype(np.int32)
    if kind == "smooth":
        scores = rng.normal(1.5 * labels, 1.0)
    elif kind == "tied":  # heavily tied integer scores
        scores = np.round(rng.normal(1.0 * labels, 1.0) * 3)
    elif kind == "outlier":  # one far outlier: kept exactly in a tail, the bins stay fine
        scores = rng.normal(1.5 * labels, 1.0)
        scores[rng.integers(size)] = 1e6
    elif kind == "few_positives":
        labels = np.zeros(size, np.int32)
        labels[rng.choice(size, 4, replace=False)] = 1
        scores = rng.normal(2.0 * labels, 1.0)
    elif kind == "imbalanced":  # 0.5 % positives on a raw distance scale
        labels = (rng.random(size) < 0.005).astype(np.int32)
        scores = np.abs(rng.normal(40.0 * labels, 25.0)) + 100
    else:
        raise ValueError(kind)
    labels[:2] = [0, 1]
    return scores.astype(np.float32), labels


KINDS = ["smooth", "tied", "outlier", "few_positives", "imbalanced"]
BINS = [64, 1024, 16384]


jit_compute = jax.jit(lambda m: m.compute())
jit_error_bound = jax.jit(lambda m: m.error_bound())
jit_threshold_bound = jax.jit(lambda m: m.threshold_bound())


def bounds_eager_and_jit(metric):
    value = float(metric.compute())
    bound = float(metric.error_bound())
    return value, bound, float(jit_compute(metric)), float(jit_error_bound(metric))


# -- the bounds hold ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bins", BINS)
def test_binned_aupr_and_f1max_lie_within_their_bounds_eagerly_and_inside_jit(kind, bins):
    for seed in range(3):
        scores, labels = make_case(kind, seed + 10 * bins, [300, 5_000, 40_000][seed])
        exact_ap = average_precision_score(labels, scores)
        exact_f1, exact_threshold = f1_max_reference(scores, labels)

        aupr = jm.AUPR(thresholds=bins).update(scores, labels)
        value, bound, jit_value, jit_bound = bounds_eager_and_jit(aupr)
        assert abs(value - exact_ap) <= bound, (kind, bins, seed)
        assert abs(jit_value - exact_ap) <= jit_bound, (kind, bins, seed)
        assert jit_bound == pytest.approx(bound, abs=4e-6, rel=1e-4)

        f1max = jm.F1Max(thresholds=bins).update(scores, labels)
        value, bound, jit_value, jit_bound = bounds_eager_and_jit(f1max)
        assert value <= exact_f1 + 1e-7  # binned candidates are real thresholds
        assert abs(value - exact_f1) <= bound, (kind, bins, seed)
        assert abs(jit_value - exact_f1) <= jit_bound, (kind, bins, seed)
        assert jit_bound == pytest.approx(bound, abs=4e-6, rel=1e-4)

        threshold, threshold_bound = float(f1max.threshold()), float(f1max.threshold_bound())
        assert abs(threshold - exact_threshold) <= threshold_bound, (kind, bins, seed)
        # inside jit F1 is float32: blocks whose F1 bound is within its rounding of the maximum
        # count as candidates too, so the interval can be wider, never narrower
        assert float(jit_threshold_bound(f1max)) >= threshold_bound * (1 - 1e-6)

        adaptive = jm.F1AdaptiveThreshold(thresholds=bins).update(scores, labels)
        assert float(adaptive.compute()) == threshold
        assert abs(threshold - exact_threshold) <= float(adaptive.threshold_bound())


def test_many_small_random_cases_with_few_bins():
    rng = np.random.default_rng(123)
    size = 60  # one shape and a few bin counts: a handful of compiled updates
    for case in range(300):
        decimals = int(rng.integers(0, 3))
        scores = np.round(rng.normal(size=size) * 10.0 ** rng.integers(-1, 3), decimals)
        scores = scores.astype(np.float32)
        labels = (rng.random(size) < rng.uniform(0.05, 0.9)).astype(np.int32)
        labels[:2] = [0, 1]
        bins = int(rng.choice([3, 5, 8, 17, 40]))
        exact_ap = average_precision_score(labels, scores)
        exact_f1, exact_threshold = f1_max_reference(scores, labels)
        aupr = jm.AUPR(thresholds=bins).update(scores, labels)
        f1max = jm.F1Max(thresholds=bins).update(scores, labels)
        assert abs(float(aupr.compute()) - exact_ap) <= float(aupr.error_bound()), case
        assert abs(float(f1max.compute()) - exact_f1) <= float(f1max.error_bound()), case
        assert abs(float(f1max.threshold()) - exact_threshold) <= float(f1max.threshold_bound())


def test_given_thresholds_equal_anomalib_and_are_bounded_against_every_score():
    rng = np.random.default_rng(5)
    for seed in range(5):
        scores, labels = make_case("smooth", seed, 3_000)
        thresholds = np.sort(rng.uniform(-2, 4, 25)).astype(np.float32)
        metric = jm.F1Max(thresholds=thresholds).update(scores, labels)
        value = float(metric.compute())
        # at its own candidates the value is anomalib's, without error
        assert value == pytest.approx(f1_at_thresholds(scores, labels, thresholds), abs=1e-7)
        exact_f1, exact_threshold = f1_max_reference(scores, labels)
        assert value <= exact_f1 + 1e-7
        assert exact_f1 - value <= float(metric.error_bound())
        assert abs(float(metric.threshold()) - exact_threshold) <= float(metric.threshold_bound())
        aupr = jm.AUPR(thresholds=thresholds).update(scores, labels)
        exact_ap = average_precision_score(labels, scores)
        assert abs(float(aupr.compute()) - exact_ap) <= float(aupr.error_bound())


def test_one_class_adaptive_threshold_bound_covers_the_exact_fallback():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=200).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one class: warned, tested elsewhere
        for labels in (np.zeros(200, np.int32), np.ones(200, np.int32)):
            exact = float(jm.F1AdaptiveThreshold()(scores, labels))
            for thresholds in (64, np.linspace(-1, 1, 9)):
                metric = jm.F1AdaptiveThreshold(thresholds=thresholds).update(scores, labels)
                error = abs(float(metric.compute()) - exact)
                assert error <= float(metric.threshold_bound())
                if isinstance(thresholds, int):  # the extremes are kept exactly
                    assert float(metric.threshold_bound()) == 0.0


# -- tightness --------------------------------------------------------------------------------------


def test_bounds_are_tight_on_smooth_data_with_default_bins():
    scores, labels = make_case("smooth", 0, 100_000)
    aupr = jm.AUPR(thresholds=jm.DEFAULT_NUM_BINS).update(scores, labels)
    f1max = jm.F1Max(thresholds=jm.DEFAULT_NUM_BINS).update(scores, labels)
    # measured (seeds 0-2): AUPR bound 3.2e-4-3.3e-4 (error 9.4e-5-9.6e-5), F1Max bound
    # 2.6e-4-2.9e-4 (error 3.8e-5-6.5e-5); the same at 1e6 samples
    exact_ap = average_precision_score(labels, scores)
    assert abs(float(aupr.compute()) - exact_ap) < float(aupr.error_bound()) < 4e-4
    exact_f1, _ = f1_max_reference(scores, labels)
    assert exact_f1 - float(f1max.compute()) < float(f1max.error_bound()) < 4e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tight: no warning
        aupr.compute()
        f1max.compute()


def test_a_loose_bound_warns_for_aupr_and_f1max():
    scores, labels = make_case("tied", 0, 5_000)
    for metric_type in (jm.AUPR, jm.F1Max):
        metric = metric_type(thresholds=1024).update(scores, labels)
        with pytest.warns(UserWarning, match="binned value may be off"):
            metric.compute()


@pytest.mark.parametrize("metric_type", [jm.AUROC, jm.AUPR, jm.F1Max])
def test_far_outliers_leave_the_binned_value_tight(metric_type):
    scores, labels = make_case("outlier", 0, 5_000)
    scores[:20] = np.float32(-3e7)  # and some far below
    binned = metric_type(thresholds=1024).update(scores, labels)
    untailed = metric_type(thresholds=1024)
    untailed = untailed._replace(state=jm.ScoreHistogram.auto(1024, 2)).update(scores, labels)
    exact = float(metric_type()(scores, labels))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the bound is tight: no loose-bound warning
        assert abs(float(binned.compute()) - exact) <= float(binned.error_bound()) < 2e-3
    assert float(untailed.error_bound()) > 0.05  # without tails every bin is ~1e4 wide


def test_all_in_one_bin_reaches_the_bound():
    # Fixed thresholds [0, 10]: every sample is in [0, 10), one block; positives first exactly.
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0], np.float32)
    labels = np.array([1, 1, 0, 0, 0])
    binned = jm.AUPR(thresholds=[0.0, 10.0]).update(scores, labels)
    value, bound = float(binned.compute()), float(binned.error_bound())
    exact = average_precision_score(labels, scores)  # 1: positives first
    assert exact == 1.0 and value == pytest.approx(0.4)
    assert exact - value == pytest.approx(bound, abs=1e-6)
    # negatives first, distinct scores: the other extreme, (1/2)(1/4 + 2/5)
    lowest = average_precision_score(labels, -scores)
    assert lowest == pytest.approx(0.325)
    below, above, _ = average_precision_spread(binned.threshold_counts())
    assert float(above) == pytest.approx(0.6) and float(below) == pytest.approx(0.4 - 0.325)

    f1max = jm.F1Max(thresholds=[0.0, 10.0]).update(scores, labels)
    exact_f1, _ = f1_max_reference(scores, labels)
    assert exact_f1 == pytest.approx(1.0)
    assert exact_f1 - float(f1max.compute()) == pytest.approx(float(f1max.error_bound()), abs=1e-6)


def test_tied_positives_exceed_positives_first_and_the_bound_still_holds_and_is_reached():
    # Above the bin: one negative. In the bin: two positives tied at 5.5 above a negative at 5.0.
    labels = np.array([0, 1, 1, 0])
    tied = np.array([9.0, 5.5, 5.5, 5.0], np.float32)
    distinct = np.array([9.0, 5.6, 5.5, 5.0], np.float32)  # positives first, no tie
    # scikit-learn scores the tie as one step, (2/2)(2/3), above positives first (1/2)(1/2 + 2/3)
    assert average_precision_score(labels, tied) == pytest.approx(2 / 3)
    assert average_precision_score(labels, distinct) == pytest.approx(7 / 12)
    binned = jm.AUPR(thresholds=[5.0, 6.0]).update(tied, labels)
    value, bound = float(binned.compute()), float(binned.error_bound())
    assert value == pytest.approx(0.5)
    assert average_precision_score(labels, tied) - value == pytest.approx(bound, abs=1e-6)


def test_negatives_first_reaches_the_lower_side():
    # Above: a positive; in the bin: two negatives first, then two positives, all distinct.
    scores = np.array([9.0, 5.9, 5.8, 5.7, 5.6], np.float32)
    labels = np.array([1, 0, 0, 1, 1])
    binned = jm.AUPR(thresholds=[5.0, 6.0]).update(scores, labels)
    below, above, _ = average_precision_spread(binned.threshold_counts())
    exact = average_precision_score(labels, scores)
    assert float(binned.compute()) - exact == pytest.approx(float(below), abs=1e-7)
    assert float(below) > 0 and float(above) > float(below)


def test_exact_mode_bounds_are_zero():
    scores, labels = make_case("smooth", 1, 500)
    for metric in (jm.AUPR(), jm.F1Max(), jm.AUROC(), jm.F1Max(capacity=600)):
        metric = metric.update(scores, labels)
        assert float(metric.error_bound()) == 0.0
    for metric in (jm.F1Max(), jm.F1AdaptiveThreshold()):
        assert float(metric.update(scores, labels).threshold_bound()) == 0.0


# -- readers through the state's protocol --------------------------------------------------------


def test_auroc_bound_from_threshold_counts_equals_the_per_bin_formula():
    for kind in KINDS:
        scores, labels = make_case(kind, 3, 20_000)
        for bins in (64, 16384, np.linspace(-2, 4, 50)):
            metric = jm.AUROC(thresholds=bins)
            if isinstance(bins, int):  # bins alone, without the exact tails: one block per bin
                metric = metric._replace(state=jm.ScoreHistogram.auto(bins, 2))
            metric = metric.update(scores, labels)
            negatives, positives = metric.state.counts.as_float64()
            expected = 0.5 * np.sum(positives * negatives) / (positives.sum() * negatives.sum())
            assert float(metric.error_bound()) == np.float32(expected)
            jitted = float(jit_error_bound(metric))
            assert jitted == pytest.approx(expected, rel=1e-6)


def poisoned(metric):
    update = jax.jit(lambda m, s, y: m.update(s, y))
    return update(metric, jnp.array([0.1, jnp.nan, 0.7]), jnp.array([0, 1, 1]))


@pytest.mark.parametrize(
    ("metric", "reader"),
    [
        (jm.AUPR(thresholds=16), "error_bound"),
        (jm.F1Max(thresholds=16), "error_bound"),
        (jm.F1Max(thresholds=16), "threshold_bound"),
        (jm.F1AdaptiveThreshold(thresholds=16), "threshold_bound"),
        (jm.AUROC(thresholds=16), "error_bound"),
    ],
    ids=lambda x: getattr(x, "name", x),
)
def test_bound_readers_of_a_poisoned_state_are_nan_in_jit_and_raise_eagerly(metric, reader):
    bad = poisoned(metric)
    assert np.isnan(
        float({"error_bound": jit_error_bound, "threshold_bound": jit_threshold_bound}[reader](bad))
    )
    with pytest.raises(ValueError, match="invalid samples"):
        getattr(bad, reader)()


def test_no_positive_gives_nan_aupr_bound_and_zero_f1_bound():
    scores = np.linspace(0, 1, 50, dtype=np.float32)
    labels = np.zeros(50, np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(float(jm.AUPR(thresholds=16).update(scores, labels).error_bound()))
        f1max = jm.F1Max(thresholds=16).update(scores, labels)
        assert float(f1max.compute()) == 0.0 and float(f1max.error_bound()) < 1e-12
        assert np.isnan(float(f1max.threshold_bound()))


# -- the closed forms ------------------------------------------------------------------------------


def test_harmonic_numbers_and_spreads_match_direct_sums_on_host_and_in_jax():
    counts = [0, 1, 2, 5, 63, 64, 65, 100, 1000, 12345, 10**6]
    extras = [0, 1, 2, 7, 63, 64, 65, 66, 1000, 10**5]
    n = np.array(counts, np.float64)
    direct = [math.fsum(1.0 / i for i in range(1, c + 1)) for c in counts]
    np.testing.assert_allclose(harmonic_number(n), direct, rtol=0, atol=4e-15)
    np.testing.assert_allclose(harmonic_number(jnp.asarray(n, jnp.float32)), direct, rtol=2e-7)
    b, p = (np.array(v, np.float64) for v in zip(*[(b, p) for b in counts for p in extras]))
    exact = np.array(
        [
            math.fsum((pp - i) / ((bb + i) * (bb + pp)) for i in range(1, int(pp) + 1))
            for bb, pp in zip(b, p)
        ]
    )
    host, _ = _spread(b, p)
    traced, _ = jax.jit(_spread)(jnp.asarray(b, jnp.float32), jnp.asarray(p, jnp.float32))
    # what matters is the error scaled as in the AP bound: (b - a)/P · E <= b/p · E
    scale = np.maximum(b, 1) / np.maximum(p, 1)
    assert np.max(np.abs(host - exact) * scale) < 1e-15
    assert np.max(np.abs(np.asarray(traced, np.float64) - exact) * scale) < 4 * 2.0**-24


def test_pairwise_sum_matches_numpy():
    values = np.random.default_rng(0).random(1000).astype(np.float32)
    assert float(pairwise_sum(jnp.asarray(values))) == pytest.approx(float(values.sum()), rel=1e-6)
    assert float(pairwise_sum(jnp.zeros(0))) == 0.0


def test_spread_on_counts_is_nan_free_without_negatives():
    counts = counts_from_cumulative(np.array([1.0, 0.0]), np.array([3.0, 5.0]), np.zeros(2))
    below, above, truncation = average_precision_spread(counts)
    assert (float(below), float(above), float(truncation)) == (0.0, 0.0, 0.0)
