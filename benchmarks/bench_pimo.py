"""Benchmark AUPIMO, exact and streaming, against the numpy transcription of anomalib's algorithm.

Run: ``python benchmarks/bench_pimo.py``. Workload: ``make_category(100, 200)``, 300 realistic maps
of 256×256 with masks, anomalib's defaults (300,000 thresholds, FPR bounds 1e-5..1e-4), fed in
batches of 30. Each contender runs in its own subprocess, twice: the first run includes JAX's
compilation, the second is steady state. Peak memory is the process's maximum resident set size
(``ru_maxrss``) minus what it held once the data was loaded and JAX had started. Errors are against the reference.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BATCH_SIZE = 30
CONTENDERS = {
    "reference (numpy, anomalib's algorithm)": "reference",
    "AUPIMO exact, mean": "exact",
    "AUPIMO exact, per image": "exact_per_image",
    "AUPIMO binned thresholds=16384, mean": "streaming",
    "AUPIMO binned thresholds=4096 capacity=300, per image": "streaming_per_image",
}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


COMPUTE_SECONDS: list[float] = []  # of each run's compute() alone (cold, then warm)


def _run_once(kind: str, maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-image AUPIMOs (NaN for normal images), or the mean as a one-element array."""
    if kind == "reference":
        from references import aupimo_reference

        COMPUTE_SECONDS.append(float("nan"))
        return aupimo_reference(maps, masks).aupimos
    import jaxmetrics_ad as jm

    metric = {
        "exact": jm.AUPIMO(),
        "exact_per_image": jm.AUPIMO(return_average=False),
        "streaming": jm.AUPIMO(thresholds=16384),
        "streaming_per_image": jm.AUPIMO(return_average=False, thresholds=4096, capacity=300),
    }[kind]
    for start in range(0, len(maps), BATCH_SIZE):
        stop = start + BATCH_SIZE
        metric = metric.update(maps[start:stop], masks[start:stop])
    start = time.perf_counter()
    value = metric.compute()
    COMPUTE_SECONDS.append(time.perf_counter() - start)
    if isinstance(value, tuple):
        return np.asarray(value[1].aupimos, np.float64)
    return np.asarray([float(value)])


def _child(kind: str, data_path: str) -> None:
    """Time one contender twice and print a JSON line (runs in a fresh process)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    warnings.simplefilter("ignore")
    import jax.numpy as jnp
    import references  # noqa: F401

    import jaxmetrics_ad  # noqa: F401

    with np.load(data_path) as data:
        maps, masks = data["maps"], data["masks"]
    jnp.zeros(1).block_until_ready()  # start the runtime before the baseline
    baseline = _peak_mib()
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        aupimos = _run_once(kind, maps, masks)
        seconds.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "compute_seconds": COMPUTE_SECONDS,
                "extra_peak_mib": _peak_mib() - baseline,
                "aupimos": [None if np.isnan(v) else float(v) for v in aupimos],
            }
        )
    )


def main() -> None:
    sys.path.insert(0, str(HERE.parent))
    from jaxmetrics_ad.synthetic import make_category

    category = make_category(num_normal=100, num_anomalous=200, size=(256, 256), seed=0)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        data_path = str(Path(folder) / "category.npz")
        np.savez(data_path, maps=category.anomaly_maps, masks=category.gt_masks)
        for label, kind in CONTENDERS.items():
            output = subprocess.run(
                [sys.executable, __file__, kind, data_path],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[label] = json.loads(output.strip().splitlines()[-1])

    reference = np.array(
        [np.nan if v is None else v for v in results[next(iter(CONTENDERS))]["aupimos"]]
    )
    reference_seconds = results[next(iter(CONTENDERS))]["seconds"][1]
    print(
        f"AUPIMO on {category.anomaly_maps.shape[0]} maps of 256x256 "
        f"({int(category.gt_labels.sum())} anomalous), K=300,000, bounds 1e-5..1e-4, batches "
        f"of {BATCH_SIZE}\n"
    )
    header = (
        f"{'contender':56} {'1st run s':>9} {'2nd run s':>9} {'speed-up':>8} "
        f"{'compute cold/warm s':>19} {'peak MiB':>8} {'max |error|':>11}"
    )
    print(header)
    print("-" * len(header))
    for label, result in results.items():
        values = np.array([np.nan if v is None else v for v in result["aupimos"]])
        if values.size == 1:
            error = abs(values[0] - np.nanmean(reference))
        else:
            error = np.nanmax(np.abs(values - reference))
        first, second = result["seconds"]
        cold, warm = result["compute_seconds"]
        print(
            f"{label:56} {first:9.2f} {second:9.2f} {reference_seconds / second:7.1f}x "
            f"{f'{cold:.3f}/{warm:.3f}':>19} {result['extra_peak_mib']:8.0f} {error:11.1e}"
        )
    print(
        "\nspeed-up: reference 2nd run / contender 2nd run. Error: per-image AUPIMO, or the mean "
        "for mean-only contenders."
    )


if __name__ == "__main__":
    if len(sys.argv) == 3:
        _child(sys.argv[1], sys.argv[2])
    else:
        main()
