"""Benchmark protocols and layouts: VisA, MVTec AD 2, MVTec LOCO; LaTeX; per-image AUPIMO; compiles.

Each protocol's values are checked against the same metrics built by hand on arrays read here
(with PIL and numpy, not through the loader), and where the test suite has one, against an
independent numpy transcription (``tests/references.py``) or scikit-learn.
"""

import json
import logging
import re
import shutil

import jax
import numpy as np
import pytest
from PIL import Image
from references import loco_auspro, loco_saturation_area, mvtec_aupro, pixel_f1
from scipy import ndimage
from sklearn.metrics import roc_auc_score

import jaxmetrics_ad as jm
from jaxmetrics_ad import cli, datasets, layouts, protocols
from jaxmetrics_ad.synthetic import LOCO_DEFECTS, make_category, write_category

SIZE = 32
BATCH = 4
BINS = jm.DEFAULT_NUM_BINS


def category_data(seed, num_normal=3, num_anomalous=4):
    return make_category(num_normal, num_anomalous, size=(SIZE, SIZE), seed=seed)


def read_png(path):
    return np.asarray(Image.open(path))


def by_hand_arrays(folder, maps, test="test"):
    """Maps, masks, labels of a category read straight from the files, in sorted file order."""
    images = sorted(p for p in (folder / test).glob("*/*") if p.parent.name != "ground_truth")
    arrays, masks, labels = [], [], []
    for image in images:
        defect, name = image.parent.name, image.stem
        arrays.append(np.load(maps / defect / f"{name}.npy"))
        if defect == "good":
            masks.append(np.zeros(read_png(image).shape[:2], bool))
        else:
            truth = (
                folder / test / "ground_truth" if test == "test_public" else folder / "ground_truth"
            )
            candidates = [truth / defect / n for n in (f"{name}_mask.png", f"{name}.png")]
            masks.append(read_png(next(p for p in candidates if p.is_file())) != 0)
        labels.append(int(defect != "good"))
    return np.stack(arrays), np.stack(masks), np.array(labels)


# -- MVTec AD and VisA --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def visa_tree(tmp_path_factory):
    """VisA after its 1cls split: test/{good,bad}/NNNN.JPG, ground_truth/bad/NNNN.png (0/255)."""
    base = tmp_path_factory.mktemp("visa")
    for seed, category in enumerate(("candle", "pcb1")):
        data = category_data(seed)
        for index, (kind, mask) in enumerate(zip(data.defect_types, data.gt_masks)):
            defect, name = ("good" if kind == "good" else "bad"), f"{index:04d}"
            image = base / "root" / category / "test" / defect / f"{name}.JPG"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((SIZE, SIZE, 3), 128, np.uint8)).save(image)
            if defect == "bad":
                truth = base / "root" / category / "ground_truth" / "bad" / f"{name}.png"
                truth.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask * np.uint8(255)).save(truth)
            (base / "maps" / category / defect).mkdir(parents=True, exist_ok=True)
            np.save(base / "maps" / category / defect / f"{name}.npy", data.anomaly_maps[index])
    return base / "root", base / "maps"


def test_visa_1cls_layout_jpg_images_and_unsuffixed_masks_equal_sklearn_and_mvtec_reference(
    visa_tree,
):
    root, maps = visa_tree
    assert layouts.detect_layout(root / "candle") == "mvtec_ad"
    results = jm.evaluate_dataset(root, maps, protocol="visa", exact=True, batch_size=BATCH)
    assert list(results) == ["candle", "pcb1", "mean"]
    for category in ("candle", "pcb1"):
        values, masks, labels = by_hand_arrays(root / category, maps / category)
        got = results[category]
        assert list(got) == ["image_AUROC", "pixel_AUROC", "pixel_AUPRO@0.3"]
        assert got["image_AUROC"] == pytest.approx(
            roc_auc_score(labels, values.max(axis=(1, 2))), abs=1e-7
        )
        assert got["pixel_AUROC"] == pytest.approx(
            roc_auc_score(masks.ravel(), values.ravel()), abs=1e-6
        )
        assert got["pixel_AUPRO@0.3"] == pytest.approx(
            mvtec_aupro(values, masks, np.float32(0.3)), abs=1e-6
        )


def scipy_regions(masks: np.ndarray) -> np.ndarray:
    """Each mask's 8-connected regions, numbered by scipy (the reference labeller)."""
    return np.stack([ndimage.label(mask, structure=np.ones((3, 3)))[0] for mask in masks])


