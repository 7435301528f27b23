"""PIMO curves and AUPIMO scores: per-image recall against the shared FPR of the normal images.

Definitions (the AUPIMO paper's reference code as shipped in anomalib 2.7). An image is *normal* when
its ground-truth mask is empty, *anomalous* otherwise; a pixel is positive when ``score >= t``.

* Thresholds: ``num_thresholds`` values evenly spaced between the min and max score of the normal
  images, built in float32 the way ``torch.linspace`` does.
* Shared FPR at ``t``: the mean over normal images of each one's fraction of pixels scoring ``>= t``.
* PIMO of an anomalous image: its TPR (fraction of its mask scoring ``>= t``) at every threshold.
* AUPIMO of an anomalous image: the trapezoid area under its TPR against ``ln(shared FPR)`` between
  the thresholds whose shared FPR is nearest the two ``fpr_bounds`` (no interpolation), divided by
  ``ln(upper / lower)`` and clipped to [0, 1]. Normal images get NaN.

Code: :mod:`~jaxmetrics_ad.pimo_rule` (the threshold grid and the integration rule, shared by both
modes), :mod:`~jaxmetrics_ad.pimo_exact` (the exact state), :mod:`~jaxmetrics_ad.pimo_binned` (the
binned state and its readers, for numpy and jax); this module holds the metrics.

Errors and warnings follow anomalib: no normal or no anomalous image, or a bound outside the shared
FPR range → ValueError; both bounds met at one threshold, or at most 30 points in the integration
range without ``force=True`` → RuntimeError (with it, a RuntimeWarning); a bound met more than 1%
off, non-finite ln(FPR) points dropped, or fewer than 300 points → UserWarning. Masks must be bool
or integer 0/1 (float masks → TypeError, as in anomalib); maps and masks may carry a singleton
channel axis, (N, 1, H, W). ``AUPIMOResult.num_thresholds`` is, as in anomalib, the number of
points integrated, not the curve's. (anomalib's ``AUPIMOResult.image_classes`` is inverted; ours
is not.)

**Exact mode** (``thresholds=None``, the default; eager only). Reproduces anomalib to ~1e-7 per image.
Per anomalous image it keeps the scores of its mask pixels; of the normal images, their minimum and
one pooled upper tail of their pixels. The shared FPR is a mean of per-image FPRs, i.e. a sum over
normal pixels scoring ``>= t`` of ``1 / (pixels of the image × normal images)``, so the pooled tail
gives it exactly at every threshold above the highest score let go, whatever the number of images.
What is kept follows from what the result needs: PIMO and ``AUPIMO(return_average=False)`` return
the whole curve and keep every normal pixel; the mean AUPIMO needs the curve only where the shared
FPR is at most the upper bound ``U``, so once more than :data:`EXACT_KEEP_ALL_PIXELS` normal pixels
are held, it lets go of the lowest ones while the rest still carry a shared FPR of
``min(1, TAIL_MARGIN · U)`` over the images seen (ten times what is needed, so that normal images
arriving later with lower scores, which dilute it, are covered; at ``U = 1`` nothing is let go).
That keeps about ``TAIL_MARGIN · U`` of the normal pixels (0.1% at the default bounds). Should later
images still dilute the kept tail below ``U`` (ten times as many normal images as before, scoring
far lower), ``compute`` raises ValueError rather than return a wrong number. Compute runs on the
host with numpy in float64 (``np.sort`` + ``np.searchsorted``: O(pixels · log) time, never a
thresholds × pixels array).

**Binned mode** (``thresholds=B``, an int, as AUROC's argument; ``num_bins=B`` is its deprecated
spelling): fixed-size state, jit/scan-able, merged exactly by ``merge``
and ``all_reduce`` (``pmin``/``pmax`` + ``psum``; image order: this state's, then the other's, or
device order). Every image must have the same size (as in anomalib). Normal pixels are counted in
an auto-ranging :class:`~jaxmetrics_ad.histogram.ScoreHistogram` of ``B`` bins, and every normal
score at or above a cutoff is kept exactly (at most ``tail_size``, default 32,768: the cutoff is the
lowest bin edge with that few normal pixels above it), so the shared FPR is exact wherever fewer
than ``tail_size`` normal pixels score higher — that covers the AUPIMO band up to ~3e8 normal
pixels at the default bounds, where snapping the bounds to the nearest threshold needs it (read
off the histogram instead, the mean AUPIMO was 6e-4 off on the maps below). Mask
pixels of anomalous images go to a second histogram: one channel per image (``capacity`` images at
most, needed for per-image results; ``capacity × B × 8`` bytes; ``capacity`` counts *images*,
where an exact AUROC's counts samples) or, for the mean AUPIMO alone, one
channel weighted by 1/mask size (no image limit: the mean of the areas is the area of the mean TPR).
Compute builds anomalib's thresholds from the exact normal min/max (equal up to one float32 ulp),
reads the TPRs at them by linear interpolation inside the bins, and applies the same integration
rule, as one weighted sum over bins (O(K + images · B)); eagerly it reads the state with numpy in
float64 (no XLA program to compile), inside jit with jax in float32 (equal within float32 rounding;
the jitted grid may be one ulp off anomalib's). Measured against exact on
``make_category`` maps (300 images of 256×256, 100 normal, K = 300,000): mean AUPIMO within 4e-6
(``B = 4096``) and 4e-7 (``B = 16384``); per-image AUPIMO within 2.4e-4 (``B = 1024``), 1.7e-4
(``B = 4096``) and 6e-5 (``B = 16384``); see ``benchmarks/bench_pimo.py``.
:meth:`AUPIMO.error_bound` certifies the difference to exact mode per image (on those maps at most
2.6e-3, 6.5e-4 and 1.4e-4 at the three sizes); an eager compute warns when it exceeds
:data:`~jaxmetrics_ad.base.LOOSE_BOUND` (tied scores: 0.05 on the AUPIMO docstring's case). Inside jit, cases that
raise eagerly give NaN instead.

**Given thresholds** (``thresholds=`` a 1-D array, ascending): binned mode with both histograms at
exactly those edges. The curves are then read at those K thresholds instead of anomalib's grid
(``num_thresholds`` is their number), exact there: the shared FPR and each TPR count the pixels
scoring ``>= t``, so AUPIMO is the integration rule applied to exact points of the curve.
"""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmetrics_ad import numpy_updates, pimo_binned
from jaxmetrics_ad.base import LOOSE_BOUND, Metric, state_reader, valid_rows
from jaxmetrics_ad.classification import Thresholds, _checked_thresholds
from jaxmetrics_ad.pimo_binned import DEFAULT_TAIL_SIZE, BinnedCurves
from jaxmetrics_ad.pimo_exact import EXACT_KEEP_ALL_PIXELS, ExactTails
from jaxmetrics_ad.pimo_rule import (
    BOUND_RTOL,
    MIN_INTEGRATION_POINTS,
    RECOMMENDED_INTEGRATION_POINTS,
    IntegrationBand,
    anomalib_thresholds,
    check_integration_band,
    integration_band,
    threshold_grid,
    trapezoid_weights,
)
from jaxmetrics_ad.validation import check_binary, check_finite, check_same_shape, is_traced

