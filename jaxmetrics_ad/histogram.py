"""The score histogram: the one fixed-size state behind every binned curve metric.

A histogram keeps, per bin of the score axis, integer counts for a few *channels* (e.g. negatives and
positives) and float sums of per-sample *weights* (e.g. 1/|region| for PRO). Any curve that depends on
"how many samples of each channel score at or above t" is read off with a reverse cumulative sum.

Bins come in two kinds:

* **auto-ranging** (``num_bins=T``): T equal-width bins whose width is a power of two, ``2**exponent``,
  aligned to multiples of that width, covering the running min/max of the scores. When a batch falls
  outside, neighbouring bins merge pairwise (the width doubles) until everything fits. Because bins are
  nested, re-binning is exact: ``merge(add(a), add(b))`` equals ``add(a ++ b)`` bit for bit, and shapes
  never change. Works for any finite score range, raw distances and logits alike. The resolution is
  between ``(max - min) / T`` and ``2 (max - min) / T``; a far outlier widens every bin.
* **fixed edges** (``edges=thresholds``): ascending thresholds ``t_0 < ... < t_{T-1}``; bin 0 holds the
  scores below ``t_0``, bin ``j`` the scores in ``[t_{j-1}, t_j)``.

Updates are a bucketize plus a scatter-add: O(N + T) time and memory, never an N×T comparison.

**Exact tails** (``tail_size=K``, auto-ranging only): up to ``K - 1`` of the highest and of the lowest
scores are kept exactly (score, channel, weights) instead of being binned, and the bins cover only
the scores between them. A few far outliers then cannot widen the bins: one pixel at 1e9 among scores
in [0, 1.3] leaves the rest at full resolution. The tails are defined by the sample multiset alone —
the high tail holds every sample above the K-th highest score, the low tail every other sample below
the K-th lowest, tied scores always share a side — so updates and merges stay exact and
order-independent. Each update pays two ``top_k`` selections of ``K`` over the batch (each in two
stages on large batches: the rows of 32 scores with the highest maxima, then their scores).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmetrics_ad.counts import WideCount
from jaxmetrics_ad.validation import is_traced, outside_traces, state_array

METRIC_TAIL_SIZE = 1024
"""Exact scores kept at each end by the auto-ranging histograms of the binned curve metrics."""

_INT32_MAX_SHIFT = 31
# Bins narrower than 2**-24 of the largest magnitude are finer than float32 can resolve; this also
# keeps the bin offset well inside int32.
_MANTISSA_BITS = 24
_FLOAT32_BIAS = 127
_FLOAT32_FRACTION_BITS = 23


def power_of_two(exponent: jax.Array) -> jax.Array:
    """``2.0**exponent`` in float32 for int32 exponents in [-149, 254] (inf above 127): the same
    value as ``jnp.ldexp(1.0, exponent)``, from two exponent-field bit patterns.

    ``jnp.ldexp`` and ``jnp.frexp`` handle every subnormal case in tens of HLO ops each; the
    auto-ranging grid runs them on scalars in every update, and they measured ~0.1 s of XLA compile
    per histogram. Two normal powers of two multiply exactly (to a subnormal or inf where that is
    the true value, as far as the backend keeps subnormals: XLA on CPU flushes them to zero, and
    so does its ``ldexp``).

    >>> import jax.numpy as jnp
    >>> power_of_two(jnp.array([-126, -1, 0, 3, 127], jnp.int32)).tolist() == [2.0**-126, 0.5, 1.0, 8.0, 2.0**127]
    True
    """
    exponent = jnp.asarray(exponent, jnp.int32)
    half = exponent // 2

    def normal(power: jax.Array) -> jax.Array:  # 2**power for power in [-126, 127]
        bits = jnp.left_shift(power + _FLOAT32_BIAS, _FLOAT32_FRACTION_BITS)
        return jax.lax.bitcast_convert_type(bits, jnp.float32)

    return normal(half) * normal(exponent - half)


def _binary_exponent(value: jax.Array) -> jax.Array:
    """``jnp.frexp(value)[1]`` for float32 ``value`` that is positive and normal, or +inf (0)."""
    bits = jax.lax.bitcast_convert_type(jnp.asarray(value, jnp.float32), jnp.int32)
    field = jnp.right_shift(bits, _FLOAT32_FRACTION_BITS) & 0xFF
    return jnp.where(jnp.isfinite(value), field - (_FLOAT32_BIAS - 1), 0)


class ScoreHistogram(struct.PyTreeNode):
    """Per-bin counts (exact integers) and weight sums over the score axis.

    Build one with :meth:`auto` or :meth:`fixed`, feed it with :meth:`add`, combine with :meth:`merge`
    or :meth:`all_reduce`, read it with :meth:`cumulative`.

    Example:
        >>> import jax.numpy as jnp
        >>> h = ScoreHistogram.auto(num_bins=8, num_channels=2)
        >>> h = h.add(jnp.array([0.1, 0.4, 0.35, 0.8]), jnp.array([0, 0, 1, 1]))
        >>> thresholds, counts, _ = h.cumulative()
        >>> counts[:, -1].tolist()  # all samples score at or above the lowest threshold
        [2.0, 2.0]
    """

    counts: WideCount  # (C, B) the binned samples (those between the tails)
    weights: jax.Array  # (W, B) float32
    exponent: jax.Array  # int32 scalar; bin width is 2**exponent (auto-ranging only)
    offset: jax.Array  # int32 scalar; bin i covers [(offset+i)·w, (offset+i+1)·w) (auto only)
    score_min: jax.Array  # float32 scalar, +inf when empty (every sample, tails included)
    score_max: jax.Array  # float32 scalar, -inf when empty
    core_min: jax.Array  # float32 scalar: lowest binned score (+inf when none); the grid covers
    core_max: jax.Array  # float32 scalar: highest binned score   [core_min, core_max]
    tail_scores: jax.Array  # (2, K) float32: row 0 the high tail, row 1 the low tail, NaN padded
    tail_channels: jax.Array  # (2, K) int32: the tail samples' channels, -1 for an empty slot
    tail_weights: jax.Array  # (W, 2, K) float32
    tail_cuts: jax.Array  # (2,) float32: high tail = scores > [0], low tail = scores < [1]
    edges: tuple[float, ...] | None = struct.field(pytree_node=False, default=None)

    @classmethod
    def auto(
        cls, num_bins: int, num_channels: int, num_weights: int = 0, tail_size: int = 0
    ) -> ScoreHistogram:
        """An empty auto-ranging histogram with ``num_bins`` bins (and ``tail_size`` exact scores
        kept at each end, see the module docstring).

        Example:
            >>> import jax.numpy as jnp
            >>> ScoreHistogram.auto(num_bins=1024, num_channels=2).num_bins
            1024
            >>> h = ScoreHistogram.auto(num_bins=4, num_channels=1, tail_size=2)
            >>> h = h.add(jnp.array([1e9, 0.1, 0.2, 0.3, -5.0]), jnp.zeros(5, int))
            >>> h.tail_scores[:, 0].tolist(), float(h.core_max)  # the bins cover [0.1, 0.3] only
            ([1000000000.0, -5.0], 0.30000001192092896)
        """
        if not isinstance(num_bins, int) or num_bins < 3:
            raise ValueError(f"num_bins must be an int >= 3, got {num_bins!r}")
        if not isinstance(tail_size, int) or isinstance(tail_size, bool) or tail_size < 0:
            raise ValueError(f"tail_size must be an int >= 0, got {tail_size!r}")
        return cls._empty(num_bins, num_channels, num_weights, edges=None, tail_size=tail_size)

    @classmethod
    def fixed(
        cls, edges: Sequence[float], num_channels: int, num_weights: int = 0
    ) -> ScoreHistogram:
        """An empty histogram over the given ascending, distinct, finite thresholds.

        Example:
            >>> ScoreHistogram.fixed([0.0, 0.5, 1.0], num_channels=2).num_bins
            4
        """
        edges = tuple(float(e) for e in edges)
        if len(edges) < 1:
            raise ValueError("thresholds must hold at least one value")
        if any(not (b > a) for a, b in itertools.pairwise(edges)):
            raise ValueError("thresholds must be strictly increasing")
        if any(e != e or e in (float("inf"), float("-inf")) for e in edges):
            raise ValueError("thresholds must be finite")
        return cls._empty(len(edges) + 1, num_channels, num_weights, edges=edges)

    @classmethod
    def _empty(cls, num_bins, num_channels, num_weights, edges, tail_size=0) -> ScoreHistogram:
        return cls(
            counts=WideCount.zeros((num_channels, num_bins)),
            weights=state_array(0, (num_weights, num_bins), np.float32),
            exponent=state_array(0, (), np.int32),
            offset=state_array(0, (), np.int32),
            score_min=state_array(np.inf, (), np.float32),
            score_max=state_array(-np.inf, (), np.float32),
            core_min=state_array(np.inf, (), np.float32),
            core_max=state_array(-np.inf, (), np.float32),
            tail_scores=state_array(np.nan, (2, tail_size), np.float32),
            tail_channels=state_array(-1, (2, tail_size), np.int32),
            tail_weights=state_array(0, (num_weights, 2, tail_size), np.float32),
            tail_cuts=_cuts_of_empty(),
            edges=edges,
        )

    @property
    def num_bins(self) -> int:
        """Number of bins (for fixed edges: one more than the number of thresholds)."""
        return self.weights.shape[-1]

    @property
    def num_channels(self) -> int:
        """Number of integer count channels."""
        return self.counts.lo.shape[-2]

    @property
    def tail_size(self) -> int:
        """How many scores each exact tail keeps (0: no tails)."""
        return self.tail_scores.shape[-1]

    def add(
        self,
        scores: jax.Array,
        channels: jax.Array,
        weights: jax.Array | None = None,
        *,
        window: tuple[jax.Array, int] | None = None,
    ) -> ScoreHistogram:
        """Adds samples: ``channels[i]`` in ``[0, C)`` picks the count channel of ``scores[i]``.

        ``weights`` has shape ``(W, N)``. A sample with a negative channel or a non-finite score is left
        out entirely (counts, weights and range): that is how callers drop invalid or padded samples.

        ``window=(first, rows)`` (no tails, no weights): every kept sample's channel lies in
        ``[first, first + rows)``, with ``first + rows <= C``; only those ``rows`` channels are
        written, not all ``C`` (per-image channels: a batch touches its own images' rows only).
        """
        scores = jnp.ravel(scores).astype(jnp.float32)
        channels = jnp.ravel(channels).astype(jnp.int32)
        kept = jnp.isfinite(scores) & (channels >= 0)
        if weights is None:
            weights = jnp.zeros((self.weights.shape[0], scores.shape[0]), jnp.float32)
        else:
            weights = jnp.reshape(weights, (self.weights.shape[0], scores.shape[0]))
            weights = weights.astype(jnp.float32)
        if window is not None and (self.tail_size or self.weights.shape[0]):
            raise ValueError("window= needs a histogram without tails or weights")
        if self.tail_size == 0:
            binned = self._add_binned((scores, channels, kept, weights), window=window)
            return binned.replace(score_min=binned.core_min, score_max=binned.core_max)
        batch = _TailPool(scores, channels, weights, kept)
        size = self.tail_size
        if scores.shape[0] <= 2 * size:  # a small batch: every sample is a candidate
            candidates = _TailPool.concatenate([self._tail_pool(), batch])
            return self._with_new_tails(self, candidates, self.tail_cuts)
        # the batch's K highest and lowest: the new tails and cuts only ever come from these
        _, high = _order_statistic(scores, kept, size, highest=True)
        _, low = _order_statistic(scores, kept, size, highest=False)
        taken = jnp.zeros(scores.shape, bool).at[high].set(True)
        low_candidates = batch.take(low, kept & ~taken)  # each sample once
        candidates = _TailPool.concatenate(
            [self._tail_pool(), batch.take(high, kept), low_candidates]
        )
        return self._with_new_tails(self, candidates, self.tail_cuts, batch)

    def _add_binned(
        self,
        *sets: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
        window: tuple[jax.Array, int] | None = None,
    ) -> ScoreHistogram:
        """Bins the kept samples of each ``(scores, channels, kept, weights)`` set (scores finite,
        channels valid where kept, inside ``window`` when given), after one widening of the grid
        to all of them."""
        low, high = self.core_min, self.core_max
        for scores, _, kept, _ in sets:
            low = jnp.minimum(low, jnp.min(jnp.where(kept, scores, jnp.inf), initial=jnp.inf))
            high = jnp.maximum(high, jnp.max(jnp.where(kept, scores, -jnp.inf), initial=-jnp.inf))
        grown = self._cover(low, high)
        num_bins = self.num_bins
        first, written = (0, self.num_channels) if window is None else window
        batch_counts = jnp.zeros(written * num_bins, jnp.uint32)
        summed = jnp.zeros(self.weights.size, jnp.float32)
        for scores, channels, kept, weights in sets:
            bins = grown._bin_index(scores)
            flat = jnp.where(kept, (channels - first) * num_bins + bins, written * num_bins)
            batch_counts = batch_counts.at[flat].add(1, mode="drop")
            if weights.shape[0]:
                rows = jnp.arange(weights.shape[0], dtype=jnp.int32)[:, None] * num_bins
                index = jnp.where(kept[None, :], rows + bins[None, :], self.weights.size)
                summed = summed.at[index.ravel()].add(weights.ravel(), mode="drop")
        batch_counts = batch_counts.reshape(written, num_bins)
        if window is None:
            counts = grown.counts.add(batch_counts)
        else:  # read, add and write back the window's rows only

            def rows_of(words: jax.Array) -> jax.Array:
                return jax.lax.dynamic_slice_in_dim(words, first, written, axis=0)

            part = WideCount(rows_of(grown.counts.lo), rows_of(grown.counts.hi)).add(batch_counts)
            counts = WideCount(
                jax.lax.dynamic_update_slice_in_dim(grown.counts.lo, part.lo, first, axis=0),
                jax.lax.dynamic_update_slice_in_dim(grown.counts.hi, part.hi, first, axis=0),
            )
        new_weights = grown.weights
        if self.weights.shape[0]:
            new_weights = new_weights + summed.reshape(self.weights.shape)
        return grown.replace(counts=counts, weights=new_weights)

    def _tail_pool(self) -> _TailPool:
        """This histogram's tail samples as a pool (empty slots not kept)."""
        return _TailPool(
            self.tail_scores.ravel(),
            self.tail_channels.ravel(),
            self.tail_weights.reshape(self.weights.shape[0], 2 * self.tail_size),
            self.tail_channels.ravel() >= 0,
        )

    @staticmethod
    def _with_new_tails(
        binned: ScoreHistogram,
        pool: _TailPool,
        cuts: jax.Array,
        batch: _TailPool | None = None,
    ) -> ScoreHistogram:
        """``binned`` with new tails chosen from ``pool`` and the pool's other samples binned.

        ``pool`` holds the old tails (its first ``2 K`` entries) and any other sample that may enter
        the new ones; ``batch``, when given, is a batch whose candidates are in ``pool``: its samples
        that stay between the new cuts are binned straight from it.
        """
        size = binned.tail_size
        kth_highest, high_index = _order_statistic(pool.scores, pool.kept, size, highest=True)
        kth_lowest, low_index = _order_statistic(pool.scores, pool.kept, size, highest=False)
        high_cut = jnp.maximum(cuts[0], kth_highest)
        low_cut = jnp.minimum(cuts[1], kth_lowest)
        in_high = pool.kept & (pool.scores > high_cut)
        in_low = pool.kept & (pool.scores < low_cut) & ~in_high
        old_tails = jnp.arange(pool.scores.shape[0]) < 2 * size
        let_go = pool.kept & ~in_high & ~in_low & (old_tails if batch is not None else True)
        sets = [(pool.scores, pool.channels, let_go, pool.weights)]
        if batch is not None:
            between = ~(batch.scores > high_cut) & ~(batch.scores < low_cut)
            sets.append((batch.scores, batch.channels, batch.kept & between, batch.weights))
        binned = binned._add_binned(*sets)
        high = pool.take(high_index, in_high)
        low = pool.take(low_index, in_low)
        real = jnp.concatenate([high.channels >= 0, low.channels >= 0])
        tail_scores = jnp.concatenate([high.scores, low.scores])
        lowest = jnp.min(jnp.where(real, tail_scores, jnp.inf), initial=jnp.inf)
        highest = jnp.max(jnp.where(real, tail_scores, -jnp.inf), initial=-jnp.inf)
        return binned.replace(
            tail_scores=jnp.stack([high.scores, low.scores]),
            tail_channels=jnp.stack([high.channels, low.channels]),
            tail_weights=jnp.stack([high.weights, low.weights], axis=1),
            tail_cuts=jnp.stack([high_cut, low_cut]),
            score_min=jnp.minimum(lowest, binned.core_min),
            score_max=jnp.maximum(highest, binned.core_max),
        )

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        """The histogram of both sample sets (bins re-aligned first when auto-ranging)."""
        if (
            self.edges != other.edges
            or self.weights.shape != other.weights.shape
            or (self.counts.lo.shape != other.counts.lo.shape)
        ):
            raise ValueError("cannot merge histograms with different bins or channels")
        if self.tail_size != other.tail_size:
            raise ValueError("cannot merge histograms with different tail sizes")
        lo = jnp.minimum(self.core_min, other.core_min)
        hi = jnp.maximum(self.core_max, other.core_max)
        exponent = jnp.maximum(_occupied_exponent(self), _occupied_exponent(other))
        a = self._cover(lo, hi, exponent)
        b = other._cover(lo, hi, exponent)
        merged = a.replace(counts=a.counts.merge(b.counts), weights=a.weights + b.weights)
        if self.tail_size == 0:
            return merged.replace(score_min=lo, score_max=hi)
        pool = _TailPool.concatenate([self._tail_pool(), other._tail_pool()])
        cuts = jnp.stack(
            [
                jnp.maximum(self.tail_cuts[0], other.tail_cuts[0]),
                jnp.minimum(self.tail_cuts[1], other.tail_cuts[1]),
            ]
        )
        return self._with_new_tails(merged, pool, cuts)

    def all_reduce(self, axis_name: str) -> ScoreHistogram:
        """The histogram of the samples of every device along ``axis_name`` (pmin/pmax, then psum)."""
        lo = jax.lax.pmin(self.core_min, axis_name)
        hi = jax.lax.pmax(self.core_max, axis_name)
        exponent = jax.lax.pmax(_occupied_exponent(self), axis_name)
        aligned = self._cover(lo, hi, exponent)
        reduced = aligned.replace(
            counts=aligned.counts.all_reduce(axis_name),
            weights=jax.lax.psum(aligned.weights, axis_name),
        )
        if self.tail_size == 0:
            return reduced.replace(score_min=lo, score_max=hi)
        pool = self._tail_pool()
        all_weights = jnp.moveaxis(_gather_replicated(pool.weights, axis_name), 0, 1)
        gathered = _TailPool(
            _gather_replicated(pool.scores, axis_name).ravel(),
            _gather_replicated(pool.channels, axis_name).ravel(),
            all_weights.reshape(all_weights.shape[0], -1 if all_weights.shape[0] else 0),
            _gather_replicated(pool.kept.astype(jnp.int32), axis_name).ravel() > 0,
        )
        cuts = jnp.stack(
            [
                jax.lax.pmax(self.tail_cuts[0], axis_name),
                jax.lax.pmin(self.tail_cuts[1], axis_name),
            ]
        )
        return self._with_new_tails(reduced, gathered, cuts)

    def lower_edges(self) -> jax.Array:
        """The threshold of each bin, ascending: a sample counts as ``>= t`` from its bin on.

        For fixed edges, bin 0 (below every threshold) gets ``-inf``.
        """
        if self.edges is not None:
            return jnp.concatenate([jnp.array([-jnp.inf]), jnp.asarray(self.edges, jnp.float32)])
        index = self.offset + jnp.arange(self.num_bins, dtype=jnp.int32)
        return index.astype(jnp.float32) * power_of_two(self.exponent)

    def cumulative(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(thresholds, counts_at_or_above, weights_at_or_above)`` with thresholds descending.

        ``counts_at_or_above[c, j]`` is the number of channel-``c`` samples scoring ``>= thresholds[j]``
        (float32). Bin 0 of fixed edges (``-inf``) is included so the last column holds the totals.
        With exact tails there are ``2 K`` more points: the high tail's scores first, then the bins, then
        the low tail's (an empty tail slot repeats its neighbour's point). Consecutive points delimit a
        block of samples whose order is unknown: a bin, or one tail score (exactly tied samples).
        """
        if self.tail_size == 0:
            counts = jnp.cumsum(self.counts.as_float()[:, ::-1], axis=-1)
            weights = jnp.cumsum(self.weights[:, ::-1], axis=-1)
            return self.lower_edges()[::-1], counts, weights
        return _cumulative_with_tails(
            self, self.lower_edges(), self.counts.as_float(), self.weights, jnp
        )

    def cumulative_on_host(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`cumulative` computed with numpy in float64 (eager only; exact counts to 2**53).

        The thresholds are the same float32 values as :meth:`cumulative`'s.

        Example:
            >>> import jax.numpy as jnp
            >>> h = ScoreHistogram.auto(num_bins=8, num_channels=2)
            >>> h = h.add(jnp.array([0.1, 0.4, 0.35, 0.8]), jnp.array([0, 0, 1, 1]))
            >>> thresholds, counts, _ = h.cumulative_on_host()
            >>> counts[:, -1].tolist(), counts.dtype
            ([2.0, 2.0], dtype('float64'))
        """
        counts = self.counts.as_float64()
        weights = np.asarray(self.weights, np.float64)
        if self.edges is not None:
            edges = np.concatenate([[-np.inf], np.asarray(self.edges, np.float32)])
        else:
            index = int(self.offset) + np.arange(self.num_bins, dtype=np.int64)
            edges = np.ldexp(index.astype(np.float32), int(self.exponent))
        edges = edges.astype(np.float32)
        if self.tail_size == 0:
            return (
                edges[::-1],
                np.cumsum(counts[:, ::-1], axis=-1),
                np.cumsum(weights[:, ::-1], axis=-1),
            )
        host = jax.tree_util.tree_map(np.asarray, self)
        return _cumulative_with_tails(host, edges, counts, weights, np)

    def total_counts(self) -> np.ndarray | jax.Array:
        """Samples per channel, tails included: numpy float64 eagerly, jax float32 under a trace.

        Example:
            >>> import jax.numpy as jnp
            >>> h = ScoreHistogram.auto(num_bins=8, num_channels=2, tail_size=1)
            >>> h.add(jnp.array([0.1, 0.4, 0.35, 9.0]), jnp.array([0, 0, 1, 1])).total_counts().tolist()
            [2.0, 2.0]
        """
        xp = jnp if is_traced(*jax.tree_util.tree_leaves(self)) else np
        counts = self.counts.as_float() if xp is jnp else self.counts.as_float64()
        tails = xp.asarray(self.tail_channels).ravel()
        channels = xp.arange(self.num_channels)[:, None]
        in_tails = xp.sum(tails[None, :] == channels, axis=1).astype(counts.dtype)
        return xp.sum(counts, axis=1) + in_tails

    def _bin_index(self, scores: jax.Array) -> jax.Array:
        if self.edges is not None:
            edges = jnp.asarray(self.edges, jnp.float32)
            return jnp.searchsorted(edges, scores, side="right").astype(jnp.int32)
        # one multiply by an exact power of two (ldexp per sample measured ~9x slower on CPU)
        cell = jnp.floor(scores * power_of_two(-self.exponent))
        cell = jnp.clip(cell, -(2.0**30), 2.0**30).astype(jnp.int32)
        return jnp.clip(cell - self.offset, 0, self.num_bins - 1)

    def _cover(
        self, lo: jax.Array, hi: jax.Array, min_exponent: jax.Array | None = None
    ) -> ScoreHistogram:
        """This histogram re-binned onto the finest grid that covers [lo, hi] (auto-ranging only)."""
        lo = jnp.asarray(lo, jnp.float32)
        hi = jnp.asarray(hi, jnp.float32)
        if self.edges is not None:
            return self.replace(core_min=lo, core_max=hi)
        if min_exponent is None:
            min_exponent = _occupied_exponent(self)
        exponent, offset = _fit_grid(lo, hi, min_exponent, self.num_bins)
        shift = jnp.clip(exponent - self.exponent, 0, _INT32_MAX_SHIFT)
        old_cells = self.offset + jnp.arange(self.num_bins, dtype=jnp.int32)
        target = jnp.right_shift(old_cells, shift) - offset
        # An empty histogram has nothing to move; out-of-range targets only happen there.
        target = jnp.where((target >= 0) & (target < self.num_bins), target, self.num_bins)

        def move(values: jax.Array) -> jax.Array:
            return jnp.zeros_like(values).at[..., target].add(values, mode="drop")

        # adding a zero read off ``target`` gives both branches the same type under shard_map
        # (device-varying when ``target`` or the arrays are), whatever XLA folds away
        zero = jnp.zeros((), jnp.int32) * target[0]

        def moved(arrays: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            return tuple(move(values) + zero.astype(values.dtype) for values in arrays)

        def unmoved(arrays: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            return tuple(values + zero.astype(values.dtype) for values in arrays)

        # Most updates keep the grid: skip the scatter over every channel's bins then.
        empty = self.core_min > self.core_max
        kept_grid = empty | ((exponent == self.exponent) & (offset == self.offset))
        arrays = (self.counts.lo, self.counts.hi, self.weights)
        if is_traced(kept_grid, *arrays):
            lo_words, hi_words, weights = jax.lax.cond(kept_grid, unmoved, moved, arrays)
        else:  # eagerly: decide here, no program with a conditional to compile
            lo_words, hi_words, weights = arrays if bool(kept_grid) else moved(arrays)
        return self.replace(
            counts=WideCount(lo=lo_words, hi=hi_words),
            weights=weights,
            exponent=exponent,
            offset=offset,
            core_min=lo,
            core_max=hi,
        )


def _cuts_of_empty() -> jax.Array | np.ndarray:
    """Tail cuts of an empty histogram, (-inf, +inf), as :func:`state_array` would make them."""
    if not outside_traces():
        return jnp.array([-jnp.inf, jnp.inf], jnp.float32)
    return jax.device_put(np.array([-np.inf, np.inf], np.float32))


class _TailPool(NamedTuple):
    """Samples competing for the exact tails: scores, channels, weights (W, N) and which are real."""

    scores: jax.Array
    channels: jax.Array
    weights: jax.Array
    kept: jax.Array

    @staticmethod
    def concatenate(pools: Sequence[_TailPool]) -> _TailPool:
        return _TailPool(
            jnp.concatenate([pool.scores for pool in pools]),
            jnp.concatenate([pool.channels for pool in pools]),
            jnp.concatenate([pool.weights for pool in pools], axis=1),
            jnp.concatenate([pool.kept for pool in pools]),
        )

    def take(self, index: jax.Array, members: jax.Array) -> _TailPool:
        """The samples at ``index`` for which ``members`` (one flag per sample of the pool) holds;
        the others become empty slots."""
        real = members[index]
        return _TailPool(
            jnp.where(real, self.scores[index], jnp.nan),
            jnp.where(real, self.channels[index], -1),
            jnp.where(real[None, :], self.weights[:, index], 0.0),
            real,
        )


def _order_statistic(
    scores: jax.Array, kept: jax.Array, size: int, highest: bool
) -> tuple[jax.Array, jax.Array]:
    """The ``size``-th highest (or lowest) kept score (-inf, or +inf, when fewer are kept) and the
    indices of the ``size`` most extreme kept scores: every score beyond it is among them.

    Both outputs of the top-k are used whole: XLA's CPU backend turns a top-k whose outputs are
    sliced into a full sort (~100x slower).
    """
    key = jnp.where(kept, scores if highest else -scores, -jnp.inf)
    values, index = _top_k(key, size)
    cut = jnp.min(values)
    return (cut if highest else -cut), index


_TOP_K_ROW = 32  # keys per row of the two-stage top-k


def _top_k(keys: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """``jax.lax.top_k(keys, size)`` up to the order of tied keys, in two stages over rows of
    :data:`_TOP_K_ROW` keys when there are many: the ``size`` largest keys lie in the ``size`` rows with
    the largest maxima (a row holding one of them whose maximum ranked lower would have ``size``
    larger keys above it), so a top-k of the row maxima picks the rows and a top-k of those rows'
    keys picks the keys. The ``size``-th largest key and the set of keys above it are the same.

    On the CPU backend, 0.92 Mpx of a smooth anomaly map: 0.70 ms instead of 1.8 ms per top-k of
    1023 (XLA's top-k slows down on long sorted runs, which smooth maps have).
    """
    count = keys.shape[0]
    if count < 4 * size * _TOP_K_ROW:
        return jax.lax.top_k(keys, size)
    whole = count - count % _TOP_K_ROW  # the keys in whole rows; the last few join at the end
    row_maxima = jnp.max(keys[:whole].reshape(-1, _TOP_K_ROW), axis=1)
    _, top_rows = jax.lax.top_k(row_maxima, size)
    columns = jnp.arange(_TOP_K_ROW, dtype=top_rows.dtype)
    in_top_rows = (top_rows[:, None] * _TOP_K_ROW + columns[None, :]).ravel()
    values, within = jax.lax.top_k(keys[in_top_rows], size)  # only those rows are copied
    index = in_top_rows[within]
    if whole == count:
        return values, index
    values = jnp.concatenate([values, keys[whole:]])
    index = jnp.concatenate([index, jnp.arange(whole, count, dtype=index.dtype)])
    values, picked = jax.lax.top_k(values, size)
    return values, index[picked]


def _cumulative_with_tails(histogram, lower_edges, bin_counts, bin_weights, xp):
    """:meth:`ScoreHistogram.cumulative` of a histogram with tails, in jax or numpy (see there).

    A bin's threshold is its lower edge raised to the lowest binned score, so that no low-tail sample
    (all below it) counts as at or above it; a bin above every binned score (empty) takes the high
    tail's lowest score. Tail slots are sorted descending, tied scores get the count of their last
    member, empty slots repeat the tail's last point (or stand at +-inf with nothing added).
    """
    num_channels = bin_counts.shape[0]
    scores = histogram.tail_scores
    channels = histogram.tail_channels
    real = channels >= 0
    dtype = bin_counts.dtype

    def block(row: int, fill: float):
        order = xp.argsort(xp.where(real[row], -scores[row], xp.inf))
        block_scores = scores[row][order]
        block_real = real[row][order]
        last_real = xp.min(xp.where(real[row], scores[row], xp.inf), initial=xp.inf)
        last_real = xp.where(xp.any(real[row]), last_real, fill)
        thresholds = xp.where(block_real, block_scores, last_real).astype(xp.float32)
        one_hot = channels[row][order][None, :] == xp.arange(num_channels)[:, None]
        weights = histogram.tail_weights[:, row][:, order]
        return thresholds, one_hot.astype(dtype), xp.where(block_real[None, :], weights, 0.0)

    high_thresholds, high_counts, high_weights = block(0, xp.inf)
    low_thresholds, low_counts, low_weights = block(1, -xp.inf)
    high_floor = high_thresholds[-1]
    edges = xp.maximum(lower_edges, histogram.core_min)
    edges = xp.where(lower_edges > histogram.core_max, high_floor, edges)[::-1]
    empty_core = ~(histogram.core_min <= histogram.core_max)
    edges = xp.where(empty_core, high_floor, edges).astype(xp.float32)
    thresholds = xp.concatenate([high_thresholds, edges, low_thresholds])
    counts = xp.cumsum(
        xp.concatenate([high_counts, bin_counts[:, ::-1], low_counts], axis=1), axis=-1
    )
    weights = xp.cumsum(
        xp.concatenate(
            [high_weights, bin_weights[:, ::-1].astype(high_weights.dtype), low_weights], axis=1
        ),
        axis=-1,
    )

    # tied tail scores: every member reads the count at the last one (descending order)
    def last_of_ties(part, start: int):
        return xp.searchsorted(-part, -part, side="right") - 1 + start

    size, num_bins = scores.shape[-1], bin_counts.shape[1]
    columns = xp.concatenate(
        [
            last_of_ties(high_thresholds, 0),
            xp.arange(size, size + num_bins),
            last_of_ties(low_thresholds, size + num_bins),
        ]
    )
    return thresholds, counts[:, columns], weights[:, columns]


def _gather_replicated(values: jax.Array, axis_name: str) -> jax.Array:
    """Every device's ``values`` stacked in device order, typed as equal on every device.

    A ``psum`` of each device's values placed in its own row (the other rows add exact zeros), so
    ``shard_map`` sees the result as replicated (``all_gather``'s is not) and states reduced with
    it can leave with ``out_specs=P()``.
    """
    rows = jnp.zeros((jax.lax.axis_size(axis_name), *values.shape), values.dtype)
    return jax.lax.psum(rows.at[jax.lax.axis_index(axis_name)].set(values), axis_name)


def _occupied_exponent(histogram: ScoreHistogram) -> jax.Array:
    """The histogram's exponent, or the lowest possible one when it holds no sample yet."""
    empty = histogram.core_min > histogram.core_max
    return jnp.where(empty, jnp.int32(-1000), histogram.exponent)


def _fit_grid(
    lo: jax.Array, hi: jax.Array, min_exponent: jax.Array, num_bins: int
) -> tuple[jax.Array, jax.Array]:
    """The smallest power-of-two bin width >= 2**min_exponent whose aligned grid of ``num_bins``
    bins covers [lo, hi], and the grid's offset. An empty range (lo > hi) gives exponent 0, offset 0.
    """
    empty = lo > hi
    lo = jnp.where(empty, 0.0, lo)
    hi = jnp.where(empty, 0.0, hi)
    magnitude = jnp.maximum(jnp.abs(lo), jnp.abs(hi))
    magnitude_exponent = _binary_exponent(jnp.maximum(magnitude, jnp.float32(2.0**-100)))
    floor_exponent = magnitude_exponent - _MANTISSA_BITS
    span = (hi - lo) / (num_bins - 1)
    span_exponent = _binary_exponent(jnp.maximum(span, jnp.float32(2.0**-126)))
    guess = jnp.maximum(jnp.maximum(span_exponent - 1, floor_exponent), min_exponent)

    def fits(exponent):
        scale = power_of_two(-exponent)
        return jnp.floor(hi * scale) - jnp.floor(lo * scale) <= num_bins - 1

    exponent = guess
    for _ in range(2):  # the guess is at most two doublings short
        exponent = jnp.where(fits(exponent), exponent, exponent + 1)
    offset = jnp.floor(lo * power_of_two(-exponent)).astype(jnp.int32)
    return jnp.where(empty, 0, exponent), jnp.where(empty, 0, offset)
