"""The metric sets each benchmark reports (``--protocol``), and per-image AUPIMO for comparisons.

=============  ==========================================================================
protocol       results (names as reported)
=============  ==========================================================================
``mvtec_ad``   ``image_AUROC``, ``pixel_AUROC``, ``pixel_AUPRO@0.3`` (AU-PRO up to FPR 0.3)
``visa``       the same as ``mvtec_ad`` (VisA after its 1cls split)
``mvtec_ad2``  ``pixel_AUPRO@0.05``, ``pixel_SegF1`` (threshold fitted on ``validation/good``
               only, mean + 3 std of its pixels), ``pixel_F1Max`` (the oracle: the best
               threshold chosen on the test data itself, for the gap to a fair one)
``mvtec_loco`` ``image_AUROC``, ``pixel_AUSPRO@0.05`` (AU-sPRO up to FPR 0.05, saturation
               from ``defects_config.json``)
=============  ==========================================================================

Names are the library's ``<level>_<ClassName>``; an area integrated up to an FPR limit carries it
as ``@<limit>``. Pixel curves are binned (``num_bins``) unless ``exact=True``; image metrics are
exact either way, as in the default suite.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

import jaxmetrics_ad as jm
from jaxmetrics_ad import suite

PROTOCOLS = ("mvtec_ad", "visa", "mvtec_ad2", "mvtec_loco")
"""Names accepted by ``protocol=`` / ``--protocol``."""
SEGF1_FIELD = "segf1_map"
"""Batch field of MVTec AD 2's binarised maps (1.0 where ``map > threshold``), read by SegF1."""
SEGF1_K = 3.0
"""MVTec AD 2's baseline threshold: mean + k·std of the validation pixels."""


@dataclasses.dataclass(frozen=True)
class ProtocolSuite:
    """A protocol's evaluator and how its results are named.

    Attributes:
        evaluator: the metrics, as one :class:`~jaxmetrics_ad.Evaluator`.
        names: ``{evaluator metric name: reported name}``, in report order.
        needs_validation: SegF1 needs a threshold fitted on MVTec AD 2's ``validation/good``.
        needs_defects: AU-sPRO reads MVTec LOCO's per-defect masks.
    """

    evaluator: jm.Evaluator
    names: dict[str, str]
    needs_validation: bool = False
    needs_defects: bool = False


def build_protocol(
    protocol: str, *, exact: bool = False, num_bins: int = jm.DEFAULT_NUM_BINS
) -> ProtocolSuite:
    """The metrics of ``protocol`` (one of :data:`PROTOCOLS`).

    >>> list(build_protocol("mvtec_ad").names.values())
    ['image_AUROC', 'pixel_AUROC', 'pixel_AUPRO@0.3']
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    pixel_bins = None if exact else num_bins
    image_auroc = jm.AUROC(None, fields=suite.IMAGE_FIELDS, prefix="image_")
    if protocol in ("mvtec_ad", "visa"):
        metrics = [
            image_auroc,
            jm.AUROC(pixel_bins, fields=suite.PIXEL_FIELDS, prefix="pixel_"),
            _aupro(0.3, pixel_bins),
        ]
        names = {"image_AUROC": "image_AUROC", "pixel_AUROC": "pixel_AUROC"}
        names["pixel_AUPRO"] = "pixel_AUPRO@0.3"
        return ProtocolSuite(jm.Evaluator(metrics), names)
    if protocol == "mvtec_ad2":
        metrics = [
            _aupro(0.05, pixel_bins),
            # SegF1 reads the maps binarised on the host at the category's threshold, so that one
            # compiled update serves every category (a threshold in the config would retrace).
            jm.SegF1(0.5, fields=(SEGF1_FIELD, "gt_mask"), prefix="pixel_"),
            jm.F1Max(pixel_bins, fields=suite.PIXEL_FIELDS, prefix="pixel_"),
        ]
        names = {
            "pixel_AUPRO": "pixel_AUPRO@0.05",
            "pixel_SegF1": "pixel_SegF1",
            "pixel_F1Max": "pixel_F1Max",
        }
        return ProtocolSuite(jm.Evaluator(metrics), names, needs_validation=True)
    metrics = [image_auroc, jm.AUSPRO(fpr_limit=0.05, thresholds=pixel_bins, prefix="pixel_")]
    names = {"image_AUROC": "image_AUROC", "pixel_AUSPRO": "pixel_AUSPRO@0.05"}
    return ProtocolSuite(jm.Evaluator(metrics), names, needs_defects=True)


def _aupro(fpr_limit: float, thresholds: int | None) -> jm.AUPRO:
    options: dict[str, Any] = {} if fpr_limit == 0.3 else {"fpr_limit": fpr_limit}
    return jm.AUPRO(thresholds=thresholds, prefix="pixel_", **options)


def binarised(anomaly_maps: np.ndarray, threshold: float) -> np.ndarray:
    """float32 1.0 where ``map > threshold`` (both in float32, as SegF1 compares), else 0.0."""
    return (np.asarray(anomaly_maps, np.float32) > np.float32(threshold)).astype(np.float32)


def per_image_aupimo(metric: jm.AUPIMO) -> np.ndarray:
    """Each image's AUPIMO (float64, input order; NaN for normal images) from an exact AUPIMO that
    keeps only the mean's state (``return_average=True``, the suite's): the areas whose mean
    ``compute()`` returns, one per anomalous image, as ``AUPIMO(return_average=False)`` gives.

    Raises:
        ValueError, RuntimeError: as ``metric.compute()`` (no normal image, a bound out of range).
        TypeError: a binned AUPIMO (it needs ``capacity`` and ``return_average=False``).

    >>> import numpy as np
    >>> scores = np.arange(100, dtype=np.float32).reshape(10, 10)
    >>> maps, masks = np.stack([scores, scores]), np.stack([scores < 0, scores >= 90])
    >>> per_image_aupimo(jm.AUPIMO(fpr_bounds=(0.01, 0.05)).update(maps, masks)).round(4).tolist()
    [nan, 0.2525]
    """
    from jaxmetrics_ad.pimo_rule import check_integration_band, trapezoid_weights

    if not metric.is_exact:
        raise TypeError(f"{metric.name}: per-image values of a binned AUPIMO: use its compute()")
    metric._check_state()
    state = metric.state
    thresholds = state.thresholds(metric.num_thresholds)
    shared_fpr = state.shared_fpr(thresholds.astype(np.float64))
    band = check_integration_band(shared_fpr, metric.fpr_bounds, metric.force, metric.name)
    inside = slice(band.low_index, band.high_index + 1)
    weights = trapezoid_weights(shared_fpr, band)[inside]
    areas = state.weighted_tpr_sums(thresholds[inside].astype(np.float64), weights)
    lower, upper = metric.fpr_bounds
    classes = state.image_classes()
    values = np.full(len(classes), np.nan)
    values[classes == 1] = np.clip(areas / math.log(upper / lower), 0.0, 1.0)
    return values
