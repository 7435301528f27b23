"""Evaluate the standard anomaly-detection metric suite batch by batch (the CLI's and benchmark's engine).

The suite is what papers and anomalib report for one category: image AUROC, AUPR, F1Max and the
F1-adaptive threshold on image scores, and pixel AUROC, AUPR, F1Max, AUPRO and AUPIMO on anomaly
maps. Result names are anomalib's, ``<level>_<ClassName>`` (``pixel_AUPRO``).

Choices that keep it fast and its memory small, each measured on 300 maps of 256×256 (2-core CPU):

* Curve metrics that read the same fields with the same thresholds (AUROC, AUPR, F1Max,
  F1AdaptiveThreshold) keep the same state, so the suite updates it once per batch and lends it to
  the others at compute time: four pixel curves cost one histogram (or, exact, one pixel buffer).
* Pixel AUROC, AUPR, F1Max and AUPRO are binned by default (``num_bins`` auto-ranging bins,
  fixed-size state whatever the number of images, certified error bounds) or exact on request
  (every pixel kept and sorted at compute, as the MVTec AD script and anomalib do).
* Image metrics are always exact: one score per image costs nothing to keep.
* AUPIMO is always exact: it keeps only the anomalous pixels and the top 5% of each normal image's
  scores (~170 MB for a 1.6 Gpx set), updates at ~100 Mpx/s and computes in ~1 s with numpy, with
  no compile; the streaming variant took 6 to 60 s to compile its compute here.
* AUPRO's ground-truth regions are labelled on the host with ``scipy.ndimage.label`` (jax depends
  on scipy), the batch being on the host anyway: the in-jit labelling is for jitted eval steps,
  and compiling it took most of the suite's first batch.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np
from scipy import ndimage

import jaxmetrics_ad as jm
from jaxmetrics_ad.base import Metric, read_field

IMAGE_FIELDS = ("pred_score", "gt_label")
PIXEL_FIELDS = ("anomaly_map", "gt_mask")
REGION_FIELDS = ("anomaly_map", "gt_regions")
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
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def label_regions(masks: np.ndarray) -> np.ndarray:
    """8-connected regions of each mask (N, H, W), labelled on the host; int32, 0 = background.

    The same partition as :func:`jaxmetrics_ad.regions.connected_components` (scipy's numbering):
    on the host, where batches are read from disk anyway, scipy labels masks faster than any
    compiled program and needs no compile, which dominated the suite's first batch.

    >>> label_regions(np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 0]]], bool)).tolist()
    [[[1, 0, 0], [0, 1, 0], [0, 0, 0]]]
    """
    masks = np.asarray(masks) != 0
    labels = np.zeros(masks.shape, np.int32)
    for image, mask in enumerate(masks):
        if mask.any():
            ndimage.label(mask, structure=_EIGHT_CONNECTED, output=labels[image])
    return labels


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


def _build_metric(name: str, exact: bool, num_bins: int, fpr_limit: float) -> Metric:
    level, class_name = name.split("_", 1)
    if level == "image":
        return getattr(jm, class_name)(None, fields=IMAGE_FIELDS, prefix="image_")
    if class_name == "AUPRO":
        return jm.AUPRO(
            fpr_limit=fpr_limit,
            thresholds=None if exact else num_bins,
            region_labels=True,
            fields=REGION_FIELDS,
            prefix="pixel_",
        )
    if class_name == "AUPIMO":
        return jm.AUPIMO(prefix="pixel_")
    return getattr(jm, class_name)(
        None if exact else num_bins, fields=PIXEL_FIELDS, prefix="pixel_"
    )


def _shared_state_key(metric: Metric) -> tuple[Any, ...] | None:
    """Metrics with equal keys keep identical states (``None``: this metric shares nothing)."""
    if isinstance(metric, jm.ScoreCurveMetric):
        return ("curve", metric.fields, metric.thresholds, metric.capacity)
    if isinstance(metric, (jm.PIMO, jm.AUPIMO)) and metric.is_exact:
        return ("tails", metric.fields, metric.tail_fraction)
    return None


def _one_level(metric: Metric) -> tuple[list[Any], Any]:
    """A metric's children (state, counters) and a treedef that rebuilds it around other children."""
    return jax.tree_util.tree_flatten(metric, is_leaf=lambda node: node is not metric)


def _with_state_of(metric: Metric, source: Metric) -> Metric:
    """``metric``'s configuration around ``source``'s state (they must share a state key)."""
    _, treedef = _one_level(metric)
    children, _ = _one_level(source)
    return jax.tree_util.tree_unflatten(treedef, children)


