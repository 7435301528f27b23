"""Score-curve metrics against scikit-learn, and the anomalib test vectors."""

from __future__ import annotations

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
)

import jaxmetrics_ad as jm


def sklearn_f1_max(labels, scores):
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / (precision + recall + 1e-10)
    best = np.argmax(f1[:-1])
    return f1[best], thresholds[best]


@st.composite
def scored_labels(draw, max_size=60):
    """Random scores (often tied) and labels with both classes present."""
    size = draw(st.integers(2, max_size))
    decimals = draw(st.integers(0, 3))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=size) * 10 ** draw(st.integers(-2, 3)), decimals)
    labels = rng.integers(0, 2, size)
    labels[:2] = [0, 1]
    return scores.astype(np.float32), labels


@settings(max_examples=60, deadline=None)
@given(scored_labels())
def test_exact_metrics_equal_sklearn_on_random_and_tied_scores(data):
    scores, labels = data
    assert float(jm.AUROC()(scores, labels)) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-6
    )
    assert float(jm.AUPR()(scores, labels)) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-6
    )
    f1, threshold = sklearn_f1_max(labels, scores)
    metric = jm.F1Max().update(scores, labels)
    assert float(metric.compute()) == pytest.approx(f1, abs=1e-6)
    assert float(metric.threshold()) == threshold
    assert float(jm.F1AdaptiveThreshold()(scores, labels)) == threshold


