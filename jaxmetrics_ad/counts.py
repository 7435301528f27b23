"""Exact integer counts past 2**32 without ``jax_enable_x64``: a two-word (hi, lo) uint32 counter.

float32 counts are exact only up to 2**24 and int32 wraps at 2**31, yet one MVTec AD evaluation at full
resolution sees 1.6e9 pixels and a few epochs pass 2**32. Each update adds int32 per-batch counts to the
low word and carries into the high word, so a counter is exact up to 2**64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmetrics_ad.validation import state_array

_WORD = 4294967296.0  # 2**32


class WideCount(struct.PyTreeNode):
    """Arrays of non-negative integer counts stored as two uint32 words, exact up to 2**64.

    Example:
        >>> import jax.numpy as jnp
        >>> c = WideCount.zeros((2,)).add(jnp.array([3, 4], jnp.int32))
        >>> c = c.merge(c)
        >>> c.as_float().tolist()
        [6.0, 8.0]
    """

    lo: jax.Array
    hi: jax.Array

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> WideCount:
        """Counts of zero with the given shape."""
        return cls(lo=state_array(0, shape, np.uint32), hi=state_array(0, shape, np.uint32))

    def add(self, counts: jax.Array) -> WideCount:
        """Adds non-negative per-batch counts (int32 or uint32, below 2**32 each)."""
        lo = self.lo + counts.astype(jnp.uint32)
        carry = (lo < self.lo).astype(jnp.uint32)
        return WideCount(lo=lo, hi=self.hi + carry)

    def merge(self, other: WideCount) -> WideCount:
        """The element-wise sum of two counters."""
        lo = self.lo + other.lo
        carry = (lo < self.lo).astype(jnp.uint32)
        return WideCount(lo=lo, hi=self.hi + other.hi + carry)

    def all_reduce(self, axis_name: str) -> WideCount:
        """The sum over a named device axis (``psum``), still exact.

        The low word is split into 16-bit halves so that the sum over up to 65,536 devices cannot wrap.
        """
        low_half = jax.lax.psum(self.lo & 0xFFFF, axis_name)
        high_half = jax.lax.psum(self.lo >> 16, axis_name)
        hi = jax.lax.psum(self.hi, axis_name)
        shifted = (high_half & 0xFFFF) << 16
        lo = low_half + shifted
        carry = (lo < low_half).astype(jnp.uint32)
        return WideCount(lo=lo, hi=hi + (high_half >> 16) + carry)

    def as_float(self) -> jax.Array:
        """The counts as float32 (relative rounding error below 6e-8)."""
        return self.hi.astype(jnp.float32) * _WORD + self.lo.astype(jnp.float32)

    def as_float64(self) -> np.ndarray:
        """The counts as a numpy float64 array on the host (exact up to 2**53; eager only).

        Example:
            >>> import jax.numpy as jnp
            >>> WideCount(lo=jnp.array([5], jnp.uint32), hi=jnp.array([1], jnp.uint32)).as_float64()
            array([4.2949673e+09])
        """
        return np.asarray(self.hi, np.float64) * _WORD + np.asarray(self.lo, np.float64)

    def as_int(self) -> int:
        """The total of all counts as an exact Python int (host side, not jit-able)."""
        lo = np.asarray(self.lo, dtype=np.uint64)
        hi = np.asarray(self.hi, dtype=np.uint64)
        return int(sum(int(h) * (1 << 32) + int(low) for h, low in zip(hi.ravel(), lo.ravel())))


_SCAN_BLOCK = 2048  # counts per row of the blocked running count
_WORD_BITS = 32  # flags per word of the bit-packed running count


def running_count(flags: jax.Array) -> jax.Array:
    """Inclusive running count of a 1-d bool (or int) array, int32, for packing kept samples.

    Up to a few blocks, ``jnp.cumsum``. Over millions of bool flags, each 32 are packed into the
    bits of one word: a flag's rank within its word is the population count of the bits up to it,
    and only the words' totals are summed in order (rows of :data:`_SCAN_BLOCK`, offset by the rows
    before). On the CPU backend, 2**21 flags: a plain ``cumsum`` 18 ms, the blocked sum of the
    flags themselves 6.6 ms, the bit-packed count ~2x faster than that (measured with
    ``jit(...).lower().compile()``). Equal whichever way.

    Example:
        >>> import jax.numpy as jnp
        >>> running_count(jnp.array([True, False, True, True])).tolist()
        [1, 1, 2, 3]
    """
    size = flags.shape[0]
    if size <= 16 * _SCAN_BLOCK:
        return jnp.cumsum(flags.astype(jnp.int32), dtype=jnp.int32)
    if flags.dtype == jnp.bool_:
        return _packed_running_count(flags)
    counts = flags.astype(jnp.int32)
    rows = -(-size // _SCAN_BLOCK)
    blocks = jnp.pad(counts, (0, rows * _SCAN_BLOCK - size)).reshape(rows, _SCAN_BLOCK)
    within = jnp.cumsum(blocks, axis=1, dtype=jnp.int32)
    row_totals = within[:, -1]
    before = jnp.cumsum(row_totals, dtype=jnp.int32) - row_totals
    return (within + before[:, None]).ravel()[:size]


def _packed_running_count(flags: jax.Array) -> jax.Array:
    """:func:`running_count` of bool flags, 32 to a word (see there)."""
    size = flags.shape[0]
    words = -(-size // _WORD_BITS)
    bits = jnp.pad(flags, (0, words * _WORD_BITS - size)).reshape(words, _WORD_BITS)
    shifts = jnp.arange(_WORD_BITS, dtype=jnp.uint32)
    packed = jnp.sum(bits.astype(jnp.uint32) << shifts, axis=1, dtype=jnp.uint32)
    up_to = jnp.uint32(0xFFFFFFFF) >> (jnp.uint32(_WORD_BITS - 1) - shifts)  # bits 0..j set
    within = jax.lax.population_count(packed[:, None] & up_to[None, :]).astype(jnp.int32)
    totals = jax.lax.population_count(packed).astype(jnp.int32)
    before = running_count(totals) - totals
    return (within + before[:, None]).ravel()[:size]
