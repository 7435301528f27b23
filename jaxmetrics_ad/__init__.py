"""jaxmetrics_ad: streaming, jit-able evaluation metrics for visual anomaly detection in JAX.

Example:
    >>> import jaxmetrics_ad as jm
    >>> float(jm.AUROC()([0.1, 0.9, 0.2, 0.8], [0, 1, 0, 1]))
    1.0
"""

from jaxmetrics_ad.adapters import MetricFunctions, wrap_metric
from jaxmetrics_ad.base import Metric
from jaxmetrics_ad.bootstrap import Bootstrap, BootstrapResult
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
from jaxmetrics_ad.comparison import Comparison, compare_per_image
from jaxmetrics_ad.datasets import evaluate_dataset
from jaxmetrics_ad.evaluator import Evaluator, pad_batch
from jaxmetrics_ad.histogram import ScoreHistogram
from jaxmetrics_ad.nnx_bridge import NNXMetric
from jaxmetrics_ad.pimo import AUPIMO, PIMO, AUPIMOResult, PIMOResult
from jaxmetrics_ad.presorting import PBn, PGn
from jaxmetrics_ad.pro import AUPRO, PRO
from jaxmetrics_ad.segf1 import SegF1, SegF1PerImage, ValidationThreshold, fit_threshold
from jaxmetrics_ad.spro import AUSPRO, SPRO, defects_from_ground_truth, saturation_areas
from jaxmetrics_ad.statistics import AnomalyScoreDistribution, ManualThreshold, MinMax

__all__ = [
    "AUPIMO",
    "AUPR",
    "AUPRO",
    "AUROC",
    "AUSPRO",
    "DEFAULT_NUM_BINS",
    "PIMO",
    "PRO",
    "SPRO",
    "AUPIMOResult",
    "AnomalyScoreDistribution",
    "BinaryPrecisionRecallCurve",
    "Bootstrap",
    "BootstrapResult",
    "Comparison",
    "Evaluator",
    "F1AdaptiveThreshold",
    "F1Max",
    "F1Score",
    "ManualThreshold",
    "Metric",
    "MetricFunctions",
    "MinMax",
    "NNXMetric",
    "PBn",
    "PGn",
    "PIMOResult",
    "ScoreCurveMetric",
    "ScoreHistogram",
    "SegF1",
    "SegF1PerImage",
    "ValidationThreshold",
    "binned_pr_curve",
    "compare_per_image",
    "defects_from_ground_truth",
    "evaluate_dataset",
    "fit_threshold",
    "pad_batch",
    "saturation_areas",
    "wrap_metric",
]
