"""Input checks shared by every metric: clear errors eagerly, invalid-sample counts inside jit.

Shape and dtype checks are static, so they raise under ``jax.jit`` too. Value checks (NaN/inf scores,
labels outside {0, 1}) need concrete values: eagerly they raise ``ValueError`` naming the field; inside
jit the offending samples are left out and counted, and the metric's ``compute`` then returns NaN
(and raises when called eagerly), so a wrong number is never returned silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(*arrays: object) -> bool:
    """True when any argument is a jax tracer (we are inside jit, vmap, scan, ...).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> seen = []
        >>> _ = jax.jit(lambda x: seen.append(is_traced(x)) or x)(1.0)
        >>> is_traced(jnp.ones(2)), seen
        (False, [True])
    """
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def state_array(fill: float | int | bool, shape: tuple[int, ...], dtype: Any) -> Any:
    """A new state's array of ``fill``: outside any trace made by numpy and put on the device
    (an eager ``jnp.full`` compiles a small XLA program per shape and dtype, tens of ms each
    cold), inside one ``jnp.full``.

    Example:
        >>> state_array(0, (2,), np.int32).tolist()
        [0, 0]
    """
    if outside_traces():
        return jax.device_put(np.full(shape, fill, dtype))
    return jnp.full(shape, fill, dtype)


def outside_traces() -> bool:
    """True when no jax transformation is tracing (eager code).

    Example:
        >>> outside_traces()
        True
    """
    try:
        from jax._src.core import trace_state_clean
    except ImportError:  # a jax without it: the jax arrays are always right
        return False
    return trace_state_clean()


def as_array(value: object, field: str, on_host: bool = False) -> jax.Array | np.ndarray:
    """``value`` as a jax array whose values mean what they meant, or an error naming the field.

    With ``on_host``, a value that is not a jax array comes back as the numpy array the jax one
    would hold (no copy to a device buffer, e.g. for the eager numpy updates of
    :mod:`jaxmetrics_ad.numpy_updates`); within the open :func:`checks_once` block, ``as_array``
    passes that array through as it is.

    Values are checked before any cast, because jax's casts are silent: without ``jax_enable_x64``
    int64 becomes int32 (``2**32 + 1`` would read as 1) and float64 becomes float32 (``1e39``
    would read as inf), so such values raise ValueError instead. Booleans are re-made from their
    bytes (``!= 0``): a bool stored as 0xFF, what Pillow gives for 1-bit PNG masks, would otherwise
    compare unequal to 1 inside jit. Complex, string and object arrays raise TypeError.

    Example:
        >>> as_array([1, 2], "gt_label").shape
        (2,)
        >>> import numpy as np
        >>> as_array(np.array([0, 255], np.uint8).view(bool), "gt_mask").astype(int).tolist()
        [0, 1]
        >>> type(as_array([0.5, 0.7], "anomaly_map", on_host=True)).__name__
        'ndarray'
        >>> as_array(np.array([1, 2**40]), "pred_score")
        Traceback (most recent call last):
        ...
        ValueError: pred_score: integer values must fit in int32 (jax_enable_x64 is off), got 1099511627776
    """
    if value is None:
        raise TypeError(f"{field}: expected an array, got None")
    if isinstance(value, np.ndarray) and _already_passed(value, "host"):
        return value  # made by this function (on_host) in the open checks_once block
    if not isinstance(value, jax.Array):
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as error:
            raise TypeError(f"{field}: expected an array, got {type(value).__name__}") from error
        _check_representable(value, field)
        if value.dtype == np.bool_:  # re-made on the host: no eager XLA op per batch shape
            return _placed(clean_bool_array(value), on_host, "clean")
        if jnp.issubdtype(value.dtype, jnp.number) and not jnp.issubdtype(
            value.dtype, jnp.complexfloating
        ):  # cast on the host (values checked above): jnp.asarray would compile a convert
            dtype = jax.dtypes.canonicalize_dtype(value.dtype)
            return _placed(value.astype(dtype, copy=False), on_host)
    elif not (jnp.issubdtype(value.dtype, jnp.number) or value.dtype == jnp.bool_):
        raise TypeError(
            f"{field}: expected a real numeric or boolean array, got dtype {value.dtype}"
        )
    if jnp.issubdtype(value.dtype, jnp.complexfloating):
        raise TypeError(
            f"{field}: expected a real numeric or boolean array, got dtype {value.dtype}"
        )
    if value.dtype == jnp.bool_ and _already_passed(value, "clean"):
        return value  # made by this function in the open checks_once block
    return clean_bool(jnp.asarray(value))


def _placed(values: np.ndarray, on_host: bool, check: str | None = None) -> jax.Array | np.ndarray:
    """Checked host values as they are (``on_host``) or in a jax array, marked as passed."""
    placed = values if on_host else jax.device_put(values)
    if on_host:
        _passed(placed, "host")
    if check is not None:
        _passed(placed, check)
    return placed


def clean_bool_array(values: np.ndarray) -> np.ndarray:
    """numpy bools re-made as ``byte != 0``: the array itself (no copy) when every byte already is
    0 or 1, which one pass over the bytes tells.

    Example:
        >>> raw = np.array([0, 255, 1], np.uint8).view(bool)
        >>> clean_bool_array(raw).view(np.uint8).tolist()
        [0, 1, 1]
        >>> clean = np.array([True, False])
        >>> clean_bool_array(clean) is clean
        True
    """
    raw = values.view(np.uint8)
    return values if raw.max(initial=0) <= 1 else raw != 0


def clean_bool(values: jax.Array) -> jax.Array:
    """Booleans re-made as ``byte != 0`` (a True stored as 0xFF compares unequal to 1 in XLA).

    Pillow returns such bools for 1-bit PNG masks; :func:`as_array` applies this to every input.

    Example:
        >>> import numpy as np
        >>> raw = np.array([0, 255, 1], np.uint8).view(bool)
        >>> jax.jit(lambda m: clean_bool(m) == 1)(raw).tolist()
        [False, True, True]
    """
    # a bit cast, not a conversion: XLA may fold ``x != False`` or a convert back into ``x``
    return values.view(jnp.uint8) != 0 if values.dtype == jnp.bool_ else values


def _check_representable(values: np.ndarray, field: str) -> None:
    """Raise unless jax can hold ``values`` without changing them (see :func:`as_array`)."""
    kind = values.dtype.kind
    if kind not in "biuf":
        raise TypeError(
            f"{field}: expected a real numeric or boolean array, got dtype {values.dtype}"
        )
    if jax.config.jax_enable_x64 or values.size == 0 or values.dtype.itemsize < 8:
        return
    if kind in "iu":
        info = np.iinfo(np.int32)
        outside = (values < info.min) | (values > info.max)
        if np.any(outside):
            raise ValueError(
                f"{field}: integer values must fit in int32 (jax_enable_x64 is off), "
                f"got {values[outside].flat[0]}"
            )
    elif kind == "f":
        limit = np.finfo(np.float32).max
        outside = np.isfinite(values) & (np.abs(values) > limit)
        if np.any(outside):
            raise ValueError(
                f"{field}: values must fit in float32 (|x| <= {limit:.4g}; jax_enable_x64 is off), "
                f"got {float(values[outside].flat[0])}"
            )


def check_same_shape(first: jax.Array, first_field: str, second: jax.Array, second_field: str):
    """Raise ValueError unless both arrays have the same shape.

    Example:
        >>> import jax.numpy as jnp
        >>> check_same_shape(jnp.ones(3), "pred_score", jnp.ones(3), "gt_label")
    """
    if first.shape != second.shape:
        raise ValueError(
            f"{first_field} has shape {first.shape} but {second_field} has shape {second.shape}; "
            "they must match"
        )


_PASSED: dict[tuple, object] | None = None  # checks passed in the open ``checks_once``


@contextlib.contextmanager
def checks_once() -> Iterator[None]:
    """Within the block, a value check that passed for an array is not run again on that array.

    The Evaluator opens one per batch: metrics reading the same field (pixel AUROC, AUPRO and
    AUPIMO all read ``anomaly_map``) then check it once. Arrays are recognised by identity and
    kept alive until the block ends, so an id cannot be reused meanwhile.

    Example:
        >>> import jax.numpy as jnp
        >>> maps = jnp.array([0.1, 0.2])
        >>> with checks_once():
        ...     check_finite(maps, "anomaly_map")  # checked
        ...     check_finite(maps, "anomaly_map")  # already known to pass
    """
    global _PASSED
    outer, _PASSED = _PASSED, {}
    try:
        yield
    finally:
        _PASSED = outer


def _already_passed(values: object, check: str) -> bool:
    return _PASSED is not None and (id(values), check) in _PASSED


def _passed(values: object, check: str) -> None:
    if _PASSED is not None:
        _PASSED[(id(values), check)] = values


def known_range(values: np.ndarray) -> tuple[np.generic, np.generic] | None:
    """The (min, max) of finite float ``values`` that :func:`check_finite` found in the open
    :func:`checks_once` block, for any contiguous numpy view of the array it checked (a reshape,
    a ravel, the numpy view of a CPU jax array); None when it checked no such array.

    Example:
        >>> import numpy as np
        >>> maps = np.array([[0.25, 0.5], [0.75, 1.0]], np.float32)
        >>> with checks_once():
        ...     check_finite(maps, "anomaly_map")
        ...     [float(v) for v in known_range(maps.ravel())]
        [0.25, 1.0]
        >>> known_range(maps) is None  # outside the block
        True
    """
    key = _buffer_key(values)
    if _PASSED is None or key is None or key not in _PASSED:
        return None
    return _PASSED[key][1]


def _buffer_key(values: np.ndarray) -> tuple | None:
    """Contiguous arrays with this key hold the same values (same buffer, size and type)."""
    if not isinstance(values, np.ndarray) or not values.flags.c_contiguous:
        return None
    return ("range", values.__array_interface__["data"][0], values.size, values.dtype.str)


def check_finite(scores: jax.Array, field: str) -> None:
    """Eagerly raise ValueError when ``scores`` holds NaN or inf, or integers past 2**24 (which
    float32, the type scores are compared in, cannot all tell apart); no-op inside jit.

    Example:
        >>> import jax.numpy as jnp
        >>> check_finite(jnp.array([0.1, jnp.nan]), "anomaly_map")
        Traceback (most recent call last):
        ...
        ValueError: anomaly_map: 1 of 2 values are NaN or inf; scores must be finite
    """
    if is_traced(scores) or scores.size == 0 or _already_passed(scores, "finite"):
        return
    if jnp.issubdtype(scores.dtype, jnp.integer):
        # compared in float32, which holds every integer only up to 2**24: larger ones could tie
        largest = int(np.max(np.abs(np.asarray(scores).astype(np.int64))))
        if largest > 2**24:
            raise ValueError(
                f"{field}: integer scores beyond ±2**24 are not exact in float32 (got {largest}); "
                "pass float scores"
            )
        return
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        return
    xp, values = _checkable(scores)
    if xp is np:
        lowest, highest = values.min(), values.max()
        if np.isfinite(lowest) and np.isfinite(highest):
            _passed(scores, "finite")  # two reductions, no temporary the size of the batch
            key = _buffer_key(values)
            if key is not None and _PASSED is not None:  # kept alive: the buffer is not reused
                _PASSED[key] = (values, (lowest, highest))
            return
    bad = int(xp.sum(~xp.isfinite(values)))
    if bad:
        raise ValueError(
            f"{field}: {bad} of {scores.size} values are NaN or inf; scores must be finite"
        )
    _passed(scores, "finite")


def _checkable(values: jax.Array) -> tuple[object, object]:
    """(array module, values) to run an eager check with: numpy for arrays held by the CPU.

    numpy reads a CPU jax array without copying and compiles nothing; an eager jax reduction would
    compile once per batch shape (a ragged last batch pays it again). Arrays on an accelerator are
    checked where they are.
    """
    if isinstance(values, np.ndarray) or all(
        device.platform == "cpu" for device in values.devices()
    ):
        return np, np.asarray(values)
    return jnp, values


def check_binary(labels: jax.Array, field: str) -> None:
    """Eagerly raise ValueError unless every label is 0 or 1 (or boolean); no-op inside jit.

    Example:
        >>> import jax.numpy as jnp
        >>> check_binary(jnp.array([0, 2]), "gt_mask")
        Traceback (most recent call last):
        ...
        ValueError: gt_mask: labels must be 0/1 or boolean, found 1 other values (e.g. 2)
    """
    if labels.dtype == jnp.bool_ or is_traced(labels) or _already_passed(labels, "binary"):
        return
    xp, values = _checkable(labels)
    bad = (values != 0) & (values != 1)
    count = int(xp.sum(bad))
    if count:
        example = values.ravel()[int(xp.argmax(bad.ravel()))].item()
        raise ValueError(
            f"{field}: labels must be 0/1 or boolean, found {count} other values (e.g. {example})"
        )
    _passed(labels, "binary")


def per_sample(valid: jax.Array | None, shape: tuple[int, ...]) -> jax.Array | None:
    """A per-image ``valid`` flag (N,) broadcast over the other axes of ``shape`` (N, ...).

    Example:
        >>> import jax.numpy as jnp
        >>> per_sample(jnp.array([True, False]), (2, 2)).tolist()
        [[True, True], [False, False]]
    """
    if valid is None:
        return None
    return jnp.broadcast_to(jnp.reshape(valid, valid.shape + (1,) * (len(shape) - 1)), shape)


def binary_channel(
    scores: jax.Array, labels: jax.Array, keep: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Per-sample channel (0 negative, 1 positive, -1 invalid or left out) and the invalid count.

    ``keep`` (same shape, optional) leaves samples out without counting them as invalid (padding).

    Example:
        >>> import jax.numpy as jnp
        >>> channel, invalid = binary_channel(jnp.array([0.5, jnp.inf]), jnp.array([1, 0]))
        >>> channel.tolist(), int(invalid)
        ([1, -1], 1)
    """
    labels = clean_bool(labels)
    valid = jnp.isfinite(scores) & ((labels == 0) | (labels == 1))
    keep = jnp.ones(valid.shape, bool) if keep is None else keep
    channel = jnp.where(valid & keep, labels.astype(jnp.int32), -1)
    return channel, jnp.sum(~valid & keep).astype(jnp.int32)
