"""Evaluate the standard anomaly-detection metric suite batch by batch (the CLI's and benchmark's engine).

The suite is what papers and anomalib report for one category: image AUROC, AUPR, F1Max and the
F1-adaptive threshold on image scores, and pixel AUROC, AUPR, F1Max, AUPRO and AUPIMO on anomaly
maps. Result names are anomalib's, ``<level>_<ClassName>`` (``pixel_AUPRO``).

Choices that keep it fast and its memory small, each measured on 300 maps of 256×256 (2-core CPU):

* The suite is a preset of :class:`jaxmetrics_ad.Evaluator` (:func:`build_suite`): curve metrics
  that read the same fields with the same thresholds (AUROC, AUPR, F1Max, F1AdaptiveThreshold)
  share one state, updated once per batch: four pixel curves cost one histogram (or, exact, one
  pixel buffer).
* Pixel AUROC, AUPR, F1Max and AUPRO are binned by default (``num_bins`` auto-ranging bins,
  fixed-size state whatever the number of images, certified error bounds) or exact on request
  (every pixel kept and sorted at compute, as the MVTec AD script and anomalib do).
* Image metrics are always exact: one score per image costs nothing to keep (in a fixed buffer
  when the number of images is known, so they join the binned curves' one jitted program).
* AUPIMO is always exact: it keeps only the anomalous pixels and the top 5% of each normal image's
  scores (~170 MB for a 1.6 Gpx set) and computes in ~1 s with numpy, with no compile. Its update
  (~5 ms per 960×960 map) measured ~3x cheaper per pixel than the binned state's with one
  histogram row per image (~17 ms: it packs the normal tail and bins every pixel twice).
* Binned, AUPRO's histogram is the pixel curves' histogram plus a 1/|region| weight row, so the
  Evaluator updates one histogram for the four of them
  (:meth:`~jaxmetrics_ad.Metric.state_views`). Its ground-truth regions are labelled on the host
  on the CPU backend (``scipy.ndimage.label`` through a callback, no labelling program to
  compile), inside jit with ``jax.lax`` on GPU/TPU.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

import jaxmetrics_ad as jm
from jaxmetrics_ad.base import Metric, read_field

IMAGE_FIELDS = ("pred_score", "gt_label")
PIXEL_FIELDS = ("anomaly_map", "gt_mask")
SUITE_METRICS = (
    "image_AUROC",
    "image_AUPR",
    "image_F1Max",
    "image_F1AdaptiveThreshold",
    "pixel_AUROC",
    "pixel_AUPR",
    "pixel_F1Max",
    "pixel_AUPRO",
    "pixel_AUPIMO",
)
"""Names of the metrics the suite can evaluate, in the order results are reported."""
PIMO_PLOT_THRESHOLDS = 10_000
BATCH_PIXELS = 2**20
"""Pixels per batch that :func:`batch_size_for` aims at, measured fastest on a 2-core CPU: batches
of 1 to 2 Mpx ran the suite ~2x faster per pixel than 14 Mpx ones, which took ~300 MB more memory."""


def batch_size_for(num_images: int, image_pixels: int) -> int:
    """Images per batch for about :data:`BATCH_PIXELS` pixels, dividing ``num_images`` if it can.

    A batch size that divides the number of images gives batches of one shape, so every jitted
    update compiles once; a divisor down to half the target is preferred to a smaller last batch.

    >>> batch_size_for(300, 256 * 256), batch_size_for(1725, 960 * 960), batch_size_for(83, 64 * 64)
    (15, 1, 83)
    """
    target = max(1, min(num_images, BATCH_PIXELS // max(image_pixels, 1)))
    for size in range(target, target // 2, -1):
        if num_images % size == 0:
            return size
    return target


def _build_metric(
    name: str, exact: bool, num_bins: int, fpr_limit: float, num_images: int | None
) -> Metric:
    level, class_name = name.split("_", 1)
    if level == "image":
        return getattr(jm, class_name)(
            None, capacity=num_images, fields=IMAGE_FIELDS, prefix="image_"
        )
    if class_name == "AUPRO":
        return jm.AUPRO(
            fpr_limit=fpr_limit,
            thresholds=None if exact else num_bins,
            fields=PIXEL_FIELDS,
            prefix="pixel_",
        )
    if class_name == "AUPIMO":
        return jm.AUPIMO(prefix="pixel_")
    return getattr(jm, class_name)(
        None if exact else num_bins, fields=PIXEL_FIELDS, prefix="pixel_"
    )


def reported_names(evaluator: jm.Evaluator) -> tuple[str, ...]:
    """Names of the reported metrics of a suite evaluator, in report order.

    Metrics not in :data:`SUITE_METRICS` (the PIMO curves kept for plots) are updated but not
    reported.

    >>> reported_names(build_suite(["pixel_F1Max", "pixel_AUROC"], exact=True))
    ('pixel_AUROC', 'pixel_F1Max')
    """
    return tuple(name for name in evaluator.metrics() if name in SUITE_METRICS)


def _compute_one(name: str, metric: Metric) -> float:
    return float(jax.device_get(metric.compute()))


def compute(
    evaluator: jm.Evaluator,
    on_error: str = "raise",
    compute_metric: Callable[[str, Metric], float] | None = None,
) -> dict[str, float]:
    """``{name: value}`` of the reported metrics, as Python floats, computed metric by metric.

    ``on_error="warn"`` turns a metric that cannot be computed on this data (ValueError or
    RuntimeError, e.g. AUPIMO with too few normal pixels to reach FPR 1e-5) into NaN and a
    warning naming it, so the other metrics are still reported. ``compute_metric(name, metric)``,
    when given, computes each value instead (and decides itself what an error becomes).

    >>> import numpy as np
    >>> ev = build_suite(["image_AUROC", "image_F1Max"])
    >>> ev = ev.update({"pred_score": np.array([0.2, 0.9]), "gt_label": np.array([0, 1])})
    >>> compute(ev)
    {'image_AUROC': 1.0, 'image_F1Max': 1.0}
    """
    if on_error not in ("raise", "warn"):
        raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
    metrics = evaluator.metrics()
    if compute_metric is None and on_error == "raise" and set(metrics) <= set(SUITE_METRICS):
        return {name: float(jax.device_get(value)) for name, value in evaluator.compute().items()}
    results = {}
    for name in reported_names(evaluator):
        if compute_metric is not None:
            results[name] = compute_metric(name, metrics[name])
            continue
        try:
            results[name] = _compute_one(name, metrics[name])
        except (ValueError, RuntimeError) as error:
            if on_error == "raise":
                raise
            warnings.warn(f"{name} is NaN: {error}", UserWarning, stacklevel=2)
            results[name] = float("nan")
    return results


def error_bounds(evaluator: jm.Evaluator) -> dict[str, float]:
    """Certified bounds on |binned − exact| of the binned curve metrics (AUPIMO: of the mean, the
    largest per-image bound when it keeps per-image curves)."""
    bounded = (jm.AUROC, jm.AUPR, jm.F1Max, jm.AUPRO, jm.AUPIMO)
    return {
        name: float(np.nanmax(np.asarray(metric.error_bound(), np.float64), initial=0.0))
        for name, metric in evaluator.metrics().items()
        if isinstance(metric, bounded) and not metric.is_exact
    }


def build_suite(
    names: Sequence[str] | None = None,
    *,
    exact: bool = False,
    num_bins: int = jm.DEFAULT_NUM_BINS,
    fpr_limit: float = 0.3,
    num_images: int | None = None,
) -> jm.Evaluator:
    """The metrics ``names`` (default: all of :data:`SUITE_METRICS`) as one :class:`~jaxmetrics_ad.Evaluator`.

    The Evaluator shares one state between the curve metrics that read the same fields with the
    same thresholds (AUPRO's histogram serving the pixel curves), and updates eagerly (see
    :meth:`~jaxmetrics_ad.Evaluator.update`): the fixed-size states (binned pixel curves, and the
    image metrics given ``num_images``) in one jitted program per batch, compiled once (a ragged
    last batch is padded), the growing ones (exact AUPIMO) each on its own.

    Args:
        names: a subset of :data:`SUITE_METRICS`; results come in the suite's order.
        exact: keep every pixel and sort at compute (numbers as the MVTec AD script / anomalib give)
            instead of binning. Image metrics and AUPIMO are exact either way.
        num_bins: bins per binned pixel curve (AUROC, AUPR, F1Max, AUPRO).
        fpr_limit: the FPR up to which AUPRO integrates. (PIMO curves for plots are read from
            the AUPIMO's state afterwards: :func:`pimo_curves`.)
        num_images: the most images the evaluation will see: the image metrics keep their
            scores in fixed buffers of that size (None: buffers that grow, updated one by one).

    Raises:
        ValueError: an unknown metric name or an empty selection.

    >>> list(build_suite(["pixel_F1Max", "pixel_AUROC"], exact=True).metrics())
    ['pixel_AUROC', 'pixel_F1Max']
    """
    chosen = SUITE_METRICS if names is None else tuple(names)
    unknown = [name for name in chosen if name not in SUITE_METRICS]
    if unknown:
        raise ValueError(f"metrics: unknown {unknown}; choose from {', '.join(SUITE_METRICS)}")
    if not chosen:
        raise ValueError("metrics: choose at least one metric")
    ordered = [name for name in SUITE_METRICS if name in chosen]
    if num_images is not None and (not isinstance(num_images, int) or num_images < 1):
        raise ValueError(f"num_images: expected a positive int or None, got {num_images!r}")
    metrics = [_build_metric(name, exact, num_bins, fpr_limit, num_images) for name in ordered]
    return jm.Evaluator(metrics)


def pimo_curves(aupimo: jm.AUPIMO) -> jm.PIMOResult:
    """Per-image PIMO curves at :data:`PIMO_PLOT_THRESHOLDS` thresholds, read from an exact
    AUPIMO's own state (for plots: nothing is kept twice)."""
    pimo = jm.PIMO(PIMO_PLOT_THRESHOLDS, tail_fraction=aupimo.tail_fraction, prefix="pixel_")
    pimo = pimo._replace(
        state=aupimo.state, num_updates=aupimo.num_updates, num_invalid=aupimo.num_invalid
    )
    return pimo.compute()


@dataclasses.dataclass(frozen=True)
class SuiteResult:
    """What one evaluation gave: values, data size and time.

    Attributes:
        values: ``{name: value}`` in report order.
        evaluator: the evaluator after the last batch (for curves, plots and error bounds).
        num_images: images evaluated; ``num_anomalous`` of them have a defect.
        num_pixels: pixels of all maps.
        update_seconds: time spent loading batches and updating (compiles included).
        compute_seconds: time spent computing the values (compiles included).
    """

    values: dict[str, float]
    evaluator: jm.Evaluator
    num_images: int
    num_anomalous: int
    num_pixels: int
    update_seconds: float
    compute_seconds: float

    @property
    def seconds(self) -> float:
        """Total time of the evaluation."""
        return self.update_seconds + self.compute_seconds


def evaluate(
    evaluator: jm.Evaluator,
    batches: Iterable[Any],
    on_batch: Callable[[int], None] | None = None,
    on_error: str = "raise",
    compute_metric: Callable[[str, Metric], float] | None = None,
) -> SuiteResult:
    """Feed every batch to ``evaluator.update``, then compute; ``on_batch(images)`` reports progress.

    ``on_error`` and ``compute_metric`` are passed to :func:`compute`.

    Batches need the fields ``anomaly_map``, ``gt_mask``, ``gt_label`` and ``pred_score`` (e.g.
    :class:`jaxmetrics_ad.io.Batch`); only one is held at a time, so with binned pixel metrics
    memory does not grow with the number of images.

    >>> from jaxmetrics_ad.io import iter_batches
    >>> from jaxmetrics_ad.synthetic import make_category
    >>> data = make_category(num_normal=4, num_anomalous=4, size=(32, 32))
    >>> result = evaluate(build_suite(["pixel_AUROC"]), iter_batches(data, 4))
    >>> result.num_images, result.num_pixels, 0.5 < result.values["pixel_AUROC"] <= 1.0
    (8, 8192, True)
    """
    num_images = num_anomalous = num_pixels = 0
    start = time.perf_counter()
    for batch in batches:
        evaluator = evaluator.update(batch)
        labels = np.asarray(read_field(batch, "gt_label"))
        num_images += labels.size
        num_anomalous += int(np.count_nonzero(labels))
        num_pixels += int(np.size(read_field(batch, "anomaly_map")))
        if on_batch is not None:
            on_batch(labels.size)
    jax.block_until_ready(evaluator)
    computed = time.perf_counter()
    values = compute(evaluator, on_error, compute_metric)
    return SuiteResult(
        values=values,
        evaluator=evaluator,
        num_images=num_images,
        num_anomalous=num_anomalous,
        num_pixels=num_pixels,
        update_seconds=computed - start,
        compute_seconds=time.perf_counter() - computed,
    )
