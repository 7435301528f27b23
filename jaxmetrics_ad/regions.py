"""Label the 8-connected regions of binary masks inside ``jax.jit`` (scipy.ndimage.label's numbering).

PRO and AUPRO average over ground-truth regions, so they need connected-component labels that a jitted
evaluation step can compute. Two labellers give identical labels, chosen with ``labeller=``:

* ``"host"`` — ``scipy.ndimage.label`` per image through ``jax.pure_callback``
  (:func:`~jaxmetrics_ad.host.on_host`): nothing to compile, ~150–400 Mpx/s on typical masks;
* ``"lax"`` — ``jax.lax`` control flow only (below), so it also runs on GPU and TPU without a
  round trip to the host;
* ``"auto"`` (the default) — ``"host"`` when the computation runs on CPU, ``"lax"`` elsewhere. Inside
  jit the choice follows the platform the program is compiled for (``lax.platform_dependent``),
  eagerly the device of the masks; only the chosen labeller is compiled.

The ``jax.lax`` labeller:

How (and why this way): plain min-label propagation needs O(H·W) iterations on a 1-px serpentine, and
per-pixel union-find makes every pixel a node. Here the nodes are horizontal *runs* of foreground
pixels instead:

1. each row is packed into 32-bit words, so run starts and ends are two bitwise expressions and
   a cumulative sum of popcounts numbers the runs of the whole batch in raster order;
2. each run is linked to the leftmost run touching it (8-connectivity: columns overlap within ±1) in
   the row above and in the row below. Those two links already connect every pair of touching runs:
   if run ``u`` above touches run ``r`` below and neither is the other's leftmost partner, then the
   runs left of them, ``u'`` and ``r'``, touch ``r`` and ``u`` respectively and each other, and
   induction on position connects ``u`` to ``r`` through them;
3. Shiloach–Vishkin-style union-find (hook a parent onto the smaller grandparent with a
   scatter-min, then pointer-jump) runs over a fixed-capacity run array until nothing changes. Path
   halving makes the number of rounds grow with the log of the longest chain, not its length:
   about 13 rounds on typical masks, 17 on a 1-px spiral filling 256×256 (16k runs in one chain);
4. when it has converged every run points at the smallest run index of its region, i.e. the run
   holding the region's first pixel in raster order, so numbering the roots in order gives exactly
   ``scipy.ndimage.label(mask, structure=np.ones((3, 3)))``; one gather writes labels back to pixels.

Empty masks (most images in anomaly detection) contribute no runs, so they cost only the bitwise
passes and a write of zeros, never union-find work. When a batch has more runs than the default
capacity (one run per image row on average, far above typical ground truth), an exact fallback with
the worst-case capacity of ``ceil(W / 2)`` runs per row runs instead; its cost follows that
worst case. Measured on this project's 2-core CPU (``benchmarks/bench_regions.py``): ~160 Mpx/s on 200
masks of 256×256 (61% empty), on par with ``scipy.ndimage.label`` looping over them; ~4 Mpx/s on
batches of 1-px spirals (fallback path, ~30× slower than scipy).

Region sizes, e.g. for PRO's ``1/|region|`` weights, follow from one mask's labels with a segment
sum (``vmap`` it over a batch)::

    sizes = jax.ops.segment_sum(jnp.ones(labels.size), labels.ravel(), labels.size + 1)
    size_of_region_at_pixel = sizes[labels]  # meaningful where labels > 0
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike
from scipy import ndimage

from jaxmetrics_ad.host import on_host
from jaxmetrics_ad.validation import as_array, check_binary, is_traced

Labeller = Literal["auto", "host", "lax"]
LABELLERS: tuple[str, ...] = ("auto", "host", "lax")
"""The values of ``labeller=``: see the module docstring."""

_WORD_BITS = 32
_BIT_POSITIONS = np.arange(_WORD_BITS, dtype=np.uint32)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def check_labeller(labeller: object) -> str:
    """``labeller`` if it is one of :data:`LABELLERS`, else ValueError.

    >>> check_labeller("lax")
    'lax'
    """
    if not isinstance(labeller, str) or labeller not in LABELLERS:
        raise ValueError(f"labeller must be one of {LABELLERS}, got {labeller!r}")
    return labeller


def connected_components(
    masks: ArrayLike, *, labeller: Labeller = "auto"
) -> tuple[jax.Array, jax.Array]:
    """Label the 8-connected foreground regions of each mask, numbered like ``scipy.ndimage.label``.

    Args:
        masks: boolean or {0, 1} masks of shape (N, H, W), or one mask of shape (H, W). Values other
            than 0/1 raise ValueError when the masks are concrete; inside jit any non-zero value
            counts as foreground.
        labeller: ``"auto"`` (scipy on the host on CPU, ``jax.lax`` elsewhere), ``"host"`` or
            ``"lax"``; all give the same labels (see the module docstring).

    Returns:
        ``(labels, num_regions)``: int32 labels of the masks' shape, 0 on background and 1..k on the
        k regions of each mask in raster-scan order of their first pixel (equal, array for array, to
        ``scipy.ndimage.label(mask, structure=np.ones((3, 3)))[0]``), and the int32 number of regions
        per mask, shape (N,) (or () for one mask).

    Example:
        >>> import numpy as np
        >>> mask = np.array([[1, 0, 0, 1],
        ...                  [0, 1, 0, 1],
        ...                  [0, 0, 0, 0],
        ...                  [1, 1, 0, 1]], dtype=bool)
        >>> labels, num_regions = connected_components(mask)
        >>> labels.tolist(), int(num_regions)
        ([[1, 0, 0, 2], [0, 1, 0, 2], [0, 0, 0, 0], [3, 3, 0, 4]], 4)
    """
    check_labeller(labeller)
    masks = as_array(masks, "masks")
    if masks.ndim not in (2, 3):
        raise ValueError(
            f"masks: expected shape (N, H, W) or (H, W), got {masks.ndim} dimensions {masks.shape}"
        )
    check_binary(masks, "masks")
    foreground = masks != 0 if masks.dtype != jnp.bool_ else masks
    if masks.ndim == 2:
        labels, num_regions = _label(foreground[None], labeller)
        return labels[0], num_regions[0]
    return _label(foreground, labeller)


def _label(masks: jax.Array, labeller: str) -> tuple[jax.Array, jax.Array]:
    """Labels and region counts of boolean masks (N, H, W) with the chosen labeller."""
    if labeller == "auto" and not is_traced(masks):
        platforms = {device.platform for device in masks.devices()}
        labeller = "host" if platforms == {"cpu"} else "lax"
    if labeller == "host":
        return _label_on_host(masks)
    if labeller == "lax":
        return _label_with_lax(masks)
    # Resolved when the program is lowered for its platform: only one branch is ever compiled.
    return lax.platform_dependent(masks, cpu=_label_on_host, default=_label_with_lax)


def _label_with_lax(masks: jax.Array) -> tuple[jax.Array, jax.Array]:
    labels, num_regions, _ = _label_batch(masks)
    return labels, num_regions


def _label_on_host(masks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``scipy.ndimage.label`` of each mask, through a host callback inside jit."""
    result_shape = (
        jax.ShapeDtypeStruct(masks.shape, jnp.int32),
        jax.ShapeDtypeStruct(masks.shape[:1], jnp.int32),
    )
    return on_host(_scipy_labels, result_shape, masks)