@pytest.fixture(scope="module")
def mvtec_tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("mvtec_ad")
    for seed, category in enumerate(("bottle", "cable", "screw")):
        data = category_data(seed, num_anomalous=4 + seed)
        write_category(data, base / "root" / category, base / "maps" / category)
    return base / "root", base / "maps"


def test_mvtec_ad_protocol_equals_the_metrics_built_by_hand(mvtec_tree):
    root, maps = mvtec_tree
    results = jm.evaluate_dataset(root, maps, protocol="mvtec_ad")
    for category in ("bottle", "cable", "screw"):
        values, masks, labels = by_hand_arrays(root / category, maps / category)
        regions = scipy_regions(masks)
        expected = {
            "image_AUROC": jm.AUROC()(values.max(axis=(1, 2)), labels),
            "pixel_AUROC": jm.AUROC(BINS)(values, masks),
            "pixel_AUPRO@0.3": jm.AUPRO(thresholds=BINS, region_labels=True)(values, regions),
        }
        assert list(results[category]) == list(expected)
        for name, value in expected.items():
            assert results[category][name] == pytest.approx(float(value), abs=1e-7), name
    for name in results["mean"]:
        mean = np.mean([results[c][name] for c in ("bottle", "cable", "screw")])
        assert results["mean"][name] == pytest.approx(mean, abs=1e-12)


def test_without_protocol_the_default_suite_and_its_names_are_kept(mvtec_tree):
    root, maps = mvtec_tree
    results = jm.evaluate_dataset(root, maps, ["bottle"], names=["pixel_AUPRO"], fpr_limit=0.05)
    assert list(results["bottle"]) == ["pixel_AUPRO"]
    values, masks, _ = by_hand_arrays(root / "bottle", maps / "bottle")
    regions = scipy_regions(masks)
    expected = jm.AUPRO(fpr_limit=0.05, thresholds=BINS, region_labels=True)(values, regions)
    assert results["bottle"]["pixel_AUPRO"] == pytest.approx(float(expected), abs=1e-7)


def test_protocol_names_say_what_they_are():
    names = {p: list(protocols.build_protocol(p).names.values()) for p in protocols.PROTOCOLS}
    assert names == {
        "mvtec_ad": ["image_AUROC", "pixel_AUROC", "pixel_AUPRO@0.3"],
        "visa": ["image_AUROC", "pixel_AUROC", "pixel_AUPRO@0.3"],
        "mvtec_ad2": ["pixel_AUPRO@0.05", "pixel_SegF1", "pixel_F1Max"],
        "mvtec_loco": ["image_AUROC", "pixel_AUSPRO@0.05"],
    }
    assert (
        protocols.build_protocol("mvtec_ad2").evaluator.metrics()["pixel_AUPRO"].fpr_limit
        == np.float32(0.05)  # AUPRO keeps its limit in float32, as anomalib
    )


def test_a_protocol_refuses_suite_options(mvtec_tree):
    root, maps = mvtec_tree
    with pytest.raises(TypeError, match=r"fixes the metrics.*\['fpr_limit'\]"):
        jm.evaluate_dataset(root, maps, protocol="mvtec_ad", fpr_limit=0.1)
    with pytest.raises(ValueError, match="protocol: expected one of"):
        jm.evaluate_dataset(root, maps, protocol="kitti")


# -- MVTec AD 2 ---------------------------------------------------------------------------------


def write_ad2(base, seed, category="can"):
    data = category_data(seed)
    validation = make_category(5, 0, size=(SIZE, SIZE), seed=100 + seed).anomaly_maps
    write_category(
        data, base / "root" / category, base / "maps" / category, "mvtec_ad2",
        validation_maps=validation,
    )  # fmt: skip
    return data, validation


@pytest.fixture(scope="module")
def ad2_tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("ad2")
    written = {name: write_ad2(base, seed, name) for seed, name in enumerate(("can", "fabric"))}
    return base / "root", base / "maps", written


def test_ad2_layout_is_detected_and_pairs_masks_under_test_public(ad2_tree):
    root, maps, _ = ad2_tree
    category = layouts.load_category(root / "can", maps / "can", validation=True)
    assert category.layout == "mvtec_ad2"
    assert {image.defect for image in category.images} == {"good", "bad"}
    for image in category.images:
        if image.label:
            assert image.mask_paths == (
                root / "can" / "test_public" / "ground_truth" / "bad" / f"{image.name}_mask.png",
            )
    assert len(category.validation) == 5
    assert all(
        image.map_path.parent == maps / "can" / "validation" / "good"
        for image in category.validation
    )


