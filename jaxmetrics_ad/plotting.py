"""Plot ROC, PR, PRO and PIMO curves and score distributions with matplotlib (optional extra ``plot``).

The functions take the arrays a metric's curve method returns (NumPy or JAX arrays), so they do not
depend on the metric classes. Each draws on ``ax`` (a new figure when it is None), puts the area
under the curve in the legend and returns the Axes, so a notebook shows the plot with one call and
several curves can share one Axes. :func:`figure_of` (behind :meth:`Metric.generate_figure
<jaxmetrics_ad.Metric.generate_figure>`) draws a metric's own figure from its state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_NO_LEGEND = "_nolegend_"


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "plotting needs matplotlib, an optional dependency: pip install 'jaxmetrics_ad[plot]'"
        ) from error
    return plt


def _axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    _, new_ax = _pyplot().subplots(figsize=(5, 4.5))
    return new_ax


def _curve(x, y, x_name: str, y_name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"{x_name} and {y_name} must be 1-D arrays of one length, got shapes {x.shape} and "
            f"{y.shape}"
        )
    return x, y


def _area_text(area_name: str, area: float | None) -> str | None:
    return None if area is None else f"{area_name} = {float(area):.4f}"


def _legend_text(*parts: str | None) -> str:
    return ", ".join(part for part in parts if part) or _NO_LEGEND


def _finish(ax: Axes, x_label: str, y_label: str) -> Axes:
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(True, alpha=0.3)
    if any(not text.startswith("_") for text in ax.get_legend_handles_labels()[1]):
        ax.legend(loc="lower right")
    return ax


def plot_roc(
    fpr, tpr, auc: float | None = None, ax: Axes | None = None, label: str | None = None
) -> Axes:
    """Plot a ROC curve (TPR against FPR) with the chance diagonal; AUROC goes in the legend.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> ax = plot_roc([0.0, 0.5, 1.0], [0.0, 0.9, 1.0], auc=0.7, label="pixel")
    >>> ax.get_legend().get_texts()[0].get_text()
    'pixel, AUROC = 0.7000'
    >>> matplotlib.pyplot.close(ax.figure)
    """
    fpr, tpr = _curve(fpr, tpr, "fpr", "tpr")
    ax = _axes(ax)
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=0.8, label=_NO_LEGEND)
    ax.plot(fpr, tpr, label=_legend_text(label, _area_text("AUROC", auc)))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    return _finish(ax, "False positive rate", "True positive rate")


def plot_pr(
    recall,
    precision,
    ap: float | None = None,
    ax: Axes | None = None,
    label: str | None = None,
) -> Axes:
    """Plot a precision-recall curve as steps; AUPR (average precision) goes in the legend.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> ax = plot_pr([1.0, 0.5, 0.0], [0.5, 1.0, 1.0], ap=0.75)
    >>> ax.get_legend().get_texts()[0].get_text()
    'AUPR = 0.7500'
    >>> matplotlib.pyplot.close(ax.figure)
    """
    recall, precision = _curve(recall, precision, "recall", "precision")
    ax = _axes(ax)
    # Average precision is a step integral, so steps show what was integrated.
    ax.step(recall, precision, where="post", label=_legend_text(label, _area_text("AUPR", ap)))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    return _finish(ax, "Recall", "Precision")


def plot_pro(
    fpr,
    pro,
    aupro: float | None = None,
    fpr_limit: float = 0.3,
    ax: Axes | None = None,
    label: str | None = None,
    log_x: bool = False,
) -> Axes:
    """Plot a PRO curve (per-region overlap against FPR), marking and shading up to ``fpr_limit``.

    AUPRO is the shaded area divided by ``fpr_limit``; it goes in the legend. ``log_x`` puts FPR on
    a log axis, which shows the low-FPR part that matters most.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> ax = plot_pro([0.0, 0.1, 0.3, 1.0], [0.0, 0.6, 0.8, 1.0], aupro=0.55)
    >>> [text.get_text() for text in ax.get_legend().get_texts()]
    ['AUPRO = 0.5500', 'FPR limit = 0.3']
    >>> matplotlib.pyplot.close(ax.figure)
    """
    fpr, pro = _curve(fpr, pro, "fpr", "pro")
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    ax = _axes(ax)
    (curve,) = ax.plot(fpr, pro, label=_legend_text(label, _area_text("AUPRO", aupro)))
    order = np.argsort(fpr, kind="stable")
    inside = fpr[order] <= fpr_limit
    shaded_fpr = np.r_[fpr[order][inside], fpr_limit]
    shaded_pro = np.r_[pro[order][inside], np.interp(fpr_limit, fpr[order], pro[order])]
    ax.fill_between(shaded_fpr, shaded_pro, alpha=0.15, color=curve.get_color())
    ax.axvline(fpr_limit, color="black", linestyle=":", label=f"FPR limit = {fpr_limit:g}")
    if log_x:
        ax.set_xscale("log")
    else:
        ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    return _finish(ax, "False positive rate", "Per-region overlap")


def plot_pimo(
    shared_fpr,
    per_image_tprs,
    aupimos=None,
    fpr_bounds: Sequence[float] = (1e-5, 1e-4),
    ax: Axes | None = None,
    label: str | None = None,
) -> Axes:
    """Plot PIMO curves: one thin TPR line per anomalous image against the shared FPR, log x-axis.

    Rows that are all NaN (normal images) are skipped. The AUPIMO integration range
    ``fpr_bounds`` is shaded; with ``aupimos`` (per image, NaN for normal images) the legend
    shows their mean ± std.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> fpr = np.logspace(0, -6, 7)
    >>> tprs = np.array([np.full(7, np.nan), np.sqrt(fpr), np.clip(10 * fpr, 0, 1)])
    >>> ax = plot_pimo(fpr, tprs, aupimos=[np.nan, 0.005, 0.0006])
    >>> len(ax.get_lines()), ax.get_xscale()
    (2, 'log')
    >>> matplotlib.pyplot.close(ax.figure)
    """
    shared_fpr = np.asarray(shared_fpr, dtype=np.float64)
    per_image_tprs = np.asarray(per_image_tprs, dtype=np.float64)
    if shared_fpr.ndim != 1 or per_image_tprs.ndim != 2:
        raise ValueError(
            "shared_fpr must be 1-D (K,) and per_image_tprs 2-D (N, K), got shapes "
            f"{shared_fpr.shape} and {per_image_tprs.shape}"
        )
    if per_image_tprs.shape[1] != shared_fpr.shape[0]:
        raise ValueError(
            f"per_image_tprs has {per_image_tprs.shape[1]} points per image but shared_fpr has "
            f"{shared_fpr.shape[0]}"
        )
    lower, upper = (float(bound) for bound in fpr_bounds)
    if not 0 < lower < upper <= 1:
        raise ValueError(f"fpr_bounds must satisfy 0 < lower < upper <= 1, got {fpr_bounds}")
    area_text = None
    if aupimos is not None:
        aupimos = np.asarray(aupimos, dtype=np.float64)
        if aupimos.shape != per_image_tprs.shape[:1]:
            raise ValueError(
                f"aupimos must have shape ({per_image_tprs.shape[0]},), got {aupimos.shape}"
            )
        scored = aupimos[np.isfinite(aupimos)]
        if scored.size:
            area_text = f"AUPIMO = {scored.mean():.4f} ± {scored.std():.4f} ({scored.size} images)"
    legend_text = _legend_text(label, area_text)

    ax = _axes(ax)
    color = None
    for row in per_image_tprs[~np.isnan(per_image_tprs).all(axis=1)]:
        (line,) = ax.plot(shared_fpr, row, linewidth=0.7, alpha=0.6, color=color, label=legend_text)
        color, legend_text = line.get_color(), _NO_LEGEND
    ax.axvspan(lower, upper, color="gray", alpha=0.2, label=f"AUPIMO range [{lower:g}, {upper:g}]")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    return _finish(ax, "Shared false positive rate (normal images)", "Per-image TPR")


def plot_score_distributions(
    scores,
    labels,
    bins: int | Sequence[float] = 50,
    ax: Axes | None = None,
    density: bool = True,
) -> Axes:
    """Histograms of the scores of normal (label 0) and anomalous (label 1) samples on one Axes.

    ``scores`` and ``labels`` are raw per-sample arrays of one shape (image scores and labels, or
    maps and masks, which are flattened). Both histograms share the bin edges (``bins`` equal
    widths over all scores, or explicit edges); with ``density`` each is normalised to area 1, so
    classes of very different sizes compare. The legend gives each class's sample count.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> ax = plot_score_distributions([0.1, 0.2, 0.3, 0.8, 0.9], [0, 0, 0, 1, 1], bins=4)
    >>> [text.get_text() for text in ax.get_legend().get_texts()]
    ['normal (3)', 'anomalous (2)']
    >>> matplotlib.pyplot.close(ax.figure)
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must have one shape, got {scores.shape} and {labels.shape}"
        )
    scores, labels = scores.ravel(), labels.ravel()
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError("labels must be 0 (normal) or 1 (anomalous)")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    if scores.size == 0:
        raise ValueError("scores is empty: nothing to draw")
    edges = np.histogram_bin_edges(scores, bins=bins)
    ax = _axes(ax)
    for value, name, color in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        chosen = scores[labels == value]
        if chosen.size:
            ax.hist(
                chosen,
                bins=edges,
                density=density,
                alpha=0.5,
                color=color,
                label=f"{name} ({chosen.size})",
            )
    ax.set_xlabel("Anomaly score")
    ax.set_ylabel("Density" if density else "Count")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    return ax


