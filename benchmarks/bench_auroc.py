"""AUROC on 10M+ scores: exact and binned jaxmetrics_ad next to scikit-learn, in the same run.

Run: ``python benchmarks/bench_auroc.py [--samples 10000000] [--batch 1000000]``. Prints one table of
median seconds (after a warm-up that pays for compilation) and the speed-up over scikit-learn.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from sklearn.metrics import roc_auc_score

import jaxmetrics_ad as jm


def median_seconds(run, repeats: int) -> tuple[float, float]:
    value = run()  # warm-up: compilation and first-touch allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(value)


def streamed(metric: jm.AUROC, scores: np.ndarray, labels: np.ndarray, batch: int):
    def run():
        state = metric
        for start in range(0, scores.size, batch):
            state = state.update(scores[start : start + batch], labels[start : start + batch])
        return jax.block_until_ready(state.compute())

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    labels = rng.random(args.samples) < 0.05
    scores = (rng.normal(size=args.samples) + 1.5 * labels).astype(np.float32) * 300 + 900

    rows = [("scikit-learn roc_auc_score", lambda: roc_auc_score(labels, scores))]
    rows.append(
        ("jaxmetrics_ad exact (host sort)", streamed(jm.AUROC(), scores, labels, args.batch))
    )
    for bins in (4096, jm.DEFAULT_NUM_BINS):
        rows.append(
            (
                f"jaxmetrics_ad binned, {bins} bins",
                streamed(jm.AUROC(thresholds=bins), scores, labels, args.batch),
            )
        )
    results = [(name, *median_seconds(run, args.repeats)) for name, run in rows]
    reference_time, reference_value = results[0][1], results[0][2]
    print(
        f"AUROC on {args.samples:,} scores in batches of {args.batch:,}; "
        f"{jax.devices()[0].platform}, median of {args.repeats}"
    )
    print(f"{'method':36s} {'seconds':>9s} {'vs sklearn':>11s} {'|error|':>10s}")
    for name, seconds, value in results:
        print(
            f"{name:36s} {seconds:9.3f} {reference_time / seconds:10.1f}x "
            f"{abs(value - reference_value):10.2e}"
        )


if __name__ == "__main__":
    main()
