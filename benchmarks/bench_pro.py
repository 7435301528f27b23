"""Benchmark AUPRO (exact and binned) and PRO against the numpy MVTec AD reference, in one run.

Run: ``python benchmarks/bench_pro.py``. Workload: ``make_category`` with 100 normal and 200 defective
images of 256×256 (19.7 Mpx), fed in batches of 30 images, as an evaluation loop would. Each metric
is compiled on one batch first (the compile time is printed separately), then timed over the whole
set: updates plus compute. The reference (``tests/references.py``: a global argsort of every pixel,
like the MVTec AD script and anomalib) runs in the same process. Prints seconds, speed-ups, state
sizes and the difference of each value from the reference.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import numpy as np

import jaxmetrics_ad as jm
from jaxmetrics_ad.synthetic import make_category

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from references import mvtec_aupro, pro_at_threshold

BATCH = 30
FPR_LIMIT = np.float32(0.3)  # anomalib's limit as the metric stores it


def evaluate(metric: jm.Metric, maps: np.ndarray, masks: np.ndarray) -> tuple[float, jm.Metric]:
    for start in range(0, len(maps), BATCH):
        metric = metric.update(maps[start : start + BATCH], masks[start : start + BATCH])
    return float(metric.compute()), metric


def state_megabytes(metric: jm.Metric) -> float:
    return sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(metric.state)) / 1e6


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main() -> None:
    category, seconds = timed(make_category, 100, 200, (256, 256), 0)
    maps, masks = category.anomaly_maps, category.gt_masks
    print(f"data: {maps.shape[0]} maps of {maps.shape[1]}x{maps.shape[2]} ({seconds:.1f} s)")

    reference_aupro, reference_seconds = timed(mvtec_aupro, maps, masks, FPR_LIMIT)
    reference_pro, reference_pro_seconds = timed(pro_at_threshold, maps, masks)

    rows = [("reference mvtec_aupro (numpy)", reference_seconds, 0.0, reference_aupro, None)]
    cases = [
        ("AUPRO exact", jm.AUPRO(), reference_aupro, reference_seconds),
        (
            f"AUPRO binned ({jm.DEFAULT_NUM_BINS} bins)",
            jm.AUPRO(thresholds=jm.DEFAULT_NUM_BINS),
            reference_aupro,
            reference_seconds,
        ),
        ("AUPRO binned (1024 bins)", jm.AUPRO(thresholds=1024), reference_aupro, reference_seconds),
        ("PRO (threshold 0.5)", jm.PRO(), reference_pro, reference_pro_seconds),
    ]
    compile_seconds = {}
    for name, metric, expected, baseline in cases:
        _, compile_seconds[name] = timed(evaluate, metric, maps[:BATCH], masks[:BATCH])
        (value, final), seconds = timed(evaluate, metric, maps, masks)
        rows.append((name, seconds, state_megabytes(final), value, expected, baseline))
        if name == "AUPRO binned (1024 bins)":
            bound = float(final.error_bound())
    rows.append(("reference pro_at_threshold (numpy)", reference_pro_seconds, 0.0, reference_pro))

    print(
        f"\n{'metric':<36}{'seconds':>9}{'speed-up':>10}{'state MB':>10}{'value':>12}{'|Δ ref|':>10}"
    )
    for row in rows:
        name, seconds, megabytes, value = row[:4]
        if len(row) == 6:
            expected, baseline = row[4], row[5]
            speedup, error = f"{baseline / seconds:.1f}x", f"{abs(value - expected):.1e}"
        else:
            speedup, error = "1.0x", "—"
        print(f"{name:<36}{seconds:>9.2f}{speedup:>10}{megabytes:>10.1f}{value:>12.7f}{error:>10}")
    print("\nfirst-batch times including compilation:")
    for name, seconds in compile_seconds.items():
        print(f"  {name:<34}{seconds:>6.1f} s")
    print(f"error bound reported by the 1024-bin AUPRO: {bound:.1e}")


if __name__ == "__main__":
    main()
