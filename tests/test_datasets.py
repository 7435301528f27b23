"""Tests for whole-dataset evaluation: jm.evaluate_dataset and ``evaluate --dataset ROOT``."""

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import jaxmetrics_ad as jm
from jaxmetrics_ad import cli, datasets, io, suite
from jaxmetrics_ad.synthetic import make_category

SIZE = 32
BATCH = 4
CATEGORIES = ("bottle", "cable", "screw")
METRICS = ["image_AUROC", "image_F1Max", "pixel_AUROC", "pixel_AUPR", "pixel_AUPRO"]
CLI_OPTIONS = ["--batch-size", BATCH, "--no-compile-cache", "--metrics", ",".join(METRICS)]


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def dataset_tree(tmp_path_factory):
    """ROOT/<category>/{test,ground_truth} and MAPS/<category>/<defect>/<name> for 3 categories.

    bottle and screw have .npy maps, cable 8-bit PNG maps (read back scaled to [0, 1]).
    """
    base = tmp_path_factory.mktemp("mvtec")
    root, maps = base / "mvtec", base / "maps"
    for seed, category in enumerate(CATEGORIES):
        data = make_category(num_normal=2, num_anomalous=2 + seed, size=(SIZE, SIZE), seed=seed)
        for index, (defect, mask) in enumerate(zip(data.defect_types, data.gt_masks)):
            name = f"{index:03d}"
            test = root / category / "test" / defect / f"{name}.png"
            write_png(test, np.zeros((SIZE, SIZE, 3), np.uint8))
            if defect != "good":
                truth = root / category / "ground_truth" / defect / f"{name}_mask.png"
                write_png(truth, mask * np.uint8(255))
            folder = maps / category / defect
            folder.mkdir(parents=True, exist_ok=True)
            anomaly_map = data.anomaly_maps[index]
            if category == "cable":
                scaled = np.clip(anomaly_map / anomaly_map.max(), 0, 1) * 255
                write_png(folder / f"{name}.png", scaled.round().astype(np.uint8))
            else:
                np.save(folder / f"{name}.npy", anomaly_map)
    (root / "license.txt").write_text("not a category")
    (root / "notes").mkdir()  # a folder without test/ is not a category
    return root, maps


def single_category(root, maps, category):
    records = io.find_mvtec_pairs(maps / category, root / category)
    result = suite.evaluate(suite.build_suite(METRICS), io.iter_mvtec_batches(records, BATCH))
    return result.values


@pytest.fixture(scope="module")
def expected(dataset_tree):
    root, maps = dataset_tree
    return {category: single_category(root, maps, category) for category in CATEGORIES}


def run_cli(args, capsys):
    code = cli.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_find_categories_ignores_files_and_folders_without_test(dataset_tree):
    root, _ = dataset_tree
    assert datasets.find_categories(root) == list(CATEGORIES)


def test_each_category_equals_the_single_category_evaluate_and_the_mean_is_nanmean(
    dataset_tree, expected
):
    root, maps = dataset_tree
    seen = []
    results = jm.evaluate_dataset(
        root, maps, batch_size=BATCH, names=METRICS, on_category=lambda n, i, t, r: seen.append(n)
    )
    assert seen == list(CATEGORIES)
    assert list(results) == [*CATEGORIES, "mean"]
    for category in CATEGORIES:
        assert list(results[category]) == METRICS
        for name in METRICS:
            assert results[category][name] == pytest.approx(expected[category][name], abs=1e-7)
    for name in METRICS:
        mean = np.nanmean([expected[category][name] for category in CATEGORIES])
        assert results["mean"][name] == pytest.approx(mean, abs=1e-7)


