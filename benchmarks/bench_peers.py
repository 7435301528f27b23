"""Benchmark the pixel metric suite against anomalib and ADEval, side by side from one run.

Run: ``python benchmarks/bench_peers.py`` (our venv's python; about 1 minute on a 2-core CPU,
most of it anomalib), ``--quick`` for a smoke run on 40 images. The peers run under another
interpreter that has them installed (``--peer-python``, or the ``BENCH_PEER_PYTHON`` environment
variable; default ``/work/benchvenv/bin/python``); they are never dependencies of this package.

Workload: :func:`jaxmetrics_ad.synthetic.make_category` (100 normal + 200 anomalous images of
256×256, seed 0), generated once by the parent and saved to a temporary ``.npz`` that every child
loads (loading is not timed). The pixel suite: AUROC, AUPR, F1Max, AUPRO (FPR ≤ 0.3), AUPIMO (FPR
1e-5 to 1e-4), streamed in batches of 32 images (the last one 12): one update per batch, one
compute at the end.

Every contender runs alone in its own fresh subprocess, one after the other (anomalib needs ~12 GB):

* ``anomalib`` — anomalib's ``AUROC``, ``AUPR``, ``F1Max``, ``AUPRO``, ``AUPIMO`` (torch on the CPU,
  ``torch.set_num_threads(2)``), each updated with a batch object holding torch tensors; exact
  (AUPIMO at its default 300,000 thresholds). The yardstick for the differences below;
* ``ADEval`` — ``adeval.EvalAccumulator`` (numpy + OpenCV, 1000 strips), AUROC, AUPR, AUPRO only,
  given the score range from a first min/max pass over the maps (timed apart, not counted). Torch is
  hidden from it (``adeval`` imports torch only for its optional CUDA code), so its memory is that
  of numpy + OpenCV;
* ``ours (5)`` — the five metrics binned (AUROC/AUPR/F1Max/AUPRO at ``DEFAULT_NUM_BINS``, AUPIMO
  streaming at 4096 bins) in one :class:`jaxmetrics_ad.Evaluator`, updated eagerly;
* ``ours (3)`` — the three metrics ADEval computes, likewise.

Times are measured inside each child around the evaluation only (updates and compute, values
fetched to Python floats). For ours, *cold* is the first evaluation in the process with every jit
compile included (``JAX_COMPILATION_CACHE_DIR`` unset, the persistent cache disabled) and *warm* a
second evaluation with fresh metrics in the same process. ADEval also runs twice (it has nothing to
compile, so the two agree); anomalib once (``--anomalib-warm`` adds a second run). Peak RSS is the
child's own ``ru_maxrss`` at its end; ``child wall`` is the whole subprocess, imports and loading
included.

This script imports only the standard library and numpy at the top: the peer children run it
under the peer interpreter, which need not have jax or this package.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

DEFAULT_PEER_PYTHON = "/work/benchvenv/bin/python"
PEER_PYTHON_ENV = "BENCH_PEER_PYTHON"
BATCH_SIZE = 32
FPR_LIMIT = 0.3
FPR_BOUNDS = (1e-5, 1e-4)
PIMO_BINS = 4096
FULL = {"num_normal": 100, "num_anomalous": 200}
QUICK = {"num_normal": 14, "num_anomalous": 26}  # 40 images: batches of 32 and 8
METRICS = ("AUROC", "AUPR", "F1Max", "AUPRO", "AUPIMO")
ADEVAL_METRICS = ("AUROC", "AUPR", "AUPRO")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _load(path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["anomaly_maps"], data["gt_masks"]


def _slices(count: int) -> list[slice]:
    return [slice(start, start + BATCH_SIZE) for start in range(0, count, BATCH_SIZE)]


# -- children: each loads the data, evaluates, and prints one JSON line ----------------------------


def child_anomalib(path: str, args: argparse.Namespace) -> dict:
    import torch
    from anomalib import metrics

    torch.set_num_threads(2)
    maps, masks = _load(path)
    loaded_rss = _peak_rss_mb()

    class Batch:  # what AnomalibMetric.update reads: the fields, as attributes
        def __init__(self, anomaly_map: torch.Tensor, gt_mask: torch.Tensor) -> None:
            self.anomaly_map, self.gt_mask = anomaly_map, gt_mask

    def evaluate() -> dict:
        fields = ["anomaly_map", "gt_mask"]
        suite = [
            metrics.AUROC(fields=fields, prefix="pixel_"),
            metrics.AUPR(fields=fields, prefix="pixel_"),
            metrics.F1Max(fields=fields, prefix="pixel_"),
            metrics.AUPRO(fields=fields, prefix="pixel_", fpr_limit=FPR_LIMIT),
            metrics.AUPIMO(fields=fields, prefix="pixel_", fpr_bounds=FPR_BOUNDS),
        ]
        start = time.perf_counter()
        for part in _slices(len(maps)):
            batch = Batch(torch.from_numpy(maps[part]), torch.from_numpy(masks[part]))
            for metric in suite:
                metric.update(batch)
        updates = time.perf_counter() - start
        values, compute = {}, {}
        for name, metric in zip(METRICS, suite):
            begin = time.perf_counter()
            values[name] = float(metric.compute())
            compute[name] = time.perf_counter() - begin
        return {
            "seconds": time.perf_counter() - start,
            "update_seconds": updates,
            "compute_seconds": compute,
            "values": values,
        }

    result = {"cold": evaluate(), "loaded_rss_mb": loaded_rss}
    if args.anomalib_warm:
        result["warm"] = evaluate()
    return result


def child_adeval(path: str, args: argparse.Namespace) -> dict:
    sys.modules["torch"] = None  # adeval imports torch only for its optional CUDA code: hide it
    if not hasattr(np, "trapz"):  # ADEval 1.1 integrates with np.trapz, gone in numpy >= 2.3
        np.trapz = np.trapezoid  # noqa: NPY201
    from adeval import EvalAccumulator

    maps, masks = _load(path)
    loaded_rss = _peak_rss_mb()

    def evaluate() -> dict:
        begin = time.perf_counter()
        low, high = float(maps.min()), float(maps.max())  # the score range it needs up front
        range_seconds = time.perf_counter() - begin
        start = time.perf_counter()
        accumulator = EvalAccumulator(low, high, low, high)
        for part in _slices(len(maps)):
            accumulator.add_anomap_batch(maps[part], masks[part].view(np.uint8))
        updates = time.perf_counter() - start
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its image-level curves are empty here: NaN
            summary = accumulator.summary()
        values = {"AUROC": summary["p_auroc"], "AUPR": summary["p_aupr"]}
        values["AUPRO"] = summary["p_aupro"]
        return {
            "seconds": time.perf_counter() - start,
            "update_seconds": updates,
            "range_seconds": range_seconds,
            "values": {name: float(value) for name, value in values.items()},
        }

    return {"cold": evaluate(), "warm": evaluate(), "loaded_rss_mb": loaded_rss}


def _aupimo(jm, **kwargs):
    """AUPIMO streaming at PIMO_BINS bins: ``thresholds=`` (``num_bins=`` before its rename)."""
    import inspect

    parameters = inspect.signature(jm.AUPIMO).parameters
    key = "thresholds" if "thresholds" in parameters else "num_bins"
    return jm.AUPIMO(fpr_bounds=FPR_BOUNDS, **{key: PIMO_BINS}, **kwargs)


def _child_ours(path: str, names: tuple[str, ...]) -> dict:
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    import jaxmetrics_ad as jm

    compiles: list[float] = []  # XLA backend compile durations, as jax reports them

    def listen(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)

    maps, masks = _load(path)
    loaded_rss = _peak_rss_mb()
    fields = ("anomaly_map", "gt_mask")

    def build(name: str):
        bins = jm.DEFAULT_NUM_BINS
        if name == "AUPRO":
            return jm.AUPRO(fpr_limit=FPR_LIMIT, thresholds=bins, prefix="pixel_")
        if name == "AUPIMO":
            return _aupimo(jm, capacity=len(maps), prefix="pixel_")
        return getattr(jm, name)(thresholds=bins, fields=fields, prefix="pixel_")

    def evaluate() -> tuple[dict, object]:
        evaluator = jm.Evaluator(test_metrics=[build(name) for name in names])
        compiles.clear()
        start = time.perf_counter()
        first = None
        for part in _slices(len(maps)):
            evaluator = evaluator.update({"anomaly_map": maps[part], "gt_mask": masks[part]})
            if first is None:
                jax.block_until_ready(evaluator)
                first = time.perf_counter() - start
        jax.block_until_ready(evaluator)
        updates = time.perf_counter() - start
        begin = time.perf_counter()
        computed = evaluator.compute()
        values = {name: float(computed["pixel_" + name]) for name in names}
        compute = time.perf_counter() - begin
        result = {
            "seconds": time.perf_counter() - start,
            "first_batch_seconds": first,
            "update_seconds": updates,
            "compute_total_seconds": compute,
            "compiles": len(compiles),
            "compile_seconds": sum(compiles),
            "values": values,
        }
        return result, evaluator

    cold, evaluator = evaluate()
    warm, _ = evaluate()
    found = evaluator.metrics()
    # AUPIMO's bound is per image: the mean's error is at most the mean of the per-image bounds
    bounds = {name: float(np.nanmean(found["pixel_" + name].error_bound())) for name in names}
    return {"cold": cold, "warm": warm, "loaded_rss_mb": loaded_rss, "bounds": bounds}


def child_ours5(path: str, args: argparse.Namespace) -> dict:
    return _child_ours(path, METRICS)


def child_ours3(path: str, args: argparse.Namespace) -> dict:
    return _child_ours(path, ADEVAL_METRICS)


# key: (label, child function, runs under the peer interpreter)
CONTENDERS = {
    "anomalib": ("anomalib 2.7 (torch CPU, 2 threads)", child_anomalib, True),
    "adeval": ("ADEval 1.1 (numpy + OpenCV, 3 metrics)", child_adeval, True),
    "ours5": ("ours, binned (5 metrics)", child_ours5, False),
    "ours3": ("ours, binned (ADEval's 3)", child_ours3, False),
}


# -- the parent: data once, every contender in a fresh child, one table ---------------------------


def make_data(path: str, quick: bool) -> int:
    """Generate the data set in a child too and save it: the parent stays small.

    On Linux a child's ``ru_maxrss`` starts at its parent's RSS when it was forked (``exec`` keeps
    the high-water mark), so a parent holding jax and the data would lift every child's peak.
    """
    command = [sys.executable, __file__, "--make-data", path] + (["--quick"] if quick else [])
    subprocess.run(command, check=True)
    with np.load(path) as data:
        return len(data["gt_masks"])


def _write_data(path: str, quick: bool) -> None:
    from jaxmetrics_ad.synthetic import make_category

    data = make_category(**(QUICK if quick else FULL), size=(256, 256), seed=0)
    np.savez(path, anomaly_maps=data.anomaly_maps, gt_masks=data.gt_masks)


def run_child(key: str, path: str, args: argparse.Namespace) -> dict:
    label, _, peer = CONTENDERS[key]
    python = args.peer_python if peer else sys.executable
    if peer and not Path(python).exists():
        return {"skipped": f"peer interpreter {python} not found"}
    command = [python, __file__, "--child", key, "--data", path]
    if args.anomalib_warm:
        command.append("--anomalib-warm")
    environment = dict(os.environ)
    environment.pop("JAX_COMPILATION_CACHE_DIR", None)
    print(f"running {label} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        print(done.stderr, file=sys.stderr)
        return {"skipped": f"failed with exit code {done.returncode}: {tail[0]}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["child_wall_seconds"] = wall
    return result


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}, nproc={os.cpu_count()}"


def _revision() -> str:
    """The commit benchmarked, ``-dirty`` when the working tree has uncommitted changes."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def _load_text() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def _cell(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _ratio(numerator: float, denominator: float) -> str:
    ratio = numerator / denominator
    return f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.2f}x (1/{1 / ratio:.2g})"


