"""A saved state restores only into a metric (or Evaluator) it fits; otherwise a ValueError says why."""

from __future__ import annotations

import flax.serialization
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import jaxmetrics_ad as jm

SCORES = np.array([0.1, 0.8, 0.4, 0.35, 0.9, 0.65], np.float32)
LABELS = np.array([0, 1, 0, 1, 1, 0])


def through_bytes(template, saved):
    return flax.serialization.from_bytes(template, flax.serialization.to_bytes(saved))


def legacy_state(metric) -> dict:
    """The state dict as versions without a saved configuration wrote it."""
    state = flax.serialization.to_state_dict(metric)
    del state["config"]
    return state


# -- metrics -----------------------------------------------------------------------------------


def test_fixed_thresholds_restored_into_other_thresholds_raise_naming_both():
    saved = jm.F1AdaptiveThreshold(thresholds=np.array([0.5, 0.6, 0.7])).update(SCORES, LABELS)
    other = jm.F1AdaptiveThreshold(thresholds=np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"thresholds: saved \(0\.5, 0\.6.*this metric \(0\.1"):
        through_bytes(other, saved)
    same = through_bytes(jm.F1AdaptiveThreshold(thresholds=np.array([0.5, 0.6, 0.7])), saved)
    assert float(same.compute()) == float(saved.compute())


def test_a_state_of_another_bin_count_raises_instead_of_loading():
    saved = jm.AUROC(thresholds=1024).update(SCORES, LABELS)
    with pytest.raises(ValueError, match="thresholds: saved 1024, this metric 512"):
        through_bytes(jm.AUROC(thresholds=512), saved)


def test_binned_into_exact_and_back_raise_a_value_error_naming_the_mode():
    binned = jm.AUROC(thresholds=64).update(SCORES, LABELS)
    with pytest.raises(ValueError, match="thresholds: saved 64, this metric None"):
        through_bytes(jm.AUROC(), binned)
    exact = jm.AUROC().update(SCORES, LABELS)
    with pytest.raises(ValueError, match="thresholds: saved None, this metric 64"):
        through_bytes(jm.AUROC(thresholds=64), exact)
    with pytest.raises(ValueError, match="capacity: saved None, this metric 8"):
        through_bytes(jm.AUROC(capacity=8), exact)


def test_a_state_of_another_class_or_fields_raises():
    saved = jm.AUROC(thresholds=64).update(SCORES, LABELS)
    with pytest.raises(ValueError, match="class: saved AUROC, this metric AUPR"):
        through_bytes(jm.AUPR(thresholds=64), saved)
    pixel = jm.AUROC(thresholds=64, fields=("anomaly_map", "gt_mask"))
    with pytest.raises(ValueError, match=r"fields: saved \('pred_score', 'gt_label'\)"):
        through_bytes(pixel, saved)


def test_long_threshold_lists_are_summarised_in_the_error():
    saved = jm.F1Max(thresholds=np.linspace(0, 1, 100)).update(SCORES, LABELS)
    with pytest.raises(ValueError, match=r"saved <100 values: 0\.0, .*this metric <101 values"):
        through_bytes(jm.F1Max(thresholds=np.linspace(0, 1, 101)), saved)
    moved = np.linspace(0, 1, 100)
    moved[7] = 0.075
    with pytest.raises(ValueError, match=r"saved <100 values, \[7\]=0\.0707.*\[7\]=0\.075"):
        through_bytes(jm.F1Max(thresholds=moved), saved)


def test_a_different_prefix_is_only_a_name_and_restores():
    saved = jm.AUROC(thresholds=256, prefix="image_").update(SCORES, LABELS)
    restored = through_bytes(jm.AUROC(thresholds=256, prefix="val_image_"), saved)
    assert restored.name == "val_image_AUROC"
    assert float(restored.compute()) == float(saved.compute())


def test_the_saved_configuration_is_a_small_dict_of_strings():
    state = flax.serialization.to_state_dict(jm.AUROC(thresholds=64, prefix="image_"))
    assert state["config"] == {
        "class": "AUROC",
        "fields": '["pred_score", "gt_label"]',
        "prefix": '"image_"',
        "strict": "true",
        "thresholds": "64",
        "capacity": "null",
    }


def test_states_saved_without_a_configuration_are_checked_by_shape_and_layout():
    with pytest.raises(ValueError, match=r"state/counts/lo: saved shape \(2, 1024\), this metric"):
        flax.serialization.from_state_dict(
            jm.AUROC(thresholds=512), legacy_state(jm.AUROC(thresholds=1024))
        )
    with pytest.raises(ValueError, match="laid out differently"):  # was a bare KeyError
        flax.serialization.from_state_dict(jm.AUROC(), legacy_state(jm.AUROC(thresholds=64)))
    metric = jm.AUROC(thresholds=64).update(SCORES, LABELS)
    restored = flax.serialization.from_state_dict(jm.AUROC(thresholds=64), legacy_state(metric))
    assert float(restored.compute()) == float(metric.compute())


