"""The Evaluator reads metric fields from any batch type, jits once per shape and matches sklearn."""

from __future__ import annotations

import dataclasses
import types

import chex
import jax
import numpy as np
import pytest
from flax import struct
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

import jaxmetrics_ad as jm
from jaxmetrics_ad.io import Batch
from jaxmetrics_ad.synthetic import make_category

BINS = 1024
HALVES = (slice(0, 8), slice(8, None))


@pytest.fixture(scope="module")
def category():
    return make_category(num_normal=6, num_anomalous=10, size=(32, 32), seed=3)


def as_dict(category, rows=slice(None)) -> dict[str, np.ndarray]:
    return {
        "pred_score": category.pred_scores[rows],
        "gt_label": category.gt_labels[rows],
        "anomaly_map": category.anomaly_maps[rows],
        "gt_mask": category.gt_masks[rows],
        "pred_label": (category.pred_scores[rows] > 0.5).astype(np.int32),
    }


def image_and_pixel_evaluator(thresholds=BINS, capacity=None) -> jm.Evaluator:
    return jm.Evaluator(
        [
            jm.AUROC(
                thresholds, capacity=capacity, fields=("pred_score", "gt_label"), prefix="image_"
            ),
            jm.AUROC(
                thresholds, capacity=capacity, fields=("anomaly_map", "gt_mask"), prefix="pixel_"
            ),
            jm.F1Score(fields=("pred_label", "gt_label"), prefix="image_"),
        ]
    )


def sklearn_values(category) -> dict[str, float]:
    return {
        "image_AUROC": roc_auc_score(category.gt_labels, category.pred_scores),
        "pixel_AUROC": roc_auc_score(category.gt_masks.ravel(), category.anomaly_maps.ravel()),
        "image_F1Score": f1_score(category.gt_labels, category.pred_scores > 0.5),
    }


def assert_matches(results: dict, expected: dict, atol: float) -> None:
    assert sorted(results) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(float(results[name]), value, atol=atol, err_msg=name)


@struct.dataclass
class FlaxBatch:
    pred_score: jax.Array
    gt_label: jax.Array
    anomaly_map: jax.Array
    gt_mask: jax.Array
    pred_label: jax.Array


@dataclasses.dataclass
class PlainBatch:
    pred_score: np.ndarray
    gt_label: np.ndarray
    anomaly_map: np.ndarray
    gt_mask: np.ndarray
    pred_label: np.ndarray


@pytest.mark.parametrize("kind", ["mapping", "flax_struct", "dataclass", "namespace"])
def test_every_batch_type_gives_the_sklearn_values(category, kind):
    wrap = {
        "mapping": dict,
        "flax_struct": lambda d: FlaxBatch(**d),
        "dataclass": lambda d: PlainBatch(**d),
        "namespace": lambda d: types.SimpleNamespace(**d),
    }[kind]
    evaluator = jm.Evaluator(
        [
            jm.AUROC(fields=("pred_score", "gt_label"), prefix="image_"),
            jm.AUROC(fields=("anomaly_map", "gt_mask"), prefix="pixel_"),
            jm.F1Score(fields=("pred_label", "gt_label"), prefix="image_"),
        ]
    )
    for rows in HALVES:
        evaluator = evaluator.update(wrap(as_dict(category, rows)))
    assert_matches(evaluator.compute(), sklearn_values(category), atol=1e-6)


def test_a_namedtuple_batch_from_io_works(category):
    evaluator = jm.Evaluator([jm.AUROC(fields=("anomaly_map", "gt_mask"), prefix="pixel_")])
    batch = Batch(
        category.anomaly_maps, category.gt_masks, category.gt_labels, category.pred_scores, ()
    )
    value = evaluator.update(batch).compute()["pixel_AUROC"]
    expected = roc_auc_score(category.gt_masks.ravel(), category.anomaly_maps.ravel())
    np.testing.assert_allclose(float(value), expected, atol=1e-6)


def test_a_misspelled_field_names_the_field_the_metric_and_the_batch_fields(category):
    evaluator = jm.Evaluator([jm.AUROC(fields=("pred_scores", "gt_label"), prefix="image_")])
    with pytest.raises(ValueError, match="pred_scores") as error:
        evaluator.update(as_dict(category))
    message = str(error.value)
    assert "image_AUROC" in message and "'pred_score'" in message and "'gt_mask'" in message


def test_non_strict_metrics_skip_batches_without_their_fields_and_are_left_out(category):
    evaluator = jm.Evaluator.default()
    image_only = {k: v for k, v in as_dict(category).items() if k not in ("anomaly_map", "gt_mask")}
    results = evaluator.update(image_only).compute()
    assert sorted(results) == ["image_AUROC", "image_F1Score"]
    expected = sklearn_values(category)
    np.testing.assert_allclose(float(results["image_AUROC"]), expected["image_AUROC"], atol=1e-6)


