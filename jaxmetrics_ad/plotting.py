"""Plot ROC, PR, PRO and PIMO curves from plain arrays with matplotlib (optional extra ``plot``).

The functions take the arrays a metric's curve method returns (NumPy or JAX arrays), so they do not
depend on the metric classes. Each draws on ``ax`` (a new figure when it is None), puts the area
under the curve in the legend and returns the Axes, so a notebook shows the plot with one call and
several curves can share one Axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

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
