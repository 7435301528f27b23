"""One test per row of docs/input_validation.md: each class of bad input, eagerly and inside jit."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmetrics_ad as jm

TABLE = Path(__file__).parent.parent / "docs" / "input_validation.md"
SCORES, LABELS = jnp.array([0.1, 0.9, 0.4, 0.6]), jnp.array([0, 1, 0, 1])
jitted_update = jax.jit(lambda metric, *arrays: metric.update(*arrays))
jitted_compute = jax.jit(lambda metric: metric.compute())


def row_shape_mismatch():
    for update in (jm.AUROC().update, lambda *a: jitted_update(jm.AUROC(thresholds=8), *a)):
        with pytest.raises(
            ValueError, match=r"pred_score has shape \(4,\) but gt_label has shape \(3,\)"
        ):
            update(SCORES, LABELS[:3])


def row_wrong_rank():
    maps = jnp.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="anomaly_map"):
        jm.AUPRO(thresholds=8).update(maps[0, 0], jnp.zeros(4, bool))
    singleton = jm.AUPRO(thresholds=8).update(maps[:, None], jnp.ones((2, 1, 4, 4), bool))
    assert int(singleton.num_updates) == 1


def row_non_numeric():
    for bad in (None, np.array(["a", "b", "c", "d"]), np.array([1j, 2j, 3j, 4j])):
        with pytest.raises(TypeError, match="pred_score"):
            jm.AUROC().update(bad, LABELS)


def row_nan_scores():
    with pytest.raises(ValueError, match=r"pred_score: 1 of 4 values are NaN or inf"):
        jm.AUROC().update(SCORES.at[0].set(jnp.nan), LABELS)
    poisoned = jitted_update(jm.AUROC(thresholds=8), SCORES.at[0].set(jnp.inf), LABELS)
    assert np.isnan(float(jitted_compute(poisoned)))
    with pytest.raises(ValueError, match=r"1 invalid samples"):
        poisoned.compute()


def row_non_binary_labels():
    with pytest.raises(ValueError, match=r"gt_label: labels must be 0/1 or boolean.*e\.g\. 2"):
        jm.AUROC().update(SCORES, LABELS.at[0].set(2))
    poisoned = jitted_update(jm.AUROC(thresholds=8), SCORES, LABELS.at[0].set(-1))
    assert np.isnan(float(jitted_compute(poisoned)))


def row_pillow_bools():
    raw = np.array([0, 255, 0, 255], np.uint8).view(bool)
    assert float(jitted_compute(jitted_update(jm.AUROC(thresholds=8), SCORES, raw))) == 1.0
    assert float(jm.AUROC()(SCORES, raw)) == 1.0


def row_wide_integers():
    with pytest.raises(ValueError, match=r"gt_label: integer values must fit in int32"):
        jm.AUROC().update(SCORES, np.array([0, 1, 0, 2**32 + 1]))
    with pytest.raises(ValueError, match=r"pred_score: values must fit in float32"):
        jm.AUROC().update(np.array([0.1, 1e300, 0.2, 0.3]), LABELS)


def row_huge_integer_scores():
    with pytest.raises(ValueError, match=r"pred_score: integer scores beyond ±2\*\*24"):
        jm.AUROC().update(np.array([0, 2**25, 1, 2**25 + 1]), LABELS)


def row_subnormal_scores():
    tiny = np.array([1e-40, 4e-40, 2e-40, 3e-40], np.float32)
    assert float(jitted_compute(jm.AUROC().update(tiny, LABELS))) == 1.0


def row_no_data():
    with pytest.raises(ValueError, match=r"AUROC has no data"):
        jm.AUROC().compute()
    assert jm.AUROC(strict=False).compute() is None
    assert np.isnan(float(jitted_compute(jm.AUROC(thresholds=8))))


def row_one_class():
    with pytest.warns(UserWarning, match=r"AUROC: no positive sample"):
        assert np.isnan(float(jm.AUROC()(SCORES, jnp.zeros(4, jnp.int32))))
    only_negatives = jitted_update(jm.AUROC(thresholds=8), SCORES, jnp.zeros(4, jnp.int32))
    assert np.isnan(float(jitted_compute(only_negatives)))


def row_buffer_overflow():
    with pytest.raises(ValueError, match=r"capacity=3"):
        jm.AUROC(capacity=3).update(SCORES, LABELS)
    overflowed = jitted_update(jm.F1AdaptiveThreshold(capacity=3), SCORES, LABELS)
    assert np.isnan(float(jitted_compute(overflowed)))


def row_loose_bound():
    scores = jnp.round(jnp.linspace(0, 1, 1000) * 3)  # 4 tied levels: every bin is a tie block
    labels = (jnp.arange(1000) % 2).astype(jnp.int32)
    with pytest.warns(UserWarning, match=r"certified bound"):
        jm.AUROC(thresholds=64).update(scores, labels).compute()


def row_bad_configuration():
    with pytest.raises(ValueError, match=r"capacity=10 applies to exact mode"):
        jm.AUROC(1024, capacity=10)
    with pytest.raises(ValueError, match=r"threshold: expected a finite float"):
        jm.F1Score(threshold=float("nan"))
    with pytest.raises(ValueError, match=r"fnr"):
        jm.PGn(fnr=1.5)


def row_restore_mismatch():
    saved = flax.serialization.to_bytes(jm.AUROC(thresholds=[0.5, 0.6, 0.7]).update(SCORES, LABELS))
    with pytest.raises(ValueError, match=r"thresholds"):
        flax.serialization.from_bytes(jm.AUROC(thresholds=[0.1, 0.2, 0.3]), saved)


def row_missing_field():
    evaluator = jm.Evaluator([jm.AUROC()])
    with pytest.raises(ValueError, match=r"no field 'gt_label'.*pred_score"):
        evaluator.update({"pred_score": SCORES, "label": LABELS})


def row_invalid_count_saturates():
    metric = jm.AUROC(thresholds=8)._replace(num_invalid=jnp.int32(2**31 - 2))
    metric = jitted_update(metric, jnp.full(4, jnp.nan), LABELS)
    assert int(metric.num_invalid) == 2**31 - 1
    with pytest.raises(ValueError, match=r"at least 2147483647"):
        metric.compute()


ROWS = {
    name[4:].replace("_", "-"): f for name, f in dict(globals()).items() if name.startswith("row_")
}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_input_class(row):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning) if row not in (
            "one-class",
            "loose-bound",
        ) else None
        ROWS[row]()


def test_the_documented_table_and_the_tests_list_the_same_rows():
    documented = re.findall(r"^\| `([a-z0-9-]+)` \|", TABLE.read_text(), flags=re.MULTILINE)
    assert sorted(documented) == sorted(ROWS)


def test_clean_bool_array_is_byte_not_zero_and_copies_only_unclean_bools():
    from jaxmetrics_ad.validation import clean_bool_array

    rng = np.random.default_rng(0)
    for bad_bytes in (0, 1, 17):
        raw = rng.integers(0, 2, size=(3, 50)).astype(np.uint8)
        raw.ravel()[rng.choice(raw.size, bad_bytes, replace=False)] = 255
        values = raw.view(bool)
        cleaned = clean_bool_array(values)
        np.testing.assert_array_equal(cleaned.view(np.uint8), (raw != 0).astype(np.uint8))
        assert (cleaned is values) == (bad_bytes == 0)
