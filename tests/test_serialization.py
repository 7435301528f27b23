"""Metric and Evaluator states survive flax.serialization: a stopped evaluation resumes, nothing lost."""

from __future__ import annotations

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

import jaxmetrics_ad as jm
from jaxmetrics_ad.counts import WideCount
from jaxmetrics_ad.synthetic import make_category

HALVES = (slice(0, 6), slice(6, None))
SIZE = (24, 24)


@pytest.fixture(scope="module")
def category():
    return make_category(num_normal=5, num_anomalous=7, size=SIZE, seed=5)


def batch(category, rows) -> dict[str, np.ndarray]:
    return {
        "pred_score": category.pred_scores[rows],
        "gt_label": category.gt_labels[rows],
        "anomaly_map": category.anomaly_maps[rows],
        "gt_mask": category.gt_masks[rows],
        "pred_label": (category.pred_scores[rows] > 0.5).astype(np.int32),
    }


def make_evaluator(thresholds, capacity=None) -> jm.Evaluator:
    image, pixel = ("pred_score", "gt_label"), ("anomaly_map", "gt_mask")
    return jm.Evaluator(
        val_metrics=[jm.F1AdaptiveThreshold(thresholds, capacity=capacity, fields=image)],
        test_metrics=[
            jm.AUROC(thresholds, capacity=capacity, fields=image, prefix="image_"),
            jm.AUROC(thresholds, capacity=capacity, fields=pixel, prefix="pixel_"),
            jm.F1Score(fields=("pred_label", "gt_label"), prefix="image_"),
            jm.MinMax(fields=("anomaly_map",)),
            jm.AnomalyScoreDistribution(map_shape=SIZE),
        ],
    )


def assert_same_leaves(first, second) -> None:
    first_leaves, second_leaves = jax.tree.leaves(first), jax.tree.leaves(second)
    assert len(first_leaves) == len(second_leaves)
    for a, b in zip(first_leaves, second_leaves):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def run_halves(evaluator: jm.Evaluator, category, stop_after_first) -> jm.Evaluator:
    first, second = (batch(category, rows) for rows in HALVES)
    evaluator = evaluator.update(first, stage="test").update(first, stage="val")
    evaluator = stop_after_first(evaluator)
    return evaluator.update(second, stage="test").update(second, stage="val")


def through_bytes(template: jm.Evaluator):
    return lambda evaluator: flax.serialization.from_bytes(
        template, flax.serialization.to_bytes(evaluator)
    )


@pytest.mark.parametrize(
    "thresholds, capacity",
    [(512, None), (None, 12 * 24 * 24), (None, None)],
    ids=["binned", "exact_fixed_capacity", "exact_chunked"],
)
def test_an_evaluation_stopped_after_half_resumes_from_bytes_with_nothing_lost(
    category, thresholds, capacity
):
    uninterrupted = run_halves(make_evaluator(thresholds, capacity), category, lambda e: e)
    resumed = run_halves(
        make_evaluator(thresholds, capacity),
        category,
        through_bytes(make_evaluator(thresholds, capacity)),
    )
    expected, results = uninterrupted.compute("test"), resumed.compute("test")
    for name, value in expected.items():
        chex.assert_trees_all_equal(results[name], value)
    if capacity is not None or thresholds is not None:  # fixed shapes: the very same state
        assert_same_leaves(resumed, uninterrupted)
    pixel = roc_auc_score(category.gt_masks.ravel(), category.anomaly_maps.ravel())
    tolerance = 1e-6 if thresholds is None else 1e-3
    np.testing.assert_allclose(float(results["pixel_AUROC"]), pixel, atol=tolerance)
    image = roc_auc_score(category.gt_labels, category.pred_scores)
    np.testing.assert_allclose(float(results["image_AUROC"]), image, atol=tolerance)
    f1 = f1_score(category.gt_labels, category.pred_scores > 0.5)
    np.testing.assert_allclose(float(results["image_F1Score"]), f1, atol=1e-6)
    np.testing.assert_allclose(float(results["MinMax"][1]), category.anomaly_maps.max())
    log_scores = np.log(category.pred_scores.astype(np.float64))
    np.testing.assert_allclose(
        float(results["AnomalyScoreDistribution"][1]), log_scores.std(ddof=1), rtol=1e-5
    )


def test_a_growing_exact_buffer_is_saved_as_one_chunk_and_restores_into_a_fresh_metric():
    scores, labels = np.array([0.1, 0.8, 0.4, 0.35, 0.9]), np.array([0, 1, 0, 1, 1])
    metric = jm.AUROC().update(scores[:2], labels[:2]).update(scores[2:4], labels[2:4])
    assert len(metric.state.chunks) == 2
    restored = flax.serialization.from_bytes(jm.AUROC(), flax.serialization.to_bytes(metric))
    assert len(restored.state.chunks) == 1 and int(restored.num_updates) == 2
    resumed = restored.update(scores[4:], labels[4:])
    np.testing.assert_allclose(float(resumed.compute()), roc_auc_score(labels, scores))
    empty = flax.serialization.from_bytes(jm.AUROC(), flax.serialization.to_bytes(jm.AUROC()))
    assert empty.state.chunks == () and int(empty.num_updates) == 0


def test_two_word_counts_past_two_to_the_32_round_trip_exactly():
    metric = jm.F1Score().update(jnp.array([1, 0, 1]), jnp.array([1, 1, 0]))
    big = WideCount(
        lo=jnp.array([7, 3, 2**32 - 1], jnp.uint32), hi=jnp.array([5, 0, 2], jnp.uint32)
    )
    leaves, treedef = jax.tree.flatten(metric)
    counter_at = [i for i, leaf in enumerate(leaves) if leaf.dtype == jnp.uint32]
    leaves[counter_at[0]], leaves[counter_at[1]] = big.lo, big.hi
    metric = jax.tree.unflatten(treedef, leaves)
    restored = flax.serialization.from_bytes(jm.F1Score(), flax.serialization.to_bytes(metric))
    assert restored.state.as_int() == (5 << 32) + 7 + 3 + (2 << 32) + 2**32 - 1
    true_pos, false_pos, false_neg = 5 * 2**32 + 7, 3, 3 * 2**32 - 1
    expected = 2 * true_pos / (2 * true_pos + false_pos + false_neg)
    np.testing.assert_allclose(float(restored.compute()), expected, rtol=1e-6)


def test_a_restored_state_continues_under_jit_without_a_retrace(category):
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(evaluator, batch):
        return evaluator.update(batch, stage="test")

    first, second = (batch(category, rows) for rows in HALVES)
    evaluator = step(make_evaluator(512), first)
    restored = flax.serialization.from_state_dict(
        make_evaluator(512), flax.serialization.to_state_dict(evaluator)
    )
    step(restored, second)  # raises if the restored dtypes or shapes differ


def test_the_state_dict_is_keyed_by_stage_and_metric_name_and_checked_on_restore():
    evaluator = make_evaluator(64)
    state = flax.serialization.to_state_dict(evaluator)
    assert list(state) == ["val", "test", "sharing"]
    assert state["sharing"]["test"]["pixel_AUROC"] == "pixel_AUROC"  # keeps its own state
    assert state["test"]["image_AUROC"]["config"]["thresholds"] == "64"
    assert list(state["test"]) == [
        "image_AUROC",
        "pixel_AUROC",
        "image_F1Score",
        "MinMax",
        "AnomalyScoreDistribution",
    ]
    other = jm.Evaluator(test_metrics=[jm.AUROC(64, prefix="image_")])
    with pytest.raises(ValueError, match="same metrics"):
        flax.serialization.from_state_dict(other, state)
