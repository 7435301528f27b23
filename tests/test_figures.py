"""Tests for Metric.generate_figure: each metric's figure draws its own curves and states compute().

Figures are read back (lines, legends, titles, images) and compared with the metric's curve readers
and compute(); the number in each axes title must be compute() to four decimals.
"""

from __future__ import annotations

import re
import sys

import matplotlib

matplotlib.use("Agg")

import clu.metrics
import jax
import matplotlib.pyplot as plt
import numpy as np
import pytest

import jaxmetrics_ad as jm
from jaxmetrics_ad.synthetic import make_category

CATEGORY = make_category(num_normal=6, num_anomalous=6, size=(32, 32), seed=5)
SCORES, LABELS = CATEGORY.pred_scores, CATEGORY.gt_labels
MAPS, MASKS = CATEGORY.anomaly_maps, CATEGORY.gt_masks
NUM_ANOMALOUS = int(MASKS.reshape(len(MASKS), -1).any(axis=1).sum())
# Small images: AUPIMO's default FPR bounds are below one normal pixel here.
AUPIMO_OPTIONS = {"num_thresholds": 2000, "fpr_bounds": (1e-2, 1e-1), "force": True}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def legend_texts(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def title_number(ax) -> float:
    """The number after '=' in the axes title."""
    return float(re.search(r"= (-?[0-9.]+)", ax.get_title()).group(1))


def curve_lines(ax) -> list:
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


@pytest.mark.parametrize("thresholds", [None, 1024], ids=["exact", "binned"])
def test_auroc_figure_draws_the_roc_curve_with_the_auroc(thresholds):
    metric = jm.AUROC(thresholds, prefix="image_").update(SCORES, LABELS)
    figure, title = metric.generate_figure()
    value = float(metric.compute())
    assert title == "ROC"
    (ax,) = figure.axes
    diagonal, curve = ax.get_lines()
    fpr, tpr = metric.curve()
    np.testing.assert_array_equal(curve.get_xdata(), np.asarray(fpr, np.float64))
    np.testing.assert_array_equal(curve.get_ydata(), np.asarray(tpr, np.float64))
    np.testing.assert_array_equal(diagonal.get_xdata(), [0, 1])
    assert ax.get_title() == f"ROC: image_AUROC = {value:.4f}"
    assert title_number(ax) == pytest.approx(value, abs=5e-5)
    assert legend_texts(ax) == [f"AUROC = {value:.4f}"]


def test_aupr_figure_draws_the_pr_steps_with_the_aupr():
    metric = jm.AUPR(fields=("anomaly_map", "gt_mask"), prefix="pixel_").update(MAPS, MASKS)
    figure, title = metric.generate_figure()
    value = float(metric.compute())
    assert title == "PR"
    (ax,) = figure.axes
    (curve,) = ax.get_lines()
    recall, precision = metric.curve()
    assert curve.get_drawstyle() == "steps-post"
    np.testing.assert_array_equal(curve.get_xdata(), np.asarray(recall, np.float64))
    np.testing.assert_array_equal(curve.get_ydata(), np.asarray(precision, np.float64))
    assert ax.get_title() == f"PR: pixel_AUPR = {value:.4f}"
    assert legend_texts(ax) == [f"AUPR = {value:.4f}"]


@pytest.mark.parametrize("thresholds", [None, 1024], ids=["exact", "binned"])
def test_aupro_figure_draws_the_pro_curve_and_the_fpr_limit(thresholds):
    metric = jm.AUPRO(fpr_limit=0.3, thresholds=thresholds).update(MAPS, MASKS)
    figure, title = metric.generate_figure()
    value = float(metric.compute())
    assert title == "PRO"
    (ax,) = figure.axes
    curve, limit = ax.get_lines()
    fpr, pro = metric.curve()
    np.testing.assert_array_equal(curve.get_xdata(), np.asarray(fpr, np.float64))
    np.testing.assert_array_equal(curve.get_ydata(), np.asarray(pro, np.float64))
    assert limit.get_xdata()[0] == pytest.approx(0.3)
    assert legend_texts(ax) == [f"AUPRO = {value:.4f}", "FPR limit = 0.3"]
    assert title_number(ax) == pytest.approx(value, abs=5e-5)


def test_pimo_figure_draws_one_curve_per_anomalous_image():
    metric = jm.PIMO(num_thresholds=500).update(MAPS, MASKS)
    figure, title = metric.generate_figure()
    result = metric.compute()
    assert title == "PIMO"
    (ax,) = figure.axes
    lines = ax.get_lines()
    assert len(lines) == NUM_ANOMALOUS
    rows = np.asarray(result.per_image_tprs, np.float64)
    rows = rows[~np.isnan(rows).all(axis=1)]
    for line, row in zip(lines, rows, strict=True):
        np.testing.assert_array_equal(line.get_ydata(), row)
    assert ax.get_xscale() == "log"
    assert ax.get_title() == f"PIMO: PIMO, {NUM_ANOMALOUS} anomalous images"
    assert legend_texts(ax)[0] == f"{NUM_ANOMALOUS} anomalous images"


def test_aupimo_per_image_figure_shows_the_mean_and_std_of_compute():
    metric = jm.AUPIMO(**AUPIMO_OPTIONS, return_average=False).update(MAPS, MASKS)
    figure, title = metric.generate_figure()
    pimo, aupimo = metric.compute()
    assert title == "AUPIMO"
    (ax,) = figure.axes
    assert len(ax.get_lines()) == NUM_ANOMALOUS
    scored = np.asarray(aupimo.aupimos, np.float64)
    scored = scored[np.isfinite(scored)]
    assert ax.get_title() == f"AUPIMO: AUPIMO = {scored.mean():.4f}"
    assert legend_texts(ax) == [
        f"AUPIMO = {scored.mean():.4f} ± {scored.std():.4f} ({NUM_ANOMALOUS} images)",
        "AUPIMO range [0.01, 0.1]",
    ]
    (band,) = ax.patches
    assert (band.get_x(), band.get_x() + band.get_width()) == pytest.approx((1e-2, 1e-1))
    np.testing.assert_array_equal(
        curve_lines(ax)[0].get_ydata(),
        np.asarray(pimo.per_image_tprs, np.float64)[np.asarray(pimo.image_classes) == 1][0],
    )


@pytest.mark.parametrize(
    "options", [{}, {"thresholds": 2048, "capacity": 16}], ids=["exact", "streaming"]
)
def test_aupimo_average_figure_draws_the_curves_its_state_holds(options):
    metric = jm.AUPIMO(**AUPIMO_OPTIONS, **options).update(MAPS, MASKS)
    figure, title = metric.generate_figure()
    value = float(metric.compute())
    assert title == "AUPIMO"
    (ax,) = figure.axes
    assert len(ax.get_lines()) == NUM_ANOMALOUS
    assert ax.get_title() == f"AUPIMO: AUPIMO = {value:.4f}"
    assert legend_texts(ax) == [f"{NUM_ANOMALOUS} anomalous images", "AUPIMO range [0.01, 0.1]"]


def test_streaming_aupimo_without_capacity_has_no_curves_to_draw():
    metric = jm.AUPIMO(**AUPIMO_OPTIONS, thresholds=2048).update(MAPS, MASKS)
    with pytest.raises(ValueError, match="capacity"):
        metric.generate_figure()


def test_score_distribution_figure_draws_the_fitted_log_normal_and_pixel_maps():
    metric = jm.AnomalyScoreDistribution().update(SCORES, MAPS)
    figure, title = metric.generate_figure()
    image_mean, image_std, pixel_mean, pixel_std = (np.asarray(v) for v in metric.compute())
    assert title == "Score distribution"
    density_ax, mean_ax, std_ax = figure.axes[:3]  # then the two colour bars
    assert len(figure.axes) == 5
    density, median = density_ax.get_lines()
    assert median.get_xdata()[0] == pytest.approx(np.exp(image_mean))
    area = np.trapezoid(density.get_ydata(), density.get_xdata())
    assert area == pytest.approx(1.0, abs=1e-3)  # ±4 std holds all but 6e-5 of the mass
    # the mode of a log-normal is exp(mean - std^2)
    mode = density.get_xdata()[np.argmax(density.get_ydata())]
    assert mode == pytest.approx(np.exp(image_mean - image_std**2), rel=0.02)
    assert density_ax.get_title() == (
        f"AnomalyScoreDistribution: image log-score mean = {float(image_mean):.4f}, "
        f"std = {float(image_std):.4f}"
    )
    np.testing.assert_allclose(mean_ax.get_images()[0].get_array(), pixel_mean)
    np.testing.assert_allclose(std_ax.get_images()[0].get_array(), pixel_std)


def test_figures_of_an_evaluators_metrics():
    ev = jm.Evaluator(
        [
            jm.AUROC(1024, prefix="image_"),
            jm.AUPR(1024, prefix="image_"),
            jm.AUROC(1024, fields=("anomaly_map", "gt_mask"), prefix="pixel_"),
        ]
    )
    ev = jax.jit(lambda ev, batch: ev.update(batch))(
        ev, {"pred_score": SCORES, "gt_label": LABELS, "anomaly_map": MAPS, "gt_mask": MASKS}
    )
    results = ev.compute()
    for name, metric in ev.metrics().items():
        figure, _ = metric.generate_figure()
        assert title_number(figure.axes[0]) == pytest.approx(float(results[name]), abs=5e-5)


@pytest.mark.parametrize(
    "metric",
    [
        jm.F1Score().update([0, 1], [0, 1]),
        jm.F1Max().update([0.2, 0.8], [0, 1]),
        jm.wrap_metric(clu.metrics.Average, fields=("pred_score",), keywords=("values",)).update(
            SCORES
        ),
    ],
    ids=["F1Score", "F1Max", "wrapped"],
)
def test_metrics_without_a_figure_raise_type_error(metric):
    with pytest.raises(TypeError, match="has no figure; generate_figure supports AUROC"):
        metric.generate_figure()


def test_a_non_strict_metric_without_data_raises_value_error():
    with pytest.raises(ValueError, match="no data"):
        jm.AUROC(strict=False).generate_figure()


def test_inside_jit_raises_type_error():
    metric = jm.AUROC(64).update(SCORES, LABELS)
    with pytest.raises(TypeError, match="outside jit"):
        jax.jit(lambda m: m.generate_figure()[1])(metric)


def test_each_figure_saves_a_png(tmp_path):
    metrics = [
        jm.AUROC().update(SCORES, LABELS),
        jm.AUPRO().update(MAPS, MASKS),
        jm.AnomalyScoreDistribution().update(SCORES, MAPS),
    ]
    for index, metric in enumerate(metrics):
        figure, _ = metric.generate_figure()
        path = tmp_path / f"{index}.png"
        figure.savefig(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_raises_import_error_with_install_hint(monkeypatch):
    metric = jm.AUROC().update(SCORES, LABELS)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"jaxmetrics_ad\[plot\]"):
        metric.generate_figure()
