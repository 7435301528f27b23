"""Benchmark connected_components (jitted) against scipy.ndimage.label looping over images.

Run: ``python benchmarks/bench_regions.py``. Workload: 200 ground-truth masks of 256×256, 61% empty,
the rest with 1–5 blobs or thin scratches (fixed seed), plus an adversarial batch of 1-px spirals.
Prints throughput in megapixels per second (median of several timed runs after a warm-up).
"""

from __future__ import annotations

import itertools
import time

import jax
import numpy as np
from scipy import ndimage

from jaxmetrics_ad.regions import connected_components

SIZE = 256
NUM_MASKS = 200
EMPTY_FRACTION = 0.61
NUM_SPIRALS = 16
REPEATS = 7


def _blob(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """An ellipse with a wobbly boundary at a random place."""
    center = rng.uniform(20, SIZE - 20, 2)
    radii = rng.uniform(4, 30, 2)
    angle = np.arctan2(rows - center[0], cols - center[1])
    wobble = 1 + 0.25 * np.sin(rng.integers(2, 6) * angle + rng.uniform(0, 2 * np.pi))
    distance = ((rows - center[0]) / radii[0]) ** 2 + ((cols - center[1]) / radii[1]) ** 2
    return distance <= wobble**2


def _scratch(rng: np.random.Generator) -> np.ndarray:
    """A 1–3 px wide random polyline."""
    mask = np.zeros((SIZE, SIZE), bool)
    points = rng.uniform(0, SIZE - 1, (rng.integers(2, 5), 2))
    thickness = int(rng.integers(1, 4))
    for start, stop in itertools.pairwise(points):
        steps = int(np.abs(stop - start).max()) + 1
        line = np.linspace(start, stop, steps).round().astype(int)
        for offset in range(thickness):
            mask[np.clip(line[:, 0] + offset, 0, SIZE - 1), line[:, 1]] = True
    return mask


def typical_masks(seed: int = 0) -> np.ndarray:
    """MVTec-like ground truth: most masks empty, the others with a few blobs and scratches."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    masks = np.zeros((NUM_MASKS, SIZE, SIZE), bool)
    defective = rng.permutation(NUM_MASKS)[: round(NUM_MASKS * (1 - EMPTY_FRACTION))]
    for index in defective:
        for _ in range(rng.integers(1, 6)):
            masks[index] |= _blob(rng, rows, cols) if rng.random() < 0.6 else _scratch(rng)
    return masks


def spiral_mask() -> np.ndarray:
    """A 1-px wide square spiral filling the image: one region whose runs form one long chain."""
    mask = np.zeros((SIZE, SIZE), bool)
    row, col, length, direction = 0, 0, SIZE - 1, 0
    steps = ((0, 1), (1, 0), (0, -1), (-1, 0))
    mask[0, 0] = True
    for segment in range(2 * SIZE):
        if length <= 0:
            break
        row_step, col_step = steps[direction]
        for _ in range(length):
            row, col = row + row_step, col + col_step
            mask[row, col] = True
        direction = (direction + 1) % 4
        # Lengths SIZE-1 three times, then shrinking by 2 every second turn, keep a 1-px gap.
        if segment >= 2 and segment % 2 == 0:
            length -= 2
    return mask


def _median_seconds(function, masks) -> float:
    function(masks)
    timings = []
    for _ in range(REPEATS):
        begin = time.perf_counter()
        function(masks)
        timings.append(time.perf_counter() - begin)
    return float(np.median(timings))


def _ours(masks: np.ndarray):
    return jax.block_until_ready(connected_components(masks))


def _scipy(masks: np.ndarray):
    structure = np.ones((3, 3))
    return [ndimage.label(mask, structure=structure) for mask in masks]


def main() -> None:
    workloads = {
        f"typical {NUM_MASKS}x{SIZE}² ({EMPTY_FRACTION:.0%} empty)": typical_masks(),
        f"spirals {NUM_SPIRALS}x{SIZE}² (1-px)": np.repeat(spiral_mask()[None], NUM_SPIRALS, 0),
    }
    print(f"{'workload':<34} {'ours Mpx/s':>11} {'scipy Mpx/s':>12} {'ours/scipy':>11}")
    for name, masks in workloads.items():
        labels, _ = _ours(masks)
        expected = np.stack([labelled for labelled, _ in _scipy(masks)])
        assert np.array_equal(np.asarray(labels), expected), f"{name}: labels differ from scipy"
        megapixels = masks.size / 1e6
        ours = megapixels / _median_seconds(_ours, masks)
        reference = megapixels / _median_seconds(_scipy, masks)
        print(f"{name:<34} {ours:>11.1f} {reference:>12.1f} {ours / reference:>11.2f}")


if __name__ == "__main__":
    main()
