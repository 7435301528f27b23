"""Image-level metrics reduced over 8 virtual CPU devices equal the single-device result."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    import jaxmetrics_ad as jm

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (8, 256))
    scores = (rng.normal(size=(8, 256)) * 300 + labels * 250).astype(np.float32)
    metrics = [jm.AUROC(thresholds=1024), jm.AUROC(capacity=256), jm.AUPR(thresholds=512),
               jm.F1Max(thresholds=np.linspace(-900, 900, 64)), jm.F1AdaptiveThreshold(thresholds=2048),
               jm.F1Score(threshold=100.0), jm.MinMax(fields=("pred_score",))]
    mesh = Mesh(np.array(jax.devices()), ("d",))
    for metric in metrics:
        args = (scores, labels)[: len(metric.fields)]
        one_device = jm.AUROC() if metric.config.get("capacity") else metric
        single = one_device.update(*(a.ravel() for a in args)).compute()
        by_pmap = jax.pmap(lambda *a: metric.update(*a).all_reduce("d").compute(), axis_name="d")(*args)
        sharded = jax.jit(jax.shard_map(
            lambda *a: metric.update(*(x[0] for x in a)).all_reduce("d"),
            mesh=mesh, in_specs=(P("d"),) * len(args), out_specs=P()))(*args).compute()
        for want, got_pmap, got_shard in zip(jax.tree_util.tree_leaves(single),
                                             jax.tree_util.tree_leaves(by_pmap),
                                             jax.tree_util.tree_leaves(sharded)):
            np.testing.assert_allclose(np.asarray(got_pmap), np.broadcast_to(want, (8,) + np.shape(want)), rtol=1e-6)
            np.testing.assert_allclose(np.asarray(got_shard), want, rtol=1e-6)
    print("ok")
    """
)


def test_pmap_and_shard_map_reductions_equal_the_single_device_result():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
