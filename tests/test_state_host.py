"""Exact (host-computed) metrics on states from pmap outputs and under vmap.

The pmap cases need several devices: JAX fixes its device count when it starts and the pytest
process has one CPU device, so they run in a child process started with
``--xla_force_host_platform_device_count=4`` (as in test_core_devices.py), which prints ``ok``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

import jaxmetrics_ad as jm

PMAP_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score
    import jaxmetrics_ad as jm

    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (4, 32)).astype(np.int32)
    scores = (rng.normal(size=(4, 32)) + labels).astype(np.float32)
    want = {"AUROC": roc_auc_score(labels.ravel(), scores.ravel()),
            "AUPR": average_precision_score(labels.ravel(), scores.ravel())}

    first = lambda tree: jax.tree_util.tree_map(lambda x: x[0], tree)
    for metric in (jm.AUROC(), jm.AUPR(), jm.AUROC(capacity=32), jm.AUPR(capacity=32)):
        out = jax.pmap(lambda a, b: metric.update(a, b).all_reduce("d"), axis_name="d")(scores, labels)
        one = first(out)  # leaves replicated over the 4 devices: an eager callback broke on them
        np.testing.assert_allclose(float(one.compute()), want[metric.name], rtol=1e-6)
        text = repr(one)  # hid the TypeError behind "# 4 updates" with no value
        assert "4 updates → " in text, text
        text = repr(out)  # raised: int() of the stacked update counts
        assert "4 stacked metrics (4,), 4 updates each" in text, text

    # the same through an Evaluator, without copying the state to the host first
    evaluator = jm.Evaluator([jm.AUROC(), jm.AUPR(), jm.F1AdaptiveThreshold()])
    step = jax.pmap(lambda ev, s, y: ev.update({"pred_score": s, "gt_label": y}).all_reduce("d"),
                    axis_name="d", in_axes=(None, 0, 0))
    results = first(step(evaluator, scores, labels)).compute()
    np.testing.assert_allclose(float(results["AUROC"]), want["AUROC"], rtol=1e-6)
    np.testing.assert_allclose(float(results["AUPR"]), want["AUPR"], rtol=1e-6)
    print("ok")
    """
)


def test_exact_compute_and_repr_of_pmap_outputs_work():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", PMAP_SCRIPT], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"


def stacked(metrics):
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *metrics)


def test_vmap_of_an_exact_capacity_compute_equals_each_states_compute():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (3, 8)).astype(np.int32)
    labels[:, :2] = [0, 1]  # both classes in each state
    scores = (rng.normal(size=(3, 8)) + labels).astype(np.float32)
    for cls, reference in ((jm.AUROC, roc_auc_score), (jm.AUPR, average_precision_score)):
        metrics = [cls(capacity=8).update(s, y) for s, y in zip(scores, labels)]
        values = jax.vmap(lambda m: m.compute())(stacked(metrics))
        jitted = jax.jit(jax.vmap(lambda m: m.compute()))(stacked(metrics))
        assert values.shape == (3,)
        np.testing.assert_allclose(values, [float(m.compute()) for m in metrics], rtol=1e-6)
        np.testing.assert_allclose(jitted, values)
        expected = [reference(y, s) for s, y in zip(scores, labels)]
        np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_vmap_of_an_exact_aupro_equals_each_states_compute():
    rng = np.random.default_rng(2)
    masks = np.zeros((3, 2, 6, 6), np.int32)
    masks[:, 0, 1:3, 1:4] = 1
    masks[:, 1, 3:5, 2:5] = 1
    maps = (rng.uniform(size=masks.shape) + 0.5 * masks).astype(np.float32)
    metrics = [jm.AUPRO(capacity=72).update(m, t) for m, t in zip(maps, masks)]
    values = jax.vmap(lambda m: m.compute())(stacked(metrics))
    np.testing.assert_allclose(values, [float(m.compute()) for m in metrics], rtol=1e-6)
