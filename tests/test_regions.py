"""connected_components equals scipy.ndimage.label with 8-connectivity, label for label."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from jaxmetrics_ad.regions import LABELLERS, _label_batch, connected_components

EIGHT_CONNECTED = np.ones((3, 3), int)
CANVAS = 24


def scipy_labels(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference labels and counts, one scipy.ndimage.label call per mask."""
    results = [ndimage.label(mask, structure=EIGHT_CONNECTED) for mask in masks]
    return np.stack([labels for labels, _ in results]), np.array([count for _, count in results])


def assert_same_as_scipy(masks: np.ndarray, labellers=LABELLERS) -> None:
    """Every labeller (the default "auto" among them) gives scipy's int32 labels and counts."""
    expected_labels, expected_counts = scipy_labels(np.asarray(masks, bool))
    for labeller in labellers:
        labels, num_regions = connected_components(masks, labeller=labeller)
        np.testing.assert_array_equal(np.asarray(labels), expected_labels, err_msg=labeller)
        np.testing.assert_array_equal(np.asarray(num_regions), expected_counts, err_msg=labeller)
        assert labels.dtype == jnp.int32 and num_regions.dtype == jnp.int32


def spiral(size: int) -> np.ndarray:
    """A 1-px wide square spiral with 1-px gaps filling a size×size image."""
    mask = np.zeros((size, size), bool)
    row, col, length, direction = 0, 0, size - 1, 0
    steps = ((0, 1), (1, 0), (0, -1), (-1, 0))
    mask[0, 0] = True
    for segment in range(2 * size):
        if length <= 0:
            break
        row_step, col_step = steps[direction]
        for _ in range(length):
            row, col = row + row_step, col + col_step
            mask[row, col] = True
        direction = (direction + 1) % 4
        # Lengths size-1 three times, then shrinking by 2 every second turn, keep a 1-px gap.
        if segment >= 2 and segment % 2 == 0:
            length -= 2
    return mask


def serpentine(size: int) -> np.ndarray:
    """Full rows every other row, joined alternately at the right and left end: one long path."""
    mask = np.zeros((size, size), bool)
    mask[::2] = True
    mask[1::4, -1] = True
    mask[3::4, 0] = True
    return mask


@settings(max_examples=60, deadline=None)
@given(
    heights=st.lists(st.integers(1, CANVAS), min_size=3, max_size=3),
    widths=st.lists(st.integers(1, CANVAS), min_size=3, max_size=3),
    densities=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_masks_get_scipys_labels(heights, widths, densities, seed):
    # Masks of up to 24×24 drawn at various densities, placed on one canvas size so the property
    # test compiles once; sparse draws take the default run capacity, dense ones the fallback.
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, CANVAS, CANVAS), bool)
    for mask, height, width, density in zip(masks, heights, widths, densities, strict=True):
        mask[:height, :width] = rng.random((height, width)) < density
    assert_same_as_scipy(masks)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), density=st.floats(0.05, 0.95))
def test_rows_spanning_several_words_get_scipys_labels(seed, density):
    # 70 columns pack into three 32-bit words, so runs cross word boundaries.
    masks = np.random.default_rng(seed).random((2, 16, 70)) < density
    assert_same_as_scipy(masks)


def test_runs_across_word_boundaries_and_diagonal_steps_join():
    masks = np.zeros((2, 16, 70), bool)
    masks[0, 0, 31] = masks[0, 1, 32] = True  # diagonal step from word 0 into word 1
    masks[0, 3, 28:36] = True  # one run over two words
    masks[0, 4, 63:65] = masks[0, 5, 62] = True  # run ending at bit 0 of word 2, then up-left
    masks[0, 7, 69] = masks[0, 8, 68] = masks[0, 9, 69] = True  # zig-zag on the last column
    masks[1, :, 32] = True  # a vertical 1-px line on the first bit of word 1
    masks[1, 15, :] = True
    assert_same_as_scipy(masks)


@pytest.mark.parametrize("labeller", LABELLERS)
def test_shapes_touching_only_at_corners_are_one_region(labeller):
    mask = np.zeros((CANVAS, CANVAS), bool)
    mask[2:5, 2:5] = True
    mask[5:8, 5:8] = True  # corner to corner with the first square
    mask[10, 10] = mask[11, 11] = mask[12, 10] = mask[13, 9] = True  # a diagonal zig-zag
    mask[20, 0] = mask[21, 1] = mask[22, 0] = True
    labels, num_regions = connected_components(mask, labeller=labeller)
    assert int(num_regions) == 3
    np.testing.assert_array_equal(np.asarray(labels), scipy_labels(mask[None])[0][0])


def test_thin_scratches_keep_their_own_labels():
    mask = np.zeros((CANVAS, CANVAS), bool)
    rows = np.arange(CANVAS)
    mask[rows, rows] = True  # main diagonal
    mask[rows[:-3], rows[:-3] + 3] = True  # parallel diagonal two pixels away: separate
    mask[5, :] = False  # cut both diagonals once
    mask[:, 20] |= rows > 15  # a vertical scratch crossing the parallel diagonal's end
    assert_same_as_scipy(mask[None])


