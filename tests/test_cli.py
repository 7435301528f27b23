"""Tests for the jaxmetrics-ad command line: demo, evaluate (MVTec layout and .npz), bad inputs."""

import json
import os
import stat
import struct
import subprocess
import sys
import zlib
from io import BytesIO
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from references import mvtec_aupro
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

import jaxmetrics_ad as jm
from jaxmetrics_ad import cli
from jaxmetrics_ad.io import iter_batches, resize_maps
from jaxmetrics_ad.synthetic import make_category

SIZE = 48
MAP_SIZE = 24  # maps are saved at half the mask size, as models often output them
# Every run uses batches of 4 images of SIZE×SIZE, so the jitted updates compile once for the file.
BATCH = ["--batch-size", 4, "--no-compile-cache", "--quiet"]


@pytest.fixture(scope="module")
def category():
    return make_category(num_normal=3, num_anomalous=5, size=(SIZE, SIZE), seed=3)


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def mvtec_tree(tmp_path, category):
    """An MVTec AD category (images, masks) and a folder of .npy maps from the generated data."""
    dataset, maps = tmp_path / "bottle", tmp_path / "maps"
    small_maps = resize_maps(category.anomaly_maps, (MAP_SIZE, MAP_SIZE))
    for index, (defect, mask) in enumerate(zip(category.defect_types, category.gt_masks)):
        name = f"{index:03d}"
        write_png(dataset / "test" / defect / f"{name}.png", np.zeros((SIZE, SIZE, 3), np.uint8))
        if defect != "good":
            write_png(dataset / "ground_truth" / defect / f"{name}_mask.png", mask * np.uint8(255))
        (maps / defect).mkdir(parents=True, exist_ok=True)
        np.save(maps / defect / f"{name}.npy", small_maps[index])
    return dataset, maps, small_maps


def expected_arrays(category, small_maps):
    """The arrays the CLI evaluates: maps resized back to the mask size, in file order."""
    order = sorted(
        range(len(category)), key=lambda index: (category.defect_types[index], f"{index:03d}")
    )
    maps = resize_maps(small_maps[order], (SIZE, SIZE))
    return maps, category.gt_masks[order], category.gt_labels[order]


def run_cli(args, capsys):
    try:
        code = cli.main([str(arg) for arg in args])
    except KeyboardInterrupt:  # would end the pytest session
        pytest.fail("KeyboardInterrupt escaped cli.main")
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_demo_prints_every_metric_of_the_suite_and_the_time(capsys):
    code, out, err = run_cli(["demo", "--images", 8, "--size", SIZE, *BATCH], capsys)
    assert code == 0, err
    for name in cli.suite.SUITE_METRICS:
        assert name in out
    assert "binned" in out and "bounds on |binned - exact|" in out and "time:" in out
    # 3 normal images of 48×48 cannot reach a shared FPR of 1e-5: AUPIMO is NaN, said on stderr.
    assert "pixel_AUPIMO is NaN" in err


