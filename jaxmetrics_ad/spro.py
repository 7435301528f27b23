"""sPRO and AU-sPRO: saturated per-region overlap, the localisation metric of MVTec LOCO AD.

Bergmann et al. 2022 ("Beyond Dents and Scratches") evaluate logical anomalies, where a defect may be
a missing object whose extent is ambiguous: detecting part of it is enough. Each ground-truth defect
``d`` is one mask (no connected-component step: a defect may be several blobs, and defects of one
image may overlap), and each has a *saturation area* ``A_d`` in pixels, from the dataset's
``defects_config.json``:

* absolute saturation (``relative_saturation: false``): ``A = min(τ, |d|)``;
* relative saturation (``relative_saturation: true``, τ ∈ (0, 1]): ``A = int(τ · |d|)``
  (at least 1, see :func:`saturation_areas`).

At threshold ``t`` the overlap of a defect is ``sPRO_d(t) = min(|{p ∈ d : s(p) >= t}| / A_d, 1)``;
:class:`SPRO` is its mean over every defect seen. The background is the pixels that no defect mask
of their image covers; the false positive rate is the fraction of background pixels above the
threshold. :class:`AUSPRO` integrates the mean sPRO over the FPR from 0 to ``fpr_limit`` (default
0.05), trapezoid rule with sPRO interpolated at the limit, divided by the limit.

**Inputs.** ``update(anomaly_map, defect_masks, saturation_area)`` with maps (N, H, W) (or
(N, 1, H, W), or one (H, W) image), masks (N, D, H, W) bool or {0, 1}, and saturation areas
(N, D) in pixels. ``D`` is a maximum number of defects per image: pad with empty masks (an empty
mask is no defect; its saturation area is ignored), so that batches of images with 0, 1, 2, ...
defects share one shape. :func:`defects_from_ground_truth` builds both arrays from the MVTec LOCO
ground-truth images and ``defects_config.json``. ``update(..., valid=)`` (one bool per image) leaves
out padded images, as for the other metrics.

**How the saturation becomes a fixed-size state.** A defect lies in one image, so every update sees
all its pixels. Ranking them by score (descending) and giving the pixel of rank ``r`` (0-based) the
weight ``w_r = min((r + 1) / A, 1) − min(r / A, 1)``, the sum of the weights of the defect's pixels
scoring ``>= t`` is ``min(c_d(t) / A, 1)`` for *every* threshold ``t`` (``c_d(t)`` pixels score
``>= t``; tied pixels enter together, so any order among ties gives the same sum). The mean sPRO
is therefore a weighted count of pixels above a threshold, exactly AUPRO's structure with
``1/|region|`` replaced by ``w_r``: the binned state is the same score histogram (background count,
defect weight), independent of the number of defects, and the exact state keeps each defect
pixel's score, rank and ``A``. Pixels of rank ``>= A`` have weight 0 and are not stored.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmetrics_ad.base import Metric
from jaxmetrics_ad.buffer import ChunkedBuffer, FixedBuffer
from jaxmetrics_ad.classification import Thresholds, _checked_capacity, _checked_thresholds
from jaxmetrics_ad.pro import (
    RegionCurveMetric,
    RegionCurveState,
    RegionOverlap,
)
from jaxmetrics_ad.validation import check_binary, check_finite, is_traced

__all__ = [
    "AUSPRO",
    "SPRO",
    "defects_from_ground_truth",
    "saturation_areas",
]

_FIELDS = ("anomaly_map", "defect_masks", "saturation_area")


# -- saturation areas from the dataset's configuration -------------------------------------------


def saturation_areas(
    defect_masks: Any, saturation_threshold: Any, relative_saturation: Any
) -> np.ndarray:
    """The saturation area ``A`` (pixels, float32) of each defect mask; 0 for an empty mask.

    ``defect_masks`` has shape (..., H, W); ``saturation_threshold`` and ``relative_saturation``
    broadcast to its leading shape (...). Absolute: ``A = min(τ, |d|)`` with τ > 0. Relative
    (τ ∈ (0, 1]): ``A = int(τ · |d|)``, raised to 1 where that would be 0 (a defect of fewer than
    ``1/τ`` pixels; with ``A = 0`` sPRO would be 0/0), as MVTec LOCO's evaluation computes it
    otherwise. Host (numpy) helper, for data loading.

    Example:
        >>> import numpy as np
        >>> masks = np.zeros((3, 4, 5), bool)
        >>> masks[0, :2] = True  # 10 pixels
        >>> masks[1, :, :2] = True  # 8 pixels
        >>> saturation_areas(masks, [4, 0.5, 7], [False, True, False]).tolist()
        [4.0, 4.0, 0.0]
    """
    masks = np.asarray(defect_masks)
    if masks.ndim < 2:
        raise ValueError(f"defect_masks: expected shape (..., H, W), got {masks.shape}")
    if masks.dtype != bool and not np.isin(masks, (0, 1)).all():
        raise ValueError("defect_masks: masks must be bool or contain only 0 and 1")
    sizes = masks.astype(bool).sum(axis=(-2, -1)).astype(np.float64)
    tau = np.broadcast_to(np.asarray(saturation_threshold, np.float64), sizes.shape)
    relative = np.broadcast_to(np.asarray(relative_saturation, bool), sizes.shape)
    if not np.all(np.isfinite(tau)) or np.any(tau <= 0):
        raise ValueError(f"saturation_threshold: expected positive numbers, got {tau.tolist()}")
    if np.any(relative & (tau > 1)):
        raise ValueError(
            "saturation_threshold: a relative saturation threshold must lie in (0, 1], got "
            f"{tau[relative & (tau > 1)].tolist()}"
        )
    areas = np.where(relative, np.maximum(np.floor(tau * sizes), 1.0), np.minimum(tau, sizes))
    return np.where(sizes > 0, areas, 0.0).astype(np.float32)


def _config_entries(defects_config: Any) -> dict[int, Mapping[str, Any]]:
    """The entries of a ``defects_config.json`` (a path or its parsed list), keyed by pixel value."""
    if isinstance(defects_config, (str, os.PathLike)):
        with open(defects_config, encoding="utf-8") as file:
            defects_config = json.load(file)
    if isinstance(defects_config, Mapping):
        defects_config = [defects_config]
    entries: dict[int, Mapping[str, Any]] = {}
    for entry in defects_config:
        missing = [
            key
            for key in ("pixel_value", "saturation_threshold", "relative_saturation")
            if key not in entry
        ]
        if missing:
            raise ValueError(f"defects_config: the entry {dict(entry)!r} has no {missing}")
        entries[int(entry["pixel_value"])] = entry
    return entries


def defects_from_ground_truth(
    ground_truth: Sequence[Any], defects_config: Any, max_defects: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(defect_masks (D, H, W) bool, saturation_area (D,) float32)`` of one MVTec LOCO test image.

    ``ground_truth`` holds the image's ground-truth images (one (H, W) array per defect, e.g. the
    files ``ground_truth/<image>/000.png, 001.png, ...``; empty for a good image). The non-zero
    pixels of each carry the defect type's ``pixel_value``, looked up in ``defects_config``: the
    parsed ``defects_config.json`` (a list of ``{"defect_name", "pixel_value",
    "saturation_threshold", "relative_saturation"}`` dicts) or its path. The result is padded
    with empty masks to ``max_defects`` (default: as many as given), so images stack into
    :class:`AUSPRO`'s (N, D, H, W) and (N, D) inputs. A good image needs ``max_defects`` and a
    shape: pass ``ground_truth=[np.zeros((H, W))]``, an all-zero image, which is no defect.

    Example:
        >>> import numpy as np
        >>> config = [{"defect_name": "missing", "pixel_value": 255, "saturation_threshold": 3,
        ...            "relative_saturation": False},
        ...           {"defect_name": "extra", "pixel_value": 254, "saturation_threshold": 0.5,
        ...            "relative_saturation": True}]
        >>> first, second = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
        >>> first[:2, :2], second[2:, :] = 255, 254
        >>> masks, areas = defects_from_ground_truth([first, second], config, max_defects=3)
        >>> masks.shape, areas.tolist()
        ((3, 4, 4), [3.0, 4.0, 0.0])
    """
    entries = _config_entries(defects_config)
    images = [np.asarray(image) for image in ground_truth]
    if not images:
        raise ValueError(
            "ground_truth: no image given; for a good image pass one all-zero (H, W) image"
        )
    shapes = {image.shape for image in images}
    if len(shapes) != 1 or len(images[0].shape) != 2:
        raise ValueError(f"ground_truth: expected (H, W) images of one shape, got {sorted(shapes)}")
    count = len(images) if max_defects is None else int(max_defects)
    if len(images) > count:
        raise ValueError(f"ground_truth: {len(images)} defects exceed max_defects={count}")
    masks = np.zeros((count, *images[0].shape), bool)
    tau = np.ones(count)
    relative = np.zeros(count, bool)
    for index, image in enumerate(images):
        values = np.unique(image[image != 0])
        if values.size > 1:
            raise ValueError(
                f"ground_truth[{index}]: one defect per image expected, found pixel values "
                f"{values.tolist()}"
            )
        if values.size == 0:
            continue  # an empty image is no defect
        value = int(values[0])
        if value not in entries:
            raise ValueError(
                f"ground_truth[{index}]: pixel value {value} is not in defects_config (known: "
                f"{sorted(entries)})"
            )
        masks[index] = image != 0
        tau[index] = float(entries[value]["saturation_threshold"])
        relative[index] = bool(entries[value]["relative_saturation"])
    return masks, saturation_areas(masks, tau, relative)


