"""jaxmetrics_ad: streaming, jit-able evaluation metrics for visual anomaly detection in JAX.

Example:
    >>> import jaxmetrics_ad as jm
    >>> float(jm.AUROC()([0.1, 0.9, 0.2, 0.8], [0, 1, 0, 1]))
    1.0
"""

from jaxmetrics_ad.base import Metric
from jaxmetrics_ad.classification import (
    AUPR,
    AUROC,
    DEFAULT_NUM_BINS,
    BinaryPrecisionRecallCurve,
    F1AdaptiveThreshold,
    F1Max,
    F1Score,
    ScoreCurveMetric,
    binned_pr_curve,
)
from jaxmetrics_ad.histogram import ScoreHistogram
from jaxmetrics_ad.statistics import AnomalyScoreDistribution, ManualThreshold, MinMax

__all__ = [
    "AUPR",
    "AUROC",
    "DEFAULT_NUM_BINS",
    "AnomalyScoreDistribution",
    "BinaryPrecisionRecallCurve",
    "F1AdaptiveThreshold",
    "F1Max",
    "F1Score",
    "ManualThreshold",
    "Metric",
    "MinMax",
    "ScoreCurveMetric",
    "ScoreHistogram",
    "binned_pr_curve",
]