def plot_log_normal(
    log_mean: float, log_std: float, ax: Axes | None = None, label: str | None = None
) -> Axes:
    """The density of scores whose natural log is normal with ``log_mean`` and ``log_std``.

    This is what :class:`~jaxmetrics_ad.AnomalyScoreDistribution` knows of the image scores (the
    mean and std of their log): the fitted log-normal, drawn over ``exp(log_mean ± 4 log_std)``,
    with a dotted line at its median ``exp(log_mean)``. Without a finite positive std (one image)
    only the median is drawn.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> ax = plot_log_normal(0.0, 0.5)
    >>> density, median = ax.get_lines()
    >>> round(float(median.get_xdata()[0]), 4), [t.get_text() for t in ax.get_legend().get_texts()]
    (1.0, ['fitted log-normal', 'median = 1'])
    >>> matplotlib.pyplot.close(ax.figure)
    """
    log_mean, log_std = float(log_mean), float(log_std)
    if not np.isfinite(log_mean):
        raise ValueError(f"log_mean must be finite, got {log_mean}")
    ax = _axes(ax)
    median = float(np.exp(log_mean))
    if np.isfinite(log_std) and log_std > 0:
        x = np.exp(np.linspace(log_mean - 4 * log_std, log_mean + 4 * log_std, 400))
        density = np.exp(-((np.log(x) - log_mean) ** 2) / (2 * log_std**2)) / (
            x * log_std * np.sqrt(2 * np.pi)
        )
        ax.plot(x, density, label=label or "fitted log-normal")
    ax.axvline(median, color="black", linestyle=":", label=f"median = {median:.4g}")
    ax.set_xlabel("Anomaly score")
    ax.set_ylabel("Density")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    return ax