def test_ad2_protocol_segf1_uses_the_validation_threshold_and_equals_the_metrics_by_hand(ad2_tree):
    root, maps, written = ad2_tree
    results = jm.evaluate_dataset(root, maps, protocol="mvtec_ad2", batch_size=BATCH)
    for category, (_, validation) in written.items():
        values, masks, _ = by_hand_arrays(root / category, maps / category, "test_public")
        pixels = validation.astype(np.float64).ravel()
        threshold = results.thresholds[category]
        assert threshold == pytest.approx(pixels.mean() + 3 * pixels.std(), rel=1e-5)
        # the library's on the same maps (in one batch: float32 sums may differ by an ulp)
        assert threshold == pytest.approx(jm.fit_threshold(validation, k=3), rel=1e-6)
        regions = scipy_regions(masks)
        got = results[category]
        assert got["pixel_SegF1"] == pytest.approx(
            pixel_f1(values > np.float32(threshold), masks), abs=1e-7
        )
        assert got["pixel_SegF1"] == pytest.approx(
            float(jm.SegF1(threshold)(values, masks)), abs=1e-7
        )
        expected_aupro = jm.AUPRO(fpr_limit=0.05, thresholds=BINS, region_labels=True)(
            values, regions
        )
        assert got["pixel_AUPRO@0.05"] == pytest.approx(float(expected_aupro), abs=1e-7)
        oracle = jm.F1Max(BINS, fields=("anomaly_map", "gt_mask"))(values, masks)
        assert got["pixel_F1Max"] == pytest.approx(float(oracle), abs=1e-7)
        assert got["pixel_F1Max"] >= got["pixel_SegF1"] - 1e-6  # the oracle is the best threshold
    exact = jm.evaluate_dataset(root, maps, ["can"], protocol="mvtec_ad2", exact=True)
    values, masks, _ = by_hand_arrays(root / "can", maps / "can", "test_public")
    assert exact["can"]["pixel_AUPRO@0.05"] == pytest.approx(
        mvtec_aupro(values, masks, np.float32(0.05)), abs=1e-6
    )


def test_ad2_threshold_depends_on_validation_maps_only(tmp_path):
    write_ad2(tmp_path, seed=3)
    root, maps = tmp_path / "root", tmp_path / "maps"
    before = jm.evaluate_dataset(root, maps, protocol="mvtec_ad2", batch_size=BATCH)
    for path in (maps / "can" / "bad").glob("*.npy"):  # other test maps: same threshold
        np.save(path, np.load(path) * 5.0 + 1.0)
    changed_test = jm.evaluate_dataset(root, maps, protocol="mvtec_ad2", batch_size=BATCH)
    assert changed_test.thresholds == before.thresholds
    assert changed_test["can"]["pixel_SegF1"] != before["can"]["pixel_SegF1"]
    first = maps / "can" / "validation" / "good" / "000.npy"
    np.save(first, np.load(first) + 0.5)  # other validation maps: another threshold
    changed_validation = jm.evaluate_dataset(root, maps, protocol="mvtec_ad2", batch_size=BATCH)
    assert changed_validation.thresholds["can"] > before.thresholds["can"]


def test_ad2_protocol_needs_the_validation_folder_and_the_ad2_layout(tmp_path, mvtec_tree):
    write_ad2(tmp_path, seed=4)
    shutil.rmtree(tmp_path / "maps" / "can" / "validation")
    with pytest.raises(
        FileNotFoundError, match=r"category can: anomaly maps folder not found: .*validation"
    ):
        jm.evaluate_dataset(tmp_path / "root", tmp_path / "maps", protocol="mvtec_ad2")
    shutil.rmtree(tmp_path / "root" / "can" / "validation")
    with pytest.raises(
        FileNotFoundError, match=r"validation images not found: .*can.validation.good"
    ):
        jm.evaluate_dataset(tmp_path / "root", tmp_path / "maps", protocol="mvtec_ad2")
    root, maps = mvtec_tree
    with pytest.raises(ValueError, match=r"category bottle: .*validation/good.*mvtec_ad layout"):
        jm.evaluate_dataset(root, maps, protocol="mvtec_ad2")


