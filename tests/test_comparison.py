"""compare_per_image and ``jaxmetrics-ad compare``: every statistic equals scipy's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

import jaxmetrics_ad as jm
from jaxmetrics_ad import cli
from jaxmetrics_ad.comparison import read_per_image, write_per_image
from jaxmetrics_ad.pimo import AUPIMOResult


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image values with NaN (normal images), ties in |difference| and zero differences."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 80))
    a = np.round(rng.uniform(0, 1, n), int(rng.integers(1, 4)))
    b = np.round(np.clip(a + rng.normal(0.03, 0.1, n), 0, 1), 2)
    same = rng.random(n) < 0.15
    b[same] = a[same]  # zero differences
    normal = rng.random(n) < 0.25
    a[normal] = b[normal] = np.nan
    return a, b


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_statistics_equal_scipy(seed, alternative):
    a, b = random_case(seed)
    keep = ~(np.isnan(a) | np.isnan(b))
    result = jm.compare_per_image(a, b, alternative=alternative, confidence=0.9)
    wilcoxon = stats.wilcoxon(a[keep], b[keep], alternative=alternative)
    ttest = stats.ttest_rel(a[keep], b[keep], alternative=alternative)
    interval = ttest.confidence_interval(0.9)
    np.testing.assert_allclose(result.wilcoxon_statistic, wilcoxon.statistic, rtol=1e-12)
    np.testing.assert_allclose(result.wilcoxon_pvalue, wilcoxon.pvalue, rtol=1e-12)
    np.testing.assert_allclose(result.ttest_statistic, ttest.statistic, rtol=1e-12)
    np.testing.assert_allclose(result.ttest_pvalue, ttest.pvalue, rtol=1e-12)
    assert result.ttest_df == ttest.df == keep.sum() - 1
    np.testing.assert_allclose([result.ci_low, result.ci_high], [interval.low, interval.high])
    difference = a[keep] - b[keep]
    np.testing.assert_allclose(result.mean_difference, difference.mean(), rtol=1e-12)
    assert result.median_difference == np.median(difference)
    assert (result.wins, result.losses, result.ties) == (
        np.sum(difference > 0),
        np.sum(difference < 0),
        np.sum(difference == 0),
    )
    assert result.num_images == keep.sum() and len(result.dropped) == (~keep).sum()


def test_nan_images_are_dropped_and_counted_per_model():
    a = np.array([0.5, np.nan, np.nan, 0.7, 0.2, 0.9])
    b = np.array([0.4, np.nan, 0.3, np.nan, 0.2, 0.1])
    result = jm.compare_per_image(a, b, image_names=list("uvwxyz"))
    assert result.images == ("u", "y", "z") and result.dropped == ("v", "w", "x")
    assert (result.dropped_only_a, result.dropped_only_b) == (1, 1)
    assert (result.wins, result.losses, result.ties) == (2, 0, 1)
    summary = result.summary()
    assert summary["num_dropped"] == 3 and summary["num_images"] == 3


def test_mappings_pair_by_name_and_aupimo_results_are_accepted():
    a = {"good/0": None, "crack/1": 0.8, "crack/2": 0.6, "hole/3": 0.3}
    b = {"hole/3": 0.1, "crack/2": 0.65, "good/0": None, "crack/1": 0.5}
    result = jm.compare_per_image(a, b, names=("ours", "theirs"))
    assert result.images == ("crack/1", "crack/2", "hole/3")
    np.testing.assert_allclose(result.differences, [0.3, -0.05, 0.2])
    aupimos = AUPIMOResult(1e-5, 1e-4, 300, 0.5, 0.9, np.array([np.nan, 0.8, 0.6, 0.3]))
    other = AUPIMOResult(1e-5, 1e-4, 300, 0.5, 0.9, np.array([np.nan, 0.5, 0.65, 0.1]))
    from_results = jm.compare_per_image((None, aupimos), other)
    assert from_results.wilcoxon_pvalue == result.wilcoxon_pvalue
    rows = result.table()
    assert rows[0] == {
        "image": "crack/1",
        "ours": 0.8,
        "theirs": 0.5,
        "difference": pytest.approx(0.3),
        "outcome": "win",
    }
    text = json.dumps(result.to_dict(), allow_nan=False)
    assert json.loads(text)["per_image"][1]["outcome"] == "loss"
    markdown = result.to_markdown()
    assert markdown.splitlines()[2].startswith("| crack/1 | 0.8000 | 0.5000 | +0.3000 | win |")
    assert "Wilcoxon signed-rank (two-sided)" in markdown and "paired t-test" in markdown
    assert "'ours' vs 'theirs': 3 images" in repr(result)


def test_degenerate_cases_give_nan_not_errors():
    one = jm.compare_per_image([0.5, np.nan], [0.4, np.nan])
    assert one.num_images == 1 and np.isnan(one.ttest_pvalue) and np.isnan(one.ci_low)
    equal = jm.compare_per_image([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert equal.ties == 3 and equal.mean_difference == 0.0
    scipy_equal = stats.wilcoxon([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    np.testing.assert_equal(equal.wilcoxon_pvalue, scipy_equal.pvalue)
    assert "p = nan" in one.report()


def test_clear_errors():
    with pytest.raises(ValueError, match="a has 3 images but b has 2"):
        jm.compare_per_image([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"1 only in a \('x'\), 1 only in b \('z'\)"):
        jm.compare_per_image({"x": 1.0, "y": 2.0}, {"y": 1.0, "z": 2.0})
    with pytest.raises(ValueError, match="one holds image names"):
        jm.compare_per_image({"x": 1.0}, [1.0])
    with pytest.raises(ValueError, match="no image has a value for both"):
        jm.compare_per_image([np.nan, 1.0], [1.0, np.nan])
    with pytest.raises(ValueError, match="infinite"):
        jm.compare_per_image([np.inf, 1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="alternative"):
        jm.compare_per_image([1.0, 2.0], [1.0, 2.0], alternative="bigger")
    with pytest.raises(ValueError, match="confidence"):
        jm.compare_per_image([1.0, 2.0], [1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="two different model names"):
        jm.compare_per_image([1.0, 2.0], [1.0, 2.0], names=("m", "m"))
    with pytest.raises(ValueError, match="1-D"):
        jm.compare_per_image(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="image_names: expected 2 names"):
        jm.compare_per_image([1.0, 2.0], [1.0, 2.0], image_names=["a"])


def test_files_round_trip_and_bad_files(tmp_path):
    path = tmp_path / "a.json"
    write_per_image(path, np.array([np.nan, 0.25]), image_names=["good/0", "crack/1"], model="m")
    assert json.loads(path.read_text()) == {
        "model": "m",
        "per_image": {"good/0": None, "crack/1": 0.25},
    }
    assert read_per_image(path)[1] == "m"
    (tmp_path / "list.json").write_text("[0.5, null, 1]")
    values, model = read_per_image(tmp_path / "list.json")
    assert model is None and values[0] == 0.5 and np.isnan(values[1])
    (tmp_path / "nested.json").write_text('{"per_image": {"pixel_AUPIMO": {"x": 0.5}}}')
    assert read_per_image(tmp_path / "nested.json") == ({"x": 0.5}, None)
    bad = {
        "missing.json": None,
        "broken.json": "{not json",
        "text.json": '{"per_image": {"x": "high"}}',
        "number.json": "3.5",
        "two.json": '{"per_image": {"m1": {"x": 1}, "m2": {"x": 2}}}',
        "bool.json": "[true, 0.5]",
    }
    messages = {
        "missing.json": "file not found",
        "broken.json": "not valid JSON",
        "text.json": "image 'x': expected a number or null",
        "number.json": "got float",
        "two.json": "several metrics",
        "bool.json": "entry 0: expected a number",
    }
    for name, text in bad.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=messages[name]):
            read_per_image(tmp_path / name)


def write(path, document) -> str:
    path.write_text(json.dumps(document))
    return str(path)


def test_cli_compare_prints_the_table_and_tests(tmp_path, capsys):
    rng = np.random.default_rng(0)
    names = [f"crack/{i:03d}" for i in range(30)] + [f"good/{i:03d}" for i in range(5)]
    a = {n: (None if n.startswith("good") else float(rng.uniform(0.5, 1))) for n in names}
    b = {n: (None if v is None else v - float(rng.normal(0.05, 0.05))) for n, v in a.items()}
    file_a = write(tmp_path / "ours.json", {"model": "ours", "per_image": a})
    file_b = write(tmp_path / "base.json", {"per_image": dict(reversed(list(b.items())))})
    output = tmp_path / "comparison.json"
    code = cli.main(["compare", file_a, file_b, "--max-rows", "3", "--output", str(output)])
    out = capsys.readouterr().out
    assert code == 0
    assert "| image | ours | base | difference | outcome |" in out
    assert "... 27 more images" in out and "5 dropped (NaN)" in out
    keep = [n for n in names if a[n] is not None]
    expected = stats.wilcoxon([a[n] for n in keep], [b[n] for n in keep])
    saved = json.loads(output.read_text())
    assert saved["wilcoxon_pvalue"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert saved["num_images"] == 30 and len(saved["per_image"]) == 30
    assert f"p = {expected.pvalue:.4g}" in out


def test_cli_compare_bad_input_is_one_line_and_exit_1(tmp_path, capsys):
    good = write(tmp_path / "a.json", {"per_image": {"x": 0.5, "y": 0.7}})
    other = write(tmp_path / "b.json", {"per_image": {"x": 0.5, "z": 0.7}})
    short = write(tmp_path / "c.json", [0.5])
    cases = {
        (good, other): "different images: 1 only in a ('y'), 1 only in b ('z')",
        (good, str(tmp_path / "nope.json")): "nope.json: file not found",
        (good, short): "one holds image names",
    }
    for (first, second), message in cases.items():
        assert cli.main(["compare", first, second]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert cli.main(["compare", good, good, "--output", str(tmp_path / "x.csv")]) == 1
    assert "expected a .json file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        cli.main(["compare", good, good, "--alternative", "bigger"])
    assert usage.value.code == 2
