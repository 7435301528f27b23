"""Padded images (valid=False) are left out exactly, so a ragged last batch needs no new compile."""

from __future__ import annotations

import warnings

import chex
import jax
import numpy as np
import pytest

import jaxmetrics_ad as jm
from jaxmetrics_ad import evaluator as evaluator_module
from jaxmetrics_ad.synthetic import make_category

CATEGORY = make_category(num_normal=10, num_anomalous=20, size=(24, 24), seed=3)
PIXEL, IMAGE = ("anomaly_map", "gt_mask"), ("pred_score", "gt_label")


def metrics() -> list[jm.Metric]:
    return [
        jm.AUROC(256, fields=PIXEL, prefix="pixel_"),
        jm.AUPR(256, fields=PIXEL, prefix="pixel_"),
        jm.F1Max(capacity=30 * 24 * 24, fields=PIXEL, prefix="exact_"),
        jm.AUROC(capacity=30, fields=IMAGE, prefix="image_"),
        jm.PGn(thresholds=256),
        jm.F1Score(fields=("pred_score", "gt_label")),
        jm.AUPRO(thresholds=256),
        jm.AUPRO(capacity=30 * 24 * 24, prefix="exact_"),
        jm.PRO(),
        jm.MinMax(fields=("pred_score",)),
        jm.AnomalyScoreDistribution(map_shape=(24, 24)),
        jm.ManualThreshold(),
        jm.AUPIMO(thresholds=512, capacity=40, fpr_bounds=(1e-2, 1e-1), force=True),
        jm.AUPIMO(
            thresholds=512,
            capacity=40,
            fpr_bounds=(1e-2, 1e-1),
            force=True,
            return_average=False,
            prefix="per_image_",
        ),
        jm.PIMO(thresholds=512, capacity=40, prefix="binned_"),
        jm.AUPIMO(fpr_bounds=(1e-2, 1e-1), force=True, prefix="exact_"),
    ]


def inputs_of(metric: jm.Metric, rows: slice) -> list[np.ndarray]:
    batch = {
        "anomaly_map": CATEGORY.anomaly_maps[rows],
        "gt_mask": CATEGORY.gt_masks[rows],
        "pred_score": CATEGORY.pred_scores[rows],
        "gt_label": CATEGORY.gt_labels[rows],
    }
    return [batch[field] for field in metric.fields]


def junk_like(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Valid values (so eager checks pass) that would change every metric if they were counted."""
    if array.dtype == bool:
        return rng.random(array.shape) < 0.5
    if np.issubdtype(array.dtype, np.integer):
        return rng.integers(0, 2, array.shape).astype(array.dtype)
    return (rng.random(array.shape) * 3 + 0.01).astype(array.dtype)


def leaves(value) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree.leaves(value)]


@pytest.mark.parametrize("metric", metrics(), ids=lambda m: m.name)
def test_padded_images_are_left_out_exactly(metric):
    rng = np.random.default_rng(0)
    clean = inputs_of(metric, slice(0, 30))
    padded = [np.concatenate([a, junk_like(a[:5], rng)]) for a in clean]
    valid = np.arange(35) < 30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = metric.update(*clean).compute()
        eager = metric.update(*padded, valid=valid).compute()
        if metric.name == "exact_AUPIMO":  # exact AUPIMO keeps host data: eager only
            jitted = eager
        else:
            jitted = jax.jit(lambda m, a, v: m.update(*a, valid=v))(metric, padded, valid).compute()
    # equal up to float32 summation order (the moments add zeros for padded images)
    for want, got_eager, got_jitted in zip(leaves(expected), leaves(eager), leaves(jitted)):
        np.testing.assert_allclose(got_eager, want, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got_jitted, want, rtol=1e-6, atol=1e-7)


def test_valid_must_be_one_bool_per_image():
    with pytest.raises(ValueError, match=r"valid: expected a bool array of shape \(3,\)"):
        jm.AUROC().update([0.1, 0.9, 0.4], [0, 1, 0], valid=[1, 1, 0])
    with pytest.raises(ValueError, match=r"valid: expected a bool array of shape \(3,\)"):
        jm.AUROC().update([0.1, 0.9, 0.4], [0, 1, 0], valid=[True, False])


def test_a_metric_that_cannot_leave_images_out_says_so():
    wrapped = jm.wrap_metric(
        jm.MetricFunctions(
            init=lambda: 0.0,
            update=lambda state, values: state + values.sum(),
            merge=lambda a, b: a + b,
            compute=lambda state: state,
        ),
        fields=("pred_score",),
        name="Total",
    )
    with pytest.raises(TypeError, match=r"Total: this metric cannot leave out images"):
        wrapped.update(np.ones(3), valid=np.array([True, True, False]))


def run_in_batches(evaluator: jm.Evaluator, size: int) -> jm.Evaluator:
    for start in range(0, 30, size):
        rows = slice(start, start + size)
        evaluator = evaluator.update(
            {
                "anomaly_map": CATEGORY.anomaly_maps[rows],
                "gt_mask": CATEGORY.gt_masks[rows],
                "pred_score": CATEGORY.pred_scores[rows],
                "gt_label": CATEGORY.gt_labels[rows],
            }
        )
    return evaluator


def test_an_eager_evaluator_compiles_one_step_for_every_batch_and_the_ragged_last():
    chosen = [m for m in metrics() if m.name not in ("AnomalyScoreDistribution", "exact_AUPIMO")]
    evaluator = jm.Evaluator(chosen)
    jax.clear_caches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = run_in_batches(evaluator, 8).compute()  # 8, 8, 8 and a ragged 6
        assert evaluator_module._jitted_stage_update._cache_size() == 1
        for metric in chosen:
            whole = metric.update(*inputs_of(metric, slice(0, 30))).compute()
            for want, got in zip(leaves(whole), leaves(results[metric.name])):
                np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_user_jitted_step_over_padded_batches_traces_once():
    evaluator = jm.Evaluator([jm.AUROC(256, fields=PIXEL), jm.AUPRO(thresholds=256)])
    step = jax.jit(chex.assert_max_traces(lambda e, b, v: e.update(b, valid=v), n=1))
    for start in range(0, 30, 8):
        rows = slice(start, start + 8)
        batch = {"anomaly_map": CATEGORY.anomaly_maps[rows], "gt_mask": CATEGORY.gt_masks[rows]}
        evaluator = step(evaluator, *jm.pad_batch(batch, 8))
    whole = jm.AUROC(256, fields=PIXEL).update(CATEGORY.anomaly_maps, CATEGORY.gt_masks)
    assert float(evaluator.compute()["AUROC"]) == float(whole.compute())


def test_pad_batch_rejects_batches_that_do_not_fit():
    with pytest.raises(ValueError, match=r"gt_label: expected 3 images like the other fields"):
        jm.pad_batch({"pred_score": np.zeros(3), "gt_label": np.zeros(2)}, 4)
    with pytest.raises(ValueError, match=r"5 images do not fit in a batch of 4"):
        jm.pad_batch({"pred_score": np.zeros(5)}, 4)