def test_adversarial_256px_shapes_converge_in_a_few_rounds():
    size = 256
    rows, cols = np.indices((size, size))
    masks = np.stack(
        [
            spiral(size),
            serpentine(size),
            serpentine(size).T,  # every row holds 128 one-pixel runs
            (rows + cols) % 2 == 0,  # checkerboard: one region under 8-connectivity
            (rows + cols) % 4 == 0,  # diagonal stripes: one region per stripe
            np.ones((size, size), bool),
        ]
    )
    labels, num_regions, rounds = _label_batch(jnp.asarray(masks))
    expected_labels, expected_counts = scipy_labels(masks)
    np.testing.assert_array_equal(np.asarray(labels), expected_labels)
    np.testing.assert_array_equal(np.asarray(num_regions), expected_counts)
    assert expected_counts[:4].tolist() == [1, 1, 1, 1]
    # Path halving: rounds grow with the log of the longest chain (16k runs on the spiral).
    assert int(rounds) <= 24


@pytest.mark.parametrize("labeller", LABELLERS)
def test_empty_full_and_mixed_batches(labeller):
    rng = np.random.default_rng(7)
    blobs = ndimage.binary_dilation(rng.random((CANVAS, CANVAS)) < 0.02, iterations=2)
    masks = np.stack([np.zeros((CANVAS, CANVAS), bool), np.ones((CANVAS, CANVAS), bool), blobs])
    labels, num_regions = connected_components(masks, labeller=labeller)
    assert not np.asarray(labels[0]).any() and int(num_regions[0]) == 0
    assert (np.asarray(labels[1]) == 1).all() and int(num_regions[1]) == 1
    assert_same_as_scipy(masks)
    assert_same_as_scipy(np.zeros((3, CANVAS, CANVAS), bool))


@pytest.mark.parametrize("labeller", LABELLERS)
def test_numbering_restarts_at_one_in_every_mask(labeller):
    mask = np.zeros((CANVAS, CANVAS), bool)
    mask[1, 1] = mask[10, 10] = True
    labels, num_regions = connected_components(
        np.stack([mask, np.zeros_like(mask), mask]), labeller=labeller
    )
    assert num_regions.tolist() == [2, 0, 2]
    np.testing.assert_array_equal(labels[0], labels[2])


@pytest.mark.parametrize("labeller", LABELLERS)
def test_single_mask_gives_unbatched_outputs(labeller):
    mask = np.random.default_rng(3).random((CANVAS, CANVAS)) < 0.3
    labels, num_regions = connected_components(mask.astype(np.int32), labeller=labeller)
    assert labels.shape == (CANVAS, CANVAS) and num_regions.shape == ()
    expected_labels, expected_counts = scipy_labels(mask[None])
    np.testing.assert_array_equal(np.asarray(labels), expected_labels[0])
    assert int(num_regions) == expected_counts[0]


@pytest.mark.parametrize("labeller", LABELLERS)
def test_jitted_labelling_traces_once_per_shape(labeller):
    chex.clear_trace_counter()  # the same lambda is counted across the parametrisations
    label = jax.jit(
        chex.assert_max_traces(lambda m: connected_components(m, labeller=labeller), n=1)
    )
    rng = np.random.default_rng(11)
    for _ in range(3):
        masks = rng.random((3, CANVAS, CANVAS)) < 0.2
        labels, num_regions = label(jnp.asarray(masks, jnp.int32))
        expected_labels, expected_counts = scipy_labels(masks)
        np.testing.assert_array_equal(np.asarray(labels), expected_labels)
        np.testing.assert_array_equal(np.asarray(num_regions), expected_counts)


@pytest.mark.parametrize("labeller", LABELLERS)
def test_zero_sized_batch_has_no_regions(labeller):
    labels, num_regions = connected_components(np.zeros((0, 4, 4), bool), labeller=labeller)
    assert labels.shape == (0, 4, 4) and num_regions.shape == (0,)


@pytest.mark.parametrize("values", [[[0, 2]], [[0.5, 1.0]], [[-1, 0]]])
def test_non_binary_masks_are_rejected(values):
    with pytest.raises(ValueError, match="masks"):
        connected_components(np.array(values))


@pytest.mark.parametrize("shape", [(4,), (1, 2, 3, 4)])
def test_wrong_rank_is_rejected_with_the_expected_shape(shape):
    with pytest.raises(ValueError, match=r"masks.*\(N, H, W\) or \(H, W\)"):
        connected_components(np.zeros(shape, bool))


def test_non_arrays_are_rejected():
    with pytest.raises(TypeError, match="masks"):
        connected_components(None)
    with pytest.raises(TypeError, match="masks"):
        connected_components(np.array([["a", "b"]]))
