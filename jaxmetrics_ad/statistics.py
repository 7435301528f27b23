"""Score statistics: MinMax (for normalisation), AnomalyScoreDistribution, and ManualThreshold."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmetrics_ad.base import Metric
from jaxmetrics_ad.validation import check_finite, is_traced, per_sample


class Extrema(struct.PyTreeNode):
    """Running minimum and maximum; merges with min/max, reduces with ``pmin``/``pmax``."""

    minimum: jax.Array
    maximum: jax.Array

    def merge(self, other: Extrema) -> Extrema:
        """Extrema over both."""
        return Extrema(
            jnp.minimum(self.minimum, other.minimum), jnp.maximum(self.maximum, other.maximum)
        )

    def all_reduce(self, axis_name: str) -> Extrema:
        """Extrema over every device along ``axis_name``."""
        return Extrema(jax.lax.pmin(self.minimum, axis_name), jax.lax.pmax(self.maximum, axis_name))


class MinMax(Metric):
    """Running minimum and maximum of the scores; ``compute() -> (min, max)``, (inf, -inf) when empty.

    Example:
        >>> import jaxmetrics_ad as jm
        >>> m = jm.MinMax().update([0.1, 0.2, 0.3]).update([0.2, 0.4, 0.5])
        >>> [round(float(v), 2) for v in m.compute()]
        [0.1, 0.5]
    """

    default_fields = ("pred_score",)
    requires_data = False
    masks_samples = True

    def __init__(
        self, *, fields: Sequence[str] | None = None, prefix: str = "", strict: bool = True
    ) -> None:
        super().__init__(fields=fields, prefix=prefix, strict=strict)

    def _empty_state(self) -> Extrema:
        return Extrema(jnp.array(jnp.inf, jnp.float32), jnp.array(-jnp.inf, jnp.float32))

    def _check_inputs(self, predictions: jax.Array) -> None:
        check_finite(predictions, self.fields[0])

    def _update_state(self, predictions: jax.Array, valid: jax.Array | None = None):
        keep = per_sample(valid, predictions.shape)
        keep = jnp.ones(predictions.shape, bool) if keep is None else keep
        finite = jnp.isfinite(predictions)
        counted = finite & keep
        batch = Extrema(
            jnp.min(jnp.where(counted, predictions, jnp.inf), initial=jnp.inf).astype(jnp.float32),
            jnp.max(jnp.where(counted, predictions, -jnp.inf), initial=-jnp.inf).astype(
                jnp.float32
            ),
        )
        return self.state.merge(batch), jnp.sum(~finite & keep).astype(jnp.int32)

    def _compute(self) -> tuple[jax.Array, jax.Array]:
        return self.state.minimum, self.state.maximum


class Moments(struct.PyTreeNode):
    """Count, mean and sum of squared deviations (Chan et al.), element-wise; exact to merge."""

    count: jax.Array
    mean: jax.Array
    squared_deviations: jax.Array

    @classmethod
    def of(cls, values: jax.Array, keep: jax.Array | None = None) -> Moments:
        """Moments of ``values`` along axis 0 (count 0, mean 0 for no values: merging adds nothing).

        ``keep`` (bool, shape (N,)) leaves rows out.
        """
        if keep is None:
            count = jnp.asarray(values.shape[0], jnp.float32)
            mean = jnp.sum(values, axis=0) / max(values.shape[0], 1)
            return cls(count, mean, jnp.sum((values - mean) ** 2, axis=0))
        rows = per_sample(keep, values.shape)
        count = jnp.sum(keep).astype(jnp.float32)
        mean = jnp.sum(jnp.where(rows, values, 0.0), axis=0) / jnp.maximum(count, 1.0)
        deviations = jnp.where(rows, (values - mean) ** 2, 0.0)
        return cls(count, mean, jnp.sum(deviations, axis=0))

    def merge(self, other: Moments) -> Moments:
        """Moments of the union (parallel-variance formula)."""
        count = self.count + other.count
        delta = other.mean - self.mean
        share = jnp.where(count > 0, other.count / jnp.maximum(count, 1), 0.0)
        mean = self.mean + delta * share
        extra = delta**2 * self.count * share
        return Moments(count, mean, self.squared_deviations + other.squared_deviations + extra)

    def all_reduce(self, axis_name: str) -> Moments:
        """Moments over every device along ``axis_name``."""
        count = jax.lax.psum(self.count, axis_name)
        mean = jax.lax.psum(self.count * self.mean, axis_name) / jnp.maximum(count, 1)
        spread = self.squared_deviations + self.count * (self.mean - mean) ** 2
        return Moments(count, mean, jax.lax.psum(spread, axis_name))

    def std(self) -> jax.Array:
        """Unbiased standard deviation (NaN with fewer than two values)."""
        return jnp.sqrt(
            self.squared_deviations / jnp.where(self.count > 1, self.count - 1, jnp.nan)
        )


class AnomalyScoreDistribution(Metric):
    """Mean and std of the natural log of image scores, and per-pixel (over images) of log maps.

    ``update(pred_score (N,), anomaly_map (N, H, W))``; ``compute() -> (image_mean, image_std,
    pixel_mean (H, W), pixel_std (H, W))`` with the unbiased std, anomalib's semantics. ``map_shape``
    fixes (H, W) up front (needed inside jit); by default the first update sets it, and maps of
    another size later (in ``update`` or ``merge``) raise ValueError. Scores must be positive (their
    log is taken): others raise ValueError eagerly and make the result NaN in jit. An empty batch adds
    nothing; ``compute`` with no image at all raises ValueError eagerly and is NaN in jit.

    Example:
        >>> import jax.numpy as jnp, jaxmetrics_ad as jm
        >>> m = jm.AnomalyScoreDistribution().update(jnp.array([1.0, jnp.e]), jnp.ones((2, 2, 2)))
        >>> [round(float(v), 4) for v in m.compute()[:2]]
        [0.5, 0.7071]
    """

    default_fields = ("pred_score", "anomaly_map")
    masks_samples = True

    def __init__(
        self,
        map_shape: tuple[int, int] | None = None,
        *,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        super().__init__(
            fields=fields,
            prefix=prefix,
            strict=strict,
            map_shape=None if map_shape is None else tuple(map_shape),
        )

    def _empty_state(self) -> tuple[Moments, Moments]:
        shape = self.map_shape or ()
        zeros = jnp.zeros(shape, jnp.float32)
        empty = Moments(
            jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)
        )
        return _Pair(empty, Moments(jnp.zeros((), jnp.float32), zeros, zeros))

    def _check_inputs(self, scores: jax.Array, maps: jax.Array) -> None:
        score_field, map_field = self.fields
        if maps.ndim != 3 or scores.shape != maps.shape[:1]:
            raise ValueError(
                f"{score_field} must have shape (N,) and {map_field} (N, H, W); got "
                f"{scores.shape} and {maps.shape}"
            )
        if self.map_shape is not None and maps.shape[1:] != self.map_shape:
            raise ValueError(
                f"{map_field}: expected maps of shape {self.map_shape}, got {maps.shape[1:]}"
            )
        held = self._held_map_shape()
        if held is not None and maps.shape[1:] != held:
            raise ValueError(
                f"{map_field}: earlier updates had maps of shape {held}, this batch has "
                f"{maps.shape[1:]}; the per-pixel statistics need one map size (resize the maps)"
            )
        for values, field in ((scores, score_field), (maps, map_field)):
            check_finite(values, field)
            if not is_traced(values) and bool(jnp.any(values <= 0)):
                raise ValueError(f"{field}: values must be positive (their log is taken)")

    def _update_state(self, scores: jax.Array, maps: jax.Array, valid: jax.Array | None = None):
        image = Moments.of(jnp.log(scores.astype(jnp.float32)), valid)
        pixel = Moments.of(jnp.log(maps.astype(jnp.float32)), valid)
        state = self.state
        if state.pixel.mean.shape != pixel.mean.shape:  # first eager update sets the map shape
            state = _Pair(
                state.image,
                pixel.replace(
                    count=jnp.zeros((), jnp.float32),
                    mean=jnp.zeros_like(pixel.mean),
                    squared_deviations=jnp.zeros_like(pixel.mean),
                ),
            )
        invalid = jnp.sum(~(jnp.isfinite(image.mean) & jnp.all(jnp.isfinite(pixel.mean))))
        return _Pair(state.image.merge(image), state.pixel.merge(pixel)), invalid.astype(jnp.int32)

    def _held_map_shape(self) -> tuple[int, ...] | None:
        """(H, W) of the maps seen so far; None before the first update (when ``map_shape`` is None)."""
        shape = tuple(self.state.pixel.mean.shape)
        return shape or None

    def merge(self, other: Metric) -> Metric:
        """The statistics over the images of both; ValueError when their map sizes differ."""
        if isinstance(other, AnomalyScoreDistribution) and other._config == self._config:
            mine, theirs = self._held_map_shape(), other._held_map_shape()
            if mine is not None and theirs is not None and mine != theirs:
                raise ValueError(
                    f"cannot merge {self.name} states of different map sizes: {mine} and "
                    f"{theirs} ({self.fields[1]}); the per-pixel statistics need one map size"
                )
        return super().merge(other)

    def _from_state_dict(self, state: dict) -> Metric:
        # Without map_shape, the saved maps' (H, W) is adopted, as the first update would set it.
        try:
            saved = tuple(np.shape(state["state"]["pixel"]["mean"]))
        except (KeyError, TypeError):
            saved = ()
        target = self
        if self.map_shape is None and len(saved) == 2 and saved != self._held_map_shape():
            zeros = jnp.zeros(saved, jnp.float32)
            pixel = Moments(jnp.zeros((), jnp.float32), zeros, zeros)
            target = self._replace(state=_Pair(self.state.image, pixel))
        return Metric._from_state_dict(target, state)

    def _check_state(self) -> None:
        if float(self.state.image.count) == 0:
            raise ValueError(f"{self.name}: no images: every batch given to update() was empty")

    def _compute(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        image, pixel = self.state.image, self.state.pixel
        seen = image.count > 0  # with no image the mean is undefined, not 0
        return (
            jnp.where(seen, image.mean, jnp.nan),
            image.std(),
            jnp.where(seen, pixel.mean, jnp.nan),
            pixel.std(),
        )


class _Pair(struct.PyTreeNode):
    image: Moments
    pixel: Moments

    def merge(self, other: _Pair) -> _Pair:
        return _Pair(self.image.merge(other.image), self.pixel.merge(other.pixel))

    def all_reduce(self, axis_name: str) -> _Pair:
        return _Pair(self.image.all_reduce(axis_name), self.pixel.all_reduce(axis_name))


class _NoState(struct.PyTreeNode):
    def merge(self, other: _NoState) -> _NoState:
        return self

    def all_reduce(self, axis_name: str) -> _NoState:
        return self


class ManualThreshold(Metric):
    """A fixed threshold: ``update`` changes nothing and ``compute`` returns ``default_value``.

    Example:
        >>> import jaxmetrics_ad as jm
        >>> float(jm.ManualThreshold(default_value=0.7)([0.1, 0.9], [0, 1]))
        0.699999988079071
    """

    requires_data = False
    masks_samples = True

    def __init__(
        self,
        default_value: float = 0.5,
        *,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        super().__init__(
            fields=fields, prefix=prefix, strict=strict, default_value=float(default_value)
        )

    def _empty_state(self) -> _NoState:
        return _NoState()

    def _update_state(self, *arrays: jax.Array, valid: jax.Array | None = None):
        return self.state, jnp.zeros((), jnp.int32)

    def _compute(self) -> jax.Array:
        return jnp.asarray(self.default_value, jnp.float32)
