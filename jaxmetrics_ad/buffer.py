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

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmetrics_ad.counts import running_count
from jaxmetrics_ad.validation import state_array


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


def _gather(values: jax.Array, axis_name: str) -> jax.Array:
    """Every device's ``values`` concatenated along the last axis, identical on all devices.

    Written as a ``psum`` of zero-padded blocks rather than ``all_gather`` so that ``shard_map``
    can tell the result is replicated (``out_specs=P()``), with no effect on the values.
    """
    devices = jax.lax.axis_size(axis_name)
    size = values.shape[-1]
    blocks = jnp.zeros((*values.shape[:-1], devices * size), values.dtype)
    start = (0,) * (values.ndim - 1) + (jax.lax.axis_index(axis_name) * size,)
    return jax.lax.psum(jax.lax.dynamic_update_slice(blocks, values, start), axis_name)


def _gather_channels(channels: jax.Array, axis_name: str) -> jax.Array:
    # shift so that padding (0 after the shift) adds nothing, then shift back
    shifted = _gather(channels.astype(jnp.int32) + 1, axis_name)
    return (shifted - 1).astype(jnp.int8)


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
        """Each device gets every device's samples as a single chunk."""
        scores, channels, weights = self.arrays()
        return self.replace(
            chunks=(
                (
                    _gather(scores, axis_name),
                    _gather_channels(channels, axis_name),
                    _gather(weights, axis_name),
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


def _chunked_to_state_dict(buffer: ChunkedBuffer) -> dict[str, jax.Array]:
    scores, channels, weights = buffer.arrays()
    return {"scores": scores, "channels": channels, "weights": weights}


def _chunked_from_state_dict(buffer: ChunkedBuffer, state: dict) -> ChunkedBuffer:
    scores = jnp.asarray(state["scores"], jnp.float32)
    weights = jnp.asarray(state["weights"], jnp.float32)
    chunk = (
        scores,
        jnp.asarray(state["channels"], jnp.int8),
        weights.reshape(buffer.num_weights, scores.shape[0]),
    )
    return buffer.replace(chunks=(chunk,) if chunk[0].size else ())


# The number of chunks depends on the number of updates, so the default (one entry per chunk) could
# only be restored into a buffer that saw as many updates. Saving the samples as one chunk restores
# into any buffer of the same metric, e.g. a fresh one, and resumes with nothing lost.
flax.serialization.register_serialization_state(
    ChunkedBuffer, _chunked_to_state_dict, _chunked_from_state_dict, override=True
)


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
            scores=state_array(0, (capacity,), np.float32),
            channels=state_array(-1, (capacity,), np.int8),
            weights=state_array(0, (num_weights, capacity), np.float32),
            count=state_array(0, (), np.int32),
        )

    @property
    def capacity(self) -> int:
        """Number of slots."""
        return self.scores.shape[0]

    def add(
        self, scores: jax.Array, channels: jax.Array, weights: jax.Array | None = None
    ) -> FixedBuffer:
        """Writes a batch's samples after those already held; left-out ones (channel -1: padding,
        invalid input) take no slot."""
        batch = _as_batch(scores, channels, weights, self.weights.shape[0])
        return self._append(*batch, live=batch[0].shape[0], compact=True)

    def merge(self, other: FixedBuffer) -> FixedBuffer:
        """This buffer with the other's samples written after its own."""
        live = jnp.minimum(other.count, other.capacity)
        merged = self._append(other.scores, other.channels, other.weights, live)
        return merged.replace(count=self.count + other.count)

    def all_reduce(self, axis_name: str) -> FixedBuffer:
        """Every device's samples, packed into one buffer of ``devices × capacity`` slots."""
        gathered = FixedBuffer(
            scores=_gather(self.scores, axis_name),
            channels=_gather_channels(self.channels, axis_name),
            weights=_gather(self.weights, axis_name),
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

    def check_room(self, extra: int) -> None:
        """Eagerly raise ValueError when ``extra`` more samples would not fit; no-op inside jit."""
        if isinstance(self.count, jax.core.Tracer) or isinstance(extra, jax.core.Tracer):
            return
        needed = int(self.count) + int(extra)
        if needed > self.capacity:
            raise ValueError(
                f"exact-mode buffer is full: {needed} samples would exceed capacity="
                f"{self.capacity}; pass a larger capacity or use binned thresholds=<int>"
            )

    def _append(self, scores, channels, weights, live, compact: bool = False) -> FixedBuffer:
        position = jnp.arange(scores.shape[0], dtype=jnp.int32)
        if compact:
            kept = channels >= 0
            live = jnp.sum(kept, dtype=jnp.int32)
            self.check_room(live)
            slots = jnp.where(kept, self.count + running_count(kept) - 1, self.capacity)
        else:
            self.check_room(live)
            slots = jnp.where(position < live, self.count + position, self.capacity)
        return self.replace(
            scores=self.scores.at[slots].set(scores, mode="drop"),
            channels=self.channels.at[slots].set(channels, mode="drop"),
            weights=self.weights.at[:, slots].set(weights, mode="drop"),
            count=self.count + live,
        )
