"""Exact PIMO state: the normal pixels' pooled upper tail and the anomalous images' mask scores.

Host numpy arrays, read with numpy in float64 (``np.sort`` + ``np.searchsorted``: O(pixels · log)
time, never a thresholds × pixels array). See :mod:`jaxmetrics_ad.pimo` for what is kept and why.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import numpy as np
from flax import struct

from jaxmetrics_ad.pimo_rule import anomalib_thresholds
from jaxmetrics_ad.validation import clean_bool_array

EXACT_KEEP_ALL_PIXELS = 1 << 22
"""Exact mean AUPIMO: normal pixels held (16 MiB) before the lowest are let go."""


class _TailBatch(NamedTuple):
    """What exact mode keeps of one batch (numpy arrays, host memory)."""

    normal_scores: np.ndarray  # (kept,) float32: the batch's kept normal pixels, pooled
    num_normal: np.ndarray  # () int64: normal images in the batch
    normal_min: np.ndarray  # () float32: their lowest score (inf without a normal image)
    anomalous_scores: np.ndarray  # (mask pixels,) float32, image after image
    anomalous_sizes: np.ndarray  # (anomalous images,) int64: mask size of each
    is_anomalous: np.ndarray  # (images,) bool, in input order
    num_pixels: np.ndarray  # () int64: pixels per image in this batch


def host_mask(masks: Any) -> np.ndarray:
    """A numpy bool mask, ``True`` where non-zero (a bool byte of 0xFF, as Pillow gives, is True).

    Example:
        >>> import numpy as np
        >>> host_mask(np.array([0, 1, 2], np.uint8)).tolist()
        [False, True, True]
    """
    masks = np.asarray(masks)
    if masks.dtype == np.bool_:
        return clean_bool_array(masks)
    return masks != 0


class ExactTails(struct.PyTreeNode):
    """Exact-mode state: the normal pixels' pooled upper tail and anomalous images' mask scores.

    Host numpy arrays, one ``_TailBatch`` per update (the state grows, so it is used eagerly).
    ``keep_fpr`` is the shared FPR (over the normal images seen) that the kept normal pixels must
    carry once more than :data:`EXACT_KEEP_ALL_PIXELS` are held; 1.0 keeps every normal pixel.
    ``let_go_max`` is the highest normal score let go: the shared FPR is exact above it.

    Example:
        >>> import numpy as np
        >>> maps = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
        >>> masks = np.array([[[0, 0], [0, 0]], [[0, 1], [0, 0]]])
        >>> state = ExactTails.empty(keep_fpr=1.0).add(maps, masks)
        >>> state.batches[0].normal_scores.tolist(), state.batches[0].anomalous_scores.tolist()
        ([0.0, 1.0, 2.0, 3.0], [5.0])
        >>> state.shared_fpr(np.array([0.5, 2.0, 3.5])).tolist()
        [0.75, 0.5, 0.0]
    """

    batches: tuple[_TailBatch, ...]
    let_go_max: np.ndarray  # () float64, -inf while nothing was let go
    keep_fpr: float = struct.field(pytree_node=False, default=1.0)
    grows: ClassVar[bool] = True  # shapes change with every update: never jit it

    @classmethod
    def empty(cls, keep_fpr: float) -> ExactTails:
        """A state holding no image."""
        return cls(batches=(), let_go_max=np.asarray(-np.inf), keep_fpr=keep_fpr)

    def add(
        self, maps: Any, masks: Any, keep_all_pixels: int = EXACT_KEEP_ALL_PIXELS
    ) -> ExactTails:
        """Keeps what exact compute needs of a batch of maps (N, H, W) and binary masks (N, H, W).

        With ``keep_fpr < 1``, once more than ``keep_all_pixels`` normal pixels are held the lowest
        are let go (:meth:`trimmed`).
        """
        maps = np.asarray(maps, dtype=np.float32)
        masks = host_mask(masks)
        num_images = maps.shape[0]
        num_pixels = int(np.prod(maps.shape[1:]))
        flat_maps = maps.reshape(num_images, num_pixels)
        flat_masks = masks.reshape(num_images, num_pixels)
        is_anomalous = flat_masks.any(axis=1)
        normal = flat_maps[~is_anomalous].ravel()
        batch = _TailBatch(
            # Scores at or below one already let go never count where the shared FPR is known.
            normal_scores=normal[normal > self.let_go_max],
            num_normal=np.asarray(num_images - int(is_anomalous.sum()), np.int64),
            normal_min=np.asarray(normal.min(initial=np.inf), np.float32),
            anomalous_scores=flat_maps[is_anomalous][flat_masks[is_anomalous]],
            anomalous_sizes=flat_masks[is_anomalous].sum(axis=1),
            is_anomalous=is_anomalous,
            num_pixels=np.asarray(num_pixels, np.int64),
        )
        state = self.replace(batches=(*self.batches, batch))
        if self.keep_fpr < 1.0 and state.num_kept() > keep_all_pixels:
            state = state.trimmed()
        return state

    def trimmed(self) -> ExactTails:
        """The state without the lowest normal pixels, keeping a shared FPR of ``keep_fpr``.

        Each normal pixel adds ``1 / (its image's pixels)`` to the sum of the normal images' FPRs
        at every threshold it clears; the highest pixels are kept until that sum reaches
        ``keep_fpr`` times the number of normal images (ties with the last one included).
        """
        scores = np.concatenate([b.normal_scores for b in self.batches])
        weights = np.concatenate(
            [np.full(b.normal_scores.size, 1.0 / int(b.num_pixels)) for b in self.batches]
        )
        needed = self.keep_fpr * self.num_normal()
        # The tail holds at most this many pixels (each weighs at least 1 / the largest image):
        # select them in linear time, sort only those.
        largest = max(int(b.num_pixels) for b in self.batches)
        count = min(scores.size, math.ceil(needed * largest) + 1)
        top = np.argpartition(scores, scores.size - count)[scores.size - count :]
        descending = top[np.argsort(scores[top], kind="stable")[::-1]]
        carried = np.cumsum(weights[descending])
        last = int(np.searchsorted(carried, needed, side="left"))
        if last >= descending.size:
            return self
        cutoff = scores[descending[last]]
        let_go = scores[scores < cutoff]
        if not let_go.size:
            return self
        batches = tuple(
            b._replace(normal_scores=b.normal_scores[b.normal_scores >= cutoff])
            for b in self.batches
        )
        let_go_max = max(float(self.let_go_max), float(let_go.max()))
        return self.replace(batches=batches, let_go_max=np.asarray(let_go_max))

    def merge(self, other: ExactTails) -> ExactTails:
        """The batches of both, this state's images first."""
        let_go_max = np.maximum(self.let_go_max, other.let_go_max)
        return self.replace(batches=self.batches + other.batches, let_go_max=let_go_max)

    def all_reduce(self, axis_name: str) -> ExactTails:
        """Not available: exact mode keeps host arrays of data-dependent size."""
        raise TypeError(
            "exact PIMO/AUPIMO keeps host arrays of data-dependent size and cannot all_reduce "
            f"over {axis_name!r}; merge() per-device metrics on the host, or use thresholds=<int>"
        )

    def num_normal(self) -> int:
        """Normal images seen."""
        return sum(int(b.num_normal) for b in self.batches)

    def num_kept(self) -> int:
        """Normal pixels held."""
        return sum(b.normal_scores.size for b in self.batches)

    def image_classes(self) -> np.ndarray:
        """(images,) 1 for anomalous, 0 for normal, in input order."""
        if not self.batches:
            return np.zeros(0, np.int64)
        return np.concatenate([b.is_anomalous for b in self.batches]).astype(np.int64)

    def thresholds(self, num_thresholds: int) -> np.ndarray:
        """anomalib's grid between the normal images' min and max (ValueError if constant)."""
        lowest = min(float(b.normal_min) for b in self.batches)
        highest = max(float(b.normal_scores.max(initial=-np.inf)) for b in self.batches)
        if not lowest < highest:
            raise ValueError("maps of the normal images are constant: no threshold range")
        return anomalib_thresholds(lowest, highest, num_thresholds)

    def shared_fpr(self, thresholds: np.ndarray) -> np.ndarray:
        """float64 shared FPR at each threshold; NaN at or below the highest score let go."""
        scores_by_size: dict[int, list[np.ndarray]] = {}
        for batch in self.batches:
            scores_by_size.setdefault(int(batch.num_pixels), []).append(batch.normal_scores)
        # Images of one size share a sort: their summed counts divided by the size.
        fpr_sum = np.zeros(len(thresholds))
        for num_pixels, scores in scores_by_size.items():
            scores = np.sort(np.concatenate(scores))
            at_or_above = len(scores) - np.searchsorted(scores, thresholds, side="left")
            fpr_sum += at_or_above / num_pixels
        shared_fpr = fpr_sum / self.num_normal()
        shared_fpr[thresholds <= self.let_go_max] = np.nan
        return shared_fpr

    def _mask_scores(self) -> list[np.ndarray]:
        """The mask scores of each anomalous image (in no order), in input order."""
        images = []
        for batch in self.batches:
            starts = np.cumsum(batch.anomalous_sizes) - batch.anomalous_sizes
            for start, size in zip(starts, batch.anomalous_sizes):
                images.append(batch.anomalous_scores[start : start + size])
        return images

    def weighted_tpr_sums(self, thresholds: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """float64 ``Σ_k weights[k] · TPR_i(thresholds[k])`` of each anomalous image, in input order.

        A score clears the ascending thresholds up to its position among them, so each image's
        sum is the mean over its mask scores of the weights' prefix sum there: one search per
        score, no sort.

        Example:
            >>> import numpy as np
            >>> maps = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
            >>> masks = np.array([[[0, 0], [0, 0]], [[1, 1], [1, 1]]])
            >>> state = ExactTails.empty(1.0).add(maps, masks)
            >>> state.weighted_tpr_sums(np.array([4.5, 6.5]), np.array([1.0, 2.0])).tolist()
            [1.25]
        """
        cleared_weight = np.concatenate([[0.0], np.cumsum(weights, dtype=np.float64)])
        sums = []
        for batch in self.batches:
            sizes = batch.anomalous_sizes
            if not sizes.size:
                continue
            cleared = np.searchsorted(thresholds, batch.anomalous_scores, side="right")
            starts = np.cumsum(sizes) - sizes
            sums.append(np.add.reduceat(cleared_weight[cleared], starts) / sizes)
        return np.concatenate(sums) if sums else np.zeros(0)

    def per_image_tprs(self, thresholds: np.ndarray) -> np.ndarray:
        """(images, K) float32 TPR of each anomalous image at the ascending thresholds; NaN rows
        for normal images.

        Example:
            >>> import numpy as np
            >>> maps = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
            >>> masks = np.array([[[0, 0], [0, 0]], [[1, 1], [1, 1]]])
            >>> tprs = ExactTails.empty(1.0).add(maps, masks).per_image_tprs(np.array([4.5, 6.5]))
            >>> tprs.tolist()
            [[nan, nan], [0.75, 0.25]]
        """
        classes = self.image_classes()
        tprs = np.full((len(classes), len(thresholds)), np.nan, np.float32)
        for row, scores in zip(np.flatnonzero(classes), self._mask_scores()):
            # Count each score once at the last threshold it clears, then sum from the top: O(K)
            # per image rather than a search per threshold.
            cleared = np.searchsorted(thresholds, scores, side="right")
            counts = np.bincount(cleared, minlength=len(thresholds) + 1)
            at_or_above = np.cumsum(counts[::-1])[::-1][1:]
            tprs[row] = at_or_above / len(scores)
        return tprs
