"""numpy twins of the binned state updates, for eager updates on the CPU backend: nothing to compile.

An eager update through XLA pays a compile per program and batch shape: the five-metric pixel
suite's update measured 1.3–3 s of compile on a 2-core CPU, more than its whole warm run. On the
CPU backend, outside any trace, the binned states (:class:`~jaxmetrics_ad.histogram.ScoreHistogram`
with or without exact tails, the binned PIMO state, AUPRO's regions) are therefore updated here with
numpy and ``scipy.ndimage.label``, and the states they return hold numpy arrays (jax takes them as
they are: jit, merge, ``all_reduce`` and compute read them like jax arrays). Inside ``jax.jit``, under
``vmap``/``shard_map`` and on GPU/TPU the XLA code runs as before, so the two paths must agree:

* counts (and so every count-based value: AUROC, AUPR, F1Max, PIMO's TPRs and FPRs) are identical;
* the bin grid (width, offset) and the exact tails (which samples, their scores, channels and
  weights) are identical; tail slots may be in another order (readers sort them);
* weight sums (AUPRO's 1/|region|) are summed in float32 in sample order, as XLA's scatter-add
  sums them on CPU, so they are identical too, except when exact-tail samples return to the bins
  (the two paths add those in another order: float32 rounding);
* subnormal scores are kept as they are (XLA on CPU flushes them to zero).

``tests/test_numpy_updates.py`` checks each of these against the XLA path. :func:`numpy_updates`
switches the path off (e.g. to time XLA's eager updates, or to compare).

Example:
    >>> import jaxmetrics_ad as jm
    >>> m = jm.AUROC(thresholds=64).update([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    >>> type(m.state.counts.lo).__module__, float(m.compute())
    ('numpy', 0.75)
    >>> with numpy_updates(False):
    ...     type(jm.AUROC(thresholds=64).update([0.1, 0.8], [0, 1]).state.counts.lo).__name__
    'ArrayImpl'
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import numpy as np
from scipy import ndimage

from jaxmetrics_ad.counts import WideCount
from jaxmetrics_ad.validation import clean_bool_array, is_traced, known_range

_ENABLED = [True]
_WORKER: list[ThreadPoolExecutor] = []  # made on first use; a forked child makes its own
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WORKER.clear)
_WORD_MASK = np.uint64(0xFFFFFFFF)
_INT32_MAX_SHIFT = 31
_MANTISSA_BITS = 24
_CHUNK = 1 << 17  # samples binned at a time: a float32 chunk and its slots fit in a core's L2
_FLOAT_SLOTS = 1 << _MANTISSA_BITS  # slots below this are exact in float32
_GUESS_SAMPLES = 1 << 15  # scores sampled to guess where the tails of a large batch begin
_EIGHT_CONNECTED = np.ones((3, 3), bool)


@contextlib.contextmanager
def numpy_updates(enabled: bool) -> Iterator[None]:
    """Within the block, eager binned updates on CPU run in numpy (``True``, the default outside
    any block) or through XLA as inside jit (``False``).

    Example:
        >>> with numpy_updates(False):
        ...     numpy_updates_apply()
        False
    """
    _ENABLED.append(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.pop()


def numpy_updates_apply(*leaves: Any) -> bool:
    """Whether an update of these (eager) arrays runs in numpy: enabled, CPU backend, not traced.

    Example:
        >>> numpy_updates_apply(np.zeros(2))
        True
    """
    return _ENABLED[-1] and jax.default_backend() == "cpu" and not is_traced(*leaves)


def host_arrays(tree: Any) -> Any:
    """Every array leaf of ``tree`` as a numpy array (a view where jax allows one, on CPU).

    Example:
        >>> import jax.numpy as jnp
        >>> type(host_arrays({"a": jnp.ones(2)})["a"]).__name__
        'ndarray'
    """
    return jax.tree_util.tree_map(np.asarray, tree)


def scalar(value: Any, dtype: Any) -> np.ndarray:
    """A 0-d numpy array (not a numpy scalar: jax would treat a Python number as weakly typed).

    Example:
        >>> scalar(3, np.int32).shape
        ()
    """
    return np.asarray(value, dtype=dtype).reshape(())


# -- ScoreHistogram.add ---------------------------------------------------------------------------


def histogram_add(
    histogram: Any,
    scores: np.ndarray,
    channels: np.ndarray | int,
    weights: np.ndarray | Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
    window: tuple[int, int] | None = None,
    weighted: np.ndarray | None = None,
) -> Any:
    """:meth:`ScoreHistogram.add` in numpy (same arguments; ``window=(first, rows)`` of ints; an
    int ``channels`` puts every sample in that channel, bools are channels 0 and 1). With
    ``weighted`` (the ascending indices of the samples whose weights are not all zero),
    ``weights`` holds only those samples' weights, shape (W, len(weighted)). ``weights`` may also
    be a function returning ``(weighted, weights)``, called once the counts are binned (e.g. the
    result of work running meanwhile in :func:`in_background`).

    Example:
        >>> from jaxmetrics_ad.histogram import ScoreHistogram
        >>> h = ScoreHistogram.auto(num_bins=4, num_channels=1, tail_size=2)
        >>> h = histogram_add(h, np.array([1e9, 0.1, 0.2, 0.3, -5.0]), 0)
        >>> sorted(h.tail_scores[:, 0].tolist()), float(h.core_max)
        ([-5.0, 1000000000.0], 0.30000001192092896)
    """
    histogram = host_arrays(histogram)
    scores = np.ravel(scores).astype(np.float32, copy=False)
    if not isinstance(channels, int):
        channels = np.ravel(channels)
        if channels.dtype != np.bool_:
            channels = channels.astype(np.int32, copy=False)
    num_weights = histogram.weights.shape[0]
    later = None
    if callable(weights):
        later, weights = weights, None
    elif weights is not None:
        samples = scores.shape[0] if weighted is None else weighted.shape[0]
        weights = np.reshape(weights, (num_weights, samples)).astype(np.float32, copy=False)
    if not num_weights:
        weights = weighted = later = None
    kept, span = _kept(scores, channels)
    batch = _Samples(scores, channels, kept, weights, weighted, span)
    if later is not None:
        batch = batch._replace(later=_sparse_weights(later, num_weights))
    if histogram.tail_size == 0:
        binned = _add_binned(histogram, [batch], window)
        return binned.replace(score_min=binned.core_min, score_max=binned.core_max)
    return _add_with_tails(histogram, batch)


def _sparse_weights(
    found: Callable[[], tuple[np.ndarray, np.ndarray]], num_weights: int
) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    @functools.cache
    def weights() -> tuple[np.ndarray, np.ndarray]:
        weighted, values = found()
        return weighted, np.reshape(values, (num_weights, weighted.shape[0])).astype(np.float32)

    return weights


class _Samples(NamedTuple):
    """Samples to bin: ``channels`` an int for all of them; ``kept`` None when all are kept but
    those at ``left_out`` (ascending indices; None when none is); ``weights`` None when all are
    zero, else (W, N), or (W, M) for the M samples ``weighted`` (the ascending indices of those
    whose weights are not all zero) when it is given; ``span`` the (min, max) of the kept scores
    when known; ``later``, when given, returns ``(weighted,
    weights)`` (dense: ``weighted`` None), to be called only once the counts are binned."""

    scores: np.ndarray
    channels: np.ndarray | int
    kept: np.ndarray | None
    weights: np.ndarray | None
    weighted: np.ndarray | None = None
    span: tuple[np.float32, np.float32] | None = None
    later: Callable[[], tuple[np.ndarray | None, np.ndarray]] | None = None
    left_out: np.ndarray | None = None

    def has_weights(self) -> bool:
        return self.weights is not None or self.later is not None

    def resolved(self) -> _Samples:
        """The samples with their weights (``later`` called)."""
        if self.later is None:
            return self
        weighted, weights = self.later()
        return self._replace(weighted=weighted, weights=weights, later=None)

    def take(self, index: np.ndarray) -> _Samples:
        """The samples at ``index``, with dense weights (found later when this set's are); for a
        set without ``left_out``."""
        if self.later is not None:
            taken = self._replace(later=None).take(index)
            return taken._replace(
                later=functools.cache(lambda: (None, self.resolved().take(index).weights))
            )
        channels = self.channels if isinstance(self.channels, int) else self.channels[index]
        kept = None if self.kept is None else self.kept[index]
        weights = self.weights
        if weights is not None and self.weighted is not None:
            weights = np.zeros((weights.shape[0], index.shape[0]), np.float32)
            if self.weighted.size:
                position = np.minimum(np.searchsorted(self.weighted, index), self.weighted.size - 1)
                hit = self.weighted[position] == index
                weights[:, hit] = self.weights[:, position[hit]]
        elif weights is not None:
            weights = weights[:, index]
        return _Samples(self.scores[index], channels, kept, weights)

    def weighted_samples(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept samples with a non-zero weight, and their weights (W, M)."""
        if self.weighted is not None:
            index, weights = self.weighted, self.weights
        else:
            index = np.flatnonzero(np.any(self.weights != 0, axis=0))
            weights = self.weights[:, index]
        if self.kept is not None:
            kept = self.kept[index]
            index, weights = index[kept], weights[:, kept]
        elif self.left_out is not None and self.left_out.size:
            kept = ~np.isin(index, self.left_out, assume_unique=True)
            index, weights = index[kept], weights[:, kept]
        return index, weights

    def channel_values(self) -> np.ndarray:
        if isinstance(self.channels, int):
            return np.full(self.scores.shape, self.channels, np.int32)
        return self.channels

    def weight_values(self, num_weights: int) -> np.ndarray:
        if self.later is not None:
            return self.resolved().weight_values(num_weights)
        if self.weights is None:
            return np.zeros((num_weights, self.scores.shape[0]), np.float32)
        return self.weights


def _kept(
    scores: np.ndarray, channels: np.ndarray | int
) -> tuple[np.ndarray | None, tuple[np.float32, np.float32] | None]:
    """Finite scores in a valid channel (None when that is all of them: two reductions, no mask),
    and then the scores' (min, max)."""
    if scores.size == 0:
        return None, None
    valid_channels = isinstance(channels, int) and channels >= 0
    if not isinstance(channels, int):
        valid_channels = channels.dtype == np.bool_ or bool(channels.min() >= 0)
    lowest, highest = _score_range(scores)
    if np.isfinite(lowest) and np.isfinite(highest) and valid_channels:
        return None, (lowest, highest)
    return np.isfinite(scores) & (channels >= 0), None


def _score_range(scores: np.ndarray) -> tuple[np.generic, np.generic]:
    """(min, max) of the scores (NaN when one is NaN): the range the input check found when it
    checked these very values, else two reductions."""
    found = known_range(scores)
    if found is not None:
        return found
    with np.errstate(invalid="ignore"):
        return scores.min(), scores.max()


def _finite(scores: np.ndarray) -> bool:
    """Whether every score is finite (two reductions, or none when the input check found it)."""
    if scores.size == 0:
        return True
    lowest, highest = _score_range(scores)
    return bool(np.isfinite(lowest) and np.isfinite(highest))


def _add_with_tails(histogram, batch: _Samples) -> Any:
    """The tailed update (see ``ScoreHistogram._with_new_tails``), with the same tails and cuts.

    Every sample above the high cut is in the high tail, and the cut only rises, so only the batch
    samples above the old cut can enter the high tail (likewise below the low cut): the K-th
    highest score of old tails and batch together, where it matters, is that of this small pool.
    """
    size = histogram.tail_size
    num_weights = histogram.weights.shape[0]
    high_cut, low_cut = (np.float32(c) for c in histogram.tail_cuts)
    scores = batch.scores
    if batch.span is not None:
        beyond = not (batch.span[1] <= high_cut and batch.span[0] >= low_cut)
    else:  # NaN scores land here too, and are left out by ``kept``
        with np.errstate(invalid="ignore"):
            beyond = scores.size and not (scores.max() <= high_cut and scores.min() >= low_cut)
    picked = np.zeros(0, np.int64)
    if beyond:
        picked = _tail_candidates(scores, batch.kept, high_cut, low_cut, size)
    old_channels = histogram.tail_channels.ravel()
    old_real = np.flatnonzero(old_channels >= 0)
    old = _Samples(
        histogram.tail_scores.ravel()[old_real],
        old_channels[old_real],
        None,
        histogram.tail_weights.reshape(num_weights, 2 * size)[:, old_real] if num_weights else None,
    )
    new = batch.take(picked)
    pool_scores = np.concatenate([old.scores, new.scores])

    @functools.cache
    def pool_weights() -> tuple[None, np.ndarray]:
        values = [old.weight_values(num_weights), new.weight_values(num_weights)]
        return None, np.concatenate(values, axis=1)

    pool = _Samples(
        pool_scores,
        np.concatenate([old.channel_values(), new.channel_values()]),
        None,
        None,
        later=pool_weights if num_weights else None,
    )
    count = pool_scores.shape[0]
    if count >= size:  # else the K-th highest (lowest) is -inf (+inf): the cut stays
        high_cut = max(high_cut, np.partition(pool_scores, count - size)[count - size])
        low_cut = min(low_cut, np.partition(pool_scores, size - 1)[size - 1])
    in_high = pool_scores > high_cut
    in_low = (pool_scores < low_cut) & ~in_high
    rest = batch
    if picked.size and batch.kept is None:  # a few samples out of many: left out by index
        rest = batch._replace(left_out=picked, span=_range_without(scores, picked))
    elif picked.size:
        rest_kept = batch.kept.copy()
        rest_kept[picked] = False
        rest = batch._replace(kept=rest_kept, span=None)
    binned = _add_binned(histogram, [pool._replace(kept=~in_high & ~in_low), rest])
    channels, weights = pool.channel_values(), pool.weight_values(num_weights)  # after binning

    def tail(members: np.ndarray, descending: bool) -> tuple[np.ndarray, ...]:
        index = np.flatnonzero(members)
        order = np.argsort(-pool_scores[index] if descending else pool_scores[index], kind="stable")
        index = index[order]
        filled = index.shape[0]
        tail_scores = np.full(size, np.nan, np.float32)
        tail_channels = np.full(size, -1, np.int32)
        tail_weights = np.zeros((num_weights, size), np.float32)
        tail_scores[:filled] = pool_scores[index]
        tail_channels[:filled] = channels[index]
        tail_weights[:, :filled] = weights[:, index]
        return tail_scores, tail_channels, tail_weights

    high, low = tail(in_high, descending=True), tail(in_low, descending=False)
    in_tails = pool_scores[in_high | in_low]
    lowest = np.float32(in_tails.min()) if in_tails.size else np.float32(np.inf)
    highest = np.float32(in_tails.max()) if in_tails.size else np.float32(-np.inf)
    return binned.replace(
        tail_scores=np.stack([high[0], low[0]]),
        tail_channels=np.stack([high[1], low[1]]),
        tail_weights=np.stack([high[2], low[2]], axis=1),
        tail_cuts=np.array([high_cut, low_cut], np.float32),
        score_min=scalar(min(lowest, np.float32(binned.core_min)), np.float32),
        score_max=scalar(max(highest, np.float32(binned.core_max)), np.float32),
    )


def _tail_candidates(
    scores: np.ndarray,
    kept: np.ndarray | None,
    high_cut: np.float32,
    low_cut: np.float32,
    size: int,
) -> np.ndarray:
    """Ascending indices of the kept samples beyond the cuts that can enter a tail: all of them
    when they are at most ``4 * size``, else those among the ``size`` highest or lowest of them
    (ties included).

    The search runs in cache-sized chunks. When there are many (e.g. the first batch: the cuts
    are at -inf/+inf), a strided sample of the scores gives guesses ``g_high``/``g_low`` for the
    ``size``-th highest and lowest; when at least ``size`` samples lie at or beyond each guess,
    those contain every sample that can enter, and the ``size``-th highest (lowest) is theirs, so
    only they are partitioned; otherwise all the samples beyond the cuts are.
    """
    limit = 4 * size
    parts, found = [], 0
    for start, chunk, chunk_kept in _score_chunks(scores, kept):
        index = np.flatnonzero(_beyond(chunk, chunk_kept, high_cut, low_cut))
        found += index.shape[0]
        if found > limit:
            break
        parts.append(index + start)
    else:
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
    guesses = _extreme_guesses(scores, kept, high_cut, low_cut, size)
    if guesses is not None:
        picked = _extremes_beyond(scores, kept, high_cut, low_cut, size, *guesses)
        if picked is not None:
            return picked
    beyond = _beyond(scores, kept, high_cut, low_cut)
    picked = np.flatnonzero(beyond)
    values = scores[picked]
    count = values.shape[0]
    parted = np.partition(values, (size - 1, count - size))
    return picked[(values >= parted[count - size]) | (values <= parted[size - 1])]


def _range_without(scores: np.ndarray, left_out: np.ndarray) -> tuple[np.float32, np.float32]:
    """(min, max) of the scores but those at ``left_out`` (ascending indices); (inf, -inf) when
    none is left. In chunks: a chunk without such a sample is reduced as it is, one with some is
    copied with them replaced by one of its other scores (a masked reduction is ten times slower).
    """
    lowest, highest = np.float32(np.inf), np.float32(-np.inf)
    bounds = np.searchsorted(left_out, np.arange(0, scores.shape[0] + _CHUNK, _CHUNK))
    for number, (start, chunk, _) in enumerate(_score_chunks(scores, None)):
        inside = left_out[bounds[number] : bounds[number + 1]] - start
        if inside.shape[0] == chunk.shape[0]:
            continue
        if inside.size:
            remaining = np.ones(chunk.shape[0], bool)
            remaining[inside] = False
            chunk = chunk.copy()
            chunk[inside] = chunk[np.argmax(remaining)]
        lowest, highest = min(lowest, chunk.min()), max(highest, chunk.max())
    return lowest, highest


def _score_chunks(
    scores: np.ndarray, kept: np.ndarray | None
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    for start in range(0, scores.shape[0], _CHUNK):
        part = slice(start, start + _CHUNK)
        yield start, scores[part], None if kept is None else kept[part]


def _beyond(
    scores: np.ndarray, kept: np.ndarray | None, high_cut: np.float32, low_cut: np.float32
) -> np.ndarray:
    """Kept scores above the high cut or below the low one."""
    with np.errstate(invalid="ignore"):
        beyond = scores > high_cut
        beyond |= scores < low_cut
    if kept is not None:
        beyond &= kept
    return beyond


def _extreme_guesses(
    scores: np.ndarray,
    kept: np.ndarray | None,
    high_cut: np.float32,
    low_cut: np.float32,
    size: int,
) -> tuple[np.float32, np.float32] | None:
    """Guesses for the ``size``-th highest and lowest score beyond the cuts, from every
    ``stride``-th sample: ranks chosen so that about ``2 * size`` samples lie beyond each."""
    stride = max(1, scores.shape[0] // _GUESS_SAMPLES)
    sample = scores[::stride]
    sample = sample[_beyond(sample, None if kept is None else kept[::stride], high_cut, low_cut)]
    rank = -(-2 * size // stride) + 8
    if sample.shape[0] < 2 * rank:
        return None
    count = sample.shape[0]
    parted = np.partition(sample, (rank - 1, count - rank))
    return parted[count - rank], parted[rank - 1]


def _extremes_beyond(
    scores: np.ndarray,
    kept: np.ndarray | None,
    high_cut: np.float32,
    low_cut: np.float32,
    size: int,
    high_guess: np.float32,
    low_guess: np.float32,
) -> np.ndarray | None:
    """The samples beyond the cuts among the ``size`` highest or lowest of them, found among those
    at or beyond the guesses; None when fewer than ``size`` lie at or beyond a guess."""
    parts = []
    high_count = low_count = 0
    for start, chunk, chunk_kept in _score_chunks(scores, kept):
        beyond = _beyond(chunk, chunk_kept, high_cut, low_cut)
        high = beyond & (chunk >= high_guess)
        low = beyond & (chunk <= low_guess)
        high_count += np.count_nonzero(high)
        low_count += np.count_nonzero(low)
        parts.append(np.flatnonzero(high | low) + start)
    if high_count < size or low_count < size:
        return None
    picked = np.concatenate(parts)
    values = scores[picked]
    high_values, low_values = values[values >= high_guess], values[values <= low_guess]
    top = np.partition(high_values, high_values.shape[0] - size)[high_values.shape[0] - size]
    bottom = np.partition(low_values, size - 1)[size - 1]
    return picked[(values >= top) | (values <= bottom)]


def _add_binned(histogram, sets: list[_Samples], window: tuple[int, int] | None = None) -> Any:
    """``ScoreHistogram._add_binned`` in numpy: one widening of the grid, one bincount per set,
    then the weights (found only now when they come ``later``)."""
    low, high = np.float32(histogram.core_min), np.float32(histogram.core_max)
    for samples in sets:
        if samples.scores.size:
            set_low, set_high = _kept_range(samples)
            low, high = min(low, set_low), max(high, set_high)
    grown = _cover(histogram, np.float32(low), np.float32(high))
    num_bins = grown.num_bins
    first, written = (0, grown.num_channels) if window is None else window
    overflow = written * num_bins
    batch_counts = np.zeros(overflow + 1, np.int64)
    summed = np.zeros(grown.weights.shape, np.float32)
    # in chunks that stay in the cache: a pass over a chunk costs a fraction of one over the batch,
    # and the chunks' buffers are reused instead of fresh pages being faulted in for each batch
    chunk = max(_CHUNK, 4 * (overflow + 1))
    slots = np.empty(min(chunk, max(s.scores.shape[0] for s in sets)), np.intp)  # reused
    for samples in sets:
        for part in _chunks(samples, chunk):
            flat = _flat_index(grown, part, first, overflow, slots)
            batch_counts += np.bincount(flat, minlength=overflow + 1)
    for samples in sets:
        if samples.has_weights() and samples.scores.size:
            weighted, values = samples.resolved().weighted_samples()
            bins = _bin_index(grown, samples.scores[weighted])
            for row in range(values.shape[0]):
                # float32, one sample after the other: the sums XLA's scatter-add gives, bit for bit
                np.add.at(summed[row], bins, values[row])
    rows = slice(first, first + written)
    batch = batch_counts[:-1].reshape(written, num_bins).astype(np.uint32)
    held_lo, hi = grown.counts.lo, grown.counts.hi
    part_lo = held_lo[rows] + batch
    carried = part_lo < held_lo[rows]
    # states are never written in place, but counts the grid move just made are this update's own
    lo = held_lo if held_lo is not histogram.counts.lo else held_lo.copy()
    lo[rows] = part_lo
    if carried.any():  # else the high words are those held
        hi = hi if hi is not histogram.counts.hi else hi.copy()
        hi[rows] += carried.astype(np.uint32)
    new_weights = grown.weights
    if grown.weights.shape[0]:
        new_weights = grown.weights + summed
    return grown.replace(counts=WideCount(lo=lo, hi=hi), weights=new_weights)


def _chunks(samples: _Samples, size: int) -> Iterator[_Samples]:
    """The samples in consecutive slices of ``size`` (views; weights left out)."""
    starts = range(0, samples.scores.shape[0], size)
    left_out = samples.left_out
    if left_out is not None:
        bounds = np.searchsorted(left_out, [*starts, samples.scores.shape[0]])
    for number, start in enumerate(starts):
        part = slice(start, start + size)
        channels = samples.channels
        yield _Samples(
            samples.scores[part],
            channels if isinstance(channels, int) else channels[part],
            None if samples.kept is None else samples.kept[part],
            None,
            left_out=None
            if left_out is None
            else left_out[bounds[number] : bounds[number + 1]] - start,
        )


def _kept_range(samples: _Samples) -> tuple[np.float32, np.float32]:
    """(min, max) of the kept scores ((inf, -inf) when none is kept)."""
    scores = samples.scores
    if samples.span is not None:
        return samples.span
    if samples.left_out is not None:
        return _range_without(scores, samples.left_out)
    if samples.kept is None:
        return scores.min(), scores.max()
    lowest = np.min(scores, where=samples.kept, initial=np.float32(np.inf))
    highest = np.max(scores, where=samples.kept, initial=np.float32(-np.inf))
    return np.float32(lowest), np.float32(highest)


def _flat_index(
    histogram, samples: _Samples, first: int, overflow: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Each sample's slot ``(channel - first) * num_bins + bin`` as intp (what ``np.bincount``
    reads without a copy), ``overflow`` for the samples not kept. On the float path below the slots
    are written into ``out`` (an intp buffer at least as long as the samples) when it is given.

    On an auto-ranging grid whose slots are below 2**24, the slot is computed in float32, where
    every such integer is exact, and cast as it is written (no clipping: the grid covers every
    kept score, see ``_add_binned``); the samples not kept are set to ``overflow`` after the cast.
    """
    num_bins = histogram.num_bins
    channels = samples.channels
    if histogram.edges is not None or overflow >= _FLOAT_SLOTS:
        flat = _bin_index(histogram, samples.scores).astype(np.intp)
        if isinstance(channels, int):
            flat += (channels - first) * num_bins
        else:
            flat += (channels.astype(np.intp) - first) * num_bins
        if samples.kept is not None:
            flat[~samples.kept] = overflow
        if samples.left_out is not None:
            flat[samples.left_out] = overflow
        return flat
    cell = _cell(histogram, samples.scores, clip=False)
    flat = np.empty(cell.shape, np.intp) if out is None else out[: cell.shape[0]]
    with np.errstate(invalid="ignore"):  # samples not kept may not cast: set to overflow below
        if isinstance(channels, int):
            np.add(cell, np.float32((channels - first) * num_bins), out=flat, casting="unsafe")
        else:
            rows = np.multiply(channels, np.float32(num_bins), dtype=np.float32)
            if first:
                rows -= np.float32(first * num_bins)
            np.add(cell, rows, out=flat, casting="unsafe")  # added in float32, then cast
    if samples.kept is not None:
        flat[~samples.kept] = overflow
    if samples.left_out is not None:
        flat[samples.left_out] = overflow
    return flat


def _bin_index(histogram, scores: np.ndarray) -> np.ndarray:
    """Each score's bin (int32); any value where the score is not finite (such samples are not kept).

    Kept scores lie on the grid, whose cells are integers below 2**24 in magnitude (the grid is
    never finer than float32 resolves), so the offset is subtracted exactly in float32.
    """
    if histogram.edges is not None:
        edges = np.asarray(histogram.edges, np.float32)
        return np.searchsorted(edges, scores, side="right").astype(np.int32)
    with np.errstate(invalid="ignore"):
        return _cell(histogram, scores).astype(np.int32)


def _cell(histogram, scores: np.ndarray, clip: bool = True) -> np.ndarray:
    """Each score's bin on the auto-ranging grid, as float32 (NaN where the score is NaN), clipped
    to the grid unless ``clip`` is False (for scores the grid covers: their bins are in it)."""
    with np.errstate(invalid="ignore", over="ignore"):
        cell = np.multiply(scores, _power_of_two(-int(histogram.exponent)), dtype=np.float32)
        np.floor(cell, out=cell)
        cell -= np.float32(int(histogram.offset))
        if clip:
            np.clip(cell, 0, histogram.num_bins - 1, out=cell)
        return cell


def _power_of_two(exponent: int) -> np.float32:
    return np.float32(np.ldexp(np.float32(1.0), exponent))


def _binary_exponent(value: np.float32) -> int:
    return int(np.frexp(np.float32(value))[1]) if np.isfinite(value) else 0


def _fit_grid(low: np.float32, high: np.float32, min_exponent: int, num_bins: int) -> tuple:
    """``histogram._fit_grid`` in numpy float32 arithmetic: the same exponent and offset."""
    if low > high:
        return 0, 0
    magnitude = max(abs(low), abs(high))
    floor_exponent = _binary_exponent(max(magnitude, np.float32(2.0**-100))) - _MANTISSA_BITS
    with np.errstate(over="ignore"):
        span = np.float32(np.float32(high - low) / np.float32(num_bins - 1))
    span_exponent = _binary_exponent(max(span, np.float32(2.0**-126)))
    exponent = max(span_exponent - 1, floor_exponent, min_exponent)

    def fits(exponent: int) -> bool:
        scale = _power_of_two(-exponent)
        return np.floor(high * scale) - np.floor(low * scale) <= num_bins - 1

    for _ in range(2):  # the guess is at most two doublings short
        exponent = exponent if fits(exponent) else exponent + 1
    return exponent, int(np.floor(low * _power_of_two(-exponent)))


def _cover(histogram, low: np.float32, high: np.float32) -> Any:
    """``ScoreHistogram._cover`` in numpy: re-binned onto the finest grid covering [low, high]."""
    if histogram.edges is not None:
        return histogram.replace(
            core_min=scalar(low, np.float32), core_max=scalar(high, np.float32)
        )
    empty = bool(histogram.core_min > histogram.core_max)
    old_exponent, old_offset = int(histogram.exponent), int(histogram.offset)
    exponent, offset = _fit_grid(low, high, -1000 if empty else old_exponent, histogram.num_bins)
    counts, weights = histogram.counts, histogram.weights
    if not empty and (exponent, offset) != (old_exponent, old_offset):
        num_bins = histogram.num_bins
        shift = min(max(exponent - old_exponent, 0), _INT32_MAX_SHIFT)
        # each old bin's new one: never decreasing, by steps of 0 or 1, so the old bins inside the
        # new grid are a slice, and so are the new bins they land in
        target = ((old_offset + np.arange(num_bins, dtype=np.int64)) >> shift) - offset
        inside = slice(*np.searchsorted(target, [0, num_bins]))
        target = target[inside]
        starts = np.flatnonzero(np.diff(target, prepend=-1))
        whole = target.shape[0] == starts.shape[0]
        landing = slice(int(target[0]), int(target[0]) + starts.shape[0]) if target.size else inside

        def move(values: np.ndarray) -> np.ndarray:  # added in the dtype of ``values``, in order
            moved = np.zeros(values.shape, values.dtype)  # calloc: untouched pages cost nothing
            kept = values[:, inside]
            if target.size:
                moved[:, landing] = kept if whole else np.add.reduceat(kept, starts, axis=1)
            return moved

        counts = _move_counts(counts, move)
        weights = move(weights)
    return histogram.replace(
        counts=counts,
        weights=weights,
        exponent=scalar(exponent, np.int32),
        offset=scalar(offset, np.int32),
        core_min=scalar(low, np.float32),
        core_max=scalar(high, np.float32),
    )


def _move_counts(counts: WideCount, move: Callable[[np.ndarray], np.ndarray]) -> WideCount:
    """The counts re-binned by ``move``, only in the channels that hold any (per-image rows not yet
    filled stay zero), in uint32 where no bin can pass 2**32 (a bin's new count is at most its
    row's total), else as 64-bit totals."""
    used = np.flatnonzero(counts.lo.any(axis=1) | counts.hi.any(axis=1))
    every = used.shape[0] == counts.lo.shape[0]
    lo, hi = (counts.lo, counts.hi) if every else (counts.lo[used], counts.hi[used])
    if not hi.any() and lo.sum(axis=1, dtype=np.uint64).max(initial=0) <= _WORD_MASK:
        moved_lo, moved_hi = move(lo), np.zeros(hi.shape, hi.dtype)
    else:
        totals = lo.astype(np.uint64) + (hi.astype(np.uint64) << np.uint64(32))
        moved = move(totals)
        moved_lo = (moved & _WORD_MASK).astype(np.uint32)
        moved_hi = (moved >> np.uint64(32)).astype(np.uint32)
    if every:
        return WideCount(lo=moved_lo, hi=moved_hi)
    new_lo = np.zeros(counts.lo.shape, counts.lo.dtype)
    new_hi = np.zeros(counts.hi.shape, counts.hi.dtype)
    new_lo[used], new_hi[used] = moved_lo, moved_hi
    return WideCount(lo=new_lo, hi=new_hi)


# -- FixedBuffer.add -------------------------------------------------------------------------------


def fixed_buffer_add(buffer: Any, scores: np.ndarray, channels: np.ndarray) -> Any:
    """:meth:`jaxmetrics_ad.buffer.FixedBuffer.add` in numpy, without weights: the kept samples
    (finite, channel >= 0) written after those held, in order (the caller checked the room).

    Example:
        >>> from jaxmetrics_ad.buffer import FixedBuffer
        >>> b = fixed_buffer_add(FixedBuffer.empty(4), np.array([0.3, 0.7, 0.1]), np.array([0, -1, 1]))
        >>> b.arrays()[1].tolist(), int(b.count)
        ([0, 1, -1, -1], 2)
    """
    buffer = host_arrays(buffer)
    scores = np.ravel(scores).astype(np.float32, copy=False)
    channels = np.ravel(channels)
    kept = np.flatnonzero(np.isfinite(scores) & (channels >= 0))
    count = int(buffer.count)
    room = max(min(kept.shape[0], buffer.capacity - count), 0)
    slots = slice(count, count + room)
    held_scores, held_channels = buffer.scores.copy(), buffer.channels.copy()
    held_scores[slots] = scores[kept[:room]]
    held_channels[slots] = channels[kept[:room]].astype(np.int8)
    return buffer.replace(
        scores=held_scores,
        channels=held_channels,
        count=scalar(count + kept.shape[0], np.int32),
    )


# -- per-metric samples ---------------------------------------------------------------------------


def bool_values(values: np.ndarray) -> np.ndarray:
    """Bools as 0/1 from their byte (a True stored as 0xFF is 1); other dtypes unchanged.

    Example:
        >>> bool_values(np.array([0, 255], np.uint8).view(bool)).tolist()
        [0, 1]
    """
    return (values.view(np.uint8) != 0).astype(np.int32) if values.dtype == np.bool_ else values


def binary_channel(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`jaxmetrics_ad.validation.binary_channel` in numpy (no ``keep``): int32 channels, -1
    for invalid samples, or the labels as bools when they are bools and every score is finite
    (one byte a sample, no int32 copy; the labels themselves when every byte is 0 or 1).

    Example:
        >>> channel, invalid = binary_channel(np.array([0.5, np.inf]), np.array([1, 0]))
        >>> channel.tolist(), int(invalid)
        ([1, -1], 1)
        >>> binary_channel(np.array([0.5, 0.2]), np.array([True, False]))[0].tolist()
        [True, False]
    """
    labels = np.asarray(labels)
    if labels.dtype == np.bool_:
        if _finite(scores):
            return clean_bool_array(labels), scalar(0, np.int32)
    labels = bool_values(labels)
    valid = np.isfinite(scores) & ((labels == 0) | (labels == 1))
    channel = np.where(valid, labels, -1).astype(np.int32)
    return channel, scalar(np.count_nonzero(~valid), np.int32)


def foreground(target: np.ndarray) -> tuple[np.ndarray, int]:
    """The mask pixels (bool, N×H×W) of a batch of binary masks, and the count of values other
    than 0/1 (bools are 0/1: a True stored as 0xFF is 1).

    Example:
        >>> mask, invalid = foreground(np.array([[0, 1], [2, 1]]))
        >>> mask.astype(int).tolist(), invalid
        ([[[0, 1], [1, 1]]], 1)
    """
    target = np.reshape(target, (-1, *target.shape[-2:]))
    if target.dtype == np.bool_:
        return clean_bool_array(target), 0
    mask = target != 0
    return mask, int(np.count_nonzero(mask & (target != 1)))


def region_weights(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUPRO's weights of a batch of masks (N, H, W) of bools: the ascending flat indices of the
    region pixels, their 1/|region| weights (1, M) and the number of regions (8-connected regions
    within each image, as ``pro._pixel_samples`` with ``exact=False``).

    The mask pixels are labelled in one scipy call per batch, on a canvas that stacks each image's
    bounding box of them, a blank row between two (a region lies inside its image's box, and no
    region can reach across the blank row, so the canvas has the regions of the images): masks
    cover a small part of their images, and labelling whole images cost more than the histogram
    counts.

    Example:
        >>> in_region, weights, regions = region_weights(np.array([[[1, 0, 1], [0, 0, 1]]], bool))
        >>> in_region.tolist(), weights[0].tolist(), int(regions)
        ([0, 2, 5], [1.0, 0.5, 0.5], 2)
    """
    width, image_pixels = mask.shape[-1], math.prod(mask.shape[1:])
    in_region = np.flatnonzero(mask)
    if not in_region.size:
        return in_region, np.zeros((1, 0), np.float32), scalar(0, np.int32)
    image, pixel = np.divmod(in_region, image_pixels)
    row, column = np.divmod(pixel, width)
    starts = np.flatnonzero(np.diff(image, prepend=-1))  # each image's first mask pixel
    ends = np.append(starts[1:], in_region.shape[0])
    top, bottom = row[starts], row[ends - 1]  # rows ascend within an image
    left = np.minimum.reduceat(column, starts)
    box_width = int((np.maximum.reduceat(column, starts) - left).max()) + 1
    spacing = bottom - top + 2  # a box's rows and the blank one after it
    first_row = np.cumsum(spacing) - spacing
    canvas_row = row + np.repeat(first_row - top, ends - starts)
    canvas_column = column - np.repeat(left, ends - starts)
    canvas = np.zeros((int(first_row[-1] + spacing[-1]), box_width), bool)
    canvas[canvas_row, canvas_column] = True
    labels, num_regions = ndimage.label(canvas, structure=_EIGHT_CONNECTED)
    region_of = labels[canvas_row, canvas_column]
    sizes = np.bincount(region_of, minlength=num_regions + 1).astype(np.float32)
    weight_row = (np.float32(1.0) / sizes[region_of])[None, :]
    return in_region, weight_row, scalar(num_regions, np.int32)


def pixel_channels(
    maps: np.ndarray, mask: np.ndarray, invalid: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUPRO's binned pixel samples: scores (float32), channels (0 background, 1 region, -1
    non-finite score: bools when every score is finite) and the invalid-value count (``invalid``
    mask values plus the non-finite scores).

    Example:
        >>> scores, channels, invalid = pixel_channels(np.array([0.5, np.nan]), np.array([1, 0], bool), 0)
        >>> channels.tolist(), int(invalid)
        ([1, -1], 1)
    """
    scores = np.ravel(maps).astype(np.float32, copy=False)
    channels = mask.ravel()  # bools are channels 0 and 1: no int copy of the batch
    if not _finite(scores):
        not_finite = ~np.isfinite(scores)
        channels = channels.astype(np.int32)
        channels[not_finite] = -1
        invalid += int(np.count_nonzero(not_finite))
    return scores, channels, scalar(invalid, np.int32)


def in_background(function: Callable[..., Any], *args: Any) -> Future:
    """``function(*args)`` in this module's worker thread (numpy's and scipy's loops release the
    GIL: e.g. AUPRO's labelling runs while the counts are binned); at once where this process has
    one core.

    Example:
        >>> in_background(sum, [1, 2]).result()
        3
    """
    if _cores() < 2:
        done: Future = Future()
        try:
            done.set_result(function(*args))
        except Exception as error:  # raised by ``result()``, as from the worker
            done.set_exception(error)
        return done
    if not _WORKER:
        _WORKER.append(ThreadPoolExecutor(1, thread_name_prefix="jaxmetrics_ad-numpy"))
    return _WORKER[0].submit(function, *args)


@functools.cache
def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# -- BinnedCurves.add -----------------------------------------------------------------------------


def binned_curves_add(state: Any, maps: np.ndarray, masks: np.ndarray) -> tuple[Any, np.ndarray]:
    """:meth:`jaxmetrics_ad.pimo_binned.BinnedCurves.add` in numpy (no ``keep``): the state and
    the number of invalid pixels.

    Example:
        >>> from jaxmetrics_ad.pimo_binned import BinnedCurves
        >>> maps, masks = np.array([[[0.1, 0.2]], [[0.3, 0.9]]]), np.array([[[0, 0]], [[0, 1]]])
        >>> state, invalid = binned_curves_add(BinnedCurves.empty(64, None, 4), maps, masks)
        >>> int(state.num_normal), int(state.num_anomalous), state.tail_scores.tolist()
        (1, 1, [0.10000000149011612, 0.20000000298023224, -inf, -inf])
    """
    from jaxmetrics_ad.pimo_binned import lowest_fitting_edge

    state = host_arrays(state)
    num_images = maps.shape[0]
    num_pixels = math.prod(maps.shape[1:])
    scores = np.reshape(maps, (num_images, num_pixels)).astype(np.float32, copy=False)
    labels = np.reshape(masks, (num_images, num_pixels))
    if labels.dtype == np.bool_:
        positive, readable = clean_bool_array(labels), None
    else:
        positive = labels == 1
        readable = positive | (labels == 0)
    if not _finite(scores):
        readable = np.isfinite(scores) if readable is None else readable & np.isfinite(scores)
    if readable is not None and readable.all():
        readable = None
    if int(state.num_pixels) not in (0, num_pixels):  # the whole batch is left out, and counted
        return state, scalar(scores.size, np.int32)
    is_anomalous = np.any(positive, axis=1)  # a mask pixel makes the image anomalous, as in jax
    if readable is not None:
        positive = positive & readable  # not in place: ``positive`` may be the caller's masks
    normal_rows = np.flatnonzero(~is_anomalous)
    if normal_rows.size and normal_rows[-1] - normal_rows[0] + 1 == normal_rows.size:
        normal_scores = scores[normal_rows[0] : normal_rows[-1] + 1]  # consecutive rows: a view
    else:
        normal_scores = scores[normal_rows]
    normal_kept = None if readable is None else readable[normal_rows]
    normal_channels = 0 if normal_kept is None else np.where(normal_kept, 0, -1)
    normal = histogram_add(state.normal, normal_scores, normal_channels)
    cutoff = max(
        np.float32(state.tail_cutoff),
        np.float32(lowest_fitting_edge(normal, state.tail_size, np)),
    )
    old_tail = state.tail_scores[np.isfinite(state.tail_scores) & (state.tail_scores >= cutoff)]
    with np.errstate(invalid="ignore"):
        entering = normal_scores >= cutoff  # NaN compares False
    if normal_kept is not None:
        entering &= normal_kept
    tail = np.full(state.tail_size, -np.inf, np.float32)
    joined = np.concatenate([old_tail, normal_scores[entering]])[: state.tail_size]
    tail[: joined.shape[0]] = joined
    in_masks = np.flatnonzero(positive)
    image_of = in_masks // num_pixels
    mask_scores = scores.ravel()[in_masks]
    if state.capacity is None:
        mask_sizes = np.bincount(image_of, minlength=num_images).astype(np.float32)
        weights = (np.float32(1.0) / mask_sizes[image_of])[None, :]
        anomalous = histogram_add(state.anomalous, mask_scores, 0, weights)
    else:
        slots = int(state.num_images) + image_of
        stored = np.flatnonzero(slots < state.capacity)
        window = None
        if num_images <= state.capacity:
            window = (min(max(int(state.num_images), 0), state.capacity - num_images), num_images)
        anomalous = histogram_add(
            state.anomalous, mask_scores[stored], slots[stored].astype(np.int32), window=window
        )
    num_anomalous = int(np.count_nonzero(is_anomalous))
    updated = state.replace(
        normal=normal,
        tail_scores=tail,
        tail_cutoff=scalar(cutoff, np.float32),
        anomalous=anomalous,
        num_pixels=scalar(num_pixels, np.int32),
        num_normal=scalar(int(state.num_normal) + num_images - num_anomalous, np.int32),
        num_anomalous=scalar(int(state.num_anomalous) + num_anomalous, np.int32),
        num_images=scalar(int(state.num_images) + num_images, np.int32),
    )
    invalid = 0 if readable is None else np.count_nonzero(~readable)
    return updated, scalar(invalid, np.int32)