# -- inputs ----------------------------------------------------------------------------------------


def _as_batch(maps: jax.Array, masks: jax.Array, saturation: jax.Array):
    """Maps (N, H, W), masks (N, D, H, W), saturation (N, D): a single image gets a batch axis."""
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim == 2:
        maps, masks, saturation = maps[None], masks[None], saturation[None]
    return maps, masks, saturation


def _check_defect_inputs(
    maps: jax.Array, masks: jax.Array, saturation: jax.Array, fields: Sequence[str]
) -> None:
    """Shapes always; values (finite maps, binary masks, positive saturation) when concrete."""
    map_field, mask_field, saturation_field = fields
    maps, masks, saturation = _as_batch(maps, masks, saturation)
    if maps.ndim != 3:
        raise ValueError(
            f"{map_field}: expected maps of shape (N, H, W), (N, 1, H, W) or (H, W), got shape "
            f"{maps.shape}"
        )
    if masks.ndim != 4 or masks.shape[:1] != maps.shape[:1] or masks.shape[2:] != maps.shape[1:]:
        raise ValueError(
            f"{mask_field}: expected masks of shape (N, D, H, W) = ({maps.shape[0]}, D, "
            f"{maps.shape[1]}, {maps.shape[2]}) for {map_field} of shape {maps.shape} (D defects "
            f"per image, padded with empty masks), got shape {masks.shape}"
        )
    if saturation.shape != masks.shape[:2]:
        raise ValueError(
            f"{saturation_field}: expected shape (N, D) = {masks.shape[:2]} (one area per defect "
            f"mask of {mask_field}), got shape {saturation.shape}"
        )
    if jnp.issubdtype(saturation.dtype, jnp.bool_):
        raise TypeError(f"{saturation_field}: expected areas in pixels, got dtype bool")
    if jnp.issubdtype(maps.dtype, jnp.floating):
        check_finite(maps, map_field)
    check_binary(masks, mask_field)
    if is_traced(masks, saturation):
        return
    present = np.asarray(jnp.any(masks != 0, axis=(-2, -1)))
    areas = np.asarray(saturation, np.float64)
    bad = present & ~(np.isfinite(areas) & (areas > 0))
    if np.any(bad):
        image, defect = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(
            f"{saturation_field}: defect {defect} of image {image} has a non-empty mask but "
            f"saturation area {areas[image, defect]}; areas must be positive and finite "
            f"(see saturation_areas), found {int(bad.sum())} such defects"
        )