def test_the_default_set_is_anomalibs(category):
    evaluator = jm.Evaluator.default()
    metrics = evaluator.metrics("test")
    assert evaluator.stages == ("test",)
    assert [m.fields for m in metrics.values()] == [
        ("pred_score", "gt_label"),
        ("pred_label", "gt_label"),
        ("anomaly_map", "gt_mask"),
        ("pred_mask", "gt_mask"),
    ]
    assert [m.strict for m in metrics.values()] == [True, True, False, False]
    batch = as_dict(category) | {"pred_mask": category.anomaly_maps > 0.5}
    results = evaluator.update(batch).compute()
    expected = roc_auc_score(category.gt_masks.ravel(), category.anomaly_maps.ravel())
    np.testing.assert_allclose(float(results["pixel_AUROC"]), expected, atol=1e-4)
    expected_f1 = f1_score(category.gt_masks.ravel(), category.anomaly_maps.ravel() > 0.5)
    np.testing.assert_allclose(float(results["pixel_F1Score"]), expected_f1, atol=1e-6)


def test_two_metrics_with_the_same_name_are_rejected():
    with pytest.raises(ValueError, match=r"'AUROC'.*prefix"):
        jm.Evaluator([jm.AUROC(), jm.AUROC(fields=("anomaly_map", "gt_mask"))])
    with pytest.raises(TypeError, match="val_metrics"):
        jm.Evaluator([jm.AUROC(), "AUPR"])


def test_the_same_name_may_appear_in_val_and_test():
    evaluator = jm.Evaluator(val_metrics=[jm.AUROC()], test_metrics=[jm.AUROC()])
    assert evaluator.stages == ("val", "test")


def test_stages_are_updated_separately_and_must_be_named_when_both_exist(category):
    evaluator = jm.Evaluator(
        val_metrics=[jm.F1AdaptiveThreshold(BINS)],
        test_metrics=[jm.AUROC(BINS), jm.F1Score(prefix="image_")],
    )
    with pytest.raises(ValueError, match="stage"):
        evaluator.update(as_dict(category))
    with pytest.raises(ValueError, match="stage must be one of"):
        evaluator.update(as_dict(category), stage="train")
    evaluator = evaluator.update(as_dict(category, slice(0, 8)), stage="val")
    evaluator = evaluator.update(as_dict(category), stage="test")
    assert int(evaluator.metrics("val")["F1AdaptiveThreshold"].num_updates) == 1
    assert sorted(evaluator.compute("test")) == ["AUROC", "image_F1Score"]
    evaluator = evaluator.reset("val")
    assert int(evaluator.metrics("val")["F1AdaptiveThreshold"].num_updates) == 0
    assert int(evaluator.metrics("test")["AUROC"].num_updates) == 1


@pytest.mark.parametrize("thresholds, capacity", [(BINS, None), (None, 16 * 32 * 32)])
def test_a_jitted_update_traces_once_per_batch_shape(category, thresholds, capacity):
    chex.clear_trace_counter()
    evaluator = image_and_pixel_evaluator(thresholds, capacity)

    @jax.jit
    @chex.assert_max_traces(n=2)
    def step(evaluator, batch):
        return evaluator.update(batch)

    for rows in (*HALVES, slice(0, 8)):  # from empty and from updated states: one trace
        evaluator = step(evaluator, as_dict(category, rows))
    assert step._cache_size() == 1
    evaluator = step(evaluator, as_dict(category, slice(0, 2)))
    assert step._cache_size() == 2  # a new batch shape: one more trace
    assert int(evaluator.metrics()["image_AUROC"].num_updates) == 4
    evaluator = step(evaluator.reset(), as_dict(category, HALVES[0]))
    evaluator = step(evaluator, as_dict(category, HALVES[1]))
    assert step._cache_size() == 2
    assert_matches(evaluator.compute(), sklearn_values(category), atol=1e-4)


def test_lax_scan_carries_the_evaluator_over_batches(category):
    data = as_dict(category)
    stacked = {k: v.reshape(4, 4, *v.shape[1:]) for k, v in data.items()}

    def body(evaluator, batch):
        return evaluator.update(batch), None

    evaluator, _ = jax.lax.scan(body, image_and_pixel_evaluator(), stacked)
    assert_matches(evaluator.compute(), sklearn_values(category), atol=1e-4)


