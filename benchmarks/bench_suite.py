"""Benchmark the anomaly-detection metric suite against the numpy/sklearn/scipy references.

Run: ``python benchmarks/bench_suite.py`` (about 3–4 minutes on a 2-core CPU), ``--full`` adds a
full-resolution MVTec-size set streamed in batches (a few minutes more).

Workload: :func:`jaxmetrics_ad.synthetic.make_category`, 300 images of 256×256 (100 normal), the
suite of :mod:`jaxmetrics_ad.suite` — image AUROC, AUPR, F1Max, F1AdaptiveThreshold; pixel AUROC,
AUPR, F1Max, AUPRO, AUPIMO. Contenders, each in its own fresh Python process so that time and peak
memory (``ru_maxrss`` of that process, from ``os.wait4``) are its own:

* ``data only`` — generate the data set and nothing else: the memory floor every contender pays;
* ``ours (binned)`` / ``ours (exact)`` — :func:`~jaxmetrics_ad.suite.evaluate` over batches of
  about 1 Mpx (15 images), as ``jaxmetrics-ad demo`` runs it. *cold*: the first evaluation in the process, every jit compile
  included (no persistent compile cache); *warm*: a second evaluation in the same process, what a
  training loop evaluating every epoch (or the CLI with its compile cache filled) pays;
* ``references`` — the yardsticks the tests use: scikit-learn's ``roc_auc_score``,
  ``average_precision_score`` and ``precision_recall_curve`` (F1 max), and
  ``tests/references.py``'s ``mvtec_aupro`` (the MVTec AD algorithm) and ``aupimo_reference`` (the
  AUPIMO reference code), all on whole arrays in memory, as anomalib does;
* ``anomalib`` — anomalib's metrics, when it can be imported (skipped with a note otherwise).

``--full``: 1,725 images (575 normal) of 960×960 — 1.59 Gpx, the size of the MVTec AD test set at
original resolution — streamed one image per batch (about 1 Mpx) and never all in memory. Each batch is generated at
240×240 and brought to 960×960 (maps bilinearly, as a model's maps are resized to the mask size;
masks by pixel repetition); generating it is timed apart and not counted as evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
FULL_IMAGES, FULL_NORMAL, FULL_SIZE, FULL_UPSCALE, FULL_CHUNK = 1725, 575, 960, 4, 15
SHOWN = ("pixel_AUROC", "pixel_F1Max", "pixel_AUPRO", "pixel_AUPIMO", "image_AUROC")


def _category(args: argparse.Namespace):
    from jaxmetrics_ad.synthetic import make_category

    num_normal = args.images // 3
    return make_category(num_normal, args.images - num_normal, size=(args.size, args.size))


# -- contenders: each runs in a child process and returns a JSON-able dict -------------------------


def data_only(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    _category(args)
    return {"seconds": time.perf_counter() - start}


def _ours(args: argparse.Namespace, exact: bool) -> dict:
    from jaxmetrics_ad.io import iter_batches
    from jaxmetrics_ad.suite import batch_size_for, build_suite, evaluate

    data = _category(args)
    batch_size = batch_size_for(len(data), args.size**2)
    cold = evaluate(build_suite(exact=exact, num_images=len(data)), iter_batches(data, batch_size))
    warm = evaluate(build_suite(exact=exact, num_images=len(data)), iter_batches(data, batch_size))
    return {"seconds": cold.seconds, "warm_seconds": warm.seconds, "values": cold.values}


def ours_binned(args: argparse.Namespace) -> dict:
    return _ours(args, exact=False)


def ours_exact(args: argparse.Namespace) -> dict:
    return _ours(args, exact=True)


def _f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.max(2 * precision * recall / (precision + recall + 1e-10)))


def _f1_adaptive_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / (precision + recall + 1e-10)
    return float(thresholds[np.argmax(f1[:-1])])


def references(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(TESTS_DIR))
    from references import aupimo_reference, mvtec_aupro
    from sklearn.metrics import average_precision_score, roc_auc_score

    data = _category(args)
    pixels = (data.gt_masks.ravel(), data.anomaly_maps.ravel())
    images = (data.gt_labels, data.pred_scores)
    maps = (data.anomaly_maps, data.gt_masks)
    metrics: dict[str, Callable[[], float]] = {
        "image_AUROC": lambda: roc_auc_score(*images),
        "image_AUPR": lambda: average_precision_score(*images),
        "image_F1Max": lambda: _f1_max(*images),
        "image_F1AdaptiveThreshold": lambda: _f1_adaptive_threshold(*images),
        "pixel_AUROC": lambda: roc_auc_score(*pixels),
        "pixel_AUPR": lambda: average_precision_score(*pixels),
        "pixel_F1Max": lambda: _f1_max(*pixels),
        "pixel_AUPRO": lambda: mvtec_aupro(*maps),
        "pixel_AUPIMO": lambda: np.nanmean(aupimo_reference(*maps).aupimos),
    }
    values, seconds = {}, {}
    for name, metric in metrics.items():
        start = time.perf_counter()
        values[name] = float(metric())
        seconds[name] = time.perf_counter() - start
    return {"seconds": sum(seconds.values()), "per_metric": seconds, "values": values}


def anomalib_metrics(args: argparse.Namespace) -> dict:
    try:
        import torch
        from anomalib import metrics as anomalib_metrics
    except ImportError as error:
        return {"skipped": f"anomalib is not importable here ({error})"}
    from types import SimpleNamespace

    data = _category(args)
    image_fields, pixel_fields = ["pred_score", "gt_label"], ["anomaly_map", "gt_mask"]
    suite = [
        anomalib_metrics.AUROC(fields=image_fields, prefix="image_"),
        anomalib_metrics.AUPR(fields=image_fields, prefix="image_"),
        anomalib_metrics.F1Max(fields=image_fields, prefix="image_"),
        anomalib_metrics.F1AdaptiveThreshold(fields=image_fields, prefix="image_"),
        anomalib_metrics.AUROC(fields=pixel_fields, prefix="pixel_"),
        anomalib_metrics.AUPR(fields=pixel_fields, prefix="pixel_"),
        anomalib_metrics.F1Max(fields=pixel_fields, prefix="pixel_"),
        anomalib_metrics.AUPRO(fields=pixel_fields, prefix="pixel_"),
        anomalib_metrics.AUPIMO(fields=pixel_fields, prefix="pixel_"),
    ]
    batch_size = 32  # anomalib's default evaluation batch size
    start = time.perf_counter()
    for first in range(0, len(data), batch_size):
        chunk = slice(first, first + batch_size)
        batch = SimpleNamespace(
            pred_score=torch.from_numpy(data.pred_scores[chunk]),
            gt_label=torch.from_numpy(data.gt_labels[chunk]),
            anomaly_map=torch.from_numpy(data.anomaly_maps[chunk]),
            gt_mask=torch.from_numpy(data.gt_masks[chunk]),
        )
        for metric in suite:
            metric.update(batch)
    values = {}
    for metric in suite:
        value = metric.compute()
        values[metric.name] = float(
            value[1].aupimos.nanmean() if isinstance(value, tuple) else value
        )
    return {"seconds": time.perf_counter() - start, "values": values}


def full_batches(batch_size: int, generation_seconds: list[float]) -> Iterator:
    """1,725 images of 960×960 in batches (dividing 15), generated 15 at a time, a third normal."""
    from jaxmetrics_ad.io import Batch, resize_maps
    from jaxmetrics_ad.synthetic import make_category

    small = FULL_SIZE // FULL_UPSCALE
    normal_per_chunk = FULL_CHUNK * FULL_NORMAL // FULL_IMAGES
    for index in range(FULL_IMAGES // FULL_CHUNK):
        start = time.perf_counter()
        chunk = make_category(
            normal_per_chunk, FULL_CHUNK - normal_per_chunk, size=(small, small), seed=index
        )
        maps = resize_maps(chunk.anomaly_maps, (FULL_SIZE, FULL_SIZE))
        masks = chunk.gt_masks.repeat(FULL_UPSCALE, axis=1).repeat(FULL_UPSCALE, axis=2)
        generation_seconds.append(time.perf_counter() - start)
        for first in range(0, FULL_CHUNK, batch_size):
            part = slice(first, first + batch_size)
            yield Batch(maps[part], masks[part], chunk.gt_labels[part], maps[part].max((1, 2)), ())


def ours_full(args: argparse.Namespace) -> dict:
    from jaxmetrics_ad.suite import batch_size_for, build_suite, evaluate

    generation_seconds: list[float] = []
    batch_size = batch_size_for(FULL_IMAGES, FULL_SIZE**2)
    start = time.perf_counter()
    result = evaluate(
        build_suite(num_images=FULL_IMAGES), full_batches(batch_size, generation_seconds)
    )
    wall = time.perf_counter() - start
    generation = sum(generation_seconds)
    return {
        "seconds": wall - generation,
        "generation_seconds": generation,
        "compute_seconds": result.compute_seconds,
        "num_pixels": result.num_pixels,
        "values": result.values,
    }


CONTENDERS: dict[str, tuple[str, Callable[[argparse.Namespace], dict]]] = {
    "data": ("data only", data_only),
    "binned": ("ours (binned)", ours_binned),
    "exact": ("ours (exact)", ours_exact),
    "references": ("references", references),
    "anomalib": ("anomalib", anomalib_metrics),
    "full": ("ours (binned), full-size", ours_full),
}


# -- the parent: runs every contender in a child process and prints the table --------------------


def run_child(key: str, args: argparse.Namespace) -> dict:
    """Run one contender in a fresh interpreter; its result plus its own peak RSS in MB."""
    command = [sys.executable, __file__, "--contender", key]
    command += ["--images", str(args.images), "--size", str(args.size)]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    # wait4 (not wait) reports this child's own resource usage, ru_maxrss in KiB on Linux.
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"contender {key!r} failed with exit code {child.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    result["process_seconds"] = time.perf_counter() - start
    return result


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"{model}, nproc={os.cpu_count()}, load average {load}, {time.strftime('%Y-%m-%d')}"


def _values_text(values: dict | None) -> str:
    if not values:
        return ""
    return " ".join(f"{values[name]:.4f}" if name in values else "-" for name in SHOWN)


def print_table(results: dict[str, dict], args: argparse.Namespace) -> None:
    reference = results["references"]
    print(f"\n{args.images} images of {args.size}x{args.size}; {_machine()}")
    print(f"values: {' '.join(SHOWN)}\n")
    print("| contender | time (s) | warm (s) | speed-up vs references | peak RSS (MB) | values |")
    print("|---|---|---|---|---|---|")
    for key, result in results.items():
        label = CONTENDERS[key][0]
        if "skipped" in result:
            print(f"| {label} | skipped: {result['skipped']} | | | | |")
            continue
        if key == "full":
            continue
        warm = f"{result['warm_seconds']:.2f}" if "warm_seconds" in result else ""
        speedup = "" if key == "data" else f"{reference['seconds'] / result['seconds']:.1f}x"
        print(
            f"| {label} | {result['seconds']:.2f} | {warm} | {speedup} | "
            f"{result['peak_rss_mb']:.0f} | {_values_text(result.get('values'))} |"
        )
    print("\nreferences per metric (s): " + ", ".join(
        f"{name} {seconds:.1f}" for name, seconds in reference["per_metric"].items()
    ))  # fmt: skip
    for key in ("binned", "exact"):
        differences = [
            abs(results[key]["values"][name] - reference["values"][name])
            for name in reference["values"]
        ]
        print(f"{CONTENDERS[key][0]}: largest |value - reference| = {max(differences):.1e}")
    if "full" in results:
        full = results["full"]
        print(
            f"\nfull-size: {full['num_pixels'] / 1e9:.2f} Gpx in {full['seconds']:.1f} s "
            f"({full['num_pixels'] / 1e6 / full['seconds']:.0f} Mpx/s; compute "
            f"{full['compute_seconds']:.1f} s), peak RSS {full['peak_rss_mb']:.0f} MB; generating "
            f"the data took {full['generation_seconds']:.1f} s more (not counted). "
            f"Values: {_values_text(full['values'])}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--full", action="store_true", help="also stream the 1.6 Gpx set")
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender is not None:
        print(json.dumps(CONTENDERS[args.contender][1](args)))
        return
    keys = ["data", "binned", "exact", "references", "anomalib"] + (["full"] if args.full else [])
    results = {}
    for key in keys:
        print(f"running {CONTENDERS[key][0]} ...", file=sys.stderr, flush=True)
        results[key] = run_child(key, args)
    print_table(results, args)


if __name__ == "__main__":
    main()
