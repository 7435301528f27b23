"""Cold jitted AUPRO evaluation: ground-truth regions labelled on the host (scipy) vs by jax.lax.

Run: ``python benchmarks/bench_cold.py [--repeats 2] [--images 300] [--batch 32]``.

Each (labeller, repeat) runs in a fresh Python process with the persistent compile cache disabled,
so every jit compile is paid, as in a first evaluation. Workload: ``make_category`` maps and masks
(256×256, one third normal), binned ``AUPRO(thresholds=DEFAULT_NUM_BINS)`` updated through one
``jax.jit``-ed update in batches of 32 (the last batch is ragged: 300 = 9·32 + 12, so the update
compiles twice), then a jitted compute. Generating the data is not timed. Reported per labeller
(median over repeats):

* cold: first batch (its compile), the ragged last batch (its second compile), the whole
  evaluation, and its CPU time (the machine is shared and noisy; CPU time is steadier);
* warm: the same evaluation again in the same process (nothing compiles), as Mpx/s of updates.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

LABELLERS = ("host", "lax")

CHILD = r"""
import json, sys, time
import jax
jax.config.update("jax_enable_compilation_cache", False)
import jaxmetrics_ad as jm
from jaxmetrics_ad.synthetic import make_category

labeller, num_images, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
num_normal = num_images // 3
category = make_category(num_normal=num_normal, num_anomalous=num_images - num_normal, seed=0)
maps, masks = category.anomaly_maps, category.gt_masks
batches = [(maps[i : i + batch], masks[i : i + batch]) for i in range(0, num_images, batch)]
update = jax.jit(lambda metric, maps, masks: metric.update(maps, masks))
compute = jax.jit(lambda metric: metric.compute())


def evaluate():
    times = []
    metric = jm.AUPRO(thresholds=jm.DEFAULT_NUM_BINS, labeller=labeller)
    for batch_maps, batch_masks in batches:
        start = time.perf_counter()
        metric = jax.block_until_ready(update(metric, batch_maps, batch_masks))
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    value = float(jax.block_until_ready(compute(metric)))
    return value, times, time.perf_counter() - start


wall, cpu = time.perf_counter(), time.process_time()
value, cold_updates, cold_compute = evaluate()
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
warm = time.perf_counter()
warm_value, warm_updates, _ = evaluate()
warm = time.perf_counter() - warm
print(json.dumps({
    "value": value, "warm_value": warm_value, "cold_s": wall, "cold_cpu_s": cpu,
    "first_batch_s": cold_updates[0], "last_batch_s": cold_updates[-1],
    "compute_s": cold_compute, "warm_s": warm,
    "warm_mpx_s": maps.size / sum(warm_updates) / 1e6,
}))
"""


def run_child(labeller: str, num_images: int, batch: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.setdefault("JAX_PLATFORMS", "cpu")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, labeller, str(num_images), str(batch)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{labeller} run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    runs = {labeller: [] for labeller in LABELLERS}
    for _ in range(args.repeats):
        for labeller in LABELLERS:  # interleaved, so load changes hit both alike
            runs[labeller].append(run_child(labeller, args.images, args.batch))
    med = {
        labeller: {key: statistics.median(run[key] for run in results) for key in results[0]}
        for labeller, results in runs.items()
    }
    values = {run["value"] for results in runs.values() for run in results}
    values |= {run["warm_value"] for results in runs.values() for run in results}
    rows = [
        ("cold evaluation, wall (s)", "cold_s", "{:.2f}"),
        ("cold evaluation, CPU (s)", "cold_cpu_s", "{:.2f}"),
        ("first batch, incl. compile (s)", "first_batch_s", "{:.2f}"),
        (
            f"ragged last batch ({args.images % args.batch or args.batch}), incl. compile (s)",
            "last_batch_s",
            "{:.2f}",
        ),
        ("compute, incl. compile (s)", "compute_s", "{:.3f}"),
        ("warm evaluation (s)", "warm_s", "{:.3f}"),
        ("warm update (Mpx/s)", "warm_mpx_s", "{:.0f}"),
    ]
    print(
        f"AUPRO(thresholds=DEFAULT_NUM_BINS), {args.images} maps of 256x256 in batches of "
        f"{args.batch}; median of {args.repeats} fresh processes per labeller, no compile cache"
    )
    print("| | host (scipy callback) | lax | lax / host |")
    print("|---|---|---|---|")
    for name, key, fmt in rows:
        host, lax = med["host"][key], med["lax"][key]
        print(f"| {name} | {fmt.format(host)} | {fmt.format(lax)} | {lax / host:.2f}x |")
    same = "identical" if len(values) == 1 else f"DIFFER: {sorted(values)}"
    print(f"AUPRO values, every run, cold and warm: {same} ({sorted(values)[0]:.6f})")


if __name__ == "__main__":
    main()