def test_categories_subset_in_the_given_order(dataset_tree, expected):
    root, maps = dataset_tree
    results = jm.evaluate_dataset(
        root, maps, ["screw", "bottle"], batch_size=BATCH, metrics=["image_AUROC"]
    )
    assert list(results) == ["screw", "bottle", "mean"]
    assert results["screw"]["image_AUROC"] == pytest.approx(expected["screw"]["image_AUROC"])
    both = [expected[category]["image_AUROC"] for category in ("screw", "bottle")]
    assert results["mean"]["image_AUROC"] == pytest.approx(np.mean(both))


def test_a_metric_nan_on_one_category_is_averaged_over_the_others_with_a_warning(dataset_tree):
    root, maps = dataset_tree
    calls = []

    def nan_first(name, metric):  # NaN for the first category's image_AUROC only
        calls.append(name)
        value = float(metric.compute())
        return float("nan") if name == "image_AUROC" and calls.count(name) == 1 else value

    with pytest.warns(
        UserWarning, match=r"mean image_AUROC is over 2 of 3 categories \(NaN in bottle\)"
    ):
        results = jm.evaluate_dataset(
            root, maps, batch_size=BATCH, names=["image_AUROC"], compute_metric=nan_first
        )
    assert np.isnan(results["bottle"]["image_AUROC"])
    others = [results[category]["image_AUROC"] for category in ("cable", "screw")]
    assert results["mean"]["image_AUROC"] == pytest.approx(np.mean(others))


def test_mean_over_categories_counts_and_all_nan_is_nan_without_numpy_warning():
    nan = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        means, counts = datasets.mean_over_categories(
            {"a": {"m": nan, "k": 1.0}, "b": {"m": nan, "k": 0.0}}
        )
    assert np.isnan(means["m"]) and counts == {"m": 0, "k": 2} and means["k"] == 0.5


def read_markdown(text):
    rows = [line.strip().strip("|").split("|") for line in text.strip().splitlines()]
    header = [cell.strip() for cell in rows[0]]
    assert set("".join(rows[1])) <= set("-:| ")
    table = {}
    for row in rows[2:]:
        cells = [cell.strip() for cell in row]
        table[cells[0]] = {n: float(v) for n, v in zip(header[1:], cells[1:], strict=True)}
    return header, table


def test_cli_markdown_csv_and_json_outputs_parse_and_agree(
    dataset_tree, expected, tmp_path, capsys
):
    root, maps = dataset_tree
    tables = {}
    for suffix in ("md", "csv", "json"):
        output = tmp_path / f"table.{suffix}"
        code, out, err = run_cli(
            ["evaluate", "--dataset", root, "--maps", maps, "--output", output, *CLI_OPTIONS],
            capsys,
        )
        assert code == 0, err
        assert f"results written to {output}" in out
        # one progress line per category on stderr
        assert [line for line in err.splitlines() if line.startswith("[")] == [
            f"[{i + 1}/3] {c}: " + line.split(": ", 1)[1]
            for i, (c, line) in enumerate(
                zip(CATEGORIES, [x for x in err.splitlines() if x.startswith("[")], strict=True)
            )
        ]
        text = output.read_text()
        if suffix == "md":
            header, tables[suffix] = read_markdown(text)
            assert header == ["category", *METRICS]
            assert text.strip() in out  # the printed table is the Markdown table
        elif suffix == "csv":
            rows = list(csv.reader(text.splitlines()))
            assert rows[0] == ["category", *METRICS]
            tables[suffix] = {
                r[0]: dict(zip(METRICS, map(float, r[1:]), strict=True)) for r in rows[1:]
            }
        else:
            tables[suffix] = json.loads(text)
    for table in tables.values():
        assert list(table) == [*CATEGORIES, "mean"]
    for category in CATEGORIES:
        for name in METRICS:
            value = expected[category][name]
            assert tables["json"][category][name] == pytest.approx(value, abs=1e-7)
            assert tables["csv"][category][name] == pytest.approx(value, abs=1e-7)
            assert tables["md"][category][name] == pytest.approx(value, abs=5.1e-5)
    for name in METRICS:
        mean = np.nanmean([expected[category][name] for category in CATEGORIES])
        assert tables["json"]["mean"][name] == pytest.approx(mean, abs=1e-7)
        assert tables["csv"]["mean"][name] == pytest.approx(mean, abs=1e-7)
        assert tables["md"]["mean"][name] == pytest.approx(mean, abs=5.1e-5)