__all__ = [
    "AUPIMO",
    "BOUND_RTOL",
    "DEFAULT_NUM_THRESHOLDS",
    "DEFAULT_TAIL_SIZE",
    "EXACT_KEEP_ALL_PIXELS",
    "MIN_INTEGRATION_POINTS",
    "PIMO",
    "RECOMMENDED_INTEGRATION_POINTS",
    "TAIL_MARGIN",
    "AUPIMOResult",
    "BinnedCurves",
    "ExactTails",
    "PIMOResult",
    "anomalib_thresholds",
]

DEFAULT_NUM_THRESHOLDS = 300_000
"""anomalib's number of thresholds of the PIMO curve."""
TAIL_MARGIN = 10.0
"""Exact mean AUPIMO: the kept normal tail carries this many times the upper FPR bound."""


class PIMOResult(struct.PyTreeNode):
    """PIMO curves, field for field as anomalib's ``PIMOResult``.

    ``thresholds`` (K,) ascending; ``shared_fpr`` (K,) descending (NaN where an exact-mode tail does
    not reach); ``per_image_tprs`` (N, K), NaN rows for normal images.

    Example:
        >>> import jax.numpy as jnp
        >>> r = PIMOResult(jnp.zeros(2), jnp.ones(2), jnp.array([[jnp.nan] * 2, [1.0, 0.5]]))
        >>> r.image_classes.tolist()
        [0, 1]
    """

    thresholds: jax.Array
    shared_fpr: jax.Array
    per_image_tprs: jax.Array

    @property
    def image_classes(self) -> jax.Array:
        """1 for anomalous images (a TPR curve), 0 for normal ones (a NaN row)."""
        return (~jnp.all(jnp.isnan(self.per_image_tprs), axis=1)).astype(jnp.int32)


