"""Evaluation sharded over 8 devices (pmap, shard_map) or 2 hosts equals the single-device result.

JAX fixes its device count when it starts, and the pytest process has one CPU device, so the sharded
runs happen in child processes of this file (``python test_distributed.py sharded|multihost ...``)
started with ``--xla_force_host_platform_device_count=8`` or ``jax.distributed.initialize``. They
print their results as JSON; the tests here compare them. Every child has a timeout, so a hang in a
collective fails the test instead of blocking CI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from scipy import ndimage

import jaxmetrics_ad as jm
from jaxmetrics_ad.synthetic import make_category

NUM_DEVICES = 8
SIZE = (32, 32)
BINS = 1024
CHILD_TIMEOUT_S = 240
IMAGE, PIXEL = ("pred_score", "gt_label"), ("anomaly_map", "gt_mask")
# Small images: AUPIMO's default FPR bounds (1e-5, 1e-4) are below one pixel of the normal images.
PIMO_OPTIONS = {"num_thresholds": 2000, "thresholds": BINS, "capacity": 16}
REGIONS = {"region_labels": True, "fields": ("anomaly_map", "gt_regions")}
AUPIMO_OPTIONS = {**PIMO_OPTIONS, "fpr_bounds": (1e-2, 1e-1), "force": True}


def data() -> dict[str, np.ndarray]:
    category = make_category(num_normal=8, num_anomalous=8, size=SIZE, seed=11)
    return {
        "pred_score": category.pred_scores,
        "gt_label": category.gt_labels,
        "anomaly_map": category.anomaly_maps,
        "gt_mask": category.gt_masks,
        "pred_label": (category.pred_scores > 0.6).astype(np.int32),
        "pred_mask": category.anomaly_maps > 0.6,
        # precomputed region labels: each region metric would otherwise compile its own labelling
        "gt_regions": np.stack([ndimage.label(m, np.ones((3, 3)))[0] for m in category.gt_masks]),
        # bootstrap weights follow image ids, so that shards and one device draw the same ones
        "image_id": np.arange(len(category.gt_labels), dtype=np.int32),
        # one defect per image for sPRO: the whole mask, saturating at half its size
        "defect_masks": category.gt_masks[:, None],
        "saturation_area": jm.saturation_areas(category.gt_masks[:, None], 0.5, True),
    }


def every_metric(capacity: int) -> list[jm.Metric]:
    """Each exported metric in each jit-able mode: binned and exact with a fixed capacity."""
    metrics = [jm.AUROC(BINS, fields=IMAGE, prefix="binned_image_")]
    for mode, thresholds, slots in (("binned_", BINS, None), ("exact_", None, capacity)):
        for cls in (jm.AUROC, jm.AUPR, jm.F1Max, jm.F1AdaptiveThreshold):
            metrics.append(cls(thresholds, capacity=slots, fields=PIXEL, prefix=mode + "pixel_"))
    metrics.append(jm.AUPRO(thresholds=BINS, prefix="binned_"))  # labels the masks itself
    metrics.append(jm.AUPRO(capacity=capacity, prefix="exact_", **REGIONS))
    return [
        *metrics,
        jm.BinaryPrecisionRecallCurve(BINS, fields=PIXEL),
        jm.F1Score(fields=("pred_label", "gt_label"), prefix="image_"),
        jm.F1Score(fields=("pred_mask", "gt_mask"), prefix="pixel_"),
        jm.MinMax(fields=("anomaly_map",)),
        jm.AnomalyScoreDistribution(map_shape=SIZE),
        jm.ManualThreshold(0.7),
        jm.PGn(thresholds=BINS, fields=IMAGE, prefix="binned_"),
        jm.Bootstrap(jm.AUROC(BINS, fields=PIXEL, prefix="bootstrap_"), 8, id_field="image_id"),
        jm.SPRO(threshold=0.6),
        jm.AUSPRO(thresholds=BINS, fpr_limit=0.3, prefix="binned_"),
        jm.AUSPRO(capacity=capacity, fpr_limit=0.3, prefix="exact_"),
        jm.ValidationThreshold(thresholds=BINS, method="quantile", q=0.99),
        jm.SegF1(threshold=0.6),
        jm.SegF1PerImage(threshold=0.6),
        jm.PBn(capacity=capacity, fields=IMAGE, prefix="exact_"),
        jm.PRO(threshold=0.6, **REGIONS),
        jm.PIMO(**PIMO_OPTIONS),
        jm.AUPIMO(**AUPIMO_OPTIONS, return_average=False, prefix="per_image_"),
        jm.AUPIMO(**{**AUPIMO_OPTIONS, "capacity": None}, prefix="mean_"),
    ]


PMAP_METRICS = ("binned_pixel_AUROC", "exact_pixel_AUROC", "pixel_F1Score", "MinMax")
"""A few metrics of each kind of state (histogram, fixed buffer, counts, extrema)."""


def untested_metric_classes(metrics: list[jm.Metric]) -> list[str]:
    """Metric classes exported by the package that ``every_metric`` leaves out."""
    exported = {getattr(jm, name) for name in jm.__all__}
    classes = {c for c in exported if isinstance(c, type) and issubclass(c, jm.Metric)}
    abstract = {jm.Metric, jm.ScoreCurveMetric}
    return sorted(c.__name__ for c in classes - abstract - {type(m) for m in metrics})


def as_json_values(results: dict) -> dict[str, list[float]]:
    return {
        name: [float(v) for leaf in jax.tree.leaves(value) for v in np.ravel(np.asarray(leaf))]
        for name, value in results.items()
    }


def to_host(tree):
    return jax.tree.map(np.asarray, tree)


# -- child: one process, 8 devices --------------------------------------------------------------


def sharded_child() -> dict:
    """Per-device evaluation over two steps and one all-reduce, with shard_map (every metric) and
    pmap (a few), and one device's evaluation of the same images in the order the shards were seen
    (per-image results follow the device-major order of the final gather)."""
    assert jax.device_count() == NUM_DEVICES, jax.devices()
    batch = data()
    num_images = len(batch["gt_label"])
    steps = 2
    per_step, shard = num_images // steps, num_images // steps // NUM_DEVICES
    step_batches = [
        {k: v[s * per_step : (s + 1) * per_step] for k, v in batch.items()} for s in range(steps)
    ]
    order = [
        s * per_step + d * shard + i
        for d in range(NUM_DEVICES)
        for s in range(steps)
        for i in range(shard)
    ]
    in_device_order = {k: v[np.array(order)] for k, v in batch.items()}
    device_capacity = shard * steps * SIZE[0] * SIZE[1]  # all of one device's pixels
    # A gathered exact buffer holds every device's slots: the reference gets as many.
    single_capacity = device_capacity * NUM_DEVICES
    evaluator = jm.Evaluator(every_metric(device_capacity))
    single = jax.jit(lambda ev, b: ev.update(b))(
        jm.Evaluator(every_metric(single_capacity)), in_device_order
    )
    pmap_evaluator = jm.Evaluator(
        [m for m in every_metric(device_capacity) if m.name in PMAP_METRICS]
    )
    results = {
        "untested": untested_metric_classes(every_metric(device_capacity)),
        "single": as_json_values(single.compute()),
        "shard_map": as_json_values(shard_map_evaluation(evaluator, step_batches).compute()),
        "pmap": as_json_values(pmap_evaluation(pmap_evaluator, step_batches).compute()),
    }
    return results


def pmap_evaluation(evaluator: jm.Evaluator, step_batches: list[dict]) -> jm.Evaluator:
    def split(batch):  # (devices, images per device, ...)
        return {k: v.reshape(NUM_DEVICES, -1, *v.shape[1:]) for k, v in batch.items()}

    per_device = jax.tree.map(lambda x: jnp.stack([x] * NUM_DEVICES), evaluator)
    update = jax.pmap(lambda ev, batch: ev.update(batch))
    for batch in step_batches:
        per_device = update(per_device, split(batch))
    reduced = jax.pmap(lambda ev: ev.all_reduce("devices"), axis_name="devices")(per_device)
    return to_host(jax.tree.map(lambda x: x[0], reduced))


def shard_map_evaluation(evaluator: jm.Evaluator, step_batches: list[dict]) -> jm.Evaluator:
    mesh = jax.make_mesh((NUM_DEVICES,), ("devices",))

    def local(stacked):  # this device's evaluator: the leading axis of its block has length 1
        return jax.tree.map(lambda x: x[0], stacked)

    def stack(evaluator):
        return jax.tree.map(lambda x: x[None], evaluator)

    update = jax.jit(
        jax.shard_map(
            lambda ev, batch: stack(local(ev).update(batch)),
            mesh=mesh,
            in_specs=(P("devices"), P("devices")),
            out_specs=P("devices"),
            check_vma=False,  # the CCL loops of the region metrics start from constants
        )
    )
    reduce = jax.jit(
        jax.shard_map(
            lambda ev: local(ev).all_reduce("devices"),
            mesh=mesh,
            in_specs=P("devices"),
            out_specs=P(),
            check_vma=False,  # all_gathered exact buffers are equal on every device
        )
    )
    sharded = NamedSharding(mesh, P("devices"))
    per_device = jax.tree.map(lambda x: jnp.stack([x] * NUM_DEVICES), evaluator)
    per_device = jax.device_put(per_device, sharded)
    for batch in step_batches:
        per_device = update(per_device, jax.device_put(batch, sharded))
    return to_host(reduce(per_device))


# -- child: one of two processes ------------------------------------------------------------------


def host_evaluator() -> jm.Evaluator:
    """One metric per kind of state: histogram, fixed exact buffer, region overlap, counts."""
    return jm.Evaluator(
        test_metrics=[
            jm.AUROC(BINS, fields=PIXEL, prefix="pixel_"),
            jm.AUROC(None, capacity=16 * SIZE[0] * SIZE[1], fields=PIXEL, prefix="exact_pixel_"),
            jm.AUPRO(thresholds=BINS, **REGIONS),
            jm.F1Score(fields=("pred_label", "gt_label"), prefix="image_"),
        ]
    )


def multihost_child(process_id: int, port: int) -> dict:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        f"127.0.0.1:{port}", num_processes=2, process_id=process_id, initialization_timeout=60
    )
    batch = data()
    half = len(batch["gt_label"]) // 2
    mine = {k: v[process_id * half : (process_id + 1) * half] for k, v in batch.items()}
    local_result = host_evaluator().update(mine)  # eager, on this host's device

    mesh = jax.make_mesh((jax.device_count(),), ("hosts",))
    sharding = NamedSharding(mesh, P("hosts"))
    global_state = jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)[None]),
        local_result,
    )
    reduce = jax.jit(
        jax.shard_map(
            lambda ev: jax.tree.map(lambda x: x[0], ev).all_reduce("hosts"),
            mesh=mesh,
            in_specs=P("hosts"),
            out_specs=P(),
            check_vma=False,
        )
    )
    merged = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), reduce(global_state))
    values = as_json_values(merged.compute())
    jax.distributed.shutdown()
    return {"process": process_id, "devices": jax.device_count(), "values": values}


# -- tests ----------------------------------------------------------------------------------------


def run_child(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update({"JAX_PLATFORMS": "cpu", **(env_extra or {})})
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def child_result(process: subprocess.Popen) -> dict:
    try:
        out, err = process.communicate(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"child process timed out after {CHILD_TIMEOUT_S} s:\n{err[-3000:]}")
    assert process.returncode == 0, err[-5000:]
    return json.loads(out.strip().splitlines()[-1])


def assert_same_values(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(
            actual[name], values, rtol=2e-5, atol=1e-6, equal_nan=True, err_msg=name
        )


@pytest.fixture(scope="module")
def sharded_results() -> dict:
    flags = f"--xla_force_host_platform_device_count={NUM_DEVICES}"
    return child_result(run_child("sharded", env_extra={"XLA_FLAGS": flags}))


def test_every_exported_metric_takes_part_in_the_sharded_test(sharded_results):
    assert sharded_results["untested"] == [], "add these metrics to every_metric()"


def test_every_metric_accumulated_per_device_and_reduced_in_shard_map_equals_one_device(
    sharded_results,
):
    assert len(sharded_results["single"]) == len(every_metric(1))
    assert_same_values(sharded_results["shard_map"], sharded_results["single"])


def test_pmap_accumulation_and_all_reduce_equal_one_device(sharded_results):
    expected = {name: sharded_results["single"][name] for name in PMAP_METRICS}
    assert_same_values(sharded_results["pmap"], expected)


def test_two_hosts_each_evaluating_half_merge_to_the_single_process_result():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    children = [run_child("multihost", str(i), str(port)) for i in range(2)]
    try:
        results = [child_result(child) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    expected = as_json_values(host_evaluator().update(data()).compute())
    for result in results:
        assert result["devices"] == 2
        assert_same_values(result["values"], expected)


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "sharded":
        print(json.dumps(sharded_child()))
    elif command == "multihost":
        print(json.dumps(multihost_child(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        raise SystemExit(f"unknown command {command!r}")