# -- figures of metrics: what Metric.generate_figure returns ----------------------------------------


def figure_of(metric) -> tuple[Figure, str]:
    """``(figure, title)`` of a metric, as anomalib's ``generate_figure`` (see the metric types below).

    * ``AUROC``: the ROC curve, title ``"ROC"``; ``AUPR``: the PR curve, ``"PR"``; ``AUPRO``: the
      PRO curve with its FPR limit, ``"PRO"``. The area (``compute()``) is in the legend and the
      axes title.
    * ``PIMO``: one TPR curve per anomalous image, ``"PIMO"``. ``AUPIMO``: the same curves with
      the integration range shaded, ``"AUPIMO"``; the mean AUPIMO is in the axes title (and, with
      ``return_average=False``, the per-image mean ± std in the legend). A streaming AUPIMO without
      ``capacity`` keeps no per-image curve: ValueError.
    * ``AnomalyScoreDistribution``, ``"Score distribution"``: its state holds moments of log scores
      only, not labelled scores, so it draws the fitted log-normal density of the image scores
      (:func:`plot_log_normal`) and the per-pixel mean and std of the log maps as images. For normal
      against anomalous histograms of raw scores, see :func:`plot_score_distributions`.

    Other metrics raise TypeError; a metric without data ValueError; inside jit TypeError.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import jaxmetrics_ad as jm
    >>> figure, title = figure_of(jm.AUROC(prefix="image_").update([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]))
    >>> title, figure.axes[0].get_title()
    ('ROC', 'ROC: image_AUROC = 0.7500')
    >>> matplotlib.pyplot.close(figure)
    """
    import jax

    from jaxmetrics_ad.classification import AUPR, AUROC
    from jaxmetrics_ad.pimo import AUPIMO, PIMO
    from jaxmetrics_ad.pro import AUPRO
    from jaxmetrics_ad.statistics import AnomalyScoreDistribution
    from jaxmetrics_ad.validation import is_traced

    drawers = (
        (AUROC, _roc_figure),
        (AUPR, _pr_figure),
        (AUPRO, _pro_figure),
        (PIMO, _pimo_figure),
        (AUPIMO, _aupimo_figure),
        (AnomalyScoreDistribution, _distribution_figure),
    )
    drawer = next((draw for cls, draw in drawers if isinstance(metric, cls)), None)
    if drawer is None:
        supported = ", ".join(cls.__name__ for cls, _ in drawers)
        raise TypeError(
            f"{getattr(metric, 'name', type(metric).__name__)} ({type(metric).__name__}) has no "
            f"figure; generate_figure supports {supported}"
        )
    if is_traced(*jax.tree_util.tree_leaves(metric)):
        raise TypeError(f"{metric.name}: a figure needs concrete values; draw it outside jit")
    _pyplot()  # a clear ImportError before any computing
    return drawer(metric)