def print_report(
    results: dict[str, dict], count: int, loads: tuple[str, str], parent_rss: float
) -> None:
    print(f"\n{count} images of 256x256 in batches of {BATCH_SIZE}; {_machine()}; {_revision()}")
    print(f"load average (1, 5, 15 min): before {loads[0]}; after {loads[1]}")
    print(f"(the parent's peak RSS, a floor under every child's: {parent_rss:.0f} MB)\n")
    header = "| contender | cold (s) | warm (s) | peak RSS (MB) | child wall (s) | "
    print(header + " | ".join(f"pixel {name}" for name in METRICS) + " |")
    print("|---" * (5 + len(METRICS)) + "|")
    for key, result in results.items():
        label = CONTENDERS[key][0]
        if "skipped" in result:
            print(f"| {label} | skipped: {result['skipped']} |" + " |" * (3 + len(METRICS)))
            continue
        values = result["cold"]["values"]
        warm = result.get("warm", {}).get("seconds")
        print(
            f"| {label} | {_cell(result['cold']['seconds'])} | {_cell(warm)} | "
            f"{result['peak_rss_mb']:.0f} | {result['child_wall_seconds']:.1f} | "
            + " | ".join(_cell(values.get(name), 4) for name in METRICS)
            + " |"
        )

    print("\nnotes:")
    for key, result in results.items():
        if "skipped" in result:
            continue
        cold = result["cold"]
        parts = [f"RSS after imports + data {result['loaded_rss_mb']:.0f} MB"]
        parts.append(f"updates {cold['update_seconds']:.2f} s")
        if "first_batch_seconds" in cold:
            parts.append(f"first batch incl. compile {cold['first_batch_seconds']:.2f} s")
            parts.append(f"compute {cold['compute_total_seconds']:.2f} s (cold)")
            parts.append(
                f"{cold['compiles']} XLA compiles, {cold['compile_seconds']:.2f} s of compile (cold)"
            )
            warm = result["warm"]
            parts.append(f"warm: updates {warm['update_seconds']:.2f} s")
            parts.append(f"compute {warm['compute_total_seconds']:.2f} s")
        if "compute_seconds" in cold:
            per_metric = ", ".join(f"{k} {v:.1f}" for k, v in cold["compute_seconds"].items())
            parts.append(f"compute per metric (s): {per_metric}")
        if "range_seconds" in cold:
            parts.append(
                f"score range given from a first min/max pass ({cold['range_seconds']:.3f} s, "
                "not counted); 1000 strips"
            )
        print(f"- {CONTENDERS[key][0]}: " + "; ".join(parts))

    usable = {key: result for key, result in results.items() if "skipped" not in result}
    print("\nratios:")
    lines = []
    if "anomalib" in usable and "ours5" in usable:
        anomalib, ours = usable["anomalib"], usable["ours5"]
        lines.append(
            "anomalib time / ours (5), cold: "
            f"{_ratio(anomalib['cold']['seconds'], ours['cold']['seconds'])}; "
            f"vs ours warm: {_ratio(anomalib['cold']['seconds'], ours['warm']['seconds'])}"
        )
        lines.append(
            f"anomalib peak RSS / ours (5) peak RSS: "
            f"{_ratio(anomalib['peak_rss_mb'], ours['peak_rss_mb'])}"
        )
    if "adeval" in usable and "ours3" in usable:
        adeval, ours = usable["adeval"], usable["ours3"]
        lines.append(
            "ADEval time / ours (3), cold: "
            f"{_ratio(adeval['cold']['seconds'], ours['cold']['seconds'])}; "
            f"warm / warm: {_ratio(adeval['warm']['seconds'], ours['warm']['seconds'])}"
        )
        lines.append(
            f"ADEval peak RSS / ours (3) peak RSS: "
            f"{_ratio(adeval['peak_rss_mb'], ours['peak_rss_mb'])}"
        )
    for line in lines or ["(needs anomalib or ADEval and ours)"]:
        print(f"- {line}")

    if "anomalib" not in usable:
        return
    reference = usable["anomalib"]["cold"]["values"]
    print("\n|value - anomalib| (anomalib exact), largest over cold and warm runs:\n")
    print("| metric | anomalib | ours (largest) | our certified bound | ADEval |")
    print("|---|---|---|---|---|")
    for name in METRICS:
        ours_diffs, bound = [], None
        for key in ("ours5", "ours3"):
            if key not in usable:
                continue
            for run in ("cold", "warm"):
                if name in usable[key][run]["values"]:
                    ours_diffs.append(abs(usable[key][run]["values"][name] - reference[name]))
            bound = usable[key]["bounds"].get(name, bound)
        adeval = ""
        if "adeval" in usable and name in usable["adeval"]["cold"]["values"]:
            adeval = f"{abs(usable['adeval']['cold']['values'][name] - reference[name]):.1e}"
        print(
            f"| pixel {name} | {reference[name]:.6f} | "
            f"{max(ours_diffs):.1e} | {'' if bound is None else f'{bound:.1e}'} | {adeval} |"
            if ours_diffs
            else f"| pixel {name} | {reference[name]:.6f} | | | {adeval} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 images instead of 300")
    parser.add_argument(
        "--peer-python",
        default=os.environ.get(PEER_PYTHON_ENV, DEFAULT_PEER_PYTHON),
        help=f"interpreter with anomalib and adeval (env {PEER_PYTHON_ENV}; "
        f"default {DEFAULT_PEER_PYTHON})",
    )
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)}",
    )
    parser.add_argument("--anomalib-warm", action="store_true", help="run anomalib twice")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--make-data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_data is not None:
        _write_data(args.make_data, args.quick)
        return
    if args.child is not None:
        result = CONTENDERS[args.child][1](args.data, args)
        result["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return
    keys = [key.strip() for key in args.contenders.split(",") if key.strip()]
    unknown = sorted(set(keys) - set(CONTENDERS))
    if unknown:
        parser.error(f"unknown contenders {unknown}; choose from {list(CONTENDERS)}")
    before = _load_text()
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "category.npz")
        count = make_data(path, args.quick)
        results = {key: run_child(key, path, args) for key in keys}  # one at a time, never parallel
    print_report(results, count, (before, _load_text()), _peak_rss_mb())


if __name__ == "__main__":
    main()
