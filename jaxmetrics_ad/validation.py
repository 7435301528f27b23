"""Input checks shared by every metric: clear errors eagerly, invalid-sample counts inside jit.

Shape and dtype checks are static, so they raise under ``jax.jit`` too. Value checks (NaN/inf scores,
labels outside {0, 1}) need concrete values: eagerly they raise ``ValueError`` naming the field; inside
jit the offending samples are left out and counted, and the metric's ``compute`` then returns NaN
(and raises when called eagerly), so a wrong number is never returned silently.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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


def as_array(value: object, field: str) -> jax.Array:
    """``value`` as a jax array, or a TypeError naming the field.

    Example:
        >>> as_array([1, 2], "gt_label").shape
        (2,)
    """
    if value is None:
        raise TypeError(f"{field}: expected an array, got None")
    try:
        array = jnp.asarray(value)
    except TypeError as error:
        raise TypeError(f"{field}: expected an array, got {type(value).__name__}") from error
    if not (jnp.issubdtype(array.dtype, jnp.number) or array.dtype == jnp.bool_):
        raise TypeError(f"{field}: expected a numeric or boolean array, got dtype {array.dtype}")
    return array


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


def check_finite(scores: jax.Array, field: str) -> None:
    """Eagerly raise ValueError when ``scores`` holds NaN or inf; no-op inside jit.

    Example:
        >>> import jax.numpy as jnp
        >>> check_finite(jnp.array([0.1, jnp.nan]), "anomaly_map")
        Traceback (most recent call last):
        ...
        ValueError: anomaly_map: 1 of 2 values are NaN or inf; scores must be finite
    """
    if is_traced(scores) or not jnp.issubdtype(scores.dtype, jnp.floating):
        return
    bad = int(jnp.sum(~jnp.isfinite(scores)))
    if bad:
        raise ValueError(
            f"{field}: {bad} of {scores.size} values are NaN or inf; scores must be finite"
        )


def check_binary(labels: jax.Array, field: str) -> None:
    """Eagerly raise ValueError unless every label is 0 or 1 (or boolean); no-op inside jit.

    Example:
        >>> import jax.numpy as jnp
        >>> check_binary(jnp.array([0, 2]), "gt_mask")
        Traceback (most recent call last):
        ...
        ValueError: gt_mask: labels must be 0/1 or boolean, found 1 other values (e.g. 2)
    """
    if labels.dtype == jnp.bool_ or is_traced(labels):
        return
    bad = (labels != 0) & (labels != 1)
    count = int(jnp.sum(bad))
    if count:
        example = labels.ravel()[jnp.argmax(bad.ravel())].item()
        raise ValueError(
            f"{field}: labels must be 0/1 or boolean, found {count} other values (e.g. {example})"
        )


def binary_channel(scores: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-sample channel (0 negative, 1 positive, -1 invalid) and the number of invalid samples.

    Example:
        >>> import jax.numpy as jnp
        >>> channel, invalid = binary_channel(jnp.array([0.5, jnp.inf]), jnp.array([1, 0]))
        >>> channel.tolist(), int(invalid)
        ([1, -1], 1)
    """
    valid = jnp.isfinite(scores) & ((labels == 0) | (labels == 1))
    channel = jnp.where(valid, labels.astype(jnp.int32), -1)
    return channel, jnp.sum(~valid).astype(jnp.int32)