class AUPIMOResult(struct.PyTreeNode):
    """AUPIMO scores, field for field as anomalib's ``AUPIMOResult``; NaN for normal images.

    ``thresh_lower_bound`` / ``thresh_upper_bound`` are the thresholds where the upper / lower FPR
    bound was met (a low FPR needs a high threshold). ``num_thresholds`` is, as in anomalib, the
    number of curve points integrated (inside the bounds, finite ln(shared FPR)), not the number of
    thresholds of the curve; an int, or an int32 array when computed inside jit.

    Example:
        >>> import jax.numpy as jnp
        >>> r = AUPIMOResult(1e-5, 1e-4, 3000, 0.5, 0.9, jnp.array([jnp.nan, 0.25]))
        >>> r.image_classes.tolist(), r.fpr_bounds
        ([0, 1], (1e-05, 0.0001))
    """

    fpr_lower_bound: float = struct.field(pytree_node=False)
    fpr_upper_bound: float = struct.field(pytree_node=False)
    num_thresholds: int | jax.Array  # points integrated: traced inside jit
    thresh_lower_bound: jax.Array
    thresh_upper_bound: jax.Array
    aupimos: jax.Array

    @property
    def fpr_bounds(self) -> tuple[float, float]:
        """(lower, upper) FPR bounds of the integration range."""
        return self.fpr_lower_bound, self.fpr_upper_bound

    @property
    def image_classes(self) -> jax.Array:
        """1 for anomalous images (a finite AUPIMO), 0 for normal ones (NaN)."""
        return (~jnp.isnan(self.aupimos)).astype(jnp.int32)


# -- the metrics -----------------------------------------------------------------------------------


class _Unset:
    """The default of a deprecated argument: tells "not given" from None."""

    def __repr__(self) -> str:
        return "<not given>"


_UNSET: Any = _Unset()

_last_host_readings = threading.local()