def test_python_dash_m_runs_the_demo():
    completed = subprocess.run(
        [sys.executable, "-m", "jaxmetrics_ad", "demo", "--images", "12", "--size", "32",
         "--metrics", "image_AUROC,image_F1Max", "--no-compile-cache"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "image_AUROC" in completed.stdout and "image_F1Max" in completed.stdout


def test_evaluate_exact_on_an_mvtec_tree_matches_the_references_and_the_python_api(
    mvtec_tree, category, tmp_path, capsys
):
    dataset, maps, small_maps = mvtec_tree
    output = tmp_path / "results.json"
    code, _, err = run_cli(
        ["evaluate", "--dataset", dataset, "--maps", maps, "--exact", "--output", output, *BATCH],
        capsys,
    )
    assert code == 0, err
    results = json.loads(output.read_text())
    assert results["mode"] == "exact" and results["num_images"] == len(category)
    values = results["metrics"]

    anomaly_maps, gt_masks, gt_labels = expected_arrays(category, small_maps)
    pixel_scores, pixel_labels = anomaly_maps.ravel(), gt_masks.ravel()
    image_scores = anomaly_maps.max(axis=(1, 2))
    precision, recall, _ = precision_recall_curve(pixel_labels, pixel_scores)
    references = {
        "pixel_AUROC": roc_auc_score(pixel_labels, pixel_scores),
        "pixel_AUPR": average_precision_score(pixel_labels, pixel_scores),
        "pixel_F1Max": np.max(2 * precision * recall / (precision + recall + 1e-10)),
        "pixel_AUPRO": mvtec_aupro(anomaly_maps, gt_masks),
        "image_AUROC": roc_auc_score(gt_labels, image_scores),
        "image_AUPR": average_precision_score(gt_labels, image_scores),
        "image_F1AdaptiveThreshold": jm.F1AdaptiveThreshold()(image_scores, gt_labels),
        "image_F1Max": jm.F1Max()(image_scores, gt_labels),
    }
    for name, reference in references.items():
        assert values[name] == pytest.approx(float(reference), abs=1e-6), name
    assert values["pixel_AUPIMO"] is None  # too few normal pixels: undefined, written as null
    assert "pixel_AUPIMO is NaN" in err


def test_evaluate_binned_npz_equals_the_python_api_within_the_written_bounds(
    category, tmp_path, capsys
):
    npz, output = tmp_path / "set.npz", tmp_path / "results.json"
    np.savez(npz, anomaly_maps=category.anomaly_maps, gt_masks=category.gt_masks)
    metrics = "pixel_AUROC,pixel_F1Max,pixel_AUPRO"
    code, _, err = run_cli(
        ["evaluate", "--npz", npz, "--metrics", metrics, "--output", output, *BATCH], capsys
    )
    assert code == 0, err
    results = json.loads(output.read_text())
    values, bounds = results["metrics"], results["error_bounds"]
    assert results["mode"] == "binned" and list(values) == metrics.split(",")

    auroc = jm.AUROC(jm.DEFAULT_NUM_BINS, fields=("anomaly_map", "gt_mask"))
    for batch in iter_batches(category, 4):
        auroc = auroc.update_from(batch)
    assert values["pixel_AUROC"] == float(auroc.compute())
    assert bounds["pixel_AUROC"] == float(auroc.error_bound())
    pixels = (category.anomaly_maps, category.gt_masks)
    exact_auroc = roc_auc_score(category.gt_masks.ravel(), category.anomaly_maps.ravel())
    assert abs(values["pixel_AUROC"] - exact_auroc) <= bounds["pixel_AUROC"] + 1e-6
    assert abs(values["pixel_AUPRO"] - mvtec_aupro(*pixels)) <= bounds["pixel_AUPRO"] + 1e-6


def test_evaluate_writes_csv_and_roc_pr_pro_plots(category, tmp_path, capsys):
    npz, output = tmp_path / "set.npz", tmp_path / "results.csv"
    np.savez(npz, anomaly_maps=category.anomaly_maps, gt_masks=category.gt_masks)
    code, _, err = run_cli(
        ["evaluate", "--npz", npz, "--exact", "--output", output, "--plots", tmp_path / "plots",
         *BATCH],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = output.read_text().splitlines()
    assert rows[0] == "metric,value"
    written = {name: float(value) for name, value in (row.split(",") for row in rows[1:])}
    assert list(written) == list(cli.suite.SUITE_METRICS)
    exact_auroc = roc_auc_score(category.gt_masks.ravel(), category.anomaly_maps.ravel())
    assert written["pixel_AUROC"] == pytest.approx(exact_auroc, abs=1e-6)
    for name in ("roc.png", "pr.png", "pro.png"):
        with Image.open(tmp_path / "plots" / name) as image:
            assert image.size[0] > 100
    # PIMO curves are read from the exact AUPIMO's own state (kept once), or said to be missing
    assert (tmp_path / "plots" / "pimo.png").exists() or "no PIMO plot" in err


def break_missing_folder(dataset, maps):
    missing = maps.parent / "no_such_maps"
    return missing, missing


def break_map_without_mask(dataset, maps):
    mask = next((dataset / "ground_truth").glob("*/*_mask.png"))
    mask.unlink()
    return maps, mask


def break_shape(dataset, maps):
    bad_map = next((maps / "good").glob("*.npy"))
    np.save(bad_map, np.zeros((3, MAP_SIZE, MAP_SIZE), np.float32))
    return maps, bad_map


def break_unreadable_file(dataset, maps):
    mask = next((dataset / "ground_truth").glob("*/*_mask.png"))
    mask.write_bytes(b"this is not a png")
    return maps, mask


@pytest.mark.parametrize(
    "break_input",
    [break_missing_folder, break_map_without_mask, break_shape, break_unreadable_file],
)
def test_bad_input_exits_nonzero_naming_the_file_and_writes_no_output(
    mvtec_tree, tmp_path, capsys, break_input
):
    dataset, maps, _ = mvtec_tree
    maps_arg, named_file = break_input(dataset, maps)
    output = tmp_path / "results.json"
    code, _, err = run_cli(
        ["evaluate", "--dataset", dataset, "--maps", maps_arg, "--output", output, *BATCH],
        capsys,
    )
    assert code == 1
    assert str(named_file) in err
    assert err.count("\n") == 1  # one message, no traceback
    assert not output.exists()
    assert list(tmp_path.glob(".results.json*")) == []


def test_npz_with_masks_of_another_shape_is_rejected_naming_the_file(category, tmp_path, capsys):
    npz, output = tmp_path / "set.npz", tmp_path / "results.json"
    np.savez(npz, anomaly_maps=category.anomaly_maps, gt_masks=category.gt_masks[:, :-1])
    code, _, err = run_cli(["evaluate", "--npz", npz, "--output", output, *BATCH], capsys)
    assert code == 1 and str(npz) in err and "shape" in err
    assert not output.exists()


def test_unknown_output_suffix_and_unknown_metric_fail_before_any_work(tmp_path, capsys):
    code, _, err = run_cli(["demo", "--output", tmp_path / "results.txt", *BATCH], capsys)
    assert code == 1 and "results.txt" in err
    code, _, err = run_cli(["demo", "--metrics", "pixel_AUROC,pixel_IoU", *BATCH], capsys)
    assert code == 1 and "pixel_IoU" in err


# --- Issue 8, "no silent wrong numbers": failures end the run, nothing is written ----------------


def npz_set(category, path: Path, **changes) -> Path:
    arrays = {"anomaly_maps": category.anomaly_maps, "gt_masks": category.gt_masks, **changes}
    np.savez(path, **arrays)
    return path


def failing_once(fail):
    """A Metric.compute that calls ``fail()`` the first time (later calls, e.g. pytest showing the
    metric's repr in a failure report, give NaN)."""
    calls = []

    def compute(self):
        calls.append(self)
        if len(calls) == 1:
            return fail()
        return jnp.float32(jnp.nan)

    return compute


def raise_from_a_host_callback(error_type, *args):
    """A compute that fails as an exact one does when its host sort is interrupted or runs out of
    memory: jax re-raises the callback's exception as a JaxRuntimeError (a RuntimeError)."""

    def fail():
        def host(value):
            raise error_type(*args)

        shape = jax.ShapeDtypeStruct((), jnp.float32)
        return jax.jit(lambda value: jax.pure_callback(host, shape, value))(jnp.zeros(()))

    return failing_once(fail)


def raise_directly(error_type, *args):
    def fail():
        raise error_type(*args)

    return failing_once(fail)


def check_nothing_was_written(tmp_path, output):
    assert not output.exists()
    assert list(tmp_path.glob(f".{output.name}*")) == []


@pytest.mark.parametrize(
    ("make_compute", "error"),
    [
        (raise_directly, (MemoryError, "cannot allocate 2.1 GiB")),
        (raise_directly, (ZeroDivisionError, "division by zero")),
        (raise_directly, (ValueError, "a bug, not the data: raised outside jaxmetrics_ad")),
        (raise_directly, (RuntimeError, "a bug, not the data: raised outside jaxmetrics_ad")),
        (raise_from_a_host_callback, (MemoryError, "cannot allocate 2.1 GiB")),
        (raise_from_a_host_callback, (ZeroDivisionError, "division by zero")),
    ],
    ids=["memory", "bug", "value-error", "runtime-error", "callback-memory", "callback-bug"],
)
def test_a_metric_failing_for_another_reason_than_the_data_fails_the_run_and_writes_nothing(
    category, tmp_path, capsys, monkeypatch, make_compute, error
):
    npz, output = npz_set(category, tmp_path / "set.npz"), tmp_path / "results.json"
    monkeypatch.setattr(jm.AUPR, "compute", make_compute(*error))
    code, out, err = run_cli(
        ["evaluate", "--npz", npz, "--exact", "--metrics", "pixel_AUROC,pixel_AUPR",
         "--output", output, *BATCH],
        capsys,
    )  # fmt: skip
    assert code == 1
    assert err.startswith("jaxmetrics-ad: error: pixel_AUPR: ") and err.count("\n") == 1, err
    assert "no results were written" in err
    assert "pixel_AUROC" not in out  # no table of partial results either
    check_nothing_was_written(tmp_path, output)


@pytest.mark.parametrize(
    "make_compute",
    [raise_directly, raise_from_a_host_callback],
    ids=["direct", "in-a-host-callback"],
)
def test_ctrl_c_during_a_compute_says_interrupted_exits_130_and_writes_nothing(
    category, tmp_path, capsys, caplog, monkeypatch, make_compute
):
    npz, output = npz_set(category, tmp_path / "set.npz"), tmp_path / "results.json"
    monkeypatch.setattr(jm.AUROC, "compute", make_compute(KeyboardInterrupt))
    code, _, err = run_cli(
        ["evaluate", "--npz", npz, "--exact", "--metrics", "pixel_AUROC", "--output", output,
         *BATCH],
        capsys,
    )  # fmt: skip
    assert code == cli.EXIT_INTERRUPTED == 130
    assert err == "jaxmetrics-ad: interrupted\n"
    # jax logs a traceback for an exception inside a callback: dropped for Ctrl-C
    assert [record for record in caplog.records if record.exc_info] == []
    check_nothing_was_written(tmp_path, output)


def test_ctrl_c_while_reading_batches_exits_130(category, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.io, "iter_batches", interrupted)
    npz, output = npz_set(category, tmp_path / "set.npz"), tmp_path / "results.json"
    code, _, err = run_cli(["evaluate", "--npz", npz, "--output", output, *BATCH], capsys)
    assert (code, err) == (130, "jaxmetrics-ad: interrupted\n")
    check_nothing_was_written(tmp_path, output)


def test_a_metric_undefined_on_the_data_is_still_null_with_a_warning(category, tmp_path, capsys):
    normal_only = np.zeros_like(category.gt_masks)
    npz = npz_set(category, tmp_path / "set.npz", gt_masks=normal_only)
    output = tmp_path / "results.json"
    code, _, err = run_cli(
        ["evaluate", "--npz", npz, "--metrics", "pixel_AUPIMO,image_AUROC", "--output", output,
         *BATCH],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(output.read_text())["metrics"] == {"image_AUROC": None, "pixel_AUPIMO": None}
    assert "pixel_AUPIMO is NaN" in err and "needs at least one anomalous image" in err


def one_line_error(code, err, *named):
    assert code == 1
    assert err.startswith("jaxmetrics-ad: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for text in named:
        assert str(text) in err, (text, err)


def test_npz_with_zero_images_is_one_clear_error(tmp_path, capsys):
    npz = tmp_path / "empty.npz"
    np.savez(npz, anomaly_maps=np.zeros((0, 8, 8), np.float32), gt_masks=np.zeros((0, 8, 8), bool))
    code, _, err = run_cli(["evaluate", "--npz", npz, *BATCH], capsys)
    one_line_error(code, err, npz, "anomaly_maps", "at least one image", "(0, 8, 8)")


def test_output_naming_an_existing_folder_fails_before_any_evaluation(
    category, tmp_path, capsys, monkeypatch
):
    def evaluate(*args, **kwargs):
        raise AssertionError("the run evaluated before checking --output")

    monkeypatch.setattr(cli.suite, "evaluate", evaluate)
    npz, folder = npz_set(category, tmp_path / "set.npz"), tmp_path / "results.json"
    folder.mkdir()
    code, out, err = run_cli(["evaluate", "--npz", npz, "--output", folder, *BATCH], capsys)
    one_line_error(code, err, folder, "existing folder")
    assert out == "" and folder.is_dir() and list(folder.iterdir()) == []


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose header claims width × height pixels (a 'decompression bomb')."""
    buffer = BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("which", ["mask", "normal-test-image", "first-test-image"])
def test_png_with_a_huge_header_is_one_error_naming_the_file(mvtec_tree, tmp_path, capsys, which):
    dataset, maps, _ = mvtec_tree
    options = BATCH
    if which == "mask":
        bomb = next((dataset / "ground_truth").glob("*/*_mask.png"))
    elif which == "normal-test-image":
        bomb = next((dataset / "test" / "good").glob("*.png"))
    else:  # without --batch-size the first test image's header sets the batch size
        bomb = sorted((dataset / "test").glob("*/*.png"))[0]
        options = ["--no-compile-cache", "--quiet"]
    png_claiming_size(bomb, 100_000, 100_000)
    output = tmp_path / "results.json"
    code, _, err = run_cli(
        ["evaluate", "--dataset", dataset, "--maps", maps, "--output", output, *options], capsys
    )
    one_line_error(code, err, bomb, "decompression-bomb")
    check_nothing_was_written(tmp_path, output)


def test_nan_in_an_npz_map_names_the_file_and_the_field(category, tmp_path, capsys):
    maps = category.anomaly_maps.copy()
    maps[2, 5, 7] = np.nan
    npz = npz_set(category, tmp_path / "set.npz", anomaly_maps=maps)
    code, _, err = run_cli(["evaluate", "--npz", npz, *BATCH], capsys)
    one_line_error(code, err, npz, "anomaly_maps", "nan at index (2, 5, 7)")
    assert "pred_score" not in err


@pytest.mark.parametrize(
    ("labels", "shown"),
    [(np.array([0.9] * 8), "0.9"), (np.array([1] * 7 + [2**32 + 1], np.int64), "4294967297")],
    ids=["soft", "int64-wrapping-to-1"],
)
def test_npz_labels_that_are_not_0_or_1_fail_the_run(category, tmp_path, capsys, labels, shown):
    npz = npz_set(category, tmp_path / "set.npz", gt_labels=labels)
    code, _, err = run_cli(["evaluate", "--npz", npz, *BATCH], capsys)
    one_line_error(code, err, npz, "gt_labels", f"got {shown}")


def test_write_atomically_does_not_follow_a_symlink_at_a_predictable_name(tmp_path):
    target, victim = tmp_path / "results.json", tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = tmp_path / f".{target.name}.{os.getpid()}.tmp"  # the name used before the fix
    planted.symlink_to(victim)
    cli.write_atomically(target, '{"a": 1}\n')
    assert victim.read_text() == "precious"
    assert not target.is_symlink() and target.read_text() == '{"a": 1}\n'
    assert planted.is_symlink()  # left alone, not renamed onto the target
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600
    others = sorted(path.name for path in tmp_path.iterdir())
    assert others == [planted.name, "results.json", "victim.txt"]
