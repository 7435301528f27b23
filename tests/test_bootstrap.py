"""Bootstrap: one-pass Poisson-bootstrap intervals of binned metrics.

Each replicate is checked against scikit-learn on the same data with the same Poisson weights as
``sample_weight``; the intervals against a numpy Poisson bootstrap of ``roc_auc_score`` (independent
weights: agreement within Monte-Carlo error) and, on simulated data of known AUROC, by coverage.
The sharded test runs in a child process with 4 CPU devices (see tests/test_distributed.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import flax.serialization
import jax
import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

import jaxmetrics_ad as jm

PIXEL = ("anomaly_map", "gt_mask")
# grid scores tie positives with negatives in one bin, which the binned bound counts as error
pytestmark = pytest.mark.filterwarnings("ignore:.*binned value may be off:UserWarning")


def grid_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image scores on a grid of 1/64 (each distinct score gets its own bin: binned == exact)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.clip(np.round(rng.normal(labels * 0.8, 1.0) * 12 + 20), 0, 63) / 64
    return scores.astype(np.float32), labels


def grid_maps(n: int, seed: int, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = rng.random((n, size, size)) < rng.uniform(0, 0.4, (n, 1, 1))
    scores = np.clip(np.round(rng.normal(masks * 0.7, 1.0) * 10 + 25), 0, 63) / 64
    return scores.astype(np.float32), masks


def tree_equal(a, b) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b)
    )


@pytest.mark.parametrize("cls", [jm.AUROC, jm.AUPR, jm.F1Max, jm.F1AdaptiveThreshold])
def test_point_value_is_the_wrapped_metric_on_the_data(cls):
    scores, labels = grid_images(120, 0)
    maps, masks = grid_maps(10, 1)
    for metric, data in ((cls(256), (scores, labels)), (cls(256, fields=PIXEL), (maps, masks))):
        result = jm.Bootstrap(metric, 20, seed=3).update(*data).compute()
        np.testing.assert_allclose(float(result.value), float(metric(*data)), rtol=1e-6)
        assert result.replicates.shape == (20,)


@pytest.mark.parametrize("level", ["image", "pixel"])
def test_each_replicate_equals_sklearn_with_the_poisson_weights(level):
    if level == "image":
        scores, labels = grid_images(150, 2)
        fields = ("pred_score", "gt_label")
    else:
        scores, labels = grid_maps(12, 3)
        fields = PIXEL
    ids = np.arange(100, 100 + len(scores))
    for cls, reference in ((jm.AUROC, roc_auc_score), (jm.AUPR, average_precision_score)):
        boot = jm.Bootstrap(cls(256, fields=fields), 16, seed=7)
        result = boot.update(scores, labels, image_ids=ids).compute()
        weights = np.asarray(boot.replicate_weights(ids))  # (n, R)
        assert weights.min() >= 0 and weights.dtype == np.int32
        per_sample = np.prod(scores.shape[1:], dtype=int)
        for r in range(16):
            sample_weight = np.repeat(weights[:, r], per_sample)
            expected = reference(np.ravel(labels), np.ravel(scores), sample_weight=sample_weight)
            np.testing.assert_allclose(
                float(result.replicates[r]), expected, rtol=2e-6, err_msg=f"{cls.__name__} {r}"
            )


def test_poisson_weights_have_mean_and_variance_one_and_differ_per_image():
    weights = np.asarray(jm.Bootstrap(jm.AUROC(64), 500, seed=0).replicate_weights(np.arange(400)))
    assert abs(weights.mean() - 1) < 0.01 and abs(weights.var() - 1) < 0.02
    frequencies = np.bincount(weights.ravel(), minlength=6)[:6] / weights.size
    np.testing.assert_allclose(frequencies, stats.poisson.pmf(np.arange(6), 1.0), atol=3e-3)
    assert not np.array_equal(weights[0], weights[1])
    other_seed = np.asarray(jm.Bootstrap(jm.AUROC(64), 500, seed=1).replicate_weights([0]))
    assert not np.array_equal(weights[0], other_seed[0])


def test_interval_agrees_with_a_numpy_poisson_bootstrap_of_sklearn():
    rng = np.random.default_rng(5)
    n, replicates = 300, 2000
    labels = rng.integers(0, 2, n)
    scores = rng.normal(labels * 1.2, 1.0).astype(np.float32)
    result = jm.Bootstrap(jm.AUROC(4096), replicates, seed=11).update(scores, labels).compute()
    weights = rng.poisson(1.0, (replicates, n))
    reference = np.array([roc_auc_score(labels, scores, sample_weight=w) for w in weights])
    np.testing.assert_allclose(float(result.value), roc_auc_score(labels, scores), atol=2e-4)
    # Monte-Carlo standard error of each endpoint here is ~0.0015
    expected = np.quantile(reference, [0.025, 0.975])
    np.testing.assert_allclose([float(result.lower), float(result.upper)], expected, atol=0.008)
    spread = np.std(np.asarray(result.replicates))
    assert abs(spread / np.std(reference) - 1) < 0.08


def test_intervals_cover_the_true_auroc_about_as_often_as_the_confidence():
    # binormal scores: AUROC = Phi(d / sqrt(2)); percentile bootstrap intervals cover it ~95%
    d, n = 1.0, 120
    truth = stats.norm.cdf(d / np.sqrt(2))
    boot = jm.Bootstrap(jm.AUROC(2048), 400, seed=0)
    step = jax.jit(lambda m, s, y: m.update(s, y).compute())
    rng = np.random.default_rng(12)
    covered = []
    for _ in range(120):
        labels = np.repeat([0, 1], n // 2)
        scores = rng.normal(labels * d, 1.0).astype(np.float32)
        result = step(boot, scores, labels)
        covered.append(float(result.lower) <= truth <= float(result.upper))
    assert 0.86 <= np.mean(covered) <= 1.0, np.mean(covered)


def test_state_is_independent_of_batching_order_and_merging_given_image_ids():
    maps, masks = grid_maps(12, 4)
    ids = np.arange(12) * 7 + 3
    boot = jm.Bootstrap(jm.AUROC(128, fields=PIXEL), 32, seed=2)
    whole = boot.update(maps, masks, image_ids=ids)
    order = np.random.default_rng(0).permutation(12)
    batched = boot
    for part in np.array_split(order, 4):
        batched = batched.update(maps[part], masks[part], image_ids=ids[part])
    first = boot.update(maps[order[:5]], masks[order[:5]], image_ids=ids[order[:5]])
    second = boot.update(maps[order[5:]], masks[order[5:]], image_ids=ids[order[5:]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ids given: merging must not warn
        merged = second.merge(first)
    for other in (batched, merged):
        assert tree_equal(other.state.histogram, whole.state.histogram)
        assert tree_equal(other.compute(), whole.compute())


def test_default_ids_number_the_images_of_one_stream_and_merging_two_streams_warns():
    scores, labels = grid_images(60, 6)
    boot = jm.Bootstrap(jm.AUROC(256), 24, seed=4)
    whole = boot.update(scores, labels)
    batched = boot.update(scores[:25], labels[:25]).update(scores[25:], labels[25:])
    assert tree_equal(batched.state, whole.state)
    given = boot.update(scores, labels, image_ids=np.arange(60))
    assert tree_equal(whole.state.histogram, given.state.histogram)
    with pytest.warns(UserWarning, match="image_ids"):
        boot.update(scores[:25], labels[:25]).merge(boot.update(scores[25:], labels[25:]))


def test_jit_scan_and_eager_agree():
    maps, masks = grid_maps(8, 7)
    boot = jm.Bootstrap(jm.AUROC(256, fields=PIXEL), 40, seed=9)
    eager = boot.update(maps, masks, image_ids=np.arange(8))

    def body(metric, batch):
        batch_maps, batch_masks, batch_ids = batch
        return metric.update(batch_maps, batch_masks, image_ids=batch_ids), None

    batches = (maps.reshape(4, 2, 8, 8), masks.reshape(4, 2, 8, 8), np.arange(8).reshape(4, 2))
    scanned, _ = jax.jit(lambda m, b: jax.lax.scan(body, m, b))(boot, batches)
    assert tree_equal(scanned.state, eager.state)
    jitted = jax.jit(lambda m: m.compute())(scanned)
    host = eager.compute()
    np.testing.assert_allclose(
        np.asarray(jitted.replicates), np.asarray(host.replicates), atol=1e-6
    )
    np.testing.assert_allclose(
        [float(jitted.lower), float(jitted.upper)],
        [float(host.lower), float(host.upper)],
        atol=1e-6,
    )
    assert jitted.confidence == host.confidence == 0.95


def test_valid_leaves_out_padded_images():
    scores, labels = grid_images(10, 8)
    boot = jm.Bootstrap(jm.AUROC(256), 16)
    padded = boot.update(
        np.concatenate([scores, np.zeros(3, np.float32)]),
        np.concatenate([labels, np.zeros(3, int)]),
        valid=np.arange(13) < 10,
    )
    assert tree_equal(padded.state, boot.update(scores, labels).state)


def test_replicates_without_one_class_are_nan_and_left_out_of_the_interval():
    result = jm.Bootstrap(jm.AUROC(64), 200, seed=0).update([0.1, 0.9, 0.3], [0, 1, 0]).compute()
    replicates = np.asarray(result.replicates)
    assert np.isnan(replicates).any() and int(result.num_valid) == np.isfinite(replicates).sum()
    assert np.isfinite(float(result.lower)) and float(result.upper) <= 1.0
    lower, upper = result.interval_at(0.5)
    assert float(result.lower) <= float(lower) <= float(upper) <= float(result.upper)


def test_state_dict_round_trip_and_repr():
    scores, labels = grid_images(30, 9)
    boot = jm.Bootstrap(jm.AUROC(64, prefix="image_"), 8, seed=1).update(scores, labels)
    saved = flax.serialization.to_state_dict(boot)
    restored = flax.serialization.from_state_dict(jm.Bootstrap(jm.AUROC(64), 8, seed=1), saved)
    assert restored.name == "AUROC_bootstrap"  # a state may be restored under another prefix
    assert tree_equal(restored.compute(), boot.compute())
    with pytest.raises(ValueError, match="num_replicates"):
        flax.serialization.from_state_dict(jm.Bootstrap(jm.AUROC(64), 9, seed=1), saved)
    assert boot.name == "image_AUROC_bootstrap"
    assert "num_replicates=8" in repr(boot) and "95% interval" in repr(boot)


def test_clear_errors():
    with pytest.raises(TypeError, match="thresholds=None"):
        jm.Bootstrap(jm.AUROC())
    for metric in (jm.AUPRO(thresholds=64), jm.BinaryPrecisionRecallCurve(64), jm.F1Score()):
        with pytest.raises(TypeError, match="not supported"):
            jm.Bootstrap(metric)
    with pytest.raises(ValueError, match="empty"):
        jm.Bootstrap(jm.AUROC(64).update([0.1, 0.9], [0, 1]))
    with pytest.raises(ValueError, match="num_replicates"):
        jm.Bootstrap(jm.AUROC(64), 1)
    with pytest.raises(ValueError, match="confidence"):
        jm.Bootstrap(jm.AUROC(64), confidence=1.5)
    boot = jm.Bootstrap(jm.AUROC(64), 4)
    with pytest.raises(ValueError, match="one id per image"):
        boot.update([0.1, 0.9], [0, 1], image_ids=[1, 2, 3])
    with pytest.raises(TypeError, match="integers"):
        boot.update([0.1, 0.9], [0, 1], image_ids=[1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        boot.update([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="no field 'image_id'"):
        jm.Bootstrap(jm.AUROC(64), 4, id_field="image_id").update_from(
            {"pred_score": [0.1], "gt_label": [0]}
        )
    with pytest.raises(ValueError, match="no data"):
        boot.compute()


def test_id_field_is_read_by_update_from():
    scores, labels = grid_images(20, 10)
    boot = jm.Bootstrap(jm.AUROC(64), 8, id_field="image_id")
    batch = {"pred_score": scores, "gt_label": labels, "image_id": np.arange(20) + 5}
    expected = boot.update(scores, labels, image_ids=np.arange(20) + 5)
    assert tree_equal(boot.update_from(batch).state, expected.state)


# -- several devices: shard_map and pmap, in a child process -------------------------------------

NUM_DEVICES = 4


def sharded_child() -> dict:
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    try:
        from jax import shard_map
    except ImportError:  # older jax
        from jax.experimental.shard_map import shard_map

    assert jax.device_count() == NUM_DEVICES
    maps, masks = grid_maps(16, 11)
    ids = np.arange(16, dtype=np.int32)
    boot = jm.Bootstrap(jm.AUROC(128, fields=PIXEL), 32, seed=5)
    single = boot.update(maps, masks, image_ids=ids).compute()

    def per_device(maps, masks, ids):
        metric = boot.update(maps, masks, image_ids=ids).all_reduce("d")
        return metric.compute()

    mesh = Mesh(np.array(jax.devices()), ("d",))
    sharded = jax.jit(
        shard_map(per_device, mesh=mesh, in_specs=(P("d"), P("d"), P("d")), out_specs=P())
    )(maps, masks, ids)
    shape = (NUM_DEVICES, 16 // NUM_DEVICES)
    pmapped = jax.pmap(per_device, axis_name="d")(
        maps.reshape(*shape, 8, 8), masks.reshape(*shape, 8, 8), ids.reshape(shape)
    )
    pmapped = jax.tree.map(lambda x: x[0], pmapped)

    def as_list(result):
        return [float(v) for v in np.ravel(np.asarray(result.replicates))] + [
            float(result.value),
            float(result.lower),
            float(result.upper),
        ]

    return {"single": as_list(single), "shard_map": as_list(sharded), "pmap": as_list(pmapped)}


def test_all_reduce_under_shard_map_and_pmap_equals_one_device():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(
        JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}"
    )
    child = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "sharded"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    results = json.loads(child.stdout.strip().splitlines()[-1])
    for name in ("shard_map", "pmap"):
        np.testing.assert_allclose(results[name], results["single"], atol=1e-6, err_msg=name)


if __name__ == "__main__" and sys.argv[1:] == ["sharded"]:
    print(json.dumps(sharded_child()))