def test_cli_categories_subset_and_quiet(dataset_tree, expected, tmp_path, capsys):
    root, maps = dataset_tree
    output = tmp_path / "table.json"
    code, out, err = run_cli(
        ["evaluate", "--dataset", root, "--maps", maps, "--categories", "cable,screw",
         "--output", output, "--quiet", *CLI_OPTIONS],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert not [line for line in err.splitlines() if line.startswith("[")], err  # no progress
    results = json.loads(output.read_text())
    assert list(results) == ["cable", "screw", "mean"]
    assert "| bottle |" not in out and "| cable |" in out and "| mean |" in out


def one_line_error(code, err, *named):
    assert code == 1 and err.startswith("jaxmetrics-ad: error: ") and err.count("\n") == 1, err
    for text in named:
        assert str(text) in err, err


def test_unknown_category_lists_the_found_ones(dataset_tree, tmp_path, capsys):
    root, maps = dataset_tree
    with pytest.raises(
        ValueError, match=r"unknown categories \['wood'\].*found: bottle, cable, screw"
    ):
        jm.evaluate_dataset(root, maps, ["bottle", "wood"])
    output = tmp_path / "table.md"
    code, _, err = run_cli(
        ["evaluate", "--dataset", root, "--maps", maps, "--categories", "wood", "--output", output,
         *CLI_OPTIONS],
        capsys,
    )  # fmt: skip
    one_line_error(code, err, "wood", "found: bottle, cable, screw")
    assert not output.exists()


def test_a_root_without_categories_is_one_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "maps").mkdir()
    code, _, err = run_cli(
        ["evaluate", "--dataset", tmp_path / "empty", "--maps", tmp_path / "maps", *CLI_OPTIONS],
        capsys,
    )
    one_line_error(code, err, tmp_path / "empty", "no category found")


def test_a_category_without_test_images_is_one_error_naming_it(tmp_path, capsys):
    (tmp_path / "root" / "wood" / "test" / "good").mkdir(parents=True)
    (tmp_path / "maps" / "wood").mkdir(parents=True)
    code, _, err = run_cli(
        ["evaluate", "--dataset", tmp_path / "root", "--maps", tmp_path / "maps", *CLI_OPTIONS],
        capsys,
    )
    one_line_error(code, err, "category wood", "no test images")


def test_a_category_without_maps_is_one_error_before_any_evaluation(dataset_tree, tmp_path, capsys):
    root, _ = dataset_tree
    code, _, err = run_cli(
        ["evaluate", "--dataset", root, "--maps", tmp_path, *CLI_OPTIONS], capsys
    )
    one_line_error(code, err, "category bottle", "anomaly maps folder not found")
    assert "[1/3]" not in err


def test_bad_output_suffix_plots_and_categories_on_one_category_fail_first(
    dataset_tree, tmp_path, capsys
):
    root, maps = dataset_tree
    base = ["evaluate", "--dataset", root, "--maps", maps, *CLI_OPTIONS]
    code, _, err = run_cli([*base, "--output", tmp_path / "table.txt"], capsys)
    one_line_error(code, err, "expected a .md, .csv, .json or .tex file name")
    code, _, err = run_cli([*base, "--plots", tmp_path / "plots"], capsys)
    one_line_error(code, err, "--plots")
    code, _, err = run_cli(
        ["evaluate", "--dataset", root / "bottle", "--maps", maps / "bottle", "--categories",
         "bottle", *CLI_OPTIONS],
        capsys,
    )  # fmt: skip
    one_line_error(code, err, "--categories", "is one category")