def _value_of(metric) -> object:
    value = metric.compute()
    if value is None:
        raise ValueError(f"{metric.name} has no data: nothing to draw")
    return value


def _titled(ax: Axes, title: str, text: str) -> tuple[Figure, str]:
    ax.set_title(f"{title}: {text}")
    return ax.figure, title


def _roc_figure(metric) -> tuple[Figure, str]:
    value = float(_value_of(metric))
    fpr, tpr = metric.curve()
    ax = plot_roc(fpr, tpr, auc=value)
    return _titled(ax, "ROC", f"{metric.name} = {value:.4f}")


def _pr_figure(metric) -> tuple[Figure, str]:
    value = float(_value_of(metric))
    recall, precision = metric.curve()
    ax = plot_pr(recall, precision, ap=value)
    return _titled(ax, "PR", f"{metric.name} = {value:.4f}")


def _pro_figure(metric) -> tuple[Figure, str]:
    value = float(_value_of(metric))
    fpr, pro = metric.curve()
    ax = plot_pro(fpr, pro, aupro=value, fpr_limit=metric.fpr_limit)
    return _titled(ax, "PRO", f"{metric.name} = {value:.4f}")


def _pimo_figure(metric) -> tuple[Figure, str]:
    result = _value_of(metric)
    tprs = np.asarray(result.per_image_tprs, np.float64)
    count = int((~np.isnan(tprs).all(axis=1)).sum())
    ax = plot_pimo(result.shared_fpr, tprs, label=f"{count} anomalous images")
    return _titled(ax, "PIMO", f"{metric.name}, {count} anomalous images")


def _aupimo_figure(metric) -> tuple[Figure, str]:
    value = _value_of(metric)
    if metric.return_average:
        mean = float(value)
        pimo = _pimo_curves_of(metric)
        tprs = np.asarray(pimo.per_image_tprs, np.float64)
        count = int((~np.isnan(tprs).all(axis=1)).sum())
        ax = plot_pimo(
            pimo.shared_fpr, tprs, fpr_bounds=metric.fpr_bounds, label=f"{count} anomalous images"
        )
    else:
        pimo, aupimo = value
        aupimos = np.asarray(aupimo.aupimos, np.float64)
        mean = float(np.nanmean(aupimos))
        ax = plot_pimo(
            pimo.shared_fpr, pimo.per_image_tprs, aupimos=aupimos, fpr_bounds=metric.fpr_bounds
        )
    return _titled(ax, "AUPIMO", f"{metric.name} = {mean:.4f}")


def _pimo_curves_of(metric):
    """The PIMO curves of an AUPIMO(return_average=True), read from its state by a PIMO."""
    from jaxmetrics_ad.pimo import PIMO

    if metric.is_exact:
        pimo = PIMO(metric.num_thresholds, tail_fraction=metric.tail_fraction)
    elif metric.capacity is None:
        raise ValueError(
            f"{metric.name}: a streaming AUPIMO without capacity keeps only the mean, no per-image "
            "curve to draw; build it with capacity=<the most images>"
        )
    else:
        pimo = PIMO(
            metric.num_thresholds,
            thresholds=metric.thresholds,
            capacity=metric.capacity,
            tail_size=metric.tail_size,
        )
    pimo = pimo._replace(
        state=metric.state, num_updates=metric.num_updates, num_invalid=metric.num_invalid
    )
    return pimo.compute()


def _distribution_figure(metric) -> tuple[Figure, str]:
    image_mean, image_std, pixel_mean, pixel_std = (np.asarray(v) for v in _value_of(metric))
    figure, (density_ax, mean_ax, std_ax) = _pyplot().subplots(1, 3, figsize=(14, 4))
    plot_log_normal(float(image_mean), float(image_std), ax=density_ax, label="image scores")
    density_ax.set_title(
        f"{metric.name}: image log-score mean = {float(image_mean):.4f}, "
        f"std = {float(image_std):.4f}",
        fontsize="medium",
    )
    for ax, values, name in ((mean_ax, pixel_mean, "mean"), (std_ax, pixel_std, "std")):
        shown = ax.imshow(np.atleast_2d(values), cmap="viridis")
        figure.colorbar(shown, ax=ax)
        ax.set_title(f"per-pixel {name} of log anomaly maps", fontsize="medium")
        ax.set_axis_off()
    figure.tight_layout()
    return figure, "Score distribution"
