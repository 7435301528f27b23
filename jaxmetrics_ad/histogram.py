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
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmetrics_ad.counts import WideCount

_INT32_MAX_SHIFT = 31
# Bins narrower than 2**-24 of the largest magnitude are finer than float32 can resolve; this also
# keeps the bin offset well inside int32.
_MANTISSA_BITS = 24


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

    counts: WideCount  # (C, B)
    weights: jax.Array  # (W, B) float32
    exponent: jax.Array  # int32 scalar; bin width is 2**exponent (auto-ranging only)
    offset: jax.Array  # int32 scalar; bin i covers [(offset+i)·w, (offset+i+1)·w) (auto only)
    score_min: jax.Array  # float32 scalar, +inf when empty
    score_max: jax.Array  # float32 scalar, -inf when empty
    edges: tuple[float, ...] | None = struct.field(pytree_node=False, default=None)

    @classmethod
    def auto(cls, num_bins: int, num_channels: int, num_weights: int = 0) -> ScoreHistogram:
        """An empty auto-ranging histogram with ``num_bins`` bins.

        Example:
            >>> ScoreHistogram.auto(num_bins=1024, num_channels=2).num_bins
            1024
        """
        if not isinstance(num_bins, int) or num_bins < 3:
            raise ValueError(f"num_bins must be an int >= 3, got {num_bins!r}")
        return cls._empty(num_bins, num_channels, num_weights, edges=None)

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
    def _empty(cls, num_bins, num_channels, num_weights, edges) -> ScoreHistogram:
        return cls(
            counts=WideCount.zeros((num_channels, num_bins)),
            weights=jnp.zeros((num_weights, num_bins), jnp.float32),
            exponent=jnp.zeros((), jnp.int32),
            offset=jnp.zeros((), jnp.int32),
            score_min=jnp.array(jnp.inf, jnp.float32),
            score_max=jnp.array(-jnp.inf, jnp.float32),
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

    def add(
        self, scores: jax.Array, channels: jax.Array, weights: jax.Array | None = None
    ) -> ScoreHistogram:
        """Adds samples: ``channels[i]`` in ``[0, C)`` picks the count channel of ``scores[i]``.

        ``weights`` has shape ``(W, N)``. A sample with a negative channel or a non-finite score is left
        out entirely (counts, weights and range): that is how callers drop invalid or padded samples.
        """
        scores = jnp.ravel(scores).astype(jnp.float32)
        channels = jnp.ravel(channels).astype(jnp.int32)
        kept = jnp.isfinite(scores) & (channels >= 0)
        batch_min = jnp.min(jnp.where(kept, scores, jnp.inf), initial=jnp.inf)
        batch_max = jnp.max(jnp.where(kept, scores, -jnp.inf), initial=-jnp.inf)
        grown = self._cover(
            jnp.minimum(self.score_min, batch_min), jnp.maximum(self.score_max, batch_max)
        )
        bins = grown._bin_index(scores)
        num_bins = self.num_bins
        flat = jnp.where(kept, channels * num_bins + bins, self.num_channels * num_bins)
        batch_counts = (
            jnp.zeros(self.num_channels * num_bins, jnp.uint32).at[flat].add(1, mode="drop")
        )
        counts = grown.counts.add(batch_counts.reshape(self.num_channels, num_bins))
        new_weights = grown.weights
        if weights is not None:
            weights = jnp.reshape(weights, (self.weights.shape[0], scores.shape[0]))
            weights = weights.astype(jnp.float32)
            rows = jnp.arange(weights.shape[0], dtype=jnp.int32)[:, None] * num_bins
            index = jnp.where(kept[None, :], rows + bins[None, :], self.weights.size)
            summed = (
                jnp.zeros(self.weights.size, jnp.float32)
                .at[index.ravel()]
                .add(weights.ravel(), mode="drop")
            )
            new_weights = new_weights + summed.reshape(self.weights.shape)
        return grown.replace(counts=counts, weights=new_weights)

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        """The histogram of both sample sets (bins re-aligned first when auto-ranging)."""
        if (
            self.edges != other.edges
            or self.weights.shape != other.weights.shape
            or (self.counts.lo.shape != other.counts.lo.shape)
        ):
            raise ValueError("cannot merge histograms with different bins or channels")
        lo = jnp.minimum(self.score_min, other.score_min)
        hi = jnp.maximum(self.score_max, other.score_max)
        exponent = jnp.maximum(_occupied_exponent(self), _occupied_exponent(other))
        a = self._cover(lo, hi, exponent)
        b = other._cover(lo, hi, exponent)
        return a.replace(counts=a.counts.merge(b.counts), weights=a.weights + b.weights)

    def all_reduce(self, axis_name: str) -> ScoreHistogram:
        """The histogram of the samples of every device along ``axis_name`` (pmin/pmax, then psum)."""
        lo = jax.lax.pmin(self.score_min, axis_name)
        hi = jax.lax.pmax(self.score_max, axis_name)
        exponent = jax.lax.pmax(_occupied_exponent(self), axis_name)
        aligned = self._cover(lo, hi, exponent)
        return aligned.replace(
            counts=aligned.counts.all_reduce(axis_name),
            weights=jax.lax.psum(aligned.weights, axis_name),
        )

    def lower_edges(self) -> jax.Array:
        """The threshold of each bin, ascending: a sample counts as ``>= t`` from its bin on.

        For fixed edges, bin 0 (below every threshold) gets ``-inf``.
        """
        if self.edges is not None:
            return jnp.concatenate([jnp.array([-jnp.inf]), jnp.asarray(self.edges, jnp.float32)])
        index = self.offset + jnp.arange(self.num_bins, dtype=jnp.int32)
        return jnp.ldexp(index.astype(jnp.float32), self.exponent)

    def cumulative(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(thresholds, counts_at_or_above, weights_at_or_above)`` with thresholds descending.

        ``counts_at_or_above[c, j]`` is the number of channel-``c`` samples scoring ``>= thresholds[j]``
        (float32). Bin 0 of fixed edges (``-inf``) is included so the last column holds the totals.
        """
        counts = jnp.cumsum(self.counts.as_float()[:, ::-1], axis=-1)
        weights = jnp.cumsum(self.weights[:, ::-1], axis=-1)
        return self.lower_edges()[::-1], counts, weights

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
        return (
            edges.astype(np.float32)[::-1],
            np.cumsum(counts[:, ::-1], axis=-1),
            np.cumsum(weights[:, ::-1], axis=-1),
        )

    def _bin_index(self, scores: jax.Array) -> jax.Array:
        if self.edges is not None:
            edges = jnp.asarray(self.edges, jnp.float32)
            return jnp.searchsorted(edges, scores, side="right").astype(jnp.int32)
        # one multiply by an exact power of two (ldexp per sample measured ~9x slower on CPU)
        cell = jnp.floor(scores * jnp.ldexp(jnp.float32(1.0), -self.exponent))
        cell = jnp.clip(cell, -(2.0**30), 2.0**30).astype(jnp.int32)
        return jnp.clip(cell - self.offset, 0, self.num_bins - 1)

    def _cover(
        self, lo: jax.Array, hi: jax.Array, min_exponent: jax.Array | None = None
    ) -> ScoreHistogram:
        """This histogram re-binned onto the finest grid that covers [lo, hi] (auto-ranging only)."""
        lo = jnp.asarray(lo, jnp.float32)
        hi = jnp.asarray(hi, jnp.float32)
        if self.edges is not None:
            return self.replace(score_min=lo, score_max=hi)
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

        return self.replace(
            counts=WideCount(lo=move(self.counts.lo), hi=move(self.counts.hi)),
            weights=move(self.weights),
            exponent=exponent,
            offset=offset,
            score_min=lo,
            score_max=hi,
        )


def _occupied_exponent(histogram: ScoreHistogram) -> jax.Array:
    """The histogram's exponent, or the lowest possible one when it holds no sample yet."""
    empty = histogram.score_min > histogram.score_max
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
    _, magnitude_exponent = jnp.frexp(jnp.maximum(magnitude, jnp.float32(2.0**-100)))
    floor_exponent = magnitude_exponent.astype(jnp.int32) - _MANTISSA_BITS
    span = (hi - lo) / (num_bins - 1)
    _, span_exponent = jnp.frexp(jnp.maximum(span, jnp.float32(2.0**-126)))
    guess = jnp.maximum(
        jnp.maximum(span_exponent.astype(jnp.int32) - 1, floor_exponent), min_exponent
    )

    def fits(exponent):
        first = jnp.floor(jnp.ldexp(lo, -exponent))
        last = jnp.floor(jnp.ldexp(hi, -exponent))
        return last - first <= num_bins - 1

    exponent = guess
    for _ in range(2):  # the guess is at most two doublings short
        exponent = jnp.where(fits(exponent), exponent, exponent + 1)
    offset = jnp.floor(jnp.ldexp(lo, -exponent)).astype(jnp.int32)
    return jnp.where(empty, 0, exponent), jnp.where(empty, 0, offset)
