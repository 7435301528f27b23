"""SegF1 with a threshold fitted on defect-free validation data only (the MVTec AD 2 protocol).

MVTec AD 2 forbids choosing the threshold on test data: it may be fitted on the defect-free
validation images alone. Two steps:

1. :class:`ValidationThreshold` (streaming) or :func:`fit_threshold` (one call) fits a pixel
   threshold on normal validation maps: ``mean + k·std`` of their pixels (``k = 3`` by default,
   the AD 2 baseline; ``std`` is the population standard deviation, numpy's ``np.std``), or the
   ``q``-quantile of the pixels (the smallest pixel score ``s`` with at least ``q`` of the pixels
   ``<= s``: at most ``1 − q`` of the validation pixels then lie above the threshold).
2. :class:`SegF1` is the pixel F1 of the test maps binarised as ``map > threshold``, the counts
   pooled over the whole split (as MVTec AD 2 reports it); :class:`SegF1PerImage` is the mean of
   the per-image F1 instead.

Pixels are positive where ``map > threshold`` (strictly): the one exception to the ``>=`` rule of
every other metric here (:class:`~jaxmetrics_ad.F1Score`, :class:`~jaxmetrics_ad.PRO`, the curves),
kept so that a validation quantile keeps its promise that at most ``1 − q`` of the normal pixels
are predicted positive. With continuous scores ``>`` and ``>=`` differ only on pixels that equal
the threshold exactly. For ``>=``, pass ``np.nextafter(np.float32(t), -np.inf)``.

The oracle :class:`~jaxmetrics_ad.F1Max` (the best F1 over every threshold, chosen on the test
data itself) is an upper bound worth reporting next to it; it counts ``map >= threshold``:

Example:
    >>> import numpy as np, jaxmetrics_ad as jm
    >>> rng = np.random.default_rng(0)
    >>> validation = rng.normal(0.0, 1.0, (8, 32, 32)).astype(np.float32)  # defect-free
    >>> threshold = jm.fit_threshold(validation, method="mean_std", k=3)
    >>> round(threshold, 2)
    3.0
    >>> test = rng.normal(0.0, 1.0, (4, 32, 32)).astype(np.float32)
    >>> masks = np.zeros(test.shape, bool)
    >>> masks[:2, 8:16, 8:16] = True
    >>> test[masks] += 3.5  # defects score higher
    >>> seg = jm.SegF1(threshold).update(test, masks)
    >>> oracle = jm.F1Max(fields=("anomaly_map", "gt_mask")).update(test, masks)
    >>> round(float(seg.compute()), 3), round(float(oracle.compute()), 3)
    (0.778, 0.822)
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmetrics_ad.base import Metric, state_reader
from jaxmetrics_ad.buffer import ChunkedBuffer, FixedBuffer
from jaxmetrics_ad.classification import Thresholds, _checked_capacity, _checked_thresholds
from jaxmetrics_ad.counts import WideCount
from jaxmetrics_ad.histogram import ScoreHistogram, power_of_two
from jaxmetrics_ad.host import on_host
from jaxmetrics_ad.statistics import Moments
from jaxmetrics_ad.validation import (
    check_binary,
    check_finite,
    check_same_shape,
    is_traced,
    per_sample,
)

__all__ = ["SegF1", "SegF1PerImage", "ValidationThreshold", "fit_threshold"]

Method = Literal["mean_std", "quantile"]


# -- fitting the threshold ---------------------------------------------------------------------------


def _masked_moments(values: jax.Array, keep: jax.Array) -> Moments:
    """Count, mean and squared deviations of ``values[keep]`` (two passes, float32)."""
    values = jnp.ravel(values).astype(jnp.float32)
    keep = jnp.ravel(keep)
    count = jnp.sum(keep).astype(jnp.float32)
    mean = jnp.sum(jnp.where(keep, values, 0.0)) / jnp.maximum(count, 1.0)
    deviations = jnp.sum(jnp.where(keep, (values - mean) ** 2, 0.0))
    return Moments(count, mean, deviations)


def _exact_quantile(scores: np.ndarray, channels: np.ndarray, q: float) -> np.ndarray:
    """The smallest kept score with at least ``q`` of the kept scores at or below it (host)."""
    kept = np.sort(scores[channels >= 0].astype(np.float64))
    if kept.size == 0:
        return np.float32(np.nan)
    index = min(max(math.ceil(q * kept.size) - 1, 0), kept.size - 1)
    return np.float32(kept[index])


def _histogram_quantile(histogram: ScoreHistogram, q: float) -> tuple[jax.Array, jax.Array]:
    """(upper, lower): the exact quantile lies in [lower, upper]; at most ``1 − q`` of the scores
    lie above ``upper`` (the upper edge of the quantile's bin, or the highest score)."""
    counts = histogram.counts.as_float()[0]
    cumulative = jnp.cumsum(counts)
    total = cumulative[-1]
    # the first bin whose cumulative count reaches q·n (float32 counts: exact below 2**24)
    index = jnp.argmax(cumulative >= q * total)
    lower_edges = histogram.lower_edges()
    if histogram.edges is not None:
        upper_edges = jnp.concatenate(
            [jnp.asarray(histogram.edges, jnp.float32), jnp.array([jnp.inf])]
        )
    else:
        cells = histogram.offset + jnp.arange(1, histogram.num_bins + 1, dtype=jnp.int32)
        upper_edges = cells.astype(jnp.float32) * power_of_two(histogram.exponent)
    upper = jnp.minimum(upper_edges[index], histogram.score_max)
    lower = jnp.maximum(lower_edges[index], histogram.score_min)
    empty = total == 0
    return jnp.where(empty, jnp.nan, upper), jnp.where(empty, jnp.nan, lower)


class ValidationThreshold(Metric):
    """A pixel threshold fitted on defect-free validation maps; ``compute()`` is the threshold.

    ``update(anomaly_map)`` takes maps of any shape (every pixel counts; pass only defect-free
    images). NaN/inf pixels raise ValueError eagerly and make the threshold NaN inside jit.

    * ``method="mean_std"``: ``mean + k·std`` of all pixels (population std); the state is a
      count, a mean and a sum of squared deviations (merged exactly, Chan et al.), in float32.
    * ``method="quantile"``: the ``q``-quantile of all pixels (the smallest pixel ``s`` with at least
      ``q`` of the pixels ``<= s``), so that at most ``1 − q`` of the validation pixels score above
      the threshold. ``thresholds=None`` keeps every pixel (exact; ``capacity=`` for jit);
      ``thresholds=<int>`` or an array bins the scores, and the threshold is then the upper edge of
      the quantile's bin (or the highest score, whichever is lower): never below the exact
      quantile, so the ``1 − q`` guarantee still holds; :meth:`quantile_bracket` gives the
      interval certain to hold the exact quantile.

    Args:
        method: ``"mean_std"`` or ``"quantile"``.
        k: the number of standard deviations above the mean (``mean_std``).
        q: the quantile in (0, 1] (``quantile``; required there).
        thresholds: ``quantile`` only: ``None`` (exact), a number of bins, or ascending bin edges.
        capacity: exact ``quantile`` only: pixels a fixed-size buffer holds (for jit/scan).

    Example:
        >>> import numpy as np, jaxmetrics_ad as jm
        >>> maps = np.array([[0.0, 1.0], [2.0, 3.0]])
        >>> round(float(jm.ValidationThreshold(k=1)(maps)), 4)  # 1.5 + 1.118
        2.618
        >>> float(jm.ValidationThreshold("quantile", q=0.75)(maps))
        2.0
    """

    default_fields = ("anomaly_map",)
    masks_samples = True

    def __init__(
        self,
        method: Method = "mean_std",
        *,
        k: float = 3.0,
        q: float | None = None,
        thresholds: Thresholds = None,
        capacity: int | None = None,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        if method not in ("mean_std", "quantile"):
            raise ValueError(f"method: expected 'mean_std' or 'quantile', got {method!r}")
        config: dict[str, Any] = {"method": method}
        if method == "mean_std":
            if q is not None or thresholds is not None or capacity is not None:
                raise ValueError(
                    "q, thresholds and capacity apply to method='quantile' only; mean_std keeps "
                    "three numbers"
                )
            if isinstance(k, bool) or not isinstance(k, numbers.Real) or not math.isfinite(k):
                raise TypeError(f"k: expected a finite number, got {k!r}")
            config["k"] = float(k)
        else:
            if q is None:
                raise ValueError("q: method='quantile' needs the quantile q in (0, 1]")
            if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0.0 < q <= 1.0:
                raise ValueError(f"q: expected a number in (0, 1], got {q!r}")
            config["q"] = float(q)
            config["thresholds"] = _checked_thresholds(thresholds)
            config["capacity"] = _checked_capacity(capacity, thresholds)
        super().__init__(fields=fields, prefix=prefix, strict=strict, **config)

    @property
    def is_exact(self) -> bool:
        """False only for a binned quantile."""
        return self.method == "mean_std" or self.thresholds is None

    def _empty_state(self) -> Any:
        if self.method == "mean_std":
            zero = jnp.zeros((), jnp.float32)
            return Moments(zero, zero, zero)
        if self.thresholds is None:
            if self.capacity is None:
                return ChunkedBuffer.empty()
            return FixedBuffer.empty(self.capacity)
        if isinstance(self.thresholds, int):
            return ScoreHistogram.auto(self.thresholds, num_channels=1)
        return ScoreHistogram.fixed(self.thresholds, num_channels=1)

    def _check_inputs(self, maps: jax.Array) -> None:
        if maps.dtype == jnp.bool_:
            raise TypeError(f"{self.fields[0]}: expected anomaly scores, got dtype bool")
        check_finite(maps, self.fields[0])
        if isinstance(self.state, FixedBuffer):
            self.state.check_room(maps.size)

    def _update_state(self, maps: jax.Array, valid: jax.Array | None = None):
        scores = jnp.ravel(maps).astype(jnp.float32)
        finite = jnp.isfinite(scores)
        num_invalid = jnp.sum(~finite).astype(jnp.int32)
        if valid is not None:  # images (the first axis) left out: their pixels are not kept
            finite = finite & jnp.ravel(per_sample(valid, maps.shape))
        if self.method == "mean_std":
            return self.state.merge(_masked_moments(scores, finite)), num_invalid
        channels = jnp.where(finite, 0, -1)
        return self.state.add(scores, channels), num_invalid

    def _compute(self) -> jax.Array:
        if self.method == "mean_std":
            state = self.state
            std = jnp.sqrt(state.squared_deviations / jnp.maximum(state.count, 1.0))
            value = state.mean + self.k * std
            return jnp.where(state.count > 0, value, jnp.nan).astype(jnp.float32)
        if not self.is_exact:
            return _histogram_quantile(self.state, self.q)[0]
        q = self.q
        scores, channels, _ = self.state.arrays()
        value = on_host(
            lambda s, c: _exact_quantile(s, c, q),
            jax.ShapeDtypeStruct((), jnp.float32),
            scores,
            channels,
        )
        return jnp.where(self.state.overflowed(), jnp.nan, value)

    @state_reader
    def quantile_bracket(self) -> tuple[jax.Array, jax.Array]:
        """``(lower, upper)``, certain to hold the exact quantile; ``upper`` is what ``compute``
        returns. Both equal the threshold when exact (and for ``mean_std``).

        Example:
            >>> import jaxmetrics_ad as jm
            >>> m = jm.ValidationThreshold("quantile", q=0.5, thresholds=[1.0, 2.0])
            >>> [float(v) for v in m.update([0.5, 1.2, 1.7, 2.5]).quantile_bracket()]  # exact: 1.2
            [1.0, 2.0]
        """
        if self.is_exact:
            value = self.compute()
            return value, value
        upper, lower = _histogram_quantile(self.state, self.q)
        return lower, upper

    def _check_state(self) -> None:
        if self.is_exact and self.method == "quantile" and bool(self.state.overflowed()):
            raise ValueError(f"{self.name}: more pixels were added than capacity={self.capacity}")


def fit_threshold(
    validation_maps: Any,
    method: Method = "mean_std",
    *,
    k: float = 3.0,
    q: float | None = None,
    thresholds: Thresholds = None,
) -> float:
    """The threshold :class:`ValidationThreshold` fits on ``validation_maps``, as a Python float.

    ``validation_maps`` is one array of defect-free maps, or an iterable of arrays (batches, or
    images of different sizes). Eager.

    Example:
        >>> import numpy as np, jaxmetrics_ad as jm
        >>> jm.fit_threshold([np.zeros((2, 2)), np.full((1, 2), 3.0)], k=0)  # mean of 6 pixels
        1.0
        >>> jm.fit_threshold(np.arange(10.0), "quantile", q=0.9)
        8.0
    """
    metric = ValidationThreshold(method, k=k, q=q, thresholds=thresholds)
    if isinstance(validation_maps, (np.ndarray, jax.Array)):
        batches: Iterable[Any] = [validation_maps]
    elif isinstance(validation_maps, (list, tuple)) and not all(
        isinstance(item, (list, tuple, np.ndarray, jax.Array)) for item in validation_maps
    ):
        batches = [validation_maps]  # a flat list of numbers
    else:
        batches = validation_maps
    for batch in batches:
        metric = metric.update(batch)
    return float(metric.compute())


# -- SegF1 ---------------------------------------------------------------------------------------------


def _checked_threshold(threshold: Any) -> float:
    """A finite float from a number, a concrete scalar array or a fitted ValidationThreshold."""
    if isinstance(threshold, ValidationThreshold):
        threshold = threshold.compute()
    if isinstance(threshold, (jax.Array, np.ndarray, np.generic)):
        if is_traced(threshold):
            raise TypeError(
                "threshold: a traced value cannot configure a metric (configuration is static); "
                "compute the threshold eagerly, e.g. float(validation_threshold.compute())"
            )
        if np.ndim(threshold) != 0:
            raise ValueError(f"threshold: expected one number, got shape {np.shape(threshold)}")
        threshold = np.asarray(threshold).item()
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold: expected a finite number, got {threshold!r}")
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold: expected a finite number, got {float(threshold)}")
    return float(threshold)


def _check_map_inputs(maps: jax.Array, masks: jax.Array, fields: Sequence[str]) -> None:
    map_field, mask_field = fields
    if maps.ndim not in (2, 3, 4):
        raise ValueError(
            f"{map_field}: expected maps of shape (N, H, W), (N, 1, H, W) or (H, W), got shape "
            f"{maps.shape}"
        )
    check_same_shape(maps, map_field, masks, mask_field)
    if maps.dtype == jnp.bool_:
        raise TypeError(
            f"{map_field}: expected anomaly scores, got dtype bool (binarised predictions: use "
            "F1Score)"
        )
    check_finite(maps, map_field)
    check_binary(masks, mask_field)


def _pixel_counts(
    maps: jax.Array, masks: jax.Array, threshold: float, kept: jax.Array | None = None
):
    """Per image (N, 3) int32 (TP, FP, FN) and per image the number of invalid pixels; images
    where ``kept`` is False count nothing."""
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None]
    scores = jnp.reshape(maps, (maps.shape[0], -1)).astype(jnp.float32)
    masks = jnp.reshape(masks, scores.shape)
    predicted = scores > threshold
    actual = masks == 1
    valid = jnp.isfinite(scores) & ((masks == 0) | (masks == 1))
    if kept is not None:
        predicted, actual = predicted & kept[:, None], actual & kept[:, None]
    counts = jnp.stack(
        [
            jnp.sum(valid & predicted & actual, axis=-1),
            jnp.sum(valid & predicted & ~actual, axis=-1),
            jnp.sum(valid & ~predicted & actual, axis=-1),
        ],
        axis=-1,
    ).astype(jnp.int32)
    return counts, jnp.sum(~valid, axis=-1).astype(jnp.int32)


class SegF1(Metric):
    """Pixel F1 of the maps binarised at a fixed threshold (``map > threshold``), counts pooled
    over the whole split: ``2 TP / (2 TP + FP + FN)`` (MVTec AD 2's SegF1).

    Fit the threshold on defect-free validation data (:func:`fit_threshold`,
    :class:`ValidationThreshold`) and pass it (a number, a concrete scalar or the fitted
    :class:`ValidationThreshold` itself). No defect pixel and no predicted pixel at all gives 0, as
    :class:`~jaxmetrics_ad.F1Score`. The state is three exact counts; merged by addition.

    Args:
        threshold: the binarisation threshold.

    Example:
        >>> import numpy as np, jaxmetrics_ad as jm
        >>> maps = np.array([[[0.9, 0.2], [0.6, 0.1]]])
        >>> masks = np.array([[[1, 1], [0, 0]]])
        >>> float(jm.SegF1(threshold=0.5)(maps, masks))  # TP 1, FP 1, FN 1
        0.5
    """

    default_fields = ("anomaly_map", "gt_mask")
    masks_samples = True

    def __init__(
        self,
        threshold: float | ValidationThreshold,
        *,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        super().__init__(
            fields=fields, prefix=prefix, strict=strict, threshold=_checked_threshold(threshold)
        )

    def _empty_state(self) -> WideCount:
        return WideCount.zeros((3,))

    def _check_inputs(self, maps: jax.Array, masks: jax.Array) -> None:
        _check_map_inputs(maps, masks, self.fields)

    def _update_state(self, maps: jax.Array, masks: jax.Array, valid: jax.Array | None = None):
        counts, invalid = _pixel_counts(maps, masks, self.threshold, valid)
        return self.state.add(jnp.sum(counts, axis=0)), jnp.sum(invalid)

    def _compute(self) -> jax.Array:
        true_pos, false_pos, false_neg = self.state.as_float()
        denominator = 2 * true_pos + false_pos + false_neg
        return jnp.where(denominator > 0, 2 * true_pos / jnp.maximum(denominator, 1), 0.0)


class ImageMean(struct.PyTreeNode):
    """Sum of per-image values and the number of images counted."""

    total: jax.Array  # float32 scalar
    count: jax.Array  # int32 scalar

    def merge(self, other: ImageMean) -> ImageMean:
        """The sums over both."""
        return ImageMean(self.total + other.total, self.count + other.count)

    def all_reduce(self, axis_name: str) -> ImageMean:
        """The sums over every device along ``axis_name``."""
        return ImageMean(jax.lax.psum(self.total, axis_name), jax.lax.psum(self.count, axis_name))


class SegF1PerImage(Metric):
    """The mean over images of each image's pixel F1 at a fixed threshold (``map > threshold``).

    An image with defect pixels gets ``2 TP / (2 TP + FP + FN)`` (0 when nothing of it is
    predicted); a defect-free image with predicted pixels gets 0. A defect-free image with no
    predicted pixel has no F1 (0/0): it gets ``empty_score`` (default 1.0: nothing to find,
    nothing falsely found), or is left out of the mean with ``empty_score=None``. With no image counted the value
    is NaN (a warning says so eagerly). Maps (N, H, W), (N, 1, H, W) or one (H, W) image.

    Args:
        threshold: the binarisation threshold (as for :class:`SegF1`).
        empty_score: the F1 of a defect-free image with no predicted pixel, or ``None`` to skip
            such images.

    Example:
        >>> import numpy as np, jaxmetrics_ad as jm
        >>> maps = np.array([[[0.9, 0.2]], [[0.1, 0.1]], [[0.8, 0.1]]])
        >>> masks = np.array([[[1, 1]], [[0, 0]], [[0, 0]]])
        >>> float(jm.SegF1PerImage(0.5)(maps, masks))  # (2/3 + 1 + 0) / 3
        0.5555555820465088
        >>> float(jm.SegF1PerImage(0.5, empty_score=None)(maps, masks))  # (2/3 + 0) / 2
        0.3333333432674408
    """

    default_fields = ("anomaly_map", "gt_mask")
    masks_samples = True

    def __init__(
        self,
        threshold: float | ValidationThreshold,
        *,
        empty_score: float | None = 1.0,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        if empty_score is not None:
            if isinstance(empty_score, bool) or not isinstance(empty_score, numbers.Real):
                raise TypeError(
                    f"empty_score: expected a number in [0, 1] or None, got {empty_score!r}"
                )
            if not 0.0 <= float(empty_score) <= 1.0:
                raise ValueError(
                    f"empty_score: expected a number in [0, 1] or None, got {empty_score!r}"
                )
            empty_score = float(empty_score)
        super().__init__(
            fields=fields,
            prefix=prefix,
            strict=strict,
            threshold=_checked_threshold(threshold),
            empty_score=empty_score,
        )

    def _empty_state(self) -> ImageMean:
        return ImageMean(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

    def _check_inputs(self, maps: jax.Array, masks: jax.Array) -> None:
        _check_map_inputs(maps, masks, self.fields)

    def _update_state(self, maps: jax.Array, masks: jax.Array, valid: jax.Array | None = None):
        counts, invalid = _pixel_counts(maps, masks, self.threshold, valid)
        true_pos, false_pos, false_neg = (counts[:, i].astype(jnp.float32) for i in range(3))
        denominator = 2 * true_pos + false_pos + false_neg
        f1 = 2 * true_pos / jnp.maximum(denominator, 1.0)
        counted = invalid == 0
        if valid is not None:
            counted = counted & valid
        if self.empty_score is None:
            counted = counted & (denominator > 0)
        else:
            f1 = jnp.where(denominator > 0, f1, self.empty_score)
        batch = ImageMean(
            jnp.sum(jnp.where(counted, f1, 0.0)).astype(jnp.float32),
            jnp.sum(counted).astype(jnp.int32),
        )
        return self.state.merge(batch), jnp.sum(invalid)

    def _compute(self) -> jax.Array:
        count = self.state.count
        mean = self.state.total / jnp.maximum(count, 1).astype(jnp.float32)
        return jnp.where(count > 0, mean, jnp.nan)

    def _check_state(self) -> None:
        if int(self.state.count) == 0:
            warnings.warn(
                f"{self.name}: no image counted (every image is defect-free with nothing "
                "predicted, and empty_score=None); the mean is undefined (NaN)",
                UserWarning,
                stacklevel=3,
            )