@settings(max_examples=40, deadline=None)
@given(scored_labels(max_size=200), st.integers(3, 200))
def test_binned_auroc_error_never_exceeds_its_bound(data, num_bins):
    scores, labels = data
    metric = jm.AUROC(thresholds=num_bins).update(scores, labels)
    error = abs(float(metric.compute()) - roc_auc_score(labels, scores))
    assert error <= float(metric.error_bound()) + 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binned_auroc_with_default_bins_is_within_1e_4_on_raw_score_ranges(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(300_000) < 0.1
    raw = np.where(labels, rng.normal(1.2, 1.0, labels.size), rng.normal(0.0, 1.0, labels.size))
    scores = (raw * 525 + 975).astype(np.float32)  # roughly [-50, 2000]
    exact = roc_auc_score(labels, scores)
    metric = jm.AUROC(thresholds=jm.DEFAULT_NUM_BINS).update(scores, labels)
    assert abs(float(metric.compute()) - exact) <= 1e-4
    assert float(metric.error_bound()) <= 1e-4


def test_binned_metrics_on_synthetic_anomaly_maps_are_close_to_exact():
    from jaxmetrics_ad.synthetic import make_category

    category = make_category(num_normal=10, num_anomalous=20, size=(64, 64), seed=3)
    maps, masks = category.anomaly_maps, category.gt_masks
    for metric_type in (jm.AUROC, jm.AUPR, jm.F1Max):
        exact = float(metric_type()(maps, masks))
        binned = float(metric_type(thresholds=jm.DEFAULT_NUM_BINS)(maps, masks))
        assert binned == pytest.approx(exact, abs=1e-4), metric_type.__name__


@pytest.mark.parametrize("metric_type", [jm.AUROC, jm.AUPR, jm.F1Max, jm.F1AdaptiveThreshold])
@pytest.mark.parametrize("thresholds", [None, 512, np.linspace(-3, 3, 41)])
def test_merge_of_two_updates_equals_one_update_on_both(metric_type, thresholds):
    rng = np.random.default_rng(7)
    scores = rng.normal(size=400).astype(np.float32)
    labels = rng.integers(0, 2, 400)
    scores[200:] *= 40  # the second half widens the range: auto bins must re-bin
    empty = metric_type(thresholds=thresholds)
    merged = empty.update(scores[:200], labels[:200]).merge(
        empty.update(scores[200:], labels[200:])
    )
    whole = empty.update(scores, labels)
    assert float(merged.compute()) == float(whole.compute())
    sequential = empty.update(scores[:200], labels[:200]).update(scores[200:], labels[200:])
    assert float(sequential.compute()) == float(whole.compute())


def test_fixed_thresholds_count_a_score_equal_to_a_threshold_as_positive():
    metric = jm.BinaryPrecisionRecallCurve(thresholds=[0.2, 0.5, 0.8])
    precision, recall, thresholds = metric([0.2, 0.5, 0.8, 0.1], [0, 1, 1, 0])
    np.testing.assert_allclose(thresholds, [0.2, 0.5, 0.8])
    np.testing.assert_allclose(recall, [1.0, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(precision, [2 / 3, 1.0, 1.0, 1.0])


def test_exact_precision_recall_curve_equals_sklearn():
    rng = np.random.default_rng(1)
    scores = np.round(rng.random(300), 2).astype(np.float32)
    labels = rng.integers(0, 2, 300)
    precision, recall, thresholds = jm.BinaryPrecisionRecallCurve()(scores, labels)
    ref_precision, ref_recall, ref_thresholds = precision_recall_curve(labels, scores)
    # sklearn stops at full recall; ours (torchmetrics' layout) keeps every distinct threshold
    start = len(thresholds) - len(ref_thresholds)
    np.testing.assert_allclose(thresholds[start:], ref_thresholds)
    np.testing.assert_allclose(precision[start:], ref_precision, atol=1e-6)
    np.testing.assert_allclose(recall[start:], ref_recall, atol=1e-6)


def test_binned_pr_curve_gives_one_curve_per_row_under_vmap():
    rng = np.random.default_rng(2)
    scores = rng.random((5, 100)).astype(np.float32)
    labels = rng.integers(0, 2, (5, 100))
    edges = np.linspace(0.05, 0.95, 10).astype(np.float32)
    precision, recall, thresholds = jax.vmap(lambda s, y: jm.binned_pr_curve(s, y, edges))(
        scores, labels
    )
    for row in range(5):
        predicted = scores[row][None, :] >= edges[:, None]
        tp = (predicted & (labels[row] == 1)).sum(1)
        np.testing.assert_allclose(recall[row], tp / labels[row].sum(), atol=1e-6)
        np.testing.assert_allclose(precision[row], tp / predicted.sum(1), atol=1e-6)
        np.testing.assert_allclose(thresholds[row], edges)


@pytest.mark.parametrize(
    ("preds", "target", "f1", "threshold"),
    [
        ([0.1, 0.5, 0.9, 1.0], [0, 1, 1, 1], 1.0, 0.5),
        ([0.1, 0.5, 0.9, 0.1], [0, 1, 1, 1], 0.8571, 0.1),
        ([-0.5, 0.0, 0.5, 1.0, 2.0], [0, 1, 1, 1, 1], 1.0, 0.0),
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.8, 0.35),
    ],
)
def test_f1max_reproduces_anomalib_vectors(preds, target, f1, threshold):
    metric = jm.F1Max().update(preds, target)
    assert float(metric.compute()) == pytest.approx(f1, abs=1e-4)
    assert float(metric.threshold()) == pytest.approx(threshold, abs=1e-7)


@pytest.mark.parametrize(
    ("preds", "target", "expected"),
    [
        ([2.3, 1.6, 2.6, 7.9, 3.3], [0, 0, 0, 1, 1], 3.3),
        ([4, 3, 2, 1], [1, 0, 0, 0], 4),
        ([4, 3, 2, 1], [1, 1, 1, 1], 1),
        ([4, 3, 2, 1], [0, 0, 0, 0], 4),
        ([0.5, 0.5, 0.7, 0.7], [0, 1, 0, 1], 0.5),
    ],
)
@pytest.mark.parametrize("thresholds", [None, 1024])
def test_f1_adaptive_threshold_reproduces_anomalib_vectors(preds, target, expected, thresholds):
    metric = jm.F1AdaptiveThreshold(thresholds=thresholds).update(
        np.asarray(preds, np.float32), target
    )
    # binned: the lower edge of the bin holding the exact threshold
    tolerance = 1e-6 if thresholds is None else 8 / thresholds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert expected - tolerance <= float(metric.compute()) <= expected + 1e-6


def test_scores_are_never_squashed_by_a_sigmoid_and_batches_do_not_matter():
    scores, labels = np.array([17.0, 18.0, 2.0, 30.0]), np.array([0, 1, 0, 1])
    # anomalib gives 0.75 here (its float32 sigmoid saturates above ~16.6); the true AUROC is 1.0
    assert float(jm.AUROC()(scores, labels)) == 1.0
    split = jm.AUROC().update(scores[:2], labels[:2]).update(scores[2:], labels[2:])
    assert float(split.compute()) == 1.0


def test_f1score_equals_sklearn_for_thresholded_scores_and_for_labels():
    rng = np.random.default_rng(4)
    scores = rng.random(500).astype(np.float32)
    labels = rng.integers(0, 2, 500)
    assert float(jm.F1Score()(scores, labels)) == pytest.approx(
        f1_score(labels, scores > 0.5), abs=1e-6
    )
    assert float(jm.F1Score(threshold=0.3)(scores, labels)) == pytest.approx(
        f1_score(labels, scores > 0.3), abs=1e-6
    )
    predicted = rng.integers(0, 2, 500)
    assert float(jm.F1Score()(predicted, labels)) == pytest.approx(
        f1_score(labels, predicted), abs=1e-6
    )
    assert float(jm.F1Score()([0, 0], [0, 0])) == 0.0


@pytest.mark.parametrize(
    "metric",
    [jm.AUROC(thresholds=256), jm.F1Max(thresholds=[0.2, 0.4, 0.6]), jm.AUPR(capacity=4096)],
    ids=["binned", "fixed-edges", "exact-capacity"],
)
def test_jitted_update_traces_once_over_many_batches(metric):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, scores, labels):
        return state.update(scores, labels)

    rng = np.random.default_rng(5)
    for _ in range(6):
        metric = step(metric, rng.random(64).astype(np.float32), rng.integers(0, 2, 64))
    assert np.isfinite(float(jax.jit(lambda m: m.compute())(metric)))
    chex.clear_trace_counter()


def test_binned_metric_runs_as_a_lax_scan_carry():
    rng = np.random.default_rng(6)
    scores = rng.normal(size=(8, 128)).astype(np.float32)
    labels = rng.integers(0, 2, (8, 128))

    def body(metric, batch):
        return metric.update(*batch), None

    scanned, _ = jax.lax.scan(body, jm.AUROC(thresholds=512), (scores, labels))
    direct = jm.AUROC(thresholds=512).update(scores.ravel(), labels.ravel())
    assert float(scanned.compute()) == float(direct.compute())


def test_empty_metric_has_the_shapes_and_dtypes_of_an_updated_one():
    for metric in (jm.AUROC(thresholds=64), jm.AUROC(capacity=8), jm.F1Score(), jm.MinMax()):
        args = (np.ones(4, np.float32), np.array([0, 1, 0, 1]))[: len(metric.fields)]
        updated = metric.update(*args)

        def layout(m):
            return [(a.shape, a.dtype) for a in jax.tree_util.tree_leaves(m)]

        assert layout(metric) == layout(updated)
        assert jax.tree_util.tree_structure(metric) == jax.tree_util.tree_structure(updated)


class TestBadInputs:
    def test_shape_mismatch_names_both_fields(self):
        with pytest.raises(ValueError, match=r"anomaly_map has shape .* gt_mask has shape"):
            jm.AUROC(fields=("anomaly_map", "gt_mask")).update(np.ones((2, 4)), np.ones((2, 5)))

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_non_finite_scores_raise_naming_the_field(self, bad):
        with pytest.raises(ValueError, match="pred_score: 1 of 3 values are NaN or inf"):
            jm.AUROC().update([0.1, bad, 0.3], [0, 1, 0])

    def test_labels_outside_zero_one_raise(self):
        with pytest.raises(ValueError, match="gt_label: labels must be 0/1"):
            jm.AUPR(thresholds=64).update([0.1, 0.2], [0, 2])

    def test_invalid_samples_inside_jit_make_the_value_nan_and_eager_compute_raise(self):
        metric = jax.jit(lambda m, s, y: m.update(s, y))(
            jm.AUROC(thresholds=64), jnp.array([0.1, jnp.nan, 0.9]), jnp.array([0, 1, 1])
        )
        assert np.isnan(float(jax.jit(lambda m: m.compute())(metric)))
        with pytest.raises(ValueError, match="1 invalid samples"):
            metric.compute()

    @pytest.mark.parametrize("thresholds", [None, 64])
    def test_one_class_gives_nan_with_a_warning(self, thresholds):
        with pytest.warns(UserWarning, match="no negative sample"):
            assert np.isnan(float(jm.AUROC(thresholds=thresholds)([0.1, 0.5], [1, 1])))
        with pytest.warns(UserWarning, match="no positive sample"):
            assert np.isnan(float(jm.AUPR(thresholds=thresholds)([0.1, 0.5], [0, 0])))

    def test_empty_state_raises_when_strict_and_is_none_otherwise(self):
        with pytest.raises(ValueError, match="AUROC has no data"):
            jm.AUROC(prefix="image_").compute()
        assert jm.AUROC(strict=False).compute() is None

    def test_fixed_capacity_overflow_raises_eagerly_and_gives_nan_in_jit(self):
        with pytest.raises(ValueError, match="exceed capacity=4"):
            jm.AUROC(capacity=4).update(np.ones(5), np.ones(5))
        step = jax.jit(lambda m, s, y: m.update(s, y))
        metric = step(
            step(jm.AUROC(capacity=4), jnp.ones(3), jnp.array([0, 1, 0])),
            jnp.ones(3),
            jnp.array([0, 1, 0]),
        )
        assert np.isnan(float(jax.jit(lambda m: m.compute())(metric)))
        with pytest.raises(ValueError, match="capacity=4"):
            metric.compute()

    def test_growing_exact_state_still_works_inside_a_single_jit(self):
        metric = jm.AUROC()
        jitted = jax.jit(lambda m, s, y: m.update(s, y).compute())
        assert float(jitted(metric, jnp.array([0.1, 0.9]), jnp.array([0, 1]))) == 1.0

    @pytest.mark.parametrize("thresholds", [0, 2, [0.5, 0.2], [[0.1]], [np.nan], True])
    def test_bad_thresholds_are_rejected(self, thresholds):
        with pytest.raises((ValueError, TypeError), match="thresholds"):
            jm.AUROC(thresholds=thresholds)

    def test_wrong_number_of_inputs_and_non_arrays(self):
        with pytest.raises(TypeError, match="takes 2 arrays"):
            jm.AUROC().update([0.1])
        with pytest.raises(TypeError, match="gt_label: expected an array, got None"):
            jm.AUROC().update([0.1], None)
        with pytest.raises(TypeError, match="pred_score: expected"):
            jm.AUROC().update(np.array(["a"]), [1])

    def test_merging_different_configurations_is_refused(self):
        with pytest.raises(ValueError, match="cannot merge"):
            jm.AUROC(thresholds=64).merge(jm.AUROC(thresholds=128))
