"""A seeded sweep of connected_components against scipy.ndimage.label over shapes, densities and
batch sizes, including batches whose number of horizontal runs lands exactly on each run-capacity
boundary of the labeller (one run per row, the typical capacity, and ceil(W / 2) per row, the worst).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from jaxmetrics_ad.regions import connected_components

EIGHT_CONNECTED = np.ones((3, 3), int)
SHAPES = [(1, 9), (9, 1), (2, 5), (8, 8), (13, 7), (64, 3), (32, 32), (3, 70)]
BATCH_SIZES = [1, 4, 16]
DENSITIES = np.linspace(0.05, 0.6, 6)


def count_runs(masks: np.ndarray) -> int:
    """Horizontal runs of foreground pixels in the whole batch."""
    padded = np.pad(masks, ((0, 0), (0, 0), (1, 0)))
    return int(np.sum(padded[..., 1:] & ~padded[..., :-1]))


def with_run_count(masks: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``masks`` edited (whole runs removed or isolated pixels added) to hold ``target`` runs."""
    masks = masks.copy()
    while (runs := count_runs(masks)) != target:
        padded = np.pad(masks, ((0, 0), (0, 0), (1, 1)))
        if runs > target:
            # clear one whole run: find a run start and blank it up to its end
            starts = np.argwhere(padded[..., 1:-1] & ~padded[..., :-2])
            image, row, column = starts[rng.integers(len(starts))]
            while column < masks.shape[2] and masks[image, row, column]:
                masks[image, row, column] = False
                column += 1
        else:
            # one more run: set a pixel with background on both sides, or split a run by clearing
            # an inner pixel; when neither is possible, start again from the densest batch (every
            # row 1010...1, the worst case) and remove runs down to the target
            left, centre, right = padded[..., :-2], padded[..., 1:-1], padded[..., 2:]
            spots = np.argwhere(~left & ~centre & ~right)
            value = True
            if len(spots) == 0:
                spots, value = np.argwhere(left & centre & right), False
            if len(spots) == 0:
                masks = np.zeros_like(masks)
                masks[..., ::2] = True
                continue
            image, row, column = spots[rng.integers(len(spots))]
            masks[image, row, column] = value
    return masks


def assert_same_partition_as_scipy(masks: np.ndarray) -> None:
    # The capacity boundaries are the jax.lax labeller's; the host labeller must agree as well.
    for labeller in ("lax", "host"):
        labels, num_regions = connected_components(masks, labeller=labeller)
        for mask, got_labels, got_count in zip(masks, np.asarray(labels), np.asarray(num_regions)):
            expected_labels, expected_count = ndimage.label(mask, structure=EIGHT_CONNECTED)
            assert got_count == expected_count, (
                f"{labeller}: {got_count} regions, scipy {expected_count}:\n{mask}"
            )
            np.testing.assert_array_equal(
                got_labels, expected_labels, err_msg=f"{labeller}\n{mask.astype(int)}"
            )


def test_two_runs_in_the_last_rows_are_not_merged_at_full_typical_capacity():
    # Two runs in two rows: exactly one run per row, so the batch fills the typical capacity.
    mask = np.array([[0, 0, 0, 1, 1], [1, 0, 0, 0, 0]], bool)
    labels, num_regions = connected_components(mask, labeller="lax")
    assert int(num_regions) == 2
    assert labels.tolist() == [[0, 0, 0, 1, 1], [2, 0, 0, 0, 0]]


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_random_batches_get_scipys_partition(shape, batch_size):
    rng = np.random.default_rng(hash((shape, batch_size)) % 2**32)
    height, width = shape
    typical, worst = batch_size * height, batch_size * height * ((width + 1) // 2)
    for density in DENSITIES:
        masks = rng.random((batch_size, height, width)) < density
        assert_same_partition_as_scipy(masks)
        # the same batch edited to land just below, on and just above each capacity boundary
        for target in {typical - 1, typical, typical + 1, worst - 1, worst}:
            if 0 <= target <= worst:
                assert_same_partition_as_scipy(with_run_count(masks, target, rng))