# -- MVTec LOCO ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loco_tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("loco")
    for seed, category in enumerate(("juice_bottle", "pushpins")):
        data = category_data(seed, num_normal=3, num_anomalous=5)
        rounded = np.round(data.anomaly_maps, 2)  # few distinct scores: the reference is quadratic
        write_category(
            data, base / "root" / category, base / "maps" / category, "mvtec_loco",
            anomaly_maps=rounded,
        )  # fmt: skip
    return base / "root", base / "maps"


def loco_by_hand(folder, maps):
    """Maps, per-defect masks (N, D, H, W), saturation areas (N, D) and labels, read with PIL."""
    config = {e["pixel_value"]: e for e in json.loads((folder / "defects_config.json").read_text())}
    images = sorted((folder / "test").glob("*/*.png"))
    per_image = []
    for image in images:
        defect, name = image.parent.name, image.stem
        pngs = sorted((folder / "ground_truth" / defect / name).glob("*.png"))
        defects = []
        for png in pngs:
            pixels = read_png(png)
            entry = config[int(pixels.max())]
            mask = pixels != 0
            area = loco_saturation_area(
                mask, entry["saturation_threshold"], entry["relative_saturation"]
            )
            defects.append((mask, area))
        per_image.append((np.load(maps / defect / f"{name}.npy"), defects, int(defect != "good")))
    depth = max(1, max(len(d) for _, d, _ in per_image))
    masks = np.zeros((len(images), depth, SIZE, SIZE), bool)
    areas = np.zeros((len(images), depth))
    for row, (_, defects, _) in enumerate(per_image):
        for slot, (mask, area) in enumerate(defects):
            masks[row, slot], areas[row, slot] = mask, area
    values = np.stack([m for m, _, _ in per_image])
    return values, masks, areas, np.array([label for _, _, label in per_image])


def test_loco_layout_gives_the_masks_pil_reads_and_the_configured_saturation(loco_tree):
    root, maps = loco_tree
    category = layouts.load_category(root / "pushpins", maps / "pushpins")
    assert category.layout == "mvtec_loco"
    assert {i.defect for i in category.images} <= {
        "good",
        "logical_anomalies",
        "structural_anomalies",
    }
    values, masks, areas, labels = loco_by_hand(root / "pushpins", maps / "pushpins")
    batches = list(layouts.iter_batches(category, 3, max_defects=masks.shape[1]))
    np.testing.assert_array_equal(np.concatenate([b["defect_masks"] for b in batches]), masks)
    np.testing.assert_array_equal(np.concatenate([b["saturation_area"] for b in batches]), areas)
    np.testing.assert_array_equal(np.concatenate([b["gt_label"] for b in batches]), labels)
    np.testing.assert_array_equal(np.concatenate([b["anomaly_map"] for b in batches]), values)
    assert (masks.sum(axis=(2, 3)) > 0).sum() > labels.sum()  # some images hold two defects
    relative = [e for e in LOCO_DEFECTS if e["relative_saturation"]]
    assert relative and any(e["pixel_value"] != 255 for e in LOCO_DEFECTS)


def test_loco_protocol_equals_the_auspro_reference_and_sklearn(loco_tree):
    root, maps = loco_tree
    results = jm.evaluate_dataset(root, maps, protocol="mvtec_loco", exact=True, batch_size=3)
    binned = jm.evaluate_dataset(root, maps, protocol="mvtec_loco", batch_size=3)
    for category in ("juice_bottle", "pushpins"):
        values, masks, areas, labels = loco_by_hand(root / category, maps / category)
        got = results[category]
        assert list(got) == ["image_AUROC", "pixel_AUSPRO@0.05"]
        assert got["image_AUROC"] == pytest.approx(
            roc_auc_score(labels, values.max(axis=(1, 2))), abs=1e-7
        )
        assert got["pixel_AUSPRO@0.05"] == pytest.approx(
            loco_auspro(values, masks, areas, 0.05), abs=1e-6
        )
        by_hand = jm.AUSPRO(fpr_limit=0.05, thresholds=BINS)(values, masks, areas)
        assert binned[category]["pixel_AUSPRO@0.05"] == pytest.approx(float(by_hand), abs=1e-7)


