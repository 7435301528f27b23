"""Inputs a hostile or unlucky user gives: each must give the right number or a clear error.

Expected values come from scikit-learn (or from the same metric on clean inputs), never from our
own output on the input under test.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

import jaxmetrics_ad as jm
from jaxmetrics_ad.base import _INT32_MAX, _saturating_add
from jaxmetrics_ad.histogram import METRIC_TAIL_SIZE

PILLOW_BOOL = np.array([0, 255, 255, 0, 255, 0], np.uint8).view(bool)  # True stored as 0xFF
SCORES = np.array([0.1, 0.8, 0.4, 0.35, 0.9, 0.2], np.float32)
CLEAN = PILLOW_BOOL.view(np.uint8) != 0


def jitted_update(metric: jm.Metric, *arrays) -> jm.Metric:
    return jax.jit(lambda m, *a: m.update(*a))(metric, *arrays)


# -- bools stored as 0xFF (Pillow's 1-bit PNG masks) ---------------------------------------------


@pytest.mark.parametrize(
    "metric",
    [
        jm.AUROC(thresholds=64),
        jm.AUPR(thresholds=64),
        jm.F1Max(thresholds=64),
        jm.AUROC(capacity=8),
    ],
    ids=lambda m: f"{m.name}-{'exact' if m.is_exact else 'binned'}",
)
def test_pillow_bool_labels_inside_jit_count_as_positives(metric):
    got = jitted_update(metric, SCORES, PILLOW_BOOL)
    assert int(got.num_invalid) == 0
    assert float(got.compute()) == float(metric.update(SCORES, CLEAN).compute())


def test_pillow_bool_labels_eagerly_match_scikit_learn():
    assert float(jm.AUROC()(SCORES, PILLOW_BOOL)) == pytest.approx(roc_auc_score(CLEAN, SCORES))
    assert float(jm.AUPR()(SCORES, PILLOW_BOOL)) == pytest.approx(
        average_precision_score(CLEAN, SCORES)
    )


def test_pillow_bool_predictions_inside_jit_give_the_clean_f1():
    f1 = jitted_update(jm.F1Score(), PILLOW_BOOL, CLEAN.astype(np.int32))
    assert float(f1.compute()) == 1.0


def test_binned_pr_curve_reads_pillow_bools():
    p, r, _ = jm.binned_pr_curve(SCORES, PILLOW_BOOL, jnp.array([0.3]))
    assert p.tolist() == pytest.approx([3 / 4]) and r.tolist() == [1.0]


# -- values changed by a silent cast (x64 off) ---------------------------------------------------


def test_int64_scores_beyond_int32_are_rejected_not_truncated():
    with pytest.raises(ValueError, match=r"pred_score: integer values must fit in int32"):
        jm.AUROC()(np.array([1, 2**40, 3]), np.array([0, 1, 0]))


def test_integer_scores_too_large_for_float32_are_rejected():
    with pytest.raises(ValueError, match=r"pred_score: integer scores beyond ±2\*\*24"):
        jm.AUROC()(np.array([1, 2**30, 2**30 + 1]), np.array([0, 1, 0]))


def test_integer_scores_within_float32_are_exact():
    scores = np.array([1, 2**24, 2**24 - 1, 7])
    labels = np.array([0, 1, 0, 1])
    assert float(jm.AUROC()(scores, labels)) == roc_auc_score(labels, scores)


def test_label_two_to_the_32_plus_one_is_rejected_not_read_as_one():
    with pytest.raises(ValueError, match=r"gt_label: integer values must fit in int32"):
        jm.AUROC()(np.array([0.1, 0.9]), np.array([0, 2**32 + 1]))


def test_float64_scores_beyond_float32_are_rejected_not_made_inf():
    with pytest.raises(ValueError, match=r"pred_score: values must fit in float32"):
        jm.AUROC()(np.array([0.1, 1e39]), np.array([0, 1]))


@pytest.mark.parametrize("value", [np.array([1 + 2j, 3j]), np.array(["a", "b"])])
def test_complex_and_string_inputs_are_type_errors(value):
    with pytest.raises(TypeError, match=r"pred_score: expected a real numeric or boolean array"):
        jm.AUROC().update(value, np.array([0, 1]))


# -- poisoned states: every reader is NaN inside jit and raises eagerly --------------------------


def poisoned(metric: jm.Metric) -> jm.Metric:
    return jitted_update(metric, jnp.array([0.1, jnp.nan, 0.7]), jnp.array([0, 1, 1]))


READERS = {
    "curve": lambda m: m.curve(),
    "error_bound": lambda m: m.error_bound(),
    "threshold": lambda m: m.threshold(),
    "threshold_counts": lambda m: m.threshold_counts(),
}
READERS_OF = [
    (jm.AUROC(thresholds=16), "curve"),
    (jm.AUROC(thresholds=16), "error_bound"),
    (jm.AUROC(thresholds=16), "threshold_counts"),
    (jm.AUPR(thresholds=16), "curve"),
    (jm.F1Max(thresholds=16), "threshold"),
    (jm.F1Max(capacity=4), "threshold"),
]


@pytest.mark.parametrize(("metric", "reader"), READERS_OF, ids=lambda x: getattr(x, "name", x))
def test_every_reader_of_a_poisoned_state_is_nan_inside_jit(metric, reader):
    values = jax.jit(READERS[reader])(poisoned(metric))
    leaves = [np.asarray(v) for v in jax.tree.leaves(values)]
    assert leaves and all(np.isnan(v).all() for v in leaves if np.issubdtype(v.dtype, np.floating))


@pytest.mark.parametrize(("metric", "reader"), READERS_OF, ids=lambda x: getattr(x, "name", x))
def test_every_reader_of_a_poisoned_state_raises_eagerly(metric, reader):
    with pytest.raises(ValueError, match=r"1 invalid samples"):
        READERS[reader](poisoned(metric))


def test_readers_of_an_empty_metric_say_it_has_no_data():
    with pytest.raises(ValueError, match=r"AUROC has no data"):
        jm.AUROC(thresholds=16).curve()


# -- fallbacks must not hide an undefined value --------------------------------------------------


def test_overflowed_f1_adaptive_threshold_inside_jit_is_nan_not_a_fallback():
    metric = jitted_update(
        jm.F1AdaptiveThreshold(capacity=2), jnp.array([0.1, 0.9, 0.5]), jnp.array([0, 1, 1])
    )
    assert np.isnan(float(jax.jit(lambda m: m.compute())(metric)))


def test_f1_adaptive_threshold_falls_back_only_for_a_missing_class():
    scores = jnp.array([0.3, 0.7, 0.5])
    only_negatives = jm.F1AdaptiveThreshold(capacity=4).update(scores, jnp.zeros(3, jnp.int32))
    only_positives = jm.F1AdaptiveThreshold(capacity=4).update(scores, jnp.ones(3, jnp.int32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert float(jax.jit(lambda m: m.compute())(only_negatives)) == pytest.approx(0.7)
        assert float(jax.jit(lambda m: m.compute())(only_positives)) == pytest.approx(0.3)


# -- num_invalid cannot wrap --------------------------------------------------------------------


def test_invalid_sample_count_saturates_instead_of_wrapping():
    near = jnp.int32(_INT32_MAX - 5)
    assert int(_saturating_add(near, jnp.int32(100))) == _INT32_MAX
    assert int(_saturating_add(jnp.int32(_INT32_MAX), jnp.int32(_INT32_MAX))) == _INT32_MAX
    metric = jm.AUROC(thresholds=8)
    metric = metric._replace(num_invalid=near)
    metric = jitted_update(metric, jnp.full(10, jnp.nan), jnp.zeros(10, jnp.int32))
    merged = metric.merge(metric)
    assert int(merged.num_invalid) == _INT32_MAX
    assert np.isnan(float(jax.jit(lambda m: m.compute())(merged)))
    with pytest.raises(ValueError, match=r"at least 2147483647 invalid samples"):
        merged.compute()


# -- a loose certified bound warns -------------------------------------------------------------


def one_hot_pixel_case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.random(20_000) < 0.3
    scores = np.where(labels, rng.random(20_000) * 1.3, rng.random(20_000) * 1.0)
    scores[0] = 1e9
    return scores.astype(np.float32), labels


def test_one_far_outlier_is_kept_exactly_and_leaves_the_binned_auroc_tight():
    scores, labels = one_hot_pixel_case()
    metric = jm.AUROC(thresholds=1024).update(scores, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = float(metric.compute())
    assert abs(value - roc_auc_score(labels, scores)) <= float(metric.error_bound()) < 1e-3


def test_more_far_outliers_than_the_tails_hold_make_the_binned_auroc_warn_with_its_bound():
    scores, labels = one_hot_pixel_case()
    scores[: METRIC_TAIL_SIZE + 1] = 1e9  # tied: they cannot enter a tail, they widen the bins
    metric = jm.AUROC(thresholds=1024).update(scores, labels)
    with pytest.warns(UserWarning, match=r"AUROC: the binned value may be off by up to"):
        value = float(metric.compute())
    assert abs(value - roc_auc_score(labels, scores)) <= float(metric.error_bound())


def test_a_tight_binned_auroc_does_not_warn():
    scores, labels = one_hot_pixel_case()
    scores[0] = 0.5
    metric = jm.AUROC(thresholds=16384).update(scores, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.compute()


# -- configuration errors name the argument ------------------------------------------------------


def test_numpy_ints_are_accepted_as_bin_counts_and_capacities():
    assert jm.AUROC(np.int64(1024)).thresholds == 1024
    assert jm.AUROC(capacity=np.int32(10)).capacity == 10


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"thresholds": 1024, "capacity": 10}, ValueError, r"capacity=10 applies to exact mode"),
        ({"capacity": 0}, ValueError, r"capacity: expected a positive int"),
        ({"capacity": 2.5}, TypeError, r"capacity: expected a positive int"),
        ({"thresholds": 0.5}, TypeError, r"thresholds: .*single float"),
        ({"thresholds": 2}, ValueError, r"thresholds: expected at least 3 bins, got 2"),
        ({"thresholds": True}, TypeError, r"thresholds: .*bool"),
        ({"thresholds": [0.1, 0.1 + 1e-12]}, ValueError, r"distinct in float32"),
    ],
)
def test_bad_configuration_names_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        jm.AUROC(**kwargs)


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), "0.5"])
def test_f1_score_threshold_must_be_a_finite_number(threshold):
    with pytest.raises((ValueError, TypeError), match=r"threshold: expected a finite float"):
        jm.F1Score(threshold=threshold)


# -- subnormal scores are distinct in exact mode, inside jit too ---------------------------------

TINY = np.array([1e-40, 2e-40, 3e-40, 4e-40], np.float32)
TINY_LABELS = np.array([0, 0, 1, 1])


@pytest.mark.parametrize("metric_class", [jm.AUROC, jm.AUPR])
def test_subnormal_scores_are_not_tied_inside_jit(metric_class):
    reference = {jm.AUROC: roc_auc_score, jm.AUPR: average_precision_score}[metric_class]
    step = jax.jit(lambda m, s, y: m.update(s, y).compute())
    assert float(step(metric_class(capacity=4), TINY, TINY_LABELS)) == reference(TINY_LABELS, TINY)
    jitted_compute = jax.jit(lambda m: m.compute())(metric_class().update(TINY, TINY_LABELS))
    assert float(jitted_compute) == reference(TINY_LABELS, TINY)


def test_subnormal_threshold_is_returned_exactly_inside_jit():
    metric = jm.F1AdaptiveThreshold(capacity=4).update(TINY, TINY_LABELS)
    assert float(jax.jit(lambda m: m.compute())(metric)) == float(TINY[2])


# -- binned_pr_curve: a sibling of the silent drops ---------------------------------------------


def test_binned_pr_curve_raises_eagerly_on_invalid_samples():
    with pytest.raises(ValueError, match="scores"):
        jm.binned_pr_curve(jnp.array([0.1, jnp.nan]), jnp.array([0, 1]), jnp.array([0.5]))
    with pytest.raises(ValueError, match="labels"):
        jm.binned_pr_curve(jnp.array([0.1, 0.9]), jnp.array([0, 2]), jnp.array([0.5]))


def test_binned_pr_curve_rows_with_invalid_samples_are_nan_under_vmap():
    scores = jnp.array([[0.1, 0.9, 0.7], [0.1, jnp.nan, 0.7]])
    labels = jnp.array([[0, 1, 1], [0, 1, 1]])
    curve = jax.vmap(lambda s, y: jm.binned_pr_curve(s, y, jnp.array([0.5])))
    precision, recall, _ = curve(scores, labels)
    assert precision[0].tolist() == [1.0] and recall[0].tolist() == [1.0]
    assert np.isnan(precision[1]).all() and np.isnan(recall[1]).all()


# -- a new user's surprises ------------------------------------------------------------------------


def test_repr_counts_one_update_in_the_singular():
    text = repr(jm.AUROC().update([0.1, 0.9], [0, 1]))
    assert "# 1 update →" in text and "updates" not in text


def test_updating_a_stage_without_metrics_raises_instead_of_doing_nothing():
    evaluator = jm.Evaluator([jm.AUROC()])  # the val stage
    with pytest.raises(ValueError, match=r"stage='test' holds no metrics.*'val'"):
        evaluator.update({"pred_score": [0.1, 0.9], "gt_label": [0, 1]}, stage="test")