@dataclasses.dataclass(frozen=True)
class Suite:
    """A list of metrics updated together; metrics keeping identical states update it only once.

    ``metrics`` holds the metrics as configured; ``state_sources[i]`` is the index of the metric
    whose state metric ``i`` reads (``i`` itself for the one that is updated). Metrics whose name is
    not in :data:`SUITE_METRICS` (the PIMO curves kept for plots) are updated but not reported by
    :meth:`compute`. Build one with :func:`build_suite`.

    >>> import numpy as np
    >>> suite = build_suite(["image_AUROC", "image_F1Max"])
    >>> suite = suite.update({"pred_score": np.array([0.2, 0.9]), "gt_label": np.array([0, 1])})
    >>> suite.compute()
    {'image_AUROC': 1.0, 'image_F1Max': 1.0}
    """

    metrics: tuple[Metric, ...]
    state_sources: tuple[int, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the reported metrics, ``prefix + class name``, in report order."""
        return tuple(metric.name for metric in self.metrics if metric.name in SUITE_METRICS)

    def update(self, batch: Any) -> Suite:
        """The suite after one more batch (a Mapping or an object with anomalib field names)."""
        if any(REGION_FIELDS[1] in metric.fields for metric in self.metrics):
            fields = {field: read_field(batch, field) for field in (*IMAGE_FIELDS, *PIXEL_FIELDS)}
            batch = {**fields, REGION_FIELDS[1]: label_regions(fields["gt_mask"])}
        metrics = tuple(
            metric.update_from(batch) if source == index else metric
            for index, (metric, source) in enumerate(zip(self.metrics, self.state_sources))
        )
        return dataclasses.replace(self, metrics=metrics)

    def updated_metrics(self) -> dict[str, Metric]:
        """Every metric by name, holding the data seen so far (states lent where shared)."""
        return {
            metric.name: _with_state_of(metric, self.metrics[source])
            for metric, source in zip(self.metrics, self.state_sources)
        }

    def compute(self, on_error: str = "raise") -> dict[str, float]:
        """``{name: value}`` of the reported metrics, as Python floats.

        ``on_error="warn"`` turns a metric that cannot be computed on this data (ValueError or
        RuntimeError, e.g. AUPIMO with too few normal pixels to reach FPR 1e-5) into NaN and a
        warning naming it, so the other metrics are still reported.
        """
        if on_error not in ("raise", "warn"):
            raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
        results = {}
        for name, metric in self.updated_metrics().items():
            if name not in SUITE_METRICS:
                continue
            try:
                results[name] = float(jax.device_get(metric.compute()))
            except (ValueError, RuntimeError) as error:
                if on_error == "raise":
                    raise
                warnings.warn(f"{name} is NaN: {error}", UserWarning, stacklevel=2)
                results[name] = float("nan")
        return results

    def error_bounds(self) -> dict[str, float]:
        """Certified bounds on |binned − exact| of the binned AUROC and AUPRO metrics."""
        return {
            name: float(metric.error_bound())
            for name, metric in self.updated_metrics().items()
            if isinstance(metric, (jm.AUROC, jm.AUPRO)) and not metric.is_exact
        }


def build_suite(
    names: Sequence[str] | None = None,
    *,
    exact: bool = False,
    num_bins: int = jm.DEFAULT_NUM_BINS,
    fpr_limit: float = 0.3,
    pimo_curves: bool = False,
) -> Suite:
    """The metrics ``names`` (default: all of :data:`SUITE_METRICS`) as one :class:`Suite`.

    Args:
        names: a subset of :data:`SUITE_METRICS`; results come in the suite's order.
        exact: keep every pixel and sort at compute (numbers as the MVTec AD script / anomalib give)
            instead of binning. Image metrics and AUPIMO are exact either way.
        num_bins: bins per binned pixel curve (AUROC, AUPR, F1Max, AUPRO).
        fpr_limit: the FPR up to which AUPRO integrates.
        pimo_curves: also keep per-image PIMO curves (``pixel_PIMO``, not reported by compute) at
            :data:`PIMO_PLOT_THRESHOLDS` thresholds, to plot them; they share AUPIMO's state.

    Raises:
        ValueError: an unknown metric name or an empty selection.

    >>> build_suite(["pixel_F1Max", "pixel_AUROC"], exact=True).names
    ('pixel_AUROC', 'pixel_F1Max')
    """
    chosen = SUITE_METRICS if names is None else tuple(names)
    unknown = [name for name in chosen if name not in SUITE_METRICS]
    if unknown:
        raise ValueError(f"metrics: unknown {unknown}; choose from {', '.join(SUITE_METRICS)}")
    if not chosen:
        raise ValueError("metrics: choose at least one metric")
    ordered = [name for name in SUITE_METRICS if name in chosen]
    metrics = [_build_metric(name, exact, num_bins, fpr_limit) for name in ordered]
    if pimo_curves:
        tail_fraction = jm.AUPIMO().tail_fraction
        metrics.append(jm.PIMO(PIMO_PLOT_THRESHOLDS, tail_fraction=tail_fraction, prefix="pixel_"))
    first_with_key: dict[tuple[Any, ...], int] = {}
    sources = []
    for index, metric in enumerate(metrics):
        key = _shared_state_key(metric)
        sources.append(index if key is None else first_with_key.setdefault(key, index))
    return Suite(metrics=tuple(metrics), state_sources=tuple(sources))


@dataclasses.dataclass(frozen=True)
class SuiteResult:
    """What one evaluation gave: values, data size and time.

    Attributes:
        values: ``{name: value}`` in report order.
        suite: the suite after the last batch (for curves and plots).
        num_images: images evaluated; ``num_anomalous`` of them have a defect.
        num_pixels: pixels of all maps.
        update_seconds: time spent loading batches and updating (compiles included).
        compute_seconds: time spent computing the values (compiles included).
    """

    values: dict[str, float]
    suite: Suite
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
    suite: Suite,
    batches: Iterable[Any],
    on_batch: Callable[[int], None] | None = None,
    on_error: str = "raise",
) -> SuiteResult:
    """Update ``suite`` with every batch, then compute it; ``on_batch(images)`` reports progress.

    ``on_error`` is passed to :meth:`Suite.compute`.

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
        suite = suite.update(batch)
        labels = np.asarray(read_field(batch, "gt_label"))
        num_images += labels.size
        num_anomalous += int(np.count_nonzero(labels))
        num_pixels += int(np.size(read_field(batch, "anomaly_map")))
        if on_batch is not None:
            on_batch(labels.size)
    jax.block_until_ready(suite.metrics)
    computed = time.perf_counter()
    values = suite.compute(on_error)
    return SuiteResult(
        values=values,
        suite=suite,
        num_images=num_images,
        num_anomalous=num_anomalous,
        num_pixels=num_pixels,
        update_seconds=computed - start,
        compute_seconds=time.perf_counter() - computed,
    )
