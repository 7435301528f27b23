"""The exact-mode state: every sample's score, channel and weights, kept for a sort at compute time.

Two kinds, picked by the metric's ``capacity`` argument:

* :class:`ChunkedBuffer` (``capacity=None``, the default): a tuple of the batches added so far. Adding a
  batch appends one chunk, so nothing is ever copied until compute concatenates once. Its pytree
  structure grows with every update: under ``jax.jit`` each update retraces, and it cannot be the carry
  of ``lax.scan``/``fori_loop``. Use it eagerly (the usual way to reproduce a paper's number).
* :class:`FixedBuffer` (``capacity=C``): one preallocated block of C samples; jit, scan and ``lax``
  loops trace once. Adding more than C samples never drops data silently: eagerly it raises
  ``ValueError`` at once; inside jit the sample count keeps growing past C and the metric's compute
  returns NaN (and raises when called eagerly).

A negative channel marks a sample that does not count (padding, or an invalid input under jit).
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct


def _as_batch(
    scores: jax.Array, channels: jax.Array, weights: jax.Array | None, num_weights: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    scores = jnp.ravel(scores).astype(jnp.float32)
    channels = jnp.where(jnp.isfinite(scores), jnp.ravel(channels), -1).astype(jnp.int8)
    if weights is None:
        weights = jnp.zeros((num_weights, scores.shape[0]), jnp.float32)
    return (
        scores,
        channels,
        jnp.reshape(weights, (num_weights, scores.shape[0])).astype(jnp.float32),
    )


class ChunkedBuffer(struct.PyTreeNode):
    """A growing exact-mode buffer: one chunk of (scores, int8 channels, weights) per added batch.

    Example:
        >>> import jax.numpy as jnp
        >>> b = ChunkedBuffer.empty().add(jnp.array([0.3, 0.7]), jnp.array([0, 1]))
        >>> scores, channels, _ = b.arrays()
        >>> channels.tolist()
        [0, 1]
    """

    chunks: tuple[tuple[jax.Array, jax.Array, jax.Array], ...]
    num_weights: int = struct.field(pytree_node=False, default=0)
    grows: ClassVar[bool] = True  # shapes change with every update: never jit it eagerly

    @classmethod
    def empty(cls, num_weights: int = 0) -> ChunkedBuffer:
        """A buffer with no chunk."""
        return cls(chunks=(), num_weights=num_weights)

    def add(
        self, scores: jax.Array, channels: jax.Array, weights: jax.Array | None = None
    ) -> ChunkedBuffer:
        """Appends one batch as a new chunk."""
        batch = _as_batch(scores, channels, weights, self.num_weights)
        return self.replace(chunks=(*self.chunks, batch))

    def merge(self, other: ChunkedBuffer) -> ChunkedBuffer:
        """The chunks of both buffers."""
        return self.replace(chunks=self.chunks + other.chunks)

    def all_reduce(self, axis_name: str) -> ChunkedBuffer:
        """Each device gets every device's samples (``all_gather``) as a single chunk."""
        scores, channels, weights = self.arrays()
        return self.replace(
            chunks=(
                (
                    jax.lax.all_gather(scores, axis_name, tiled=True),
                    jax.lax.all_gather(channels, axis_name, tiled=True),
                    jax.lax.all_gather(weights, axis_name, axis=1, tiled=True),
                ),
            )
        )

    def arrays(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """All samples as (scores (N,), channels (N,), weights (W, N)); unused slots have channel -1."""
        if not self.chunks:
            return (
                jnp.zeros((0,), jnp.float32),
                jnp.zeros((0,), jnp.int8),
                jnp.zeros((self.num_weights, 0), jnp.float32),
            )
        scores, channels, weights = zip(*self.chunks)
        return jnp.concatenate(scores), jnp.concatenate(channels), jnp.concatenate(weights, axis=1)

    def overflowed(self) -> jax.Array:
        """Always False: a chunked buffer cannot overflow."""
        return jnp.array(False)


class FixedBuffer(struct.PyTreeNode):
    """A fixed-capacity exact-mode buffer with a fixed shape (jit/scan friendly).

    Example:
        >>> import jax.numpy as jnp
        >>> b = FixedBuffer.empty(capacity=4).add(jnp.array([0.3, 0.7]), jnp.array([0, 1]))
        >>> b.arrays()[1].tolist(), int(b.count)
        ([0, 1, -1, -1], 2)
    """

    scores: jax.Array  # (capacity,) float32
    channels: jax.Array  # (capacity,) int8, -1 = no sample
    weights: jax.Array  # (W, capacity) float32
    count: jax.Array  # int32: samples added so far (may exceed the capacity inside jit)

    @classmethod
    def empty(cls, capacity: int, num_weights: int = 0) -> FixedBuffer:
        """An empty buffer of ``capacity`` slots."""
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be a positive int or None, got {capacity!r}")
        return cls(
            scores=jnp.zeros((capacity,), jnp.float32),
            channels=jnp.full((capacity,), -1, jnp.int8),
            weights=jnp.zeros((num_weights, capacity), jnp.float32),
            count=jnp.zeros((), jnp.int32),
        )

    @property
    def capacity(self) -> int:
        """Number of slots."""
        return self.scores.shape[0]

    def add(
        self, scores: jax.Array, channels: jax.Array, weights: jax.Array | None = None
    ) -> FixedBuffer:
        """Writes a batch after the samples already held."""
        batch = _as_batch(scores, channels, weights, self.weights.shape[0])
        return self._append(*batch, live=batch[0].shape[0])

    def merge(self, other: FixedBuffer) -> FixedBuffer:
        """This buffer with the other's samples written after its own."""
        live = jnp.minimum(other.count, other.capacity)
        merged = self._append(other.scores, other.channels, other.weights, live)
        return merged.replace(count=self.count + other.count)

    def all_reduce(self, axis_name: str) -> FixedBuffer:
        """Every device's samples, packed into one buffer of ``devices × capacity`` slots."""
        gathered = FixedBuffer(
            scores=jax.lax.all_gather(self.scores, axis_name, tiled=True),
            channels=jax.lax.all_gather(self.channels, axis_name, tiled=True),
            weights=jax.lax.all_gather(self.weights, axis_name, axis=1, tiled=True),
            count=jnp.zeros((), jnp.int32),
        )
        # Slots past each device's count hold channel -1, so gathering them is harmless; the count
        # says how many slots are used, and overflow on any device stays visible.
        overflow = jax.lax.pmax(self.overflowed(), axis_name)
        used = jnp.where(overflow, gathered.capacity + 1, gathered.capacity)
        return gathered.replace(count=used.astype(jnp.int32))

    def arrays(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(scores, channels, weights) of every slot; unused slots have channel -1."""
        return self.scores, self.channels, self.weights

    def overflowed(self) -> jax.Array:
        """True when more samples were added than the capacity holds."""
        return self.count > self.capacity

    def _append(self, scores, channels, weights, live) -> FixedBuffer:
        if not isinstance(self.count, jax.core.Tracer) and not isinstance(live, jax.core.Tracer):
            needed = int(self.count) + int(live)
            if needed > self.capacity:
                raise ValueError(
                    f"exact-mode buffer is full: {needed} samples would exceed capacity="
                    f"{self.capacity}; pass a larger capacity or use binned thresholds=<int>"
                )
        position = jnp.arange(scores.shape[0], dtype=jnp.int32)
        slots = jnp.where(position < live, self.count + position, self.capacity)
        return self.replace(
            scores=self.scores.at[slots].set(scores, mode="drop"),
            channels=self.channels.at[slots].set(channels, mode="drop"),
            weights=self.weights.at[:, slots].set(weights, mode="drop"),
            count=self.count + live,
        )