def _read_once(metric: Metric, key: str, read: Callable[[], Any]) -> Any:
    """``read()`` of ``metric``'s state, shared by the next calls with the same metric and ``key``.

    An eager compute checks the integration band, reads the values, then their certified bound,
    each from the same curves of 300,000 thresholds: a metric is immutable, so the last object's
    numpy readings are kept (one object per thread, held weakly) and read once.
    """
    held = getattr(_last_host_readings, "held", None)
    if held is None or held[0]() is not metric:
        held = (weakref.ref(metric), {})
        _last_host_readings.held = held
    readings = held[1]
    if key not in readings:
        readings[key] = read()
    return readings[key]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _checked_config(
    num_thresholds: int,
    thresholds: Thresholds,
    num_bins: Any,
    capacity: int | None,
    tail_size: int,
    stacklevel: int = 4,
) -> tuple[int | tuple[float, ...] | None, int]:
    """``(thresholds, num_thresholds)`` as stored: None, a number of bins or a tuple of floats,
    and the number of curve thresholds (that of the given thresholds, if any)."""
    if num_bins is not _UNSET:
        warnings.warn(
            "num_bins= is deprecated and will be removed in the next release; use thresholds= "
            "(None: exact, an int: binned with that many bins, an array: those thresholds), as "
            "for AUROC",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        if thresholds is not None:
            raise TypeError("give thresholds= or the deprecated num_bins=, not both")
        thresholds = num_bins
    if not _is_int(num_thresholds) or num_thresholds < 2:
        raise ValueError(f"num_thresholds must be an int >= 2, got {num_thresholds!r}")
    thresholds = _checked_thresholds(thresholds)
    if isinstance(thresholds, tuple):
        if num_thresholds not in (DEFAULT_NUM_THRESHOLDS, len(thresholds)):
            raise ValueError(
                f"num_thresholds={num_thresholds} with {len(thresholds)} given thresholds: the "
                "curves are read at exactly the given ones; leave num_thresholds out"
            )
        num_thresholds = len(thresholds)
    if capacity is not None and (not _is_int(capacity) or capacity < 1):
        raise ValueError(f"capacity must be None or a positive int (images), got {capacity!r}")
    if capacity is not None and thresholds is None:
        raise ValueError(
            "capacity applies to binned mode only (thresholds=<int or array>); exact mode keeps "
            "any number of images"
        )
    if not _is_int(tail_size) or tail_size < 1:
        raise ValueError(f"tail_size must be a positive int, got {tail_size!r}")
    return thresholds, int(num_thresholds)


def _image_batch(array: jax.Array, field: str) -> jax.Array:
    """``array`` as (N, H, W), its singleton channel axis dropped; ValueError naming ``field``."""
    if array.ndim == 4 and array.shape[1] == 1:
        return array[:, 0]
    if array.ndim != 3:
        raise ValueError(f"{field}: expected shape (N, H, W) or (N, 1, H, W), got {array.shape}")
    return array


def _on_device(value: Any) -> Any:
    """A numpy array or scalar as a jax array (float64 as float32), without an XLA program.

    ``jnp.asarray`` of a numpy array stages it (``lax.stage``), which compiles a small program per
    shape eagerly; ``jax.device_put`` copies it. Anything else is returned unchanged.
    """
    if not isinstance(value, (np.ndarray, np.generic)):
        return value
    if value.dtype == np.float64:
        value = value.astype(np.float32)
    return jax.device_put(value)


class _PerImageOverlapMetric(Metric):
    """Shared state, input checks and image-class checks of PIMO and AUPIMO."""

    default_fields = ("anomaly_map", "gt_mask")
    masks_samples = True

    @property
    def is_exact(self) -> bool:
        """True in exact mode (``thresholds=None``)."""
        return self.thresholds is None

    @property
    def num_bins(self) -> int | None:
        """Deprecated: bins per histogram of auto-ranging binned mode (``thresholds`` an int), else
        None. Read ``thresholds`` instead."""
        return self.thresholds if isinstance(self.thresholds, int) else None

    def _empty_state(self) -> ExactTails | BinnedCurves:
        if self.is_exact:
            return ExactTails.empty(self.tail_fraction)
        return BinnedCurves.empty(self.thresholds, self.capacity, self.tail_size)

    def _check_inputs(self, maps: jax.Array, masks: jax.Array) -> None:
        maps_field, masks_field = self.fields
        maps, masks = _image_batch(maps, maps_field), _image_batch(masks, masks_field)
        check_same_shape(maps, maps_field, masks, masks_field)
        if not jnp.issubdtype(maps.dtype, jnp.floating):
            raise TypeError(f"{maps_field}: expected floating-point scores, got dtype {maps.dtype}")
        if not (masks.dtype == jnp.bool_ or jnp.issubdtype(masks.dtype, jnp.integer)):
            raise TypeError(
                f"{masks_field}: expected bool or integer 0/1 masks (as anomalib), got dtype "
                f"{masks.dtype}"
            )
        check_finite(maps, maps_field)
        check_binary(masks, masks_field)
        if not self.is_exact and not is_traced(self.state.num_pixels):
            seen, given = int(self.state.num_pixels), math.prod(maps.shape[1:])
            if seen not in (0, given):
                raise ValueError(
                    f"{maps_field}: images of {given} pixels after images of {seen}; binned "
                    "mode needs one image size"
                )

    def _update_state(self, maps: jax.Array, masks: jax.Array, valid: jax.Array | None = None):
        maps, masks = _image_batch(maps, self.fields[0]), _image_batch(masks, self.fields[1])
        if self.is_exact:
            maps, masks = valid_rows((maps, masks), valid)  # host data: padding is left out here
            if is_traced(maps, masks):
                raise TypeError(
                    f"{self.name}: exact mode keeps data-dependent amounts on the host; update it "
                    "eagerly, or use thresholds=<int> inside jit"
                )
            state = self.state.add(maps, masks, keep_all_pixels=EXACT_KEEP_ALL_PIXELS)
            return state, np.zeros((), np.int32)
        return self.state.add(maps, masks, valid)

    def _updates_in_numpy(self) -> bool:
        return not self.is_exact

    def _update_state_in_numpy(self, maps: np.ndarray, masks: np.ndarray):
        maps, masks = _image_batch(maps, self.fields[0]), _image_batch(masks, self.fields[1])
        return numpy_updates.binned_curves_add(self.state, maps, masks)

    def _check_state(self) -> None:
        if self.is_exact:
            classes = self.state.image_classes()
            num_normal, num_anomalous = int((classes == 0).sum()), int((classes == 1).sum())
        else:
            state = self.state
            if self.capacity is not None and int(state.num_images) > self.capacity:
                raise ValueError(
                    f"{self.name}: {int(state.num_images)} images exceed capacity={self.capacity}"
                )
            num_normal, num_anomalous = int(state.num_normal), int(state.num_anomalous)
        if num_normal == 0:
            raise ValueError(f"{self.name}: needs at least one normal image (an empty gt_mask)")
        if num_anomalous == 0:
            raise ValueError(
                f"{self.name}: needs at least one anomalous image (a non-empty gt_mask)"
            )
        if not self.is_exact and not float(state.normal.score_min) < float(state.normal.score_max):
            raise ValueError(f"{self.name}: maps of the normal images are constant")

    def _computes_on_host(self) -> bool:
        # Eagerly, the binned state is read with numpy in float64 (see pimo_binned): no XLA
        # program to compile. Exact states grow, so they are read on the host anyway.
        return True

    def _compute(self) -> Any:
        value = self._read_state()
        if self._xp() is jnp:
            return value
        return jax.tree_util.tree_map(_on_device, value)

    def _read_state(self) -> Any:
        raise NotImplementedError

    def _xp(self) -> ModuleType:
        """The array module that reads the state: jax under a trace, numpy eagerly."""
        return jnp if is_traced(*jax.tree_util.tree_leaves(self.state)) else np

    def _exact_curves(self) -> tuple[np.ndarray, np.ndarray]:
        if is_traced(*jax.tree_util.tree_leaves(self.state)):
            raise TypeError(
                f"{self.name}: exact mode computes eagerly; use thresholds=<int> in jit"
            )
        thresholds = self.state.thresholds(self.num_thresholds)
        return thresholds, self.state.shared_fpr(thresholds.astype(np.float64))

    def _binned_curves(self, xp: ModuleType) -> tuple[Any, Any]:
        """(thresholds, shared FPR) of the binned state, read with ``xp`` (with numpy, once per
        metric object)."""

        def read() -> tuple[Any, Any]:
            thresholds = pimo_binned.curve_thresholds(self.state, self.num_thresholds, xp)
            return thresholds, pimo_binned.shared_fpr(self.state, thresholds, xp)

        return _read_once(self, "curves", read) if xp is np else read()

    def _binned_pimo(self, thresholds: Any, shared_fpr: Any, xp: ModuleType) -> PIMOResult:
        tprs = pimo_binned.per_image_tprs(self.state, thresholds, xp)
        return PIMOResult(thresholds, shared_fpr, self._poison(self._trim(tprs, xp), xp))

    def _trim(self, per_image: Any, xp: ModuleType) -> Any:
        """Eagerly, per-image rows stop at the number of images seen (inside jit there are
        ``capacity`` rows, NaN past that number)."""
        return per_image if xp is jnp else per_image[: int(self.state.num_images)]

    def _poison(self, values: Any, xp: ModuleType) -> Any:
        """NaN where the binned state cannot give a value (a missing class, overflow); eagerly
        those cases have raised already."""
        if xp is np:
            return values
        state = self.state
        undefined = (
            (state.num_normal == 0)
            | (state.num_anomalous == 0)
            | state.overflowed()
            | ~(state.normal.score_min < state.normal.score_max)
        )
        return jnp.where(undefined, jnp.nan, values)


class PIMO(_PerImageOverlapMetric):
    """Per-image overlap curves: each anomalous image's TPR against the normal images' shared FPR.

    ``update(anomaly_map (N, H, W) float, gt_mask (N, H, W) bool or {0, 1})``;
    ``compute() -> PIMOResult(thresholds (K,), shared_fpr (K,), per_image_tprs (N, K))`` with NaN
    rows for normal images (see the module docstring for both modes).

    Args:
        num_thresholds: K, thresholds evenly spaced between the normal images' min and max score.
        thresholds: None for exact mode; an int for binned mode with that many auto-ranging bins
            per histogram; a 1-D array for binned mode at exactly those thresholds (then K is
            their number). As AUROC's ``thresholds``.
        capacity: binned mode only, required: the most *images* the metric will see (one
            histogram channel each; unlike an exact AUROC's ``capacity``, which counts samples).
        tail_fraction: exact mode: 1.0 (the default) keeps every normal pixel; a smaller value is
            the shared FPR that the kept upper tail of the normal pixels carries once more than
            :data:`EXACT_KEEP_ALL_PIXELS` are held (``shared_fpr`` is NaN where it does not reach).
            It exists so that a PIMO can share the state of an ``AUPIMO`` (pass its
            :attr:`AUPIMO.tail_fraction`); for a curve of its own, leave it.
        tail_size: binned mode: how many of the highest normal scores are kept exactly.
        num_bins: deprecated spelling of ``thresholds=<int>`` (DeprecationWarning).

    Example:
        >>> import numpy as np, jaxmetrics_ad as jm
        >>> maps = np.array([[[1.0, 2.0], [3.0, 4.0]]] * 2)
        >>> masks = np.array([[[0, 0], [0, 0]], [[0, 0], [1, 1]]])
        >>> result = jm.PIMO(num_thresholds=4)(maps, masks)
        >>> result.shared_fpr.tolist(), result.per_image_tprs[1].tolist()
        ([1.0, 0.75, 0.5, 0.25], [1.0, 1.0, 1.0, 0.5])
        >>> binned = jm.PIMO(thresholds=[1.5, 3.5], capacity=2)(maps, masks)
        >>> binned.shared_fpr.tolist(), binned.per_image_tprs[1].tolist()
        ([0.75, 0.25], [1.0, 0.5])
    """

    def __init__(
        self,
        num_thresholds: int = DEFAULT_NUM_THRESHOLDS,
        *,
        thresholds: Thresholds = None,
        capacity: int | None = None,
        tail_fraction: float = 1.0,
        tail_size: int = DEFAULT_TAIL_SIZE,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
        num_bins: Any = _UNSET,
    ) -> None:
        thresholds, num_thresholds = _checked_config(
            num_thresholds, thresholds, num_bins, capacity, tail_size
        )
        if isinstance(tail_fraction, bool) or not 0.0 < tail_fraction <= 1.0:
            raise ValueError(f"tail_fraction must be in (0, 1], got {tail_fraction!r}")
        if thresholds is not None and capacity is None:
            raise ValueError("PIMO in binned mode needs capacity=<the most images it will see>")
        super().__init__(
            fields=fields,
            prefix=prefix,
            strict=strict,
            num_thresholds=num_thresholds,
            thresholds=thresholds,
            capacity=capacity,
            tail_fraction=float(tail_fraction),
            tail_size=tail_size,
        )

    def _read_state(self) -> PIMOResult:
        if not self.is_exact:
            xp = self._xp()
            return self._binned_pimo(*self._binned_curves(xp), xp)
        thresholds, shared_fpr = self._exact_curves()
        return PIMOResult(thresholds, shared_fpr, self.state.per_image_tprs(thresholds))


class AUPIMO(_PerImageOverlapMetric):
    """Area under each anomalous image's PIMO curve for shared FPR in ``fpr_bounds`` (log scale).

    ``update(anomaly_map (N, H, W) float, gt_mask (N, H, W) bool or {0, 1})``. ``compute()`` returns
    the mean AUPIMO over anomalous images (``return_average=True``) or ``(PIMOResult,
    AUPIMOResult)`` with NaN for normal images. See the module docstring for the two modes, the
    errors and warnings (``force=True`` integrates over 30 or fewer points with a warning).

    Args:
        num_thresholds: K, thresholds evenly spaced between the normal images' min and max score.
        fpr_bounds: (lower, upper) shared FPR range of the integral, 0 < lower < upper <= 1.
        return_average: mean over anomalous images, or the per-image results.
        force: compute even with too few points in the integration range (with a warning).
        thresholds: None for exact mode; an int for binned mode with that many auto-ranging bins
            per histogram; a 1-D array for binned mode at exactly those thresholds (then K is
            their number). As AUROC's ``thresholds``.
        capacity: binned mode: the most *images* it will see, one histogram channel each (needed
            for ``return_average=False``; without it only the mean is kept, for any number of
            images). Unlike an exact AUROC's ``capacity``, it counts images, not samples.
        tail_size: binned mode: how many of the highest normal scores are kept exactly.
        num_bins: deprecated spelling of ``thresholds=<int>`` (DeprecationWarning).

    Example:
        >>> import numpy as np, warnings, jaxmetrics_ad as jm
        >>> scores = np.arange(100, dtype=np.float32).reshape(10, 10)
        >>> maps = np.stack([scores, scores])
        >>> masks = np.stack([scores < 0, scores >= 90])  # a normal image, then an anomalous one
        >>> round(float(jm.AUPIMO(fpr_bounds=(0.01, 0.05))(maps, masks)), 4)
        0.2525
        >>> given = np.linspace(0, 99, 30_000)  # binned at exactly these thresholds
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")  # tied scores inside bins: a loose error bound
        ...     round(float(jm.AUPIMO(fpr_bounds=(0.01, 0.05), thresholds=given)(maps, masks)), 4)
        0.2525
    """

    def __init__(
        self,
        num_thresholds: int = DEFAULT_NUM_THRESHOLDS,
        fpr_bounds: tuple[float, float] = (1e-5, 1e-4),
        return_average: bool = True,
        force: bool = False,
        *,
        thresholds: Thresholds = None,
        capacity: int | None = None,
        tail_size: int = DEFAULT_TAIL_SIZE,
        fields: Sequence[str] | None = None,
        prefix: str = "",
        strict: bool = True,
        num_bins: Any = _UNSET,
    ) -> None:
        thresholds, num_thresholds = _checked_config(
            num_thresholds, thresholds, num_bins, capacity, tail_size
        )
        bounds = tuple(float(b) for b in fpr_bounds)
        if len(bounds) != 2 or not 0.0 < bounds[0] < bounds[1] <= 1.0:
            raise ValueError(
                f"fpr_bounds must be (lower, upper) with 0 < lower < upper <= 1, got {fpr_bounds!r}"
            )
        if thresholds is not None and capacity is None and not return_average:
            raise ValueError(
                "AUPIMO(return_average=False) in binned mode needs capacity=<the most images>"
            )
        super().__init__(
            fields=fields,
            prefix=prefix,
            strict=strict,
            num_thresholds=num_thresholds,
            fpr_bounds=bounds,
            return_average=bool(return_average),
            force=bool(force),
            thresholds=thresholds,
            capacity=capacity,
            tail_size=tail_size,
        )

    @property
    def tail_fraction(self) -> float:
        """Exact mode: the shared FPR its kept normal tail carries (see the module docstring).

        Derived from what the result needs: 1.0 (every normal pixel) when the whole PIMO curve is
        returned (``return_average=False``), else ``min(1, TAIL_MARGIN · upper FPR bound)``.
        """
        if not self.return_average:
            return 1.0
        return min(1.0, TAIL_MARGIN * self.fpr_bounds[1])

    def _check_state(self) -> None:
        super()._check_state()
        if not self.is_exact:
            _, shared_fpr = self._binned_curves(np)
            check_integration_band(shared_fpr, self.fpr_bounds, self.force, self.name)

    def _normaliser(self) -> float:
        lower, upper = self.fpr_bounds
        return math.log(upper / lower)

    def _read_state(self) -> Any:
        if self.is_exact:
            return self._exact_compute()
        return self._binned_compute()

    def _exact_compute(self) -> Any:
        thresholds, shared_fpr = self._exact_curves()
        band = check_integration_band(shared_fpr, self.fpr_bounds, self.force, self.name)
        inside = slice(band.low_index, band.high_index + 1)
        weights = trapezoid_weights(shared_fpr, band)[inside]
        if self.return_average:
            areas = self.state.weighted_tpr_sums(thresholds[inside].astype(np.float64), weights)
            aupimos = np.clip(areas / self._normaliser(), 0, 1)
            return np.float32(aupimos.mean())
        classes = self.state.image_classes()
        per_image_tprs = self.state.per_image_tprs(thresholds)
        aupimos = np.full(len(classes), np.nan)
        tprs_inside = per_image_tprs[classes == 1, inside].astype(np.float64)
        aupimos[classes == 1] = np.clip(tprs_inside @ weights / self._normaliser(), 0, 1)
        return (
            PIMOResult(thresholds, shared_fpr, per_image_tprs),
            self._aupimo_result(thresholds, band, aupimos),
        )

    def _aupimo_result(self, thresholds: Any, band: IntegrationBand, aupimos: Any) -> AUPIMOResult:
        lower, upper = self.fpr_bounds
        num_points = band.num_points
        return AUPIMOResult(
            fpr_lower_bound=lower,
            fpr_upper_bound=upper,
            num_thresholds=num_points.astype(jnp.int32)
            if is_traced(num_points)
            else int(num_points),
            thresh_lower_bound=thresholds[band.low_index],
            thresh_upper_bound=thresholds[band.high_index],
            aupimos=aupimos,
        )

    def _binned_values(self, xp: ModuleType) -> tuple[Any, Any, IntegrationBand, Any]:
        """(thresholds, shared FPR, band, AUPIMOs): one per image slot (NaN for normal images and
        unused slots), or the mean alone without a capacity. With numpy, once per metric object."""
        if xp is np:
            return _read_once(self, "values", lambda: self._read_binned_values(np))
        return self._read_binned_values(xp)

    def _read_binned_values(self, xp: ModuleType) -> tuple[Any, Any, IntegrationBand, Any]:
        thresholds, shared_fpr = self._binned_curves(xp)
        band = integration_band(shared_fpr, self.fpr_bounds, xp)
        usable = band.usable(self.force)
        areas = pimo_binned.areas(self.state, thresholds, shared_fpr, band, xp)
        aupimos = xp.clip(areas / self._normaliser(), 0.0, 1.0)
        if self.capacity is None:
            return (
                thresholds,
                shared_fpr,
                band,
                self._poison(xp.where(usable, aupimos[0], xp.nan), xp),
            )
        aupimos = xp.where(pimo_binned.mask_sizes(self.state, xp) > 0, aupimos, xp.nan)
        aupimos = self._poison(xp.where(usable, aupimos, xp.nan), xp)
        return thresholds, shared_fpr, band, aupimos

    def _binned_compute(self) -> Any:
        xp = self._xp()
        thresholds, shared_fpr, band, aupimos = self._binned_values(xp)
        if self.capacity is None:
            return aupimos
        if self.return_average:
            return xp.nanmean(aupimos)
        pimo = self._binned_pimo(thresholds, shared_fpr, xp)
        return pimo, self._aupimo_result(thresholds, band, self._trim(aupimos, xp))

    @state_reader
    def error_bound(self) -> jax.Array:
        """Certified bound on |binned AUPIMO − exact AUPIMO| of each image: (images,), NaN where
        the image's AUPIMO is NaN (normal images), 0 in exact mode.

        The exact value is that of ``AUPIMO()`` (exact mode, ``num_thresholds`` as here; with
        given thresholds, anomalib's default grid): the trapezoid through the points of exact
        mode's threshold grid. The binned state knows the shared FPR exactly at the normal
        histogram's edges and wherever the kept tail covers, and each TPR exactly at the mask
        histogram's edges; between edges both curves are monotone, so every grid point lies in a
        known box. Integrating the lowest and the highest TPR those boxes allow, over the narrowest
        and the widest ln(FPR) range the nearest-to-bound ends can take
        (:func:`~jaxmetrics_ad.pimo_binned.area_bounds`), brackets the exact area; the bound is the
        binned value's distance to the farther end, normalised and clipped like AUPIMO, plus a
        rounding margin. On the host (float64) it is ``2**-20 · max(1, widest range / ln(U/L))``,
        which covers the float32 results and exact mode's float32 TPRs. Inside jit (float32
        throughout) the grid may be off anomalib's by float32 rounding, so each grid point's box is
        widened by 4 ulps of the largest score (a score that close to a grid threshold widens the
        bound there: on tied maps, or where a normal pixel sits at a band end, the jitted bound can
        be several times the eager one), and the margin is ``2**-17 ·`` the same, about 40 times
        the float32 rounding measured (an allowance, not a proof).

        Without ``capacity`` (the mean alone is kept) it is a scalar bound on the mean AUPIMO (the
        state's float32 sums of 1/mask-size weights are taken as exact); with it, the mean's error
        is at most the mean of the per-image bounds. An eager ``compute``
        warns when the bound of its value (the mean of these, or their maximum for per-image
        results) exceeds :data:`~jaxmetrics_ad.base.LOOSE_BOUND`. Heavily tied scores (integer
        maps) put whole steps of a curve inside one bin: the bound is then large, as the error may
        be; use exact mode or given thresholds at the tied values there.

        Example:
            >>> import numpy as np, warnings, jaxmetrics_ad as jm
            >>> scores = np.arange(100, dtype=np.float32).reshape(10, 10)
            >>> maps, masks = np.stack([scores, scores]), np.stack([scores < 0, scores >= 90])
            >>> metric = jm.AUPIMO(fpr_bounds=(0.01, 0.05), thresholds=64, capacity=2)
            >>> metric = metric.update(maps, masks)
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore")  # the bound is loose: compute warns
            ...     value = float(metric.compute())
            >>> bound = metric.error_bound()  # NaN for the normal image
            >>> exact = jm.AUPIMO(fpr_bounds=(0.01, 0.05)).update(maps, masks)
            >>> round(value, 3), round(float(exact.compute()), 4), round(float(bound[1]), 3)
            (0.303, 0.2525, 0.05)
            >>> bool(abs(value - float(exact.compute())) <= bound[1]), exact.error_bound().tolist()
            (True, [nan, 0.0])
        """
        if self.is_exact:
            classes = self.state.image_classes()
            return jnp.asarray(np.where(classes == 1, 0.0, np.nan), jnp.float32)
        if not is_traced(*jax.tree_util.tree_leaves(self.state)):
            self._check_state()
        return self._binned_error_bound()

    def _binned_error_bound(self) -> jax.Array:
        xp = self._xp()
        state = self.state
        *_, aupimos = self._binned_values(xp)
        if state.normal.edges is None:
            grid = pimo_binned.curve_thresholds(state, self.num_thresholds, xp)
        else:  # the exact mode these thresholds stand in for uses anomalib's default grid
            low, high = state.normal.score_min, state.normal.score_max
            if xp is np:
                low, high = np.float32(low), np.float32(high)
            grid = threshold_grid(low, high, DEFAULT_NUM_THRESHOLDS, xp)
        if xp is np:
            slack, margin = 0.0, 2.0**-20
        else:
            # The float32 grid inside jit is within 1.5 ulps of the largest score of anomalib's
            # (two roundings here, one there: ulp(x) <= 2**-23 |x|); take 4 of them.
            magnitude = jnp.maximum(
                jnp.abs(state.normal.score_min), jnp.abs(state.normal.score_max)
            )
            slack, margin = 2.0**-21 * magnitude, 2.0**-17
        bounds = pimo_binned.area_bounds(state, grid, self.fpr_bounds, slack, xp)
        normaliser = self._normaliser()
        excess = xp.maximum(bounds.widest / normaliser - 1.0, 0.0)
        lower = bounds.lower / normaliser
        if state.capacity is None:
            # the exact mean is of clipped areas, each at most the widest range: clipping takes
            # at most ``excess`` off the mean
            lower = lower - excess
        lower = xp.clip(lower, 0.0, 1.0)
        upper = xp.clip(bounds.upper / normaliser, 0.0, 1.0)
        if state.capacity is None:
            upper, lower = upper[0], lower[0]
        bound = xp.maximum(upper - aupimos, aupimos - lower)
        bound = bound + margin * xp.maximum(1.0, bounds.widest / normaliser)
        bound = self._trim(bound, xp) if state.capacity is not None else bound
        if xp is jnp:
            return bound.astype(jnp.float32)
        return jax.device_put(np.asarray(bound, np.float32))  # no eager XLA op to compile

    def _warn_if_loose(self) -> None:
        # Per-image bounds, NaN for normal images: the returned mean is off by at most their mean.
        if self.is_exact:
            return
        bounds = np.asarray(self._binned_error_bound(), np.float64)
        if np.all(np.isnan(bounds)):
            return
        bound = float(np.nanmean(bounds) if self.return_average else np.nanmax(bounds))
        if bound > LOOSE_BOUND:
            warnings.warn(
                f"{self.name}: the binned value may be off by up to {bound:.3g} (certified bound): "
                "the bins are too coarse for these scores (e.g. tied scores, or a few far outliers "
                "widen every bin); use more thresholds, explicit thresholds, or exact mode "
                "(thresholds=None)",
                UserWarning,
                stacklevel=3,
            )
