"""Eager input checks of padded batches (``update(..., valid=...)``): they see only the valid rows,
and a new count of valid rows (a ragged last batch) compiles no XLA program (issue 12)."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import jaxmetrics_ad as jm
from jaxmetrics_ad.base import valid_rows
from jaxmetrics_ad.numpy_updates import numpy_updates

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles: list[int] = []  # one listener for the session: jax cannot unregister it publicly


def _on_event(event: str, duration: float, **kwargs: object) -> None:
    if event == _COMPILE_EVENT and _compiles:
        _compiles[-1] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


@contextlib.contextmanager
def counting_compiles():
    """Counts XLA backend compiles in the block: ``with counting_compiles() as count: ...; count()``."""
    _compiles.append(0)
    seen: list[int] = []
    try:
        yield lambda: seen[0] if seen else _compiles[-1]
    finally:
        seen.append(_compiles.pop())


def _images(count: int, seed: int, size: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = rng.random((count, size, size), dtype=np.float32)
    masks = np.zeros((count, size, size), bool)
    masks[: max(1, count // 2), 8:20, 6:18] = True
    return {"anomaly_map": maps, "gt_mask": masks}


def _evaluator() -> jm.Evaluator:
    return jm.Evaluator(
        [
            jm.AUROC(thresholds=256, fields=("anomaly_map", "gt_mask")),
            jm.AUPRO(thresholds=256),
        ]
    )


def _evaluate(sizes: tuple[int, ...], seed: int, batch_size: int = 8) -> dict[str, float]:
    evaluator = _evaluator()
    for index, count in enumerate(sizes):
        padded, valid = jm.pad_batch(_images(count, seed + index), batch_size)
        evaluator = evaluator.update(padded, valid=valid)
    jax.block_until_ready(jax.tree_util.tree_leaves(evaluator))
    return {name: float(value) for name, value in evaluator.compute().items()}


def test_second_ragged_size_compiles_nothing_once_warm():
    _evaluate((8, 8, 5), seed=0)  # warm: the padded update programs are compiled here
    with counting_compiles() as compiles:
        _evaluate((8, 8, 3), seed=10)  # another count of valid rows in the last batch
    assert compiles() == 0


def test_a_ragged_last_batch_the_evaluator_pads_itself_compiles_nothing_once_warm():
    def run(sizes, seed):
        evaluator = _evaluator()
        for index, count in enumerate(sizes):
            evaluator = evaluator.update(_images(count, seed + index))
        return {name: float(value) for name, value in evaluator.compute().items()}

    run((8, 8, 5), seed=0)
    with counting_compiles() as compiles:
        run((8, 8, 3), seed=10)
    assert compiles() == 0


def test_metric_update_with_new_valid_counts_compiles_nothing_once_warm():
    metric = jm.AUROC(thresholds=64, fields=("anomaly_map", "gt_mask"))
    padded, valid = jm.pad_batch(_images(5, seed=1), 8)
    metric.update(padded["anomaly_map"], padded["gt_mask"], valid=valid)
    with counting_compiles() as compiles:
        for count in (1, 2, 3, 4, 6, 7):
            padded, valid = jm.pad_batch(_images(count, seed=count), 8)
            metric = metric.update(padded["anomaly_map"], padded["gt_mask"], valid=valid)
    assert compiles() == 0


def test_valid_rows_compile_nothing_and_keep_full_batches_as_given():
    maps = jnp.asarray(np.arange(24, dtype=np.float32).reshape(4, 2, 3))
    masks = jnp.asarray(np.arange(24).reshape(4, 2, 3) % 2 == 0)
    all_valid = jnp.ones(4, bool)
    assert all(a is b for a, b in zip(valid_rows((maps, masks), all_valid), (maps, masks)))
    assert all(a is b for a, b in zip(valid_rows((maps, masks), None), (maps, masks)))
    for count in (1, 2, 3):
        valid = jnp.asarray(np.arange(4) < count)
        with counting_compiles() as compiles:
            rows = valid_rows((maps, masks), valid)
        assert compiles() == 0
        np.testing.assert_array_equal(np.asarray(rows[0]), np.asarray(maps)[:count])
        np.testing.assert_array_equal(np.asarray(rows[1]), np.asarray(masks)[:count])
        assert rows[1].dtype == jnp.bool_


def test_checks_raise_on_a_bad_score_in_a_valid_row():
    images = _images(3, seed=2, size=4)
    images["anomaly_map"][1, 2, 3] = np.nan
    padded, valid = jm.pad_batch(images, 8)
    metric = jm.AUROC(thresholds=16, fields=("anomaly_map", "gt_mask"))
    # the message counts the valid rows' values only (3 images of 16 pixels), as before
    with pytest.raises(ValueError, match=r"^anomaly_map: 1 of 48 values are NaN or inf"):
        metric.update(padded["anomaly_map"], padded["gt_mask"], valid=valid)
    with pytest.raises(ValueError, match=r"^anomaly_map: 1 of 48 values are NaN or inf"):
        _evaluator().update(padded, valid=valid)


def test_checks_raise_on_a_bad_label_in_a_valid_row():
    images = _images(3, seed=3, size=4)
    masks = images["gt_mask"].astype(np.int32)
    masks[2, 0, 0] = 2
    padded, valid = jm.pad_batch({"anomaly_map": images["anomaly_map"], "gt_mask": masks}, 8)
    metric = jm.AUROC(thresholds=16, fields=("anomaly_map", "gt_mask"))
    with pytest.raises(ValueError, match=r"^gt_mask: labels must be 0/1 or boolean, found 1 other"):
        metric.update(padded["anomaly_map"], padded["gt_mask"], valid=valid)


@pytest.mark.parametrize(
    "metric",
    [
        jm.AUROC(thresholds=64, fields=("anomaly_map", "gt_mask")),
        jm.AUPRO(thresholds=64),
        jm.AUPIMO(fpr_bounds=(1e-3, 1.0)),
        jm.AUPIMO(thresholds=64, fpr_bounds=(1e-3, 1.0)),
    ],
    ids=["AUROC", "AUPRO", "exact AUPIMO", "binned AUPIMO"],
)
def test_a_nan_in_a_padded_row_is_ignored(metric):
    images = _images(5, seed=4)
    padded, valid = jm.pad_batch(images, 8)
    maps = np.array(padded["anomaly_map"])
    masks = np.array(padded["gt_mask"])
    maps[5:] = np.nan  # padding holding garbage, and a label outside {0, 1}
    maps[6, 0, 0] = np.inf
    masks = masks.astype(np.int32)
    masks[7, 1, 1] = 3
    padded_value = metric.update(maps, masks, valid=valid).compute()
    plain_value = metric.update(images["anomaly_map"], images["gt_mask"]).compute()
    np.testing.assert_allclose(
        np.asarray(jax.tree_util.tree_leaves(padded_value)[0]),
        np.asarray(jax.tree_util.tree_leaves(plain_value)[0]),
        rtol=0,
        atol=0,
    )
    assert int(metric.update(maps, masks, valid=valid).num_invalid) == 0


def test_exact_pimo_keeps_the_valid_rows_only():
    images = _images(6, seed=5)
    valid = np.array([True, False, True, True, False, True])
    kept = {field: array[valid] for field, array in images.items()}
    metric = jm.AUPIMO(fpr_bounds=(1e-3, 1.0), return_average=False)
    masked = metric.update(images["anomaly_map"], images["gt_mask"], valid=valid)
    alone = metric.update(kept["anomaly_map"], kept["gt_mask"])
    np.testing.assert_array_equal(
        np.asarray(masked.state.image_classes()), np.asarray(alone.state.image_classes())
    )
    np.testing.assert_array_equal(
        np.asarray(masked.compute()[1].aupimos), np.asarray(alone.compute()[1].aupimos)
    )


def test_a_second_field_with_other_images_is_named_not_an_index_error():
    metric = jm.AUROC(thresholds=16, fields=("anomaly_map", "gt_mask"))
    maps, masks = np.zeros((3, 4, 4), np.float32), np.zeros((2, 4, 4), bool)
    with pytest.raises(ValueError, match=r"anomaly_map has shape .* but gt_mask has shape"):
        metric.update(maps, masks, valid=np.array([True, False, True]))


def test_fixed_size_states_update_in_one_padded_program_beside_growing_ones():
    fields = ("anomaly_map", "gt_mask")
    metrics = [jm.AUROC(fields=fields, prefix="exact_"), *_evaluator().metrics().values()]
    evaluator = jm.Evaluator(metrics)
    batches = [_images(count, seed=20 + count) for count in (8, 5)]
    with numpy_updates(False):  # eager binned updates on the CPU would run in numpy, unpadded
        for batch in batches:
            evaluator = evaluator.update(batch)
    assert evaluator._pad_to == 8  # the binned pair was padded; the exact AUROC took 5 rows
    results = evaluator.compute()
    for metric in metrics:
        alone = metric
        for batch in batches:
            alone = alone.update(batch["anomaly_map"], batch["gt_mask"])
        assert float(results[metric.name]) == float(alone.compute())
    maps = np.concatenate([b["anomaly_map"] for b in batches]).ravel()
    masks = np.concatenate([b["gt_mask"] for b in batches]).ravel()
    np.testing.assert_allclose(float(results["exact_AUROC"]), roc_auc_score(masks, maps), atol=1e-6)
