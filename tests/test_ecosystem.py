"""The JAX ecosystem's conventions: nnx-style named updates, clu's Collection, nnx.MultiMetric, Orbax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from clu import metrics as clu_metrics
from flax import nnx

import jaxmetrics_ad as jm
from jaxmetrics_ad.synthetic import make_category

CATEGORY = make_category(num_normal=8, num_anomalous=8, size=(16, 16), seed=5)
PIXEL = ("anomaly_map", "gt_mask")


def batches(size: int = 4):
    for start in range(0, len(CATEGORY), size):
        rows = slice(start, start + size)
        yield {
            "anomaly_map": jnp.asarray(CATEGORY.anomaly_maps[rows]),
            "gt_mask": jnp.asarray(CATEGORY.gt_masks[rows]),
            "loss": jnp.asarray(CATEGORY.pred_scores[rows]),
        }


def whole(metric: jm.Metric) -> float:
    return float(metric.update(CATEGORY.anomaly_maps, CATEGORY.gt_masks).compute())


def test_update_by_field_name_equals_the_positional_update():
    metric = jm.AUROC(256, fields=PIXEL)
    named = metric.update(gt_mask=CATEGORY.gt_masks, anomaly_map=CATEGORY.anomaly_maps)
    assert float(named.compute()) == whole(metric)


def test_update_by_name_names_unknown_and_missing_fields():
    with pytest.raises(TypeError, match=r"unknown \['mask'\] and missing \['gt_mask'\]"):
        jm.AUROC(fields=PIXEL).update(anomaly_map=CATEGORY.anomaly_maps, mask=CATEGORY.gt_masks)
    with pytest.raises(TypeError, match=r"by position or by name, not both"):
        jm.AUROC(fields=PIXEL).update(CATEGORY.anomaly_maps, gt_mask=CATEGORY.gt_masks)


def test_metrics_sit_in_a_clu_collection():
    auroc_class = jm.AUROC.configured(thresholds=256, fields=PIXEL)
    aupro_class = jm.AUPRO.configured(thresholds=256)
    collection = clu_metrics.Collection.create(
        auroc=auroc_class, aupro=aupro_class, loss=clu_metrics.Average.from_output("loss")
    )
    step = jax.jit(lambda c, batch: c.merge(collection.single_from_model_output(**batch)))
    state = collection.empty()
    for batch in batches():
        state = step(state, batch)
    values = state.compute()
    assert float(values["auroc"]) == whole(jm.AUROC(256, fields=PIXEL))
    assert float(values["aupro"]) == pytest.approx(whole(jm.AUPRO(thresholds=256)), abs=1e-6)
    assert float(values["loss"]) == pytest.approx(float(CATEGORY.pred_scores.mean()), rel=1e-6)


def test_a_clu_collection_gathers_across_an_axis_and_reduces():
    collection = clu_metrics.Collection.create(
        auroc=jm.AUROC.configured(thresholds=256, fields=PIXEL)
    )
    maps = jnp.asarray(CATEGORY.anomaly_maps).reshape(4, 4, 16, 16)
    masks = jnp.asarray(CATEGORY.gt_masks).reshape(4, 4, 16, 16)
    gathered = jax.vmap(
        lambda m, g: collection.gather_from_model_output(anomaly_map=m, gt_mask=g),
        axis_name="batch",
    )(maps, masks)
    one = jax.tree_util.tree_map(lambda leaf: leaf[0], gathered)  # every member holds the total
    assert float(one.compute()["auroc"]) == whole(jm.AUROC(256, fields=PIXEL))


def test_configured_classes_check_their_configuration_at_once():
    with pytest.raises(ValueError, match="thresholds"):
        jm.AUROC.configured(thresholds=2)


def test_metrics_sit_in_an_nnx_multimetric_under_nnx_jit():
    metrics = nnx.MultiMetric(
        loss=nnx.metrics.Average("loss"),
        auroc=jm.NNXMetric(jm.AUROC(256, fields=PIXEL)),
        aupro=jm.NNXMetric(jm.AUPRO(thresholds=256)),
    )

    @nnx.jit
    def step(metrics: nnx.MultiMetric, batch: dict) -> None:
        metrics.update(**batch)

    for batch in batches():
        step(metrics, batch)
    values = metrics.compute()
    assert float(values["auroc"]) == whole(jm.AUROC(256, fields=PIXEL))
    assert float(values["aupro"]) == pytest.approx(whole(jm.AUPRO(thresholds=256)), abs=1e-6)
    metrics.reset()
    assert int(metrics.auroc.metric.num_updates) == 0


def test_an_nnx_mask_leaves_padded_images_out():
    wrapped = jm.NNXMetric(jm.AUROC(256, fields=PIXEL))
    maps = np.concatenate([CATEGORY.anomaly_maps, np.ones((2, 16, 16), np.float32)])
    masks = np.concatenate([CATEGORY.gt_masks, np.zeros((2, 16, 16), bool)])
    wrapped.update(anomaly_map=maps, gt_mask=masks, mask=np.arange(18) < 16)
    assert float(wrapped.compute()) == whole(jm.AUROC(256, fields=PIXEL))


def test_a_metric_state_checkpoints_with_orbax(tmp_path):
    import orbax.checkpoint as ocp

    metric = jm.AUPRO(thresholds=256)
    for batch in batches():
        metric = metric.update(batch["anomaly_map"], batch["gt_mask"])
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "aupro", metric)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "aupro", jm.AUPRO(thresholds=256))
    assert type(restored) is jm.AUPRO
    assert float(restored.compute()) == float(metric.compute())
    resumed = restored.update(CATEGORY.anomaly_maps[:2], CATEGORY.gt_masks[:2])
    assert int(resumed.num_updates) == int(metric.num_updates) + 1
