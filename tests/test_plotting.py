"""Tests for jaxmetrics_ad.plotting: curves drawn as given, areas in the legend, PNGs saved."""

import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from jaxmetrics_ad import plotting

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 2, 400)
SCORES = LABELS + RNG.normal(0.0, 0.8, 400)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def legend_texts(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def pimo_curves():
    shared_fpr = np.logspace(0, -6, 61)
    tprs = np.stack(
        [np.full(61, np.nan), shared_fpr**0.2, np.clip(30 * shared_fpr, 0, 1), np.full(61, np.nan)]
    )
    return shared_fpr, tprs, np.array([np.nan, 0.1, 0.002, np.nan])


def test_plot_roc_draws_the_sklearn_curve_and_puts_auroc_in_the_legend():
    fpr, tpr, _ = roc_curve(LABELS, SCORES)
    area = auc(fpr, tpr)
    ax = plotting.plot_roc(fpr, tpr, auc=area, label="pixel")
    curve = ax.get_lines()[-1]
    np.testing.assert_array_equal(curve.get_xdata(), fpr)
    np.testing.assert_array_equal(curve.get_ydata(), tpr)
    assert legend_texts(ax) == [f"pixel, AUROC = {area:.4f}"]
    assert ax.get_xlabel() == "False positive rate"


def test_plot_pr_draws_steps_and_puts_aupr_in_the_legend():
    precision, recall, _ = precision_recall_curve(LABELS, SCORES)
    ap = average_precision_score(LABELS, SCORES)
    ax = plotting.plot_pr(recall, precision, ap=ap)
    (curve,) = ax.get_lines()
    assert curve.get_drawstyle() == "steps-post"
    np.testing.assert_array_equal(curve.get_xdata(), recall)
    assert legend_texts(ax) == [f"AUPR = {ap:.4f}"]


def test_plot_pro_marks_and_shades_up_to_the_fpr_limit():
    fpr = np.linspace(0, 1, 11)
    pro = np.sqrt(fpr)
    ax = plotting.plot_pro(fpr, pro, aupro=0.42, fpr_limit=0.25)
    curve, limit_line = ax.get_lines()
    np.testing.assert_array_equal(curve.get_ydata(), pro)
    np.testing.assert_array_equal(limit_line.get_xdata(), [0.25, 0.25])
    (shading,) = ax.collections
    shaded_x = shading.get_paths()[0].vertices[:, 0]
    assert shaded_x.min() == 0.0 and shaded_x.max() == pytest.approx(0.25)
    assert legend_texts(ax) == ["AUPRO = 0.4200", "FPR limit = 0.25"]
    assert ax.get_xscale() == "linear"


def test_plot_pro_log_x_uses_a_log_axis():
    ax = plotting.plot_pro([0.0, 0.01, 0.3, 1.0], [0.0, 0.5, 0.9, 1.0], log_x=True)
    assert ax.get_xscale() == "log"
    assert legend_texts(ax) == ["FPR limit = 0.3"]


def test_plot_pimo_draws_one_line_per_anomalous_image_on_log_x():
    shared_fpr, tprs, aupimos = pimo_curves()
    ax = plotting.plot_pimo(shared_fpr, tprs, aupimos=aupimos, fpr_bounds=(1e-4, 1e-2))
    lines = ax.get_lines()
    assert len(lines) == 2
    for line, row in zip(lines, tprs[1:3], strict=True):
        np.testing.assert_array_equal(line.get_ydata(), row)
    assert ax.get_xscale() == "log"
    scored = aupimos[np.isfinite(aupimos)]
    assert legend_texts(ax) == [
        f"AUPIMO = {scored.mean():.4f} ± {scored.std():.4f} (2 images)",
        "AUPIMO range [0.0001, 0.01]",
    ]
    (bounds,) = ax.patches
    assert (bounds.get_x(), bounds.get_x() + bounds.get_width()) == pytest.approx((1e-4, 1e-2))


def test_curves_share_a_given_axes():
    _, ax = plt.subplots()
    fpr, tpr, _ = roc_curve(LABELS, SCORES)
    assert plotting.plot_roc(fpr, tpr, auc=0.9, ax=ax, label="a") is ax
    plotting.plot_roc(fpr, tpr, auc=0.8, ax=ax, label="b")
    assert legend_texts(ax) == ["a, AUROC = 0.9000", "b, AUROC = 0.8000"]


@pytest.mark.parametrize(
    "draw",
    [
        lambda: plotting.plot_roc([0, 0.5, 1], [0, 0.8, 1], auc=0.65),
        lambda: plotting.plot_pr([1, 0.5, 0], [0.5, 1, 1], ap=0.75),
        lambda: plotting.plot_pro([0, 0.2, 1], [0, 0.7, 1], aupro=0.3, log_x=True),
        lambda: plotting.plot_pimo(*pimo_curves()),
    ],
    ids=["roc", "pr", "pro", "pimo"],
)
def test_each_plot_saves_a_png(tmp_path, draw):
    path = tmp_path / "curve.png"
    draw().figure.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("draw", "argument"),
    [
        (lambda: plotting.plot_roc([0, 1], [0, 0.5, 1]), "fpr"),
        (lambda: plotting.plot_pr([[0, 1]], [[1, 1]]), "recall"),
        (lambda: plotting.plot_pro([0, 1], [0, 1], fpr_limit=0), "fpr_limit"),
        (lambda: plotting.plot_pimo([1, 0.1], [1, 0.5]), "per_image_tprs"),
        (lambda: plotting.plot_pimo([1, 0.1], [[1, 0.5, 0.1]]), "per_image_tprs"),
        (lambda: plotting.plot_pimo([1, 0.1], [[1, 0.5]], aupimos=[0.1, 0.2]), "aupimos"),
        (lambda: plotting.plot_pimo([1, 0.1], [[1, 0.5]], fpr_bounds=(1e-4, 1e-5)), "fpr_bounds"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(draw, argument):
    with pytest.raises(ValueError, match=argument):
        draw()


def test_missing_matplotlib_raises_import_error_with_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"jaxmetrics_ad\[plot\]"):
        plotting.plot_roc([0, 1], [0, 1])


def test_plot_score_distributions_draws_one_histogram_per_class_on_shared_bins():
    ax = plotting.plot_score_distributions(SCORES, LABELS, bins=20, density=False)
    assert legend_texts(ax) == [
        f"normal ({int((LABELS == 0).sum())})",
        f"anomalous ({int((LABELS == 1).sum())})",
    ]
    edges = np.histogram_bin_edges(SCORES, bins=20)
    normal_bars, anomalous_bars = ax.containers
    for bars, label in ((normal_bars, 0), (anomalous_bars, 1)):
        counts, _ = np.histogram(SCORES[LABELS == label], bins=edges)
        np.testing.assert_array_equal([bar.get_height() for bar in bars], counts)
        np.testing.assert_allclose([bar.get_x() for bar in bars], edges[:-1])
    assert ax.get_ylabel() == "Count"


def test_plot_score_distributions_densities_have_area_one_and_flatten_maps():
    maps = RNG.uniform(size=(3, 4, 4))
    masks = maps > 0.7
    ax = plotting.plot_score_distributions(maps, masks.astype(int), bins=10)
    for bars in ax.containers:
        area = sum(bar.get_height() * bar.get_width() for bar in bars)
        assert area == pytest.approx(1.0)
    assert ax.get_ylabel() == "Density"


def test_plot_score_distributions_with_one_class_draws_one_histogram():
    ax = plotting.plot_score_distributions([0.1, 0.2, 0.3], [0, 0, 0])
    assert legend_texts(ax) == ["normal (3)"]
    assert len(ax.containers) == 1


def test_plot_log_normal_draws_the_density_and_its_median():
    ax = plotting.plot_log_normal(np.log(2.0), 0.25, label="image scores")
    density, median = ax.get_lines()
    x, y = density.get_xdata(), density.get_ydata()
    assert x.min() == pytest.approx(2.0 * np.exp(-1.0)) and x.max() == pytest.approx(2.0 * np.e)
    assert np.trapezoid(y, x) == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(median.get_xdata(), [2.0, 2.0])
    assert legend_texts(ax) == ["image scores", "median = 2"]


def test_plot_log_normal_without_a_std_draws_only_the_median():
    ax = plotting.plot_log_normal(0.0, np.nan)
    assert len(ax.get_lines()) == 1
    assert legend_texts(ax) == ["median = 1"]


@pytest.mark.parametrize(
    ("draw", "argument"),
    [
        (lambda: plotting.plot_score_distributions([0.1, 0.2], [0]), "labels"),
        (lambda: plotting.plot_score_distributions([0.1, 0.2], [0, 2]), "labels"),
        (lambda: plotting.plot_score_distributions([0.1, np.nan], [0, 1]), "scores"),
        (lambda: plotting.plot_score_distributions([], []), "scores"),
        (lambda: plotting.plot_log_normal(np.inf, 1.0), "log_mean"),
    ],
)
def test_bad_distribution_inputs_raise_value_error_naming_the_argument(draw, argument):
    with pytest.raises(ValueError, match=argument):
        draw()