class _Defects:
    """One batch's defects, ranked: see the module docstring."""

    def __init__(
        self,
        maps: jax.Array,
        masks: jax.Array,
        saturation: jax.Array,
        valid: jax.Array | None = None,
    ) -> None:
        maps, masks, saturation = _as_batch(maps, masks, saturation)
        num_images, num_defects = masks.shape[:2]
        scores = jnp.reshape(maps, (num_images, -1)).astype(jnp.float32)
        if masks.dtype == jnp.bool_:
            member, bad_mask = masks, jnp.zeros(masks.shape, bool)
        else:
            member, bad_mask = masks != 0, (masks != 0) & (masks != 1)
        member = jnp.reshape(member, (num_images, num_defects, -1))
        kept = jnp.ones((num_images, 1), bool) if valid is None else valid.reshape(-1, 1)
        member = member & kept[:, :, None]  # a left-out image has neither defect nor background
        areas = saturation.astype(jnp.float32)
        present = jnp.any(member, axis=-1)
        bad_area = present & ~(jnp.isfinite(areas) & (areas > 0))
        self.valid = present & ~bad_area  # (N, D)
        self.areas = areas
        self.scores = scores  # (N, P)
        self.background = ~jnp.any(member, axis=1) & kept  # (N, P)
        self.member = member
        self.num_defects = jnp.sum(self.valid).astype(jnp.int32)
        self.num_invalid = (
            jnp.sum(~jnp.isfinite(scores)) + jnp.sum(bad_mask) + jnp.sum(bad_area)
        ).astype(jnp.int32)

    def ranked(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Scores in descending order per image (N, P), each defect's rank there (N, D, P) and
        whether that pixel counts for the defect (rank below its saturation area)."""
        order = jnp.argsort(-self.scores, axis=-1)
        sorted_scores = jnp.take_along_axis(self.scores, order, axis=-1)
        member = jnp.take_along_axis(self.member, order[:, None, :], axis=-1)
        rank = jnp.cumsum(member, axis=-1, dtype=jnp.int32) - 1
        counts = member & self.valid[..., None] & (rank < self.areas[..., None])
        return sorted_scores, rank, counts


def _rank_weights(rank: jax.Array, areas: jax.Array) -> jax.Array:
    """``min((r + 1) / A, 1) − min(r / A, 1)``: what the pixel of rank r adds to its defect's sPRO."""
    rank = rank.astype(areas.dtype)
    return jnp.minimum((rank + 1) / areas, 1.0) - jnp.minimum(rank / areas, 1.0)


def _num_stored(maps: Any, masks: Any, saturation: Any) -> int:
    """Samples an exact buffer stores for this batch (host, concrete inputs)."""
    maps, masks, saturation = _as_batch(*(np.asarray(a) for a in (maps, masks, saturation)))
    member = masks.reshape(*masks.shape[:2], -1) != 0
    sizes = member.sum(axis=-1)
    areas = np.ceil(np.where(sizes > 0, saturation.astype(np.float64), 0.0))
    background = int(np.sum(~member.any(axis=1)))
    return background + int(np.sum(np.minimum(sizes, np.maximum(areas, 0))))


def _append_compact(buffer: Any, scores: jax.Array, channels: jax.Array, weights: jax.Array):
    """``buffer.add`` storing only the samples whose channel is >= 0 (padding takes no room).

    A FixedBuffer compacts by itself; eagerly, a growing ChunkedBuffer is given the kept samples
    alone so it does not hold the padding either.
    """
    if isinstance(buffer, ChunkedBuffer) and not is_traced(scores, channels, weights):
        keep = np.asarray(channels) >= 0
        return buffer.add(scores[keep], channels[keep], weights[:, keep])
    return buffer.add(scores, channels, weights)


# -- SPRO -------------------------------------------------------------------------------------------


class SPRO(Metric):
    """Saturated per-region overlap at one threshold: the mean over every defect of
    ``min(|{p ∈ d : map(p) >= threshold}| / A_d, 1)`` (MVTec LOCO's sPRO, with the ``>=`` rule of
    every metric here).

    Inputs as described in the module docstring: ``update(anomaly_map (N, H, W), defect_masks
    (N, D, H, W), saturation_area (N, D))``, empty masks being padding. Int or bool maps are
    predictions already (0/1, True positive). With no defect at all the value is 1.0, as
    :class:`~jaxmetrics_ad.PRO`'s. The state is two scalars (overlap sum, defect count).

    Args:
        threshold: the binarisation threshold of float maps (positive where ``map >= threshold``).

    Example:
        >>> import numpy as np, jaxmetrics_ad as jm
        >>> maps = np.array([[[0.9, 0.8, 0.1, 0.0]]])
        >>> masks = np.array([[[[1, 1, 1, 1]], [[0, 0, 1, 1]]]])  # two overlapping defects
        >>> # defect 0 saturates at 2 pixels (2 detected: 1), defect 1 at 2 (none detected: 0)
        >>> float(jm.SPRO(0.5)(maps, masks, np.array([[2.0, 2.0]])))
        0.5
    """

    default_fields = _FIELDS
    masks_samples = True

    def __init__(
        self,
        threshold: float = 0.5,
        *,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real):
            raise TypeError(f"threshold: expected a finite float, got {threshold!r}")
        if not np.isfinite(float(threshold)):
            raise ValueError(f"threshold: expected a finite float, got {float(threshold)}")
        super().__init__(fields=fields, prefix=prefix, strict=strict, threshold=float(threshold))

    def _empty_state(self) -> RegionOverlap:
        return RegionOverlap(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

    def _check_inputs(self, maps: jax.Array, masks: jax.Array, saturation: jax.Array) -> None:
        _check_defect_inputs(maps, masks, saturation, self.fields)
        if not jnp.issubdtype(maps.dtype, jnp.floating):
            check_binary(maps, self.fields[0])

    def _update_state(
        self,
        maps: jax.Array,
        masks: jax.Array,
        saturation: jax.Array,
        valid: jax.Array | None = None,
    ):
        defects = _Defects(maps, masks, saturation, valid)
        if jnp.issubdtype(maps.dtype, jnp.floating):
            predicted, bad = defects.scores >= self.threshold, jnp.zeros((), jnp.int32)
        elif maps.dtype == jnp.bool_:
            predicted, bad = defects.scores > 0, jnp.zeros((), jnp.int32)
        else:
            predicted = defects.scores != 0
            bad = jnp.sum((defects.scores != 0) & (defects.scores != 1)).astype(jnp.int32)
        hits = jnp.sum(defects.member & predicted[:, None, :], axis=-1).astype(jnp.float32)
        overlap = jnp.minimum(hits / jnp.where(defects.valid, defects.areas, 1.0), 1.0)
        overlap_sum = jnp.sum(jnp.where(defects.valid, overlap, 0.0)).astype(jnp.float32)
        batch = RegionOverlap(overlap_sum, defects.num_defects)
        return self.state.merge(batch), defects.num_invalid + bad

    def _compute(self) -> jax.Array:
        count = self.state.num_regions
        mean = self.state.overlap_sum / jnp.maximum(count, 1).astype(jnp.float32)
        return jnp.where(count > 0, mean, 1.0)


# -- AUSPRO -----------------------------------------------------------------------------------------


@jax.jit
def _binned_samples(maps: jax.Array, masks: jax.Array, saturation: jax.Array, valid: Any = None):
    """Histogram samples: background pixels (channel 0) and ranked defect pixels (channel 1) whose
    weight is the sum over the defects covering them of their rank weights."""
    defects = _Defects(maps, masks, saturation, valid)
    sorted_scores, rank, counts = defects.ranked()
    weights = jnp.where(counts, _rank_weights(rank, defects.areas[..., None]), 0.0)
    pixel_weights = jnp.sum(weights, axis=1)  # (N, P): overlapping defects add up
    defect_channel = jnp.where(jnp.any(counts, axis=1), 1, -1)
    background_channel = jnp.where(defects.background, 0, -1)
    scores = jnp.concatenate([defects.scores.ravel(), sorted_scores.ravel()])
    channels = jnp.concatenate([background_channel.ravel(), defect_channel.ravel()])
    weights = jnp.concatenate([jnp.zeros(pixel_weights.size), pixel_weights.ravel()])
    return scores, channels, weights[None, :], defects.num_defects, defects.num_invalid


@jax.jit
def _exact_samples(maps: jax.Array, masks: jax.Array, saturation: jax.Array, valid: Any = None):
    """Buffer samples: background pixels (channel 0) and, per defect, its pixels of rank below its
    saturation area (channel 1) with weights (rank, area); -1 channels are padding."""
    defects = _Defects(maps, masks, saturation, valid)
    sorted_scores, rank, counts = defects.ranked()
    defect_scores = jnp.broadcast_to(sorted_scores[:, None, :], rank.shape)
    areas = jnp.broadcast_to(defects.areas[..., None], rank.shape)
    finite = jnp.isfinite(defect_scores)
    scores = jnp.concatenate([defects.scores.ravel(), defect_scores.ravel()])
    channels = jnp.concatenate(
        [
            jnp.where(defects.background & jnp.isfinite(defects.scores), 0, -1).ravel(),
            jnp.where(counts & finite, 1, -1).ravel(),
        ]
    )
    background_weights = jnp.zeros((2, defects.scores.size), jnp.float32)
    defect_weights = jnp.stack([rank.ravel().astype(jnp.float32), areas.ravel()])
    weights = jnp.concatenate([background_weights, defect_weights], axis=1)
    return scores, channels, weights, defects.num_defects, defects.num_invalid


def _inverse_weights(channels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """1 / (rank weight) of each defect sample in float64 (1 elsewhere), as AUPRO's exact functions
    read a region size per pixel and weigh it by its inverse."""
    rank, areas = weights[0].astype(np.float64), weights[1].astype(np.float64)
    is_defect = channels == 1
    areas = np.where(is_defect, areas, 1.0)
    step = np.minimum((rank + 1) / areas, 1.0) - np.minimum(rank / areas, 1.0)
    return np.where(is_defect & (step > 0), 1.0 / np.where(step > 0, step, 1.0), 1.0)


class AUSPRO(RegionCurveMetric):
    """Area under the sPRO curve up to ``fpr_limit``, normalised by it (MVTec LOCO's AU-sPRO).

    The curve has one point per distinct score ``t``: x is the fraction of background pixels (no
    defect mask of their image covers them) scoring ``>= t``, y the mean over every defect of
    ``min(|{p ∈ d : s(p) >= t}| / A_d, 1)``; tied scores enter together, (0, 0) comes first. The
    trapezoid area up to ``fpr_limit`` (sPRO linearly interpolated at the cut) is divided by the
    limit. Without any background pixel or defect the value is 0 (a warning says so eagerly), as
    :class:`~jaxmetrics_ad.AUPRO`'s. Inputs: see the module docstring; defects of one image may
    overlap, and an image may have none (all its masks empty).

    ``thresholds`` picks the state, as for :class:`~jaxmetrics_ad.AUPRO`:

    * ``None`` — **exact**: every background pixel's score and, per defect, the scores of its
      ``min(|d|, ceil(A))`` highest pixels with their rank and ``A`` (13 bytes each); compute runs
      AUPRO's exact algorithm on the host in float64 (through ``jax.pure_callback`` under jit).
      ``capacity=`` (samples: background pixels plus stored defect pixels) gives a fixed-size
      buffer for ``jax.jit``/``lax.scan``.
    * an ``int`` — **binned**: an auto-ranging score histogram with a background count and a
      defect-weight sum per bin (the rank weights of the module docstring) plus the defect count:
      fixed size whatever the number of defects, merged by addition and ``psum``. Curve exact at
      bin edges, straight inside a bin; :meth:`error_bound` certifies the difference to the exact
      value.
    * an array — binned at exactly those thresholds (a pixel counts when ``score >= threshold``).

    Each update ranks every image's pixels (one sort of N·H·W scores).

    Args:
        fpr_limit: upper FPR bound of the integration, in (0, 1]; MVTec LOCO reports 0.05 (and
            0.01, 0.1, 0.3, 1.0). Used as given (not rounded to float32).
        thresholds: ``None`` (exact), a number of bins, or ascending thresholds.
        capacity: exact mode only: samples a fixed-size buffer holds (for jit/scan).

    Example:
        >>> import numpy as np, jaxmetrics_ad as jm
        >>> maps = np.array([[[0.9, 0.8, 0.1, 0.0, 0.2, 0.3]]])
        >>> masks = np.array([[[[1, 1, 1, 0, 0, 0]]]])  # one defect of 3 pixels, saturating at 2
        >>> float(jm.AUSPRO(fpr_limit=1.0)(maps, masks, np.array([[2.0]])))
        1.0
        >>> binned = jm.AUSPRO(fpr_limit=1.0, thresholds=256).update(maps, masks, np.array([[3.0]]))
        >>> round(float(binned.compute()), 4), float(binned.error_bound())
        (0.7778, 0.0)
    """

    default_fields = _FIELDS
    masks_samples = True

    def __init__(
        self,
        fpr_limit: float = 0.05,
        thresholds: Thresholds = None,
        *,
        capacity: int | None = None,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
    ) -> None:
        if isinstance(fpr_limit, bool) or not isinstance(fpr_limit, numbers.Real):
            raise TypeError(f"fpr_limit: expected a number in (0, 1], got {fpr_limit!r}")
        if not 0.0 < float(fpr_limit) <= 1.0:
            raise ValueError(f"fpr_limit: expected a number in (0, 1], got {fpr_limit!r}")
        super().__init__(
            fields=fields,
            prefix=prefix,
            strict=strict,
            fpr_limit=float(fpr_limit),
            thresholds=_checked_thresholds(thresholds),
            capacity=_checked_capacity(capacity, thresholds),
        )

    exact_weights = 2  # rank within the defect and saturation area of each sample
    sample_word = "samples"
    region_word = "defect"
    undefined_text = "AU-sPRO is undefined and set to 0"

    @staticmethod
    def _exact_sizes(channels: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return _inverse_weights(channels, weights)

    def _check_inputs(self, maps: jax.Array, masks: jax.Array, saturation: jax.Array) -> None:
        _check_defect_inputs(maps, masks, saturation, self.fields)
        if isinstance(self.state.samples, FixedBuffer) and not is_traced(maps, masks, saturation):
            self.state.samples.check_room(_num_stored(maps, masks, saturation))

    def _update_state(
        self,
        maps: jax.Array,
        masks: jax.Array,
        saturation: jax.Array,
        valid: jax.Array | None = None,
    ):
        if self.is_exact:
            scores, channels, weights, num_defects, num_invalid = _exact_samples(
                maps, masks, saturation, valid
            )
            samples = _append_compact(self.state.samples, scores, channels, weights)
        else:
            scores, channels, weights, num_defects, num_invalid = _binned_samples(
                maps, masks, saturation, valid
            )
            samples = self.state.samples.add(scores, channels, weights)
        state = RegionCurveState(samples, self.state.num_regions + num_defects)
        return state, num_invalid

    @property
    def num_defects(self) -> jax.Array:
        """The number of defects seen (non-empty masks)."""
        return self.state.num_regions

    def error_bound(self) -> jax.Array:
        """An upper bound on |binned AU-sPRO − exact AU-sPRO| (0 in exact mode), up to float32
        rounding.

        The mean sPRO and the FPR both fall as the threshold rises, so inside a bin the exact curve
        runs from the bin's first corner to its second within the box they span, while the binned
        curve is the diagonal: a bin wholly below the limit is off by at most ``Δfpr·Δspro / 2``,
        the bin the limit cuts by at most ``(limit − fpr_before)·Δspro``; the sum is divided by
        the limit (the bound of :meth:`AUPRO.error_bound <jaxmetrics_ad.AUPRO.error_bound>`). NaN
        when invalid samples were given inside jit.

        Example:
            >>> import numpy as np, jaxmetrics_ad as jm
            >>> data = [[[0.1, 0.2, 0.3, 0.4]]], [[[[0, 1, 1, 0]]]], [[2]]
            >>> m = jm.AUSPRO(fpr_limit=1.0, thresholds=[0.5]).update(*data)  # one bin below 0.5
            >>> import warnings
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore")  # compute warns that a bound this loose is loose
            ...     value = float(m.compute())
            >>> value, float(m.error_bound()), float(jm.AUSPRO(fpr_limit=1.0)(*data))
            (0.5, 0.5, 0.5)
        """
        return super().error_bound()
