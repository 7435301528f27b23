"""Binned F1Max / F1AdaptiveThreshold at given thresholds follow anomalib's rule.

The reference below is a direct transcription of the rule (every given threshold is a candidate,
``score >= t`` is positive, F1 = 2PR / (P + R + 1e-10), the lowest threshold wins ties; no positive:
the highest threshold, no negative: the lowest), written independently of our histogram readers.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

import jaxmetrics_ad as jm
from jaxmetrics_ad.evaluator import _share_plan


def rule(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """(F1 maximum, threshold) by anomalib's rule, one candidate at a time."""
    positive = labels == 1
    best, best_threshold = -1.0, float("nan")
    for threshold in thresholds:  # ascending: the first maximum is the lowest threshold
        predicted = scores >= threshold
        tp, fp = np.sum(predicted & positive), np.sum(predicted & ~positive)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / positive.sum() if positive.any() else 0.0
        f1 = 2 * precision * recall / (precision + recall + 1e-10)
        if f1 > best:
            best, best_threshold = f1, float(threshold)
    if not positive.any():
        best_threshold = float(thresholds[-1])
    elif positive.all():
        best_threshold = float(thresholds[0])
    return best, best_threshold


@pytest.mark.parametrize("seed", range(40))
def test_given_thresholds_pick_anomalibs_threshold_and_f1(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 60))
    scores = rng.random(size).astype(np.float32)
    labels = (rng.random(size) < rng.random()).astype(np.int32)
    grid = np.linspace(0, 1, 21, dtype=np.float32)
    thresholds = np.sort(rng.choice(grid, int(rng.integers(3, 12)), replace=False))
    expected_f1, expected_threshold = rule(scores, labels, thresholds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one class: warned, tested elsewhere
        threshold = jm.F1AdaptiveThreshold(thresholds=thresholds)(scores, labels)
        f1max = jm.F1Max(thresholds=thresholds).update(scores, labels)
    assert float(threshold) == expected_threshold
    if labels.any() and not labels.all():
        assert float(f1max.threshold()) == expected_threshold
        assert float(f1max.compute()) == pytest.approx(expected_f1, abs=1e-6)


def test_an_empty_bin_ties_with_the_bin_above_and_the_lower_threshold_wins():
    # scores 0.6 and 0.9 positive, 0.1 negative: thresholds 0.5 and 0.75 hold the same counts
    thresholds = np.array([0, 0.25, 0.5, 0.75, 1.0], np.float32)
    scores, labels = np.array([0.1, 0.6, 0.9]), np.array([0, 1, 1])
    assert rule(scores, labels, thresholds)[1] == 0.25
    assert float(jm.F1AdaptiveThreshold(thresholds=thresholds)(scores, labels)) == 0.25


def test_given_thresholds_work_inside_jit():
    thresholds = np.linspace(0, 1, 10, dtype=np.float32)
    scores = np.array([0.05, 0.4, 0.35, 0.8, 0.9], np.float32)
    labels = np.array([0, 0, 1, 1, 1])
    step = jax.jit(lambda m, s, y: m.update(s, y).compute())
    expected = rule(scores, labels, thresholds)[1]
    assert float(step(jm.F1AdaptiveThreshold(thresholds=thresholds), scores, labels)) == expected


def test_presorting_rates_share_one_state_in_an_evaluator_apart_from_aurocs_tailed_one():
    metrics = (
        jm.AUROC(1024),
        jm.PGn(thresholds=1024),
        jm.PBn(fpr=0.1, thresholds=1024, prefix="image_"),
        jm.PGn(fnr=0.2, thresholds=1024, prefix="strict_"),
    )
    assert _share_plan(metrics) == (0, 1, 1, 1)  # AUROC's bins carry exact tails, PGn's do not
    rng = np.random.default_rng(3)
    batch = {"pred_score": rng.random(64), "gt_label": np.arange(64) % 2}
    results = jm.Evaluator(list(metrics)).update(batch).compute()
    for metric in metrics:
        assert float(results[metric.name]) == float(metric.update_from(batch).compute())


def test_default_evaluator_is_anomalibs_set_and_names_its_fields():
    evaluator = jm.Evaluator.default()
    metrics = evaluator.metrics()
    assert list(metrics) == ["image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score"]
    assert [m.fields for m in metrics.values()] == [
        ("pred_score", "gt_label"),
        ("pred_label", "gt_label"),
        ("anomaly_map", "gt_mask"),
        ("pred_mask", "gt_mask"),
    ]
    assert [m.strict for m in metrics.values()] == [True, True, False, False]
    for field in ("pred_score", "pred_label", "gt_label", "anomaly_map", "pred_mask", "gt_mask"):
        assert field in jm.Evaluator.default.__doc__