def _scipy_labels(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int32) and region counts of numpy masks (N, H, W); empty masks are skipped."""
    masks = np.asarray(masks, dtype=bool)
    labels = np.zeros(masks.shape, np.int32)
    num_regions = np.zeros(masks.shape[:1], np.int32)
    for image, mask in enumerate(masks):
        if mask.any():
            num_regions[image] = ndimage.label(
                mask, structure=_EIGHT_CONNECTED, output=labels[image]
            )
    return labels, num_regions


@jax.jit
def _label_batch(masks: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Labels, region counts and union-find rounds for boolean masks (N, H, W).

    Uses a run capacity of one run per row, with an exact fallback for batches that have more.
    """
    num_images, height, width = masks.shape
    if masks.size == 0:
        return jnp.zeros(masks.shape, jnp.int32), jnp.zeros(num_images, jnp.int32), jnp.int32(0)
    words = _pack_rows(masks)
    starts = words & ~((words << 1) | _shift_words_right(words >> (_WORD_BITS - 1)))
    start_counts = lax.population_count(starts).astype(jnp.int32).ravel()
    total_runs = jnp.sum(start_counts)
    typical_capacity = num_images * height
    worst_capacity = num_images * height * ((width + 1) // 2)
    if typical_capacity >= worst_capacity:
        return _label_runs(masks, words, starts, worst_capacity)
    return lax.cond(
        total_runs <= typical_capacity,
        lambda: _label_runs(masks, words, starts, typical_capacity),
        lambda: _label_runs(masks, words, starts, worst_capacity),
    )


def _pack_rows(masks: jax.Array) -> jax.Array:
    """Bit-pack each row: (N, H, W) bool -> (N, H, ceil(W / 32)) uint32, column c at bit c % 32."""
    width = masks.shape[-1]
    padded_width = -(-width // _WORD_BITS) * _WORD_BITS
    padded = jnp.pad(masks, ((0, 0), (0, 0), (0, padded_width - width)))
    bits = padded.reshape(*masks.shape[:2], -1, _WORD_BITS).astype(jnp.uint32) << _BIT_POSITIONS
    return jnp.sum(bits, axis=-1, dtype=jnp.uint32)


def _shift_words_right(carry: jax.Array) -> jax.Array:
    """Move each word's carry bit to the next word of its row (the first word gets 0)."""
    return jnp.pad(carry, ((0, 0), (0, 0), (1, 0)))[..., :-1]


def _select_bit(word: jax.Array, rank: jax.Array) -> jax.Array:
    """Position of the ``rank``-th (0-based) set bit of each uint32 ``word``, by binary search."""
    position = jnp.zeros(word.shape, jnp.uint32)
    rank = rank.astype(jnp.uint32)
    for half in (16, 8, 4, 2, 1):
        low_count = lax.population_count((word >> position) & jnp.uint32((1 << half) - 1))
        skip = rank >= low_count
        position = position + jnp.where(skip, jnp.uint32(half), jnp.uint32(0))
        rank = rank - jnp.where(skip, low_count, jnp.uint32(0))
    return position.astype(jnp.int32)


def _count_bits_below(words: jax.Array, bit: jax.Array) -> jax.Array:
    """Set bits of each word strictly below position ``bit`` (0..31)."""
    below = (jnp.uint32(1) << bit.astype(jnp.uint32)) - jnp.uint32(1)
    return lax.population_count(words & below).astype(jnp.int32)


def _label_runs(
    masks: jax.Array, words: jax.Array, starts: jax.Array, capacity: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Run-based labelling with room for ``capacity`` runs (the caller checks that they fit)."""
    num_images, height, width = masks.shape
    words_per_row = words.shape[-1]
    ends = words & ~((words >> 1) | (jnp.pad(words, ((0, 0), (0, 0), (0, 1)))[..., 1:] << 31))
    flat_starts, flat_ends = starts.ravel(), ends.ravel()
    start_counts = lax.population_count(flat_starts).astype(jnp.int32)
    end_counts = lax.population_count(flat_ends).astype(jnp.int32)
    starts_before_word = jnp.cumsum(start_counts) - start_counts
    ends_before_word = jnp.cumsum(end_counts) - end_counts
    total_runs = starts_before_word[-1] + start_counts[-1]

    # Run r starts (and ends) at the r-th set bit of the batch's start (end) bitmap in raster order;
    # its start and end share one row because runs never wrap.
    run_index = jnp.arange(capacity, dtype=jnp.int32)
    is_run = run_index < total_runs
    start_word = jnp.searchsorted(starts_before_word + start_counts, run_index, side="right")
    end_word = jnp.searchsorted(ends_before_word + end_counts, run_index, side="right")
    start_word = jnp.minimum(start_word, flat_starts.size - 1).astype(jnp.int32)
    end_word = jnp.minimum(end_word, flat_ends.size - 1).astype(jnp.int32)
    row = start_word // words_per_row
    first_column = (start_word % words_per_row) * _WORD_BITS + _select_bit(
        flat_starts[start_word], run_index - starts_before_word[start_word]
    )
    last_column = (end_word % words_per_row) * _WORD_BITS + _select_bit(
        flat_ends[end_word], run_index - ends_before_word[end_word]
    )

    def leftmost_touching_run(neighbour_row: jax.Array, row_exists: jax.Array) -> jax.Array:
        # The first run of that row ending at or after column first-1 is the leftmost candidate;
        # it touches when it also starts at or before column last+1.
        from_column = jnp.maximum(first_column - 1, 0)
        word = neighbour_row * words_per_row + from_column // _WORD_BITS
        word = jnp.clip(word, 0, flat_ends.size - 1)
        candidate = ends_before_word[word] + _count_bits_below(
            flat_ends[word], from_column % _WORD_BITS
        )
        # ``candidate == total_runs`` means "no run ends there or later": it must fail the test
        # itself, not through a clipped index that names the batch's last run instead.
        exists = candidate < total_runs
        index = jnp.clip(candidate, 0, capacity - 1)
        touches = (
            is_run
            & row_exists
            & exists
            & (row[index] == neighbour_row)
            & (first_column[index] <= last_column + 1)
        )
        return jnp.where(touches, index, run_index)

    row_in_image = row % height
    above = leftmost_touching_run(row - 1, row_in_image > 0)
    below = leftmost_touching_run(row + 1, row_in_image < height - 1)
    parent, rounds = _union_find(run_index, above, below)

    # Every run now points at its region's first run; number roots per image in raster order.
    is_root = is_run & (parent == run_index)
    roots_up_to = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(is_root, dtype=jnp.int32)])
    runs_per_image = start_counts.reshape(num_images, -1).sum(axis=1)
    runs_up_to_image = jnp.cumsum(runs_per_image, dtype=jnp.int32)
    runs_before_image = runs_up_to_image - runs_per_image
    roots_before_image = roots_up_to[runs_before_image]
    num_regions = roots_up_to[runs_up_to_image] - roots_before_image
    run_label = roots_up_to[parent + 1] - roots_before_image[row // height]

    # One image at a time, so that empty images only write zeros and XLA cannot fuse the run-label
    # gathers above into this per-pixel pass (it would redo them for every pixel).
    def label_pixels(image):
        image_words, image_starts, image_starts_before_word = image
        return lax.cond(
            jnp.any(image_words != 0),
            lambda: _pixel_labels(
                image_words, image_starts, image_starts_before_word, run_label, width
            ),
            lambda: jnp.zeros((height, width), jnp.int32),
        )

    labels = lax.map(label_pixels, (words, starts, starts_before_word.reshape(words.shape)))
    return labels, num_regions, rounds


def _union_find(
    nodes: jax.Array, above: jax.Array, below: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Parent array where each node points at the smallest node of its component, and the rounds.

    Edges are ``node - above[node]`` and ``node - below[node]`` (self loops for none), used in both
    directions. Each round hooks the parent of one end onto the grandparent of the other end when
    that is smaller (a scatter-min) and halves every path by pointing nodes at their grandparents.
    Parents only decrease, so the loop stops once a round changes nothing; then every node points
    at a node that points at itself, and both ends of every edge share it, so it can only be the
    smallest node of the component.
    """
    sources = jnp.concatenate([nodes, nodes, above, below])
    targets = jnp.concatenate([above, below, nodes, nodes])

    def one_round(state):
        parent, _, rounds = state
        grandparent = parent[parent]
        offered = grandparent[targets]
        hooked = parent.at[parent[sources]].min(offered)
        updated = jnp.minimum(hooked, grandparent)
        return updated, jnp.any(updated != parent), rounds + 1

    parent, _, rounds = lax.while_loop(
        lambda state: state[1], one_round, (nodes, jnp.array(True), jnp.array(0, jnp.int32))
    )
    return parent, rounds


def _pixel_labels(
    words: jax.Array,
    starts: jax.Array,
    starts_before_word: jax.Array,
    run_label: jax.Array,
    width: int,
) -> jax.Array:
    """Label of each pixel of one packed image (H, words per row) from the labels of its runs."""
    # Pixel (word w, bit b) belongs to run starts_before_word[w] + (starts at bits <= b) - 1.
    bits = _BIT_POSITIONS
    pixel_run = (
        starts_before_word[..., None]
        + _count_bits_below(starts[..., None], bits)
        + ((starts[..., None] >> bits) & 1).astype(jnp.int32)
        - 1
    )
    is_foreground = ((words[..., None] >> bits) & 1) == 1
    labels = jnp.where(is_foreground, run_label[jnp.clip(pixel_run, 0, run_label.size - 1)], 0)
    return labels.reshape(words.shape[0], -1)[:, :width]
