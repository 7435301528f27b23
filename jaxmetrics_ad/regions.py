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
passes and a write of zeros, never union-find work. Steps 2–4 run in a ``while_loop`` over windows of
whole images holding at most ``max(N·H, H·ceil(W / 2))`` runs (one run per row of the batch on
average, far above typical ground truth, or the most one image can hold): a typical batch is one
window, a dense one as many as it needs, each exact, and there is a single compiled path per shape
(a second, worst-case path inside a ``lax.cond`` used to double the compile time). Measured on this
project's 2-core CPU, loaded: compiling it took ~0.55–0.6 s per batch shape (~1 s of CPU time over
XLA's two threads) where the two-path version took ~1.05 s (~1.8 s CPU); labelling runs at
~330 Mpx/s on 200 masks of 256×256 (61% empty, ``benchmarks/bench_regions.py``'s workload), ~240
Mpx/s in batches of 32.

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
    """Labels, region counts and union-find rounds (the most of any window) for boolean masks.

    One compiled path for every batch: runs are numbered over the whole batch, then labelled in
    windows of whole images holding at most ``capacity`` runs (one run per row of the batch, or the
    most one image can hold if that is more), so a typical batch takes one window and a dense one
    as many as it needs, each exact.
    """
    num_images, height, width = masks.shape
    if masks.size == 0:
        return jnp.zeros(masks.shape, jnp.int32), jnp.zeros(num_images, jnp.int32), jnp.int32(0)
    words = _pack_rows(masks)
    words_per_row = words.shape[-1]
    carry_in = _shift_words_right(words >> (_WORD_BITS - 1))
    next_low_bit = jnp.pad(words, ((0, 0), (0, 0), (0, 1)))[..., 1:] & 1
    starts = (words & ~((words << 1) | carry_in)).ravel()
    ends = (words & ~((words >> 1) | (next_low_bit << (_WORD_BITS - 1)))).ravel()
    num_words = starts.size
    # Runs started before a word minus the one (if any) still open at its first bit: ends before it.
    open_run = (carry_in & words & 1).astype(jnp.int32).ravel()
    start_counts = lax.population_count(starts).astype(jnp.int32)
    end_counts = lax.population_count(ends).astype(jnp.int32)
    starts_through_word = jnp.cumsum(start_counts)
    starts_before_word = starts_through_word - start_counts
    ends_before_word = starts_before_word - open_run
    total_runs = starts_through_word[-1]
    # image_bounds[n]: runs before image n; image_bounds[N]: all runs
    image_bounds = jnp.append(starts_before_word[:: height * words_per_row], total_runs)

    image_capacity = height * ((width + 1) // 2)  # 1010...1 in every row
    capacity = max(num_images * height, image_capacity)
    worst_total = num_images * image_capacity
    # One search finds start and end words: end keys and queries sit above every start key/query.
    offset = worst_total + capacity
    keys = jnp.concatenate([starts_through_word, ends_before_word + end_counts + offset])
    local = jnp.arange(capacity, dtype=jnp.int32)
    images = jnp.arange(num_images, dtype=jnp.int32)

    def label_window(state):
        first_image, run_labels, num_regions, rounds = state
        first = image_bounds[first_image]
        stop_image = jnp.sum(image_bounds[1:] <= first + capacity).astype(jnp.int32)
        stop = image_bounds[stop_image]
        run = first + local
        is_run = run < stop
        # Run r starts (ends) at the r-th set bit of the start (end) bitmap in raster order; its
        # start and end share one row because runs never wrap.
        found = jnp.searchsorted(keys, jnp.concatenate([run, run + offset]), side="right")
        start_word = jnp.minimum(found[:capacity], num_words - 1).astype(jnp.int32)
        end_word = jnp.clip(found[capacity:] - num_words, 0, num_words - 1).astype(jnp.int32)
        row = start_word // words_per_row
        first_column = (start_word % words_per_row) * _WORD_BITS + _select_bit(
            starts[start_word], run - starts_before_word[start_word]
        )
        last_column = (end_word % words_per_row) * _WORD_BITS + _select_bit(
            ends[end_word], run - ends_before_word[end_word]
        )

        def leftmost_touching_run(neighbour_row: jax.Array, row_exists: jax.Array) -> jax.Array:
            # The first run of that row ending at or after column first-1 is the leftmost candidate;
            # it touches when it also starts at or before column last+1. A candidate outside the
            # window (``>= stop``) is in another image: it must fail the test itself, not through a
            # clipped index that names another run.
            from_column = jnp.maximum(first_column - 1, 0)
            word = neighbour_row * words_per_row + from_column // _WORD_BITS
            word = jnp.clip(word, 0, num_words - 1)
            candidate = ends_before_word[word] + _count_bits_below(
                ends[word], from_column % _WORD_BITS
            )
            index = jnp.clip(candidate - first, 0, capacity - 1)
            touches = (
                is_run
                & row_exists
                & (candidate < stop)
                & (row[index] == neighbour_row)
                & (first_column[index] <= last_column + 1)
            )
            return jnp.where(touches, index, local)

        row_in_image = row % height
        above = leftmost_touching_run(row - 1, row_in_image > 0)
        below = leftmost_touching_run(row + 1, row_in_image < height - 1)
        parent, window_rounds = _union_find(local, above, below)

        # Every run now points at its region's first run; number roots per image in raster order.
        is_root = is_run & (parent == local)
        roots_up_to = jnp.concatenate(
            [jnp.zeros(1, jnp.int32), jnp.cumsum(is_root, dtype=jnp.int32)]
        )
        roots_at_bound = roots_up_to[jnp.clip(image_bounds - first, 0, capacity)]
        image = jnp.clip(row // height, 0, num_images - 1)
        label = roots_up_to[parent + 1] - roots_at_bound[image]
        in_window = (images >= first_image) & (images < stop_image)
        num_regions = jnp.where(in_window, roots_at_bound[1:] - roots_at_bound[:-1], num_regions)
        # Slots past ``stop`` get junk that the next window overwrites (it starts at ``stop``).
        run_labels = lax.dynamic_update_slice(run_labels, label, (first,))
        return stop_image, run_labels, num_regions, jnp.maximum(rounds, window_rounds)

    def runs_left(state):
        first_image = state[0]
        return image_bounds[jnp.minimum(first_image, num_images)] < total_runs

    initial = (
        jnp.int32(0),
        jnp.zeros(worst_total + capacity, jnp.int32),  # room for a whole window past any start
        jnp.zeros(num_images, jnp.int32),
        jnp.int32(0),
    )
    _, run_labels, num_regions, rounds = lax.while_loop(runs_left, label_window, initial)

    # Pixel (word w, bit b) belongs to run starts_before_word[w] + (starts at bits <= b) - 1.
    start_words = starts.reshape(words.shape)[..., None]
    pixel_run = (
        starts_before_word.reshape(words.shape)[..., None]
        + _count_bits_below(start_words, _BIT_POSITIONS)
        + ((start_words >> _BIT_POSITIONS) & 1).astype(jnp.int32)
        - 1
    )
    is_foreground = ((words[..., None] >> _BIT_POSITIONS) & 1) == 1
    pixel_label = run_labels[jnp.clip(pixel_run, 0, run_labels.size - 1)]
    labels = jnp.where(is_foreground, pixel_label, 0).reshape(num_images, height, -1)
    return labels[..., :width], num_regions, rounds


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
