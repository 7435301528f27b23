"""PGn and PBn against an independent numpy transcription of anomalib's definition (np.quantile)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmetrics_ad as jm
from jaxmetrics_ad.presorting import linear_quantile


def reference(scores, labels, rate, kind):
    """(value, threshold, band): anomalib's PGn/PBn with np.quantile in float64.

    ``band`` bounds how far float32 rounding (torch's arithmetic, which ours follows) may move the
    threshold away from the float64 one: a counted score that close to it is an ambiguous tie.
    """
    positives = scores[labels == 1].astype(np.float64)
    negatives = scores[labels == 0].astype(np.float64)
    if kind == "PG":
        reference_scores, counted, level = positives, negatives, rate
    else:
        reference_scores, counted, level = negatives, positives, 1.0 - rate
    threshold = float(np.quantile(reference_scores, level))
    spread = float(np.ptp(reference_scores))
    band = 2.0**-22 * ((reference_scores.size + 2) * spread + 4 * abs(threshold))
    return counted, threshold, band


def count(counted, threshold, kind):
    return int(np.sum(counted < threshold if kind == "PG" else counted > threshold))


def random_case(rng, size):
    decimals = int(rng.integers(0, 4))  # few decimals: many ties
    scores = np.round(rng.normal(size=size) * 10.0 ** rng.integers(-2, 3), decimals)
    labels = (rng.random(size) < rng.uniform(0.05, 0.95)).astype(np.int32)
    labels[:2] = [0, 1]
    if rng.random() < 0.2:  # a single sample of one class
        labels[:] = rng.integers(0, 2)
        labels[rng.integers(size)] = 1 - labels[0]
    return scores.astype(np.float32), labels


RATES = [0.0, 1.0, 0.05, 0.1, 0.5]


@pytest.mark.parametrize(("metric_type", "kind"), [(jm.PGn, "PG"), (jm.PBn, "PB")])
def test_exact_mode_equals_numpy_quantile_definition_on_random_tied_cases(metric_type, kind):
    rng = np.random.default_rng(11)
    bracketed = 0
    cases = 300
    for case in range(cases):
        size = int(rng.choice([2, 3, 7, 40, 150]))
        scores, labels = random_case(rng, size)
        rate = RATES[case % len(RATES)] if case % 6 else float(rng.random())
        metric = metric_type(rate).update(scores, labels)
        counted, threshold, band = reference(scores, labels, rate, kind)
        ours = float(metric.threshold())
        assert abs(ours - threshold) <= band, (case, ours, threshold)
        value = float(metric.compute())
        hits = round(value * counted.size)
        assert value == pytest.approx(hits / counted.size, abs=1e-6)
        low, high = count(counted, threshold - band, kind), count(counted, threshold + band, kind)
        if low == high or ours == threshold:  # no float32 tie to break: equal exactly
            assert hits == count(counted, threshold, kind), (case, rate, scores, labels)
        else:
            bracketed += 1
            assert min(low, high) <= hits <= max(low, high)
    assert bracketed <= cases // 20


def test_hand_computed_values_at_the_rate_extremes_and_with_one_positive():
    scores = [0.1, 0.3, 0.5, 0.7, 0.2, 0.4, 0.6]
    labels = [0, 0, 0, 0, 1, 1, 1]
    # fnr=0: threshold = lowest positive 0.2 -> negatives strictly below: 0.1
    assert float(jm.PGn(0.0)(scores, labels)) == pytest.approx(1 / 4)
    # fnr=1: threshold = highest positive 0.6 -> 0.1, 0.3, 0.5
    assert float(jm.PGn(1.0)(scores, labels)) == pytest.approx(3 / 4)
    # fpr=0: threshold = highest negative 0.7 -> no positive above
    assert float(jm.PBn(0.0)(scores, labels)) == 0.0
    # fpr=1: threshold = lowest negative 0.1 -> every positive above
    assert float(jm.PBn(1.0)(scores, labels)) == 1.0
    # a single positive is its own quantile, for every fnr; a tie is not "strictly below"
    for fnr in (0.0, 0.3, 1.0):
        assert float(jm.PGn(fnr)([0.1, 0.5, 0.9, 0.5], [0, 0, 0, 1])) == pytest.approx(1 / 3)


def test_linear_quantile_interpolates_like_numpy():
    rng = np.random.default_rng(5)
    for _ in range(200):
        values = np.sort(rng.normal(size=int(rng.integers(1, 30))).astype(np.float32))
        q = float(rng.random())
        expected = np.quantile(values.astype(np.float64), q)
        assert float(linear_quantile(values, q)) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(("metric_type", "kind"), [(jm.PGn, "PG"), (jm.PBn, "PB")])
@pytest.mark.parametrize("thresholds", [16, 2048, (-1.0, -0.5, 0.0, 0.3, 1.0)])
def test_binned_error_never_exceeds_its_bound(metric_type, kind, thresholds):
    rng = np.random.default_rng(hash((kind, str(thresholds))) % 2**32)
    for case in range(40):
        scores, labels = random_case(rng, 128)
        rate = (0.0, 0.05, 0.5, 1.0)[case % 4]
        exact = float(metric_type(rate)(scores, labels))
        binned = metric_type(rate, thresholds=thresholds).update(scores, labels)
        error = abs(float(binned.compute()) - exact)
        assert error <= float(binned.error_bound()) + 1e-6, (case, rate)


@pytest.mark.parametrize("metric_type", [jm.PGn, jm.PBn])
def test_binned_with_default_bins_is_close_to_exact_on_continuous_scores(metric_type):
    rng = np.random.default_rng(2)
    labels = (rng.random(4000) < 0.3).astype(np.int32)
    scores = ((rng.normal(size=4000) + 1.5 * labels) * 40 + 100).astype(np.float32)
    exact = float(metric_type()(scores, labels))
    binned = metric_type(thresholds=jm.DEFAULT_NUM_BINS).update(scores, labels)
    bound = float(binned.error_bound())
    assert abs(float(binned.compute()) - exact) <= bound <= 0.005
    assert float(metric_type().update(scores, labels).error_bound()) == 0.0
    assert float(binned.threshold()) == pytest.approx(
        float(metric_type().update(scores, labels).threshold()), abs=0.1
    )


@pytest.mark.parametrize("metric_type", [jm.PGn, jm.PBn])
@pytest.mark.parametrize("thresholds", [None, 512])
def test_merge_and_sequential_updates_equal_one_update(metric_type, thresholds):
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 2, 300)
    scores = (rng.normal(size=300) + labels).astype(np.float32)
    scores[150:] *= 30  # widens the range: auto bins re-bin
    empty = metric_type(0.1, thresholds=thresholds)
    whole = float(empty.update(scores, labels).compute())
    merged = empty.update(scores[:150], labels[:150]).merge(
        empty.update(scores[150:], labels[150:])
    )
    sequential = empty.update(scores[:150], labels[:150]).update(scores[150:], labels[150:])
    assert float(merged.compute()) == whole
    assert float(sequential.compute()) == whole


def test_exact_mode_with_capacity_runs_inside_jit_and_scan():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, (4, 25))
    scores = (rng.normal(size=(4, 25)) + labels).astype(np.float32)
    expected = float(jm.PGn()(scores, labels))

    @jax.jit
    def evaluate(scores, labels):
        def step(metric, batch):
            return metric.update(*batch), None

        metric, _ = jax.lax.scan(step, jm.PGn(capacity=100), (scores, labels))
        return metric.compute(), metric.threshold()

    value, threshold = evaluate(scores, labels)
    assert float(value) == expected
    assert float(threshold) == float(jm.PGn().update(scores, labels).threshold())


@pytest.mark.parametrize("thresholds", [None, 64])
@pytest.mark.parametrize(
    ("metric_type", "labels", "missing"),
    [
        (jm.PGn, [1, 1, 1], "negative"),
        (jm.PGn, [0, 0, 0], "positive"),
        (jm.PBn, [1, 1, 1], "negative"),
        (jm.PBn, [0, 0, 0], "positive"),
    ],
)
def test_one_class_raises_eagerly_and_is_nan_under_jit(metric_type, labels, missing, thresholds):
    scores = jnp.array([0.2, 0.5, 0.9])
    capacity = 8 if thresholds is None else None  # capacity is for exact mode only
    metric = metric_type(prefix="image_", thresholds=thresholds, capacity=capacity)
    updated = metric.update(scores, jnp.array(labels))
    with pytest.raises(ValueError, match=rf"image_P[GB]5: no {missing}"):
        updated.compute()
    with pytest.raises(ValueError, match=rf"no {missing}"):
        updated.threshold()
    jitted = jax.jit(lambda m, s, y: m.update(s, y).compute())(metric, scores, jnp.array(labels))
    assert np.isnan(float(jitted))


def test_exact_overflow_inside_jit_gives_nan():
    metric = jm.PGn(capacity=2)
    value = jax.jit(lambda m: m.update(jnp.array([0.1, 0.2, 0.9]), jnp.array([0, 0, 1])).compute())(
        metric
    )
    assert np.isnan(float(value))


def test_names_follow_anomalib_and_prefixes():
    assert jm.PGn().name == "PG5"
    assert jm.PBn().name == "PB5"
    assert jm.PGn(0.1, prefix="image_").name == "image_PG10"
    assert jm.PBn(fpr=0.0).name == "PB0"
    assert jm.PGn(fnr=1).name == "PG100"
    assert jm.PGn().fields == ("pred_score", "gt_label")


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), float("inf"), "0.05", None, True])
def test_rates_outside_unit_interval_or_not_numbers_raise_naming_the_argument(bad):
    with pytest.raises(ValueError, match="fnr"):
        jm.PGn(bad)
    with pytest.raises(ValueError, match="fpr"):
        jm.PBn(fpr=bad)


def test_evaluator_reports_them_under_their_names_inside_jit():
    evaluator = jm.Evaluator(
        [
            jm.PGn(thresholds=256, prefix="image_"),
            jm.PBn(thresholds=256, prefix="image_"),
            jm.AUROC(thresholds=256, prefix="image_"),
        ]
    )
    batch = {
        "pred_score": jnp.array([0.1, 0.2, 0.3, 0.8, 0.9]),
        "gt_label": jnp.array([0, 0, 0, 1, 1]),
    }
    evaluator = jax.jit(lambda e, b: e.update(b))(evaluator, batch)
    results = {name: float(value) for name, value in evaluator.compute().items()}
    assert results == {"image_PG5": 1.0, "image_PB5": 1.0, "image_AUROC": 1.0}


def test_different_rates_do_not_merge():
    with pytest.raises(ValueError, match="cannot merge"):
        jm.PGn(0.05).merge(jm.PGn(0.1))