def test_merge_of_two_halves_equals_one_pass_over_both(category):
    first = image_and_pixel_evaluator().update(as_dict(category, HALVES[0]))
    second = image_and_pixel_evaluator().update(as_dict(category, HALVES[1]))
    whole = first.update(as_dict(category, HALVES[1]))
    merged = jax.jit(lambda a, b: a.merge(b))(first, second).compute()
    for name, value in whole.compute().items():
        np.testing.assert_array_equal(np.asarray(merged[name]), np.asarray(value), err_msg=name)
    with pytest.raises(ValueError, match="same metrics"):
        first.merge(jm.Evaluator([jm.AUROC()]))


def test_curve_metrics_on_the_same_fields_share_one_state_and_keep_their_values(category):
    pixel = ("anomaly_map", "gt_mask")
    shared = [
        jm.AUROC(BINS, fields=pixel),
        jm.AUPR(BINS, fields=pixel),
        jm.AUROC(BINS // 2, fields=pixel, prefix="coarse_"),
    ]
    evaluator = jm.Evaluator(shared)
    assert evaluator._plan[0] == (0, 0, 2)
    for rows in HALVES:
        evaluator = jax.jit(lambda e, b: e.update(b))(evaluator, as_dict(category, rows))
    metrics = evaluator.metrics()
    alone = shared[1]
    for rows in HALVES:
        alone = alone.update(category.anomaly_maps[rows], category.gt_masks[rows])
    for mine, theirs in zip(jax.tree.leaves(metrics["AUPR"]), jax.tree.leaves(alone)):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    assert metrics["coarse_AUROC"].state.num_bins == BINS // 2
    masks, maps = category.gt_masks.ravel(), category.anomaly_maps.ravel()
    auroc, aupr = metrics["AUROC"].compute(), metrics["AUPR"].compute()
    np.testing.assert_allclose(float(auroc), roc_auc_score(masks, maps), atol=1e-4)
    np.testing.assert_allclose(float(aupr), average_precision_score(masks, maps), atol=1e-3)


def test_pixel_curves_read_a_binned_aupros_histogram_bit_for_bit(category):
    pixel = ("anomaly_map", "gt_mask")
    metrics = [
        jm.AUROC(BINS, fields=pixel),
        jm.F1Max(BINS, fields=pixel),
        jm.AUPRO(thresholds=BINS),
    ]
    evaluator = jm.Evaluator(metrics)
    assert evaluator._plan[0] == (2, 2, 2)  # one histogram update per batch, AUPRO's
    step = jax.jit(lambda e, b: e.update(b))
    for rows in HALVES:
        evaluator = step(evaluator, as_dict(category, rows))
    merged = evaluator.merge(evaluator)
    for metric in metrics:
        alone = metric
        for rows in HALVES:
            alone = alone.update(category.anomaly_maps[rows], category.gt_masks[rows])
        shared = evaluator.metrics()[metric.name]
        for mine, theirs in zip(jax.tree.leaves(shared), jax.tree.leaves(alone)):
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
        twice = alone.merge(alone)
        for mine, theirs in zip(
            jax.tree.leaves(merged.metrics()[metric.name]), jax.tree.leaves(twice)
        ):
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    masks, maps = category.gt_masks.ravel(), category.anomaly_maps.ravel()
    auroc = float(evaluator.compute()["AUROC"])
    np.testing.assert_allclose(auroc, roc_auc_score(masks, maps), atol=1e-4)


def test_exact_metrics_share_the_kept_samples(category):
    pixel = ("anomaly_map", "gt_mask")
    evaluator = jm.Evaluator([jm.AUROC(fields=pixel), jm.AUPR(fields=pixel)])
    evaluator = evaluator.update(as_dict(category))
    metrics = evaluator.metrics()
    assert metrics["AUROC"].state is metrics["AUPR"].state
    masks, maps = category.gt_masks.ravel(), category.anomaly_maps.ravel()
    np.testing.assert_allclose(
        float(evaluator.compute()["AUPR"]), average_precision_score(masks, maps), atol=1e-6
    )


def test_metrics_that_already_hold_different_data_do_not_share():
    auroc = jm.AUROC(BINS).update([0.1, 0.9], [0, 1])
    evaluator = jm.Evaluator([auroc, jm.AUPR(BINS)])
    assert evaluator._plan[0] == (0, 1)
    results = evaluator.update({"pred_score": [0.2, 0.3], "gt_label": [1, 0]}).compute()
    np.testing.assert_allclose(
        float(results["AUROC"]), roc_auc_score([0, 1, 1, 0], [0.1, 0.9, 0.2, 0.3])
    )
    np.testing.assert_allclose(float(results["AUPR"]), 0.5)


def test_compute_with_curves_adds_the_roc_curve(category):
    evaluator = jm.Evaluator([jm.AUROC(fields=("anomaly_map", "gt_mask")), jm.F1Score()])
    evaluator = evaluator.update(as_dict(category) | {"pred_label": category.gt_labels})
    results = evaluator.compute(curves=True)
    assert sorted(results) == ["AUROC", "AUROC_curve", "F1Score"]
    fpr, tpr = (np.asarray(v, np.float64) for v in results["AUROC_curve"])
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    expected = roc_auc_score(category.gt_masks.ravel(), category.anomaly_maps.ravel())
    np.testing.assert_allclose(np.trapezoid(tpr, fpr), expected, atol=1e-6)


def test_the_evaluator_is_a_pytree_with_named_key_paths():
    evaluator = image_and_pixel_evaluator()
    paths = [
        jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(evaluator)
    ]
    assert any(path.startswith(".val['image_AUROC']") for path in paths)
    rebuilt = jax.tree.map(lambda x: x, evaluator)
    assert list(rebuilt.metrics()) == ["image_AUROC", "pixel_AUROC", "image_F1Score"]
    with pytest.raises(AttributeError, match="immutable"):
        evaluator.anything = 1


def test_the_repr_lists_each_stage_and_metric():
    text = repr(
        jm.Evaluator(
            val_metrics=[jm.F1AdaptiveThreshold()], test_metrics=[jm.AUROC(prefix="image_")]
        )
    )
    assert text.startswith("Evaluator(\n  val_metrics=[\n    F1AdaptiveThreshold(")
    assert "test_metrics=[\n    AUROC(" in text and "prefix='image_'" in text
    assert repr(jm.Evaluator()) == "Evaluator()"


def _counting_device_puts(monkeypatch) -> list[tuple[int, ...]]:
    """The shapes of the arrays validation copies to a jax device buffer from now on."""
    from jaxmetrics_ad import validation

    shapes: list[tuple[int, ...]] = []
    device_put = validation.jax.device_put

    def counted(value, *args, **kwargs):
        shapes.append(np.shape(value))
        return device_put(value, *args, **kwargs)

    monkeypatch.setattr(validation.jax, "device_put", counted)
    return shapes


def test_fields_only_numpy_updates_read_stay_numpy_and_give_the_same_values(category, monkeypatch):
    batch = {"anomaly_map": category.anomaly_maps, "gt_mask": category.gt_masks}
    metrics = [
        jm.AUROC(thresholds=BINS, fields=("anomaly_map", "gt_mask"), prefix="pixel_"),
        jm.AUPRO(thresholds=BINS, prefix="pixel_"),
    ]
    want = {
        m.name: float(m.update(jax.numpy.asarray(batch["anomaly_map"]), batch["gt_mask"]).compute())
        for m in metrics
    }
    copied = _counting_device_puts(monkeypatch)
    updated = jm.Evaluator(test_metrics=metrics).update(batch)
    assert category.anomaly_maps.shape not in copied  # neither maps nor masks were copied
    found = updated.compute()
    assert {name: float(value) for name, value in found.items()} == want


def test_a_field_an_exact_metric_also_reads_is_copied_to_jax_once(category, monkeypatch):
    batch = {"anomaly_map": category.anomaly_maps, "gt_mask": category.gt_masks}
    metrics = [
        jm.AUROC(thresholds=BINS, fields=("anomaly_map", "gt_mask"), prefix="binned_"),
        jm.AUROC(fields=("anomaly_map", "gt_mask"), prefix="exact_"),
    ]
    copied = _counting_device_puts(monkeypatch)
    found = jm.Evaluator(test_metrics=metrics).update(batch).compute()
    assert copied.count(category.anomaly_maps.shape) == 2  # the maps and the masks, once each
    sklearn = roc_auc_score(category.gt_masks.ravel(), category.anomaly_maps.ravel())
    assert float(found["exact_AUROC"]) == pytest.approx(sklearn, abs=1e-6)
    assert float(found["binned_AUROC"]) == pytest.approx(sklearn, abs=2e-3)


def test_host_fields_are_checked_as_jax_ones_are(category):
    maps, masks = category.anomaly_maps, category.gt_masks
    evaluator = jm.Evaluator(test_metrics=[jm.AUPRO(thresholds=BINS)])
    raw = masks.astype(np.uint8) * 255  # a True stored as 0xFF, as Pillow gives 1-bit masks
    stored = evaluator.update({"anomaly_map": maps, "gt_mask": raw.view(bool)})
    clean = evaluator.update({"anomaly_map": maps, "gt_mask": masks})
    assert float(stored.compute()["AUPRO"]) == float(clean.compute()["AUPRO"])
    with pytest.raises(ValueError, match="anomaly_map: values must fit in float32"):
        evaluator.update({"anomaly_map": np.full(maps.shape, 1e300), "gt_mask": masks})
    with pytest.raises(ValueError, match="anomaly_map: 1 of"):
        bad = maps.copy()
        bad[0, 0, 0] = np.nan
        evaluator.update({"anomaly_map": bad, "gt_mask": masks})