def test_loco_missing_or_mis_sized_ground_truth_is_one_error_naming_the_path(loco_tree, tmp_path):
    root, maps = loco_tree
    shutil.copytree(root / "pushpins", tmp_path / "root" / "pushpins")
    shutil.copytree(maps / "pushpins", tmp_path / "maps" / "pushpins")
    folder = tmp_path / "root" / "pushpins"
    gt = next((folder / "ground_truth").glob("*/*"))
    png = next(gt.glob("*.png"))
    Image.fromarray(np.full((SIZE, SIZE + 1), 255, np.uint8)).save(png)
    with pytest.raises(
        ValueError, match=rf"category pushpins: ground truth {re.escape(str(png))} is 32x33"
    ):
        jm.evaluate_dataset(tmp_path / "root", tmp_path / "maps", protocol="mvtec_loco")
    Image.fromarray(np.full((SIZE, SIZE), 77, np.uint8)).save(png)
    with pytest.raises(ValueError, match=r"pixel value 77 is not in defects_config"):
        jm.evaluate_dataset(tmp_path / "root", tmp_path / "maps", protocol="mvtec_loco")
    shutil.rmtree(gt)
    with pytest.raises(FileNotFoundError, match=rf"no ground-truth folder .*{re.escape(str(gt))}"):
        jm.evaluate_dataset(tmp_path / "root", tmp_path / "maps", protocol="mvtec_loco")
    (folder / "defects_config.json").unlink()
    with pytest.raises(ValueError, match=r"MVTec LOCO .* has no .*defects_config\.json"):
        jm.evaluate_dataset(tmp_path / "root", tmp_path / "maps")


