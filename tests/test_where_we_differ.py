"""Each difference from anomalib listed in the README's "Where we differ" section, asserted.

anomalib's side of each difference is stated from its documented semantics
(../shared/reference/anomalib_semantics.md) and re-derived here by hand where it is a number.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import jaxmetrics_ad as jm

README = (Path(__file__).parent.parent / "README.md").read_text()


def differences() -> list[str]:
    section = README.split("## Where we differ from anomalib, on purpose", 1)[1].split("\n## ", 1)[
        0
    ]
    return [line for line in section.splitlines() if line.startswith("- **")]


def test_the_readme_lists_each_difference_tested_here():
    assert len(differences()) == 8


def test_no_sigmoid_the_area_does_not_depend_on_the_score_scale():
    scores, labels = np.array([17.0, 18.0, 2.0, 30.0]), np.array([0, 1, 0, 1])
    assert float(jm.AUROC()(scores, labels)) == roc_auc_score(labels, scores) == 1.0


def test_one_class_auroc_is_nan_with_a_warning():
    with pytest.warns(UserWarning, match="no positive"):
        assert np.isnan(float(jm.AUROC()([0.1, 0.2], [0, 0])))


def test_bad_input_raises_naming_the_field():
    with pytest.raises(ValueError, match="pred_score"):
        jm.AUROC()([0.1, float("nan")], [0, 1])


def test_aupimo_image_classes_are_one_for_anomalous_images():
    masks = np.zeros((2, 8, 8), bool)
    masks[1, 2:5, 2:5] = True
    maps = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32) + masks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, result = jm.AUPIMO(return_average=False, fpr_bounds=(0.1, 1.0), force=True)(maps, masks)
    assert np.asarray(result.image_classes).tolist() == [0, 1]


def test_int_thresholds_cover_scores_outside_zero_one():
    # linspace(0, 1, T) candidates would see every score above 1 as tied
    scores, labels = np.array([10.0, 20.0, 30.0, 40.0]), np.array([0, 0, 1, 1])
    assert float(jm.AUROC(thresholds=64)(scores, labels)) == 1.0
    threshold = float(jm.F1AdaptiveThreshold(thresholds=64)(scores, labels))
    assert 20.0 < threshold <= 30.0


def test_values_jax_would_change_are_refused():
    with pytest.raises(ValueError, match="int32"):
        jm.AUROC()(np.array([1, 2**40]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"2\*\*24"):
        jm.AUROC()(np.array([1, 2**25]), np.array([0, 1]))


def test_a_loose_binned_value_warns_with_its_bound():
    scores = np.round(np.linspace(0, 1, 2000) * 3).astype(np.float32)  # 4 tied levels
    labels = np.arange(2000) % 2
    with pytest.warns(UserWarning, match="certified bound"):
        jm.AUROC(thresholds=128).update(scores, labels).compute()


def test_a_sample_is_positive_at_or_above_the_threshold_everywhere():
    scores, labels = [0.1, 0.5, 0.9, 0.1], [0, 1, 1, 1]
    threshold = float(jm.F1AdaptiveThreshold()(scores, labels))
    assert threshold == np.float32(0.1)
    # anomalib's F1Score (score > t) gives 0.8 here; with >= it reproduces F1Max
    assert float(jm.F1Score(threshold=threshold)(scores, labels)) == pytest.approx(
        float(jm.F1Max()(scores, labels))
    )
    maps = np.array([[[0.5, 0.2], [0.5, 0.0]]], np.float32)
    masks = np.array([[[1, 0], [1, 0]]])
    assert float(jm.PRO(threshold=0.5)(maps, masks)) == 1.0  # anomalib's PRO (>): 0.0