def test_a_saved_array_of_another_dtype_is_named():
    state = flax.serialization.to_state_dict(jm.AUROC(thresholds=64).update(SCORES, LABELS))
    state["num_updates"] = np.float32(1.0)
    with pytest.raises(ValueError, match="num_updates: saved dtype float32, this metric int32"):
        flax.serialization.from_state_dict(jm.AUROC(thresholds=64), state)


def test_a_growing_exact_buffer_restores_whatever_its_sample_count():
    saved = jm.AUROC().update(SCORES[:4], LABELS[:4])
    restored = through_bytes(jm.AUROC().update(SCORES[:1], LABELS[:1]), saved)
    resumed = restored.update(SCORES[4:], LABELS[4:])
    np.testing.assert_allclose(float(resumed.compute()), roc_auc_score(LABELS, SCORES))


def test_a_map_statistic_without_map_shape_adopts_the_saved_map_size():
    maps = np.random.default_rng(0).uniform(0.5, 2.0, (4, 3, 5)).astype(np.float32)
    saved = jm.AnomalyScoreDistribution().update(SCORES[:2] + 1, maps[:2])
    restored = through_bytes(jm.AnomalyScoreDistribution(), saved)
    resumed = restored.update(SCORES[2:4] + 1, maps[2:])
    np.testing.assert_allclose(resumed.compute()[2], np.log(maps).mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"map_shape: saved None, this metric \(3, 5\)"):
        through_bytes(jm.AnomalyScoreDistribution(map_shape=(3, 5)), saved)


# -- evaluators ----------------------------------------------------------------------------------

BATCH = {"pred_score": SCORES[:3], "gt_label": LABELS[:3]}
MORE = {"pred_score": SCORES[3:], "gt_label": LABELS[3:]}


def sharing_evaluator() -> jm.Evaluator:
    """AUPR reuses AUROC's state (same fields and bins)."""
    return jm.Evaluator([jm.AUROC(64), jm.AUPR(64)])


def independent_evaluator() -> jm.Evaluator:
    """The same metrics, but AUROC already holds data: AUPR keeps its own state."""
    return jm.Evaluator([jm.AUROC(64).update(MORE["pred_score"], MORE["gt_label"]), jm.AUPR(64)])


def test_the_two_evaluators_share_differently():
    assert sharing_evaluator()._plan[0] == (0, 0)
    assert independent_evaluator()._plan[0] == (0, 1)


def test_restoring_a_state_that_shared_differently_raises():
    with pytest.raises(
        ValueError, match="AUPR shares AUROC's state in this evaluator, keeps its own"
    ):
        through_bytes(sharing_evaluator(), independent_evaluator())
    with pytest.raises(
        ValueError, match="AUPR keeps its own state in this evaluator, shares AUROC"
    ):
        through_bytes(independent_evaluator(), sharing_evaluator().update(BATCH))


def test_an_evaluator_restored_with_the_same_sharing_resumes():
    saved = sharing_evaluator().update(BATCH)
    resumed = through_bytes(sharing_evaluator(), saved).update(MORE)
    expected = sharing_evaluator().update(BATCH).update(MORE).compute()
    for name, value in expected.items():
        assert float(resumed.compute()[name]) == float(value)


def test_a_state_saved_without_the_sharing_must_agree_with_it():
    saved = flax.serialization.to_state_dict(independent_evaluator())
    del saved["sharing"]
    with pytest.raises(
        ValueError, match="AUPR shares the state of AUROC here, but the saved states"
    ):
        flax.serialization.from_state_dict(sharing_evaluator(), saved)
    consistent = flax.serialization.to_state_dict(sharing_evaluator().update(BATCH))
    del consistent["sharing"]
    restored = flax.serialization.from_state_dict(sharing_evaluator(), consistent)
    assert int(restored.metrics()["AUPR"].num_updates) == 1


def test_merging_evaluators_that_share_differently_raises():
    with pytest.raises(ValueError, match="shares metric states differently"):
        sharing_evaluator().update(BATCH).merge(independent_evaluator())
    with pytest.raises(ValueError, match="AUPR keeps its own state in this evaluator"):
        independent_evaluator().merge(sharing_evaluator().update(BATCH))
    merged = sharing_evaluator().update(BATCH).merge(sharing_evaluator().update(MORE))
    np.testing.assert_allclose(
        float(merged.compute()["AUROC"]),
        float(jm.AUROC(64).update(SCORES, LABELS).compute()),
    )
    assert jnp.isfinite(merged.compute()["AUPR"])