def test_a_folder_of_no_known_layout_and_a_mis_sized_mask_name_the_path(tmp_path, mvtec_tree):
    (tmp_path / "odd" / "images").mkdir(parents=True)
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(tmp_path / 'odd'))}: not a known layout"
    ):
        layouts.load_category(tmp_path / "odd", tmp_path)
    root, maps = mvtec_tree
    shutil.copytree(root / "screw", tmp_path / "root" / "screw")
    shutil.copytree(maps / "screw", tmp_path / "maps" / "screw")
    mask = next((tmp_path / "root" / "screw" / "ground_truth").glob("*/*_mask.png"))
    Image.fromarray(np.zeros((SIZE // 2, SIZE), np.uint8)).save(mask)
    with pytest.raises(
        ValueError, match=rf"ground truth {re.escape(str(mask))} is 16x32 but its image"
    ):
        jm.evaluate_dataset(tmp_path / "root", tmp_path / "maps", protocol="mvtec_ad")
    with pytest.raises(ValueError, match="layout: expected one of"):
        jm.evaluate_dataset(tmp_path / "root", tmp_path / "maps", layout="kitti")


def test_loco_protocol_refuses_another_layout(mvtec_tree):
    root, maps = mvtec_tree
    with pytest.raises(ValueError, match=r"category bottle: .*MVTec LOCO.*mvtec_ad layout"):
        jm.evaluate_dataset(root, maps, protocol="mvtec_loco")


# -- per-image AUPIMO, LaTeX, the command line ---------------------------------------------------


def test_per_image_aupimo_from_the_mean_state_equals_return_average_false():
    data = make_category(6, 6, size=(SIZE, SIZE), seed=5)
    maps, masks = data.anomaly_maps, data.gt_masks
    bounds = (1e-3, 1e-2)
    mean_state = (
        jm.AUPIMO(fpr_bounds=bounds).update(maps[:5], masks[:5]).update(maps[5:], masks[5:])
    )
    _, expected = jm.AUPIMO(fpr_bounds=bounds, return_average=False)(maps, masks)
    values = protocols.per_image_aupimo(mean_state)
    np.testing.assert_allclose(values, np.asarray(expected.aupimos), atol=1e-7)
    assert np.isnan(values).tolist() == (data.gt_labels == 0).tolist()
    assert float(mean_state.compute()) == pytest.approx(np.nanmean(values), abs=1e-7)


@pytest.fixture(scope="module")
def aupimo_tree(tmp_path_factory):
    """Enough normal pixels (40 images of 64x64) for AUPIMO's default FPR bounds (1e-5, 1e-4)."""
    base = tmp_path_factory.mktemp("aupimo")
    for seed, category in enumerate(("bottle", "cable")):
        data = make_category(40, 6, size=(64, 64), seed=seed)
        write_category(data, base / "root" / category, base / "maps" / category)
    return base / "root", base / "maps"


def test_dataset_per_image_aupimo_is_named_by_category_and_averages_to_the_table(aupimo_tree):
    root, maps = aupimo_tree
    results = jm.evaluate_dataset(root, maps, ["cable"], names=["pixel_AUPIMO"], batch_size=16)
    values, masks, _ = by_hand_arrays(root / "cable", maps / "cable")
    _, expected = jm.AUPIMO(return_average=False)(values, masks)
    per_image = results.per_image["pixel_AUPIMO"]
    images = sorted(p for p in (root / "cable" / "test").glob("*/*"))
    assert list(per_image) == [f"cable/{p.parent.name}/{p.stem}" for p in images]
    np.testing.assert_allclose(list(per_image.values()), np.asarray(expected.aupimos), atol=1e-7)
    assert results["cable"]["pixel_AUPIMO"] == pytest.approx(
        np.nanmean(list(per_image.values())), abs=1e-7
    )


def run_cli(args, capsys):
    code = cli.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_two_models_evaluate_json_feeds_compare_directly(aupimo_tree, tmp_path, capsys):
    root, maps = aupimo_tree
    noisy = tmp_path / "noisy"
    rng = np.random.default_rng(0)
    for path in maps.rglob("*.npy"):
        target = noisy / path.relative_to(maps)
        target.parent.mkdir(parents=True, exist_ok=True)
        array = np.load(path)
        np.save(target, array + rng.normal(0, 0.05, array.shape).astype(np.float32))
    options = ["--metrics", "pixel_AUPIMO,image_AUROC", "--batch-size", 16, "--quiet",
               "--no-compile-cache"]  # fmt: skip
    outputs = []
    for name, folder in (("clean", maps), ("noisy", noisy)):
        output = tmp_path / f"{name}.json"
        code, _, err = run_cli(
            ["evaluate", "--dataset", root, "--maps", folder, "--output", output, *options], capsys
        )
        assert code == 0, err
        outputs.append(output)
    document = json.loads(outputs[0].read_text())
    assert list(document) == ["bottle", "cable", "mean", "per_image"]
    comparison_json = tmp_path / "comparison.json"
    code, out, err = run_cli(
        ["compare", *outputs, "--output", comparison_json, "--max-rows", 0], capsys
    )
    assert code == 0, err
    clean = json.loads(outputs[0].read_text())["per_image"]["pixel_AUPIMO"]
    noisy_values = json.loads(outputs[1].read_text())["per_image"]["pixel_AUPIMO"]
    names = [n for n in clean if clean[n] is not None]
    expected = jm.compare_per_image(
        {n: clean[n] for n in names}, {n: noisy_values[n] for n in names}, names=("clean", "noisy")
    )
    compared = json.loads(comparison_json.read_text())
    assert compared["num_images"] == expected.num_images == len(names) > 0
    assert compared["wilcoxon_pvalue"] == pytest.approx(expected.wilcoxon_pvalue, rel=1e-12)
    assert compared["mean_difference"] == pytest.approx(expected.mean_difference, rel=1e-12)
    assert "clean vs noisy" in out


def read_latex(text):
    lines = text.strip().splitlines()
    assert lines[0].startswith(r"\begin{tabular}{l") and lines[-1] == r"\end{tabular}"
    assert lines[1] == r"\toprule" and lines[-2] == r"\bottomrule"
    rows = [line.removesuffix(r" \\").split(" & ") for line in lines if line.endswith(r" \\")]
    header, table = rows[0], {}
    for cells in rows[1:]:
        table[cells[0]] = {n: float(v) for n, v in zip(header[1:], cells[1:], strict=True)}
    return lines, header, table


def test_latex_output_is_a_booktabs_table_with_escaped_names_and_a_mean_row(
    ad2_tree, tmp_path, capsys
):
    root, maps, _ = ad2_tree
    tex, json_path = tmp_path / "table.tex", tmp_path / "table.json"
    for output in (tex, json_path):
        code, _, err = run_cli(
            ["evaluate", "--dataset", root, "--maps", maps, "--protocol", "mvtec_ad2",
             "--output", output, "--batch-size", BATCH, "--quiet", "--no-compile-cache"],
            capsys,
        )  # fmt: skip
        assert code == 0, err
    lines, header, table = read_latex(tex.read_text())
    assert header == ["category", r"pixel\_AUPRO@0.05", r"pixel\_SegF1", r"pixel\_F1Max"]
    assert list(table) == ["can", "fabric", "mean"]
    assert lines[lines.index(next(x for x in lines if x.startswith("mean &"))) - 1] == r"\midrule"
    document = json.loads(json_path.read_text())
    assert document["protocol"]["name"] == "mvtec_ad2"
    assert set(document["protocol"]["segf1_thresholds"]) == {"can", "fabric"}
    for category, values in table.items():
        for name, value in values.items():
            assert value == pytest.approx(document[category][name.replace("\\_", "_")], abs=5.1e-5)
    assert datasets.latex_escape("a_b&c%d$e#f{g}h~i^j\\") == (
        r"a\_b\&c\%d\$e\#f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}"
    )


def test_cli_one_category_folder_with_a_protocol_is_a_one_row_table(ad2_tree, capsys):
    root, maps, _ = ad2_tree
    code, out, err = run_cli(
        ["evaluate", "--dataset", root / "can", "--maps", maps / "can", "--protocol", "mvtec_ad2",
         "--batch-size", BATCH, "--quiet", "--no-compile-cache"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "| can |" in out and "| mean |" in out and "pixel_SegF1" in out
    code, _, err = run_cli(
        ["evaluate", "--dataset", root, "--maps", maps, "--protocol", "mvtec_ad2",
         "--metrics", "pixel_AUROC"],
        capsys,
    )  # fmt: skip
    assert code == 1 and "--protocol mvtec_ad2 fixes the metrics" in err


# -- one compile for the whole run ---------------------------------------------------------------


def test_categories_of_one_image_size_reuse_the_compiled_updates(tmp_path):
    """Categories of 6, 9 and 12 images, batches of 8: the jitted metric updates compiled for the
    first category serve the other two (no update program compiles again)."""
    for seed, category in enumerate(("a", "b", "c")):
        data = make_category(3, 3 + 3 * seed, size=(40, 40), seed=seed)
        write_category(data, tmp_path / "root" / category, tmp_path / "maps" / category)
    compiled, boundaries = [], []

    class Recorder(logging.Handler):
        def emit(self, record):
            match = re.match(r"Compiling (\S+)", record.getMessage())
            if match:
                compiled.append(match.group(1))

    handler, logger = Recorder(), logging.getLogger("jax")
    logger.addHandler(handler)
    previous = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    try:
        jm.evaluate_dataset(
            tmp_path / "root", tmp_path / "maps", protocol="mvtec_ad", batch_size=8,
            on_category=lambda *args: boundaries.append(len(compiled)),
        )  # fmt: skip
    finally:
        jax.config.update("jax_log_compiles", previous)
        logger.removeHandler(handler)
    later = compiled[boundaries[0] :]
    assert not [name for name in later if "update" in name], later


def test_cli_one_category_json_carries_per_image_aupimo_named_by_defect(
    aupimo_tree, tmp_path, capsys
):
    root, maps = aupimo_tree
    output = tmp_path / "cable.json"
    code, _, err = run_cli(
        ["evaluate", "--dataset", root / "cable", "--maps", maps / "cable", "--metrics",
         "pixel_AUPIMO", "--batch-size", 16, "--output", output, "--quiet", "--no-compile-cache"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    single = json.loads(output.read_text())["per_image"]["pixel_AUPIMO"]
    dataset = jm.evaluate_dataset(root, maps, ["cable"], names=["pixel_AUPIMO"], batch_size=16)
    expected = {k.removeprefix("cable/"): v for k, v in dataset.per_image["pixel_AUPIMO"].items()}
    assert list(single) == list(expected)
    for name, value in expected.items():
        assert (single[name] is None) == np.isnan(value)
        if single[name] is not None:
            assert single[name] == pytest.approx(value, abs=1e-12)


def test_cli_layout_option_overrides_detection(loco_tree, capsys):
    root, maps = loco_tree
    code, _, err = run_cli(
        ["evaluate", "--dataset", root, "--maps", maps, "--layout", "mvtec_ad", "--metrics",
         "image_AUROC", "--quiet", "--no-compile-cache"],
        capsys,
    )  # fmt: skip
    # read as MVTec AD, a LOCO category has no <name>_mask.png: one error naming the expected file
    assert code == 1 and "no ground-truth mask for anomalous image" in err, err
    code, out, err = run_cli(
        ["evaluate", "--dataset", root, "--maps", maps, "--metrics", "image_AUROC", "--quiet",
         "--no-compile-cache"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "| juice_bottle |" in out and "| pushpins |" in out
