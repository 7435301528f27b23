"""Tests for jaxmetrics_ad.io: MVTec-layout pairing, loading maps and masks, .npz sets, resizing."""

import shutil
import struct
import sys
import zlib
from io import BytesIO
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from jaxmetrics_ad import io

IMAGE_SIZE = (20, 28)  # (height, width) of test images and masks
MAP_SIZE = (10, 14)


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


@pytest.fixture
def mvtec(tmp_path):
    """A tiny MVTec AD category with one map per test image, in every supported format."""
    rng = np.random.default_rng(0)
    dataset, maps = tmp_path / "bottle", tmp_path / "maps"
    images = [("crack", "000"), ("crack", "001"), ("good", "000"), ("good", "001"), ("hole", "000")]
    for defect, name in images:
        write_png(
            dataset / "test" / defect / f"{name}.png",
            rng.integers(0, 256, (*IMAGE_SIZE, 3), np.uint8),
        )
    masks = {}
    for defect, name in images:
        if defect != "good":
            mask = np.zeros(IMAGE_SIZE, bool)
            mask[rng.integers(0, 10) :][:8, rng.integers(0, 14) :][:, :9] = True
            write_png(
                dataset / "ground_truth" / defect / f"{name}_mask.png", mask.astype(np.uint8) * 255
            )
            masks[defect, name] = mask
        else:
            masks[defect, name] = np.zeros(IMAGE_SIZE, bool)

    expected_maps = {}
    float_map = rng.random(MAP_SIZE)
    write_npy(maps / "good" / "000.npy", float_map)
    expected_maps["good", "000"] = float_map.astype(np.float32)
    tiff_map = rng.random(MAP_SIZE, np.float32) * 40.0
    (maps / "good").mkdir(parents=True, exist_ok=True)
    Image.fromarray(tiff_map).save(maps / "good" / "001.tiff")
    expected_maps["good", "001"] = tiff_map
    byte_map = rng.integers(0, 256, MAP_SIZE, np.uint8)
    write_png(maps / "crack" / "000.png", byte_map)
    expected_maps["crack", "000"] = byte_map.astype(np.float32) / 255
    npz_map = rng.random(MAP_SIZE, np.float32)
    np.savez(maps / "crack" / "001.npz", npz_map)
    expected_maps["crack", "001"] = npz_map
    word_map = rng.integers(0, 65536, MAP_SIZE, np.uint16)
    write_png(maps / "hole" / "000.png", word_map)
    expected_maps["hole", "000"] = word_map.astype(np.float32) / 65535
    (maps / "hole" / "notes.txt").write_text("ignored: not a map format")
    return dataset, maps, masks, expected_maps


def resized(anomaly_map: np.ndarray, method: str = "bilinear") -> np.ndarray:
    return np.asarray(jax.image.resize(anomaly_map, IMAGE_SIZE, method=method))


def test_find_mvtec_pairs_pairs_every_test_image_with_its_map_and_mask(mvtec):
    dataset, maps, _, _ = mvtec
    records = io.find_mvtec_pairs(maps, dataset)
    assert [(r.defect, r.name, r.label) for r in records] == [
        ("crack", "000", 1),
        ("crack", "001", 1),
        ("good", "000", 0),
        ("good", "001", 0),
        ("hole", "000", 1),
    ]
    by_key = {(r.defect, r.name): r for r in records}
    assert by_key["good", "000"].mask_path is None
    assert by_key["crack", "001"].mask_path == dataset / "ground_truth/crack/001_mask.png"
    assert by_key["crack", "001"].map_path == maps / "crack/001.npz"
    assert by_key["good", "001"].map_path == maps / "good/001.tiff"
    assert by_key["hole", "000"].image_path == dataset / "test/hole/000.png"


def test_load_map_reads_npy_npz_float_tiff_and_8_and_16_bit_png(mvtec):
    _, maps, _, expected_maps = mvtec
    for (defect, name), expected in expected_maps.items():
        (path,) = (maps / defect).glob(f"{name}.*")
        loaded = io.load_map(path)
        assert loaded.dtype == np.float32 and loaded.shape == MAP_SIZE
        np.testing.assert_allclose(loaded, expected, rtol=1e-6, err_msg=str(path))


@pytest.mark.parametrize("shape", [(1, 5, 7), (5, 7, 1)])
def test_load_map_drops_a_channel_axis_of_size_one(tmp_path, shape):
    values = np.arange(35, dtype=np.float32).reshape(shape)
    np.save(tmp_path / "map.npy", values)
    np.testing.assert_array_equal(io.load_map(tmp_path / "map.npy"), values.reshape(5, 7))


@pytest.mark.parametrize("foreground", [np.uint8(255), np.uint8(1), True])
def test_load_mask_accepts_0_255_0_1_and_bilevel_masks(tmp_path, foreground):
    pixels = np.zeros(IMAGE_SIZE, np.asarray(foreground).dtype)
    pixels[3:9, 4:6] = foreground
    write_png(tmp_path / "mask.png", pixels)
    mask = io.load_mask(tmp_path / "mask.png")
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, pixels > 0)


def test_load_mask_rejects_a_non_binary_mask_naming_the_file(tmp_path):
    write_png(tmp_path / "soft_mask.png", np.array([[0, 128], [255, 0]], np.uint8))
    with pytest.raises(
        ValueError,
        match=r"soft_mask\.png: expected a mask that is bool or holds only 0 and 255"
        r".*, got 128 at index \(0, 1\)",
    ):
        io.load_mask(tmp_path / "soft_mask.png")


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_iter_mvtec_batches_resizes_maps_to_the_masks_one_batch_at_a_time(mvtec, method):
    dataset, maps, masks, expected_maps = mvtec
    records = io.find_mvtec_pairs(maps, dataset)
    batches = list(io.iter_mvtec_batches(records, batch_size=2, resize_method=method))
    assert [len(batch.name) for batch in batches] == [2, 2, 1]
    keys = [(r.defect, r.name) for r in records]
    assert [name for batch in batches for name in batch.name] == [f"{d}/{n}" for d, n in keys]
    anomaly_maps = np.concatenate([batch.anomaly_map for batch in batches])
    gt_masks = np.concatenate([batch.gt_mask for batch in batches])
    assert anomaly_maps.shape == gt_masks.shape == (5, *IMAGE_SIZE)
    for index, key in enumerate(keys):
        np.testing.assert_allclose(
            anomaly_maps[index], resized(expected_maps[key], method), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_array_equal(gt_masks[index], masks[key])
    np.testing.assert_array_equal(
        np.concatenate([batch.gt_label for batch in batches]), [1, 1, 0, 0, 1]
    )
    np.testing.assert_array_equal(
        np.concatenate([batch.pred_score for batch in batches]), anomaly_maps.max(axis=(1, 2))
    )


def test_mvtec_batches_read_as_anomalib_fields_and_unpack_as_tuples(mvtec):
    dataset, maps, _, _ = mvtec
    batch = next(io.iter_mvtec_batches(io.find_mvtec_pairs(maps, dataset), batch_size=5))
    anomaly_map, gt_mask, gt_label, pred_score, name = batch
    assert anomaly_map is batch.anomaly_map and gt_mask is batch.gt_mask
    assert gt_label.dtype == np.int32 and pred_score.dtype == np.float32
    assert anomaly_map.dtype == np.float32 and gt_mask.dtype == bool
    assert len(name) == 5


def test_missing_maps_folder_is_named(mvtec):
    dataset, maps, _, _ = mvtec
    with pytest.raises(FileNotFoundError, match=r"anomaly maps folder not found.*no_maps"):
        io.find_mvtec_pairs(maps.parent / "no_maps", dataset)


def test_missing_test_folder_is_named(mvtec):
    dataset, maps, _, _ = mvtec
    shutil.rmtree(dataset / "test")
    with pytest.raises(FileNotFoundError, match=r"test images folder not found.*bottle.test"):
        io.find_mvtec_pairs(maps, dataset)


def test_map_without_a_test_image_is_named(mvtec):
    dataset, maps, _, _ = mvtec
    write_npy(maps / "crack" / "007.npy", np.zeros(MAP_SIZE))
    with pytest.raises(ValueError, match=r"anomaly map .*crack.007\.npy has no test image"):
        io.find_mvtec_pairs(maps, dataset)


def test_test_image_without_a_map_is_named(mvtec):
    dataset, maps, _, _ = mvtec
    (maps / "good" / "001.tiff").unlink()
    with pytest.raises(FileNotFoundError, match=r"no anomaly map for test image .*good.001\.png"):
        io.find_mvtec_pairs(maps, dataset)


def test_anomalous_image_without_a_mask_is_named(mvtec):
    dataset, maps, _, _ = mvtec
    (dataset / "ground_truth" / "hole" / "000_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no ground-truth mask .*hole.000_mask\.png"):
        io.find_mvtec_pairs(maps, dataset)


def test_two_maps_for_one_image_are_named(mvtec):
    dataset, maps, _, _ = mvtec
    write_npy(maps / "good" / "001.npy", np.zeros(MAP_SIZE))
    with pytest.raises(ValueError, match=r"two anomaly maps for one image.*001\.(npy|tiff)"):
        io.find_mvtec_pairs(maps, dataset)


@pytest.mark.parametrize("file_name", ["broken.png", "broken.npy", "broken.npz", "broken.tiff"])
def test_unreadable_map_is_named(tmp_path, file_name):
    (tmp_path / file_name).write_bytes(b"not really an image or an array")
    with pytest.raises(ValueError, match=rf"cannot read .*{file_name}"):
        io.load_map(tmp_path / file_name)


def test_unreadable_mask_fails_the_batch_naming_the_file(mvtec):
    dataset, maps, _, _ = mvtec
    mask_path = dataset / "ground_truth" / "crack" / "001_mask.png"
    mask_path.write_bytes(mask_path.read_bytes()[:40])
    records = io.find_mvtec_pairs(maps, dataset)
    with pytest.raises(ValueError, match=r"cannot read .*001_mask\.png"):
        list(io.iter_mvtec_batches(records, batch_size=2))


def test_missing_map_file_and_unsupported_type_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.npy"):
        io.load_map(tmp_path / "absent.npy")
    (tmp_path / "map.jpg2").write_bytes(b"")
    with pytest.raises(ValueError, match=r"map\.jpg2: unsupported file type"):
        io.load_map(tmp_path / "map.jpg2")


def test_npz_map_with_several_arrays_is_rejected(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 2)), b=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"two\.npz: expected an \.npz holding one array"):
        io.load_map(tmp_path / "two.npz")


def test_non_2d_and_non_finite_maps_are_rejected(tmp_path):
    np.save(tmp_path / "stack.npy", np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"stack\.npy: expected a 2-D"):
        io.load_map(tmp_path / "stack.npy")
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"nan\.npy: .*NaN"):
        io.load_map(tmp_path / "nan.npy")


def test_masks_of_different_sizes_in_one_batch_are_named(mvtec):
    dataset, maps, _, _ = mvtec
    write_png(dataset / "ground_truth" / "crack" / "001_mask.png", np.zeros((30, 28), np.uint8))
    records = io.find_mvtec_pairs(maps, dataset)
    with pytest.raises(ValueError, match=r"mask of .*crack.001_mask\.png is 30x28 but"):
        list(io.iter_mvtec_batches(records, batch_size=2))


def test_maps_of_different_sizes_in_one_batch_are_named(mvtec):
    dataset, maps, _, _ = mvtec
    (maps / "crack" / "001.npz").unlink()
    write_npy(maps / "crack" / "001.npy", np.zeros((12, 14)))
    records = io.find_mvtec_pairs(maps, dataset)
    with pytest.raises(ValueError, match=r"anomaly map .*crack.001\.npy is 12x14 but"):
        list(io.iter_mvtec_batches(records, batch_size=2))


def test_load_npz_dataset_reads_all_arrays(tmp_path):
    rng = np.random.default_rng(1)
    anomaly_maps = rng.random((4, 6, 5))
    gt_masks = rng.random((4, 6, 5)) > 0.7
    gt_labels, pred_scores = np.array([1, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])
    np.savez(
        tmp_path / "set.npz",
        anomaly_maps=anomaly_maps,
        gt_masks=gt_masks.astype(np.uint8) * 255,
        gt_labels=gt_labels,
        pred_scores=pred_scores,
    )
    data = io.load_npz_dataset(tmp_path / "set.npz")
    np.testing.assert_array_equal(data.anomaly_maps, anomaly_maps.astype(np.float32))
    np.testing.assert_array_equal(data.gt_masks, gt_masks)
    np.testing.assert_array_equal(data.gt_labels, gt_labels)
    np.testing.assert_array_equal(data.pred_scores, pred_scores.astype(np.float32))
    assert data.gt_masks.dtype == bool and data.gt_labels.dtype == np.int32


def test_load_npz_dataset_defaults_labels_to_mask_presence_and_scores_to_map_max(tmp_path):
    anomaly_maps = np.random.default_rng(2).random((3, 4, 4)).astype(np.float32)
    gt_masks = np.zeros((3, 4, 4), bool)
    gt_masks[2, 1, 1] = True
    np.savez(tmp_path / "set.npz", anomaly_maps=anomaly_maps, gt_masks=gt_masks)
    data = io.load_npz_dataset(tmp_path / "set.npz")
    np.testing.assert_array_equal(data.gt_labels, [0, 0, 1])
    np.testing.assert_array_equal(data.pred_scores, anomaly_maps.reshape(3, -1).max(axis=1))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"anomaly_maps": np.zeros((2, 3, 3))}, r"missing array\(s\) \['gt_masks'\]"),
        ({"maps": np.zeros((2, 3, 3)), "gt_masks": np.zeros((2, 3, 3))}, "anomaly_maps"),
        (
            {"anomaly_maps": np.zeros((2, 3, 3)), "gt_masks": np.zeros((2, 4, 3))},
            r"gt_masks shape \(2, 4, 3\) differs from anomaly_maps shape \(2, 3, 3\)",
        ),
        ({"anomaly_maps": np.zeros((3, 3)), "gt_masks": np.zeros((3, 3))}, r"\(N, H, W\)"),
        (
            {"anomaly_maps": np.zeros((2, 3, 3)), "gt_masks": np.full((2, 3, 3), 0.5)},
            r"gt_masks: expected a mask that is bool.*, got 0\.5 at index \(0, 0, 0\)",
        ),
        (
            {
                "anomaly_maps": np.zeros((2, 3, 3)),
                "gt_masks": np.zeros((2, 3, 3)),
                "pred_scores": np.zeros(3),
            },
            r"pred_scores must have shape \(2,\)",
        ),
        (
            {
                "anomaly_maps": np.zeros((2, 3, 3)),
                "gt_masks": np.zeros((2, 3, 3)),
                "gt_labels": np.zeros((2, 1)),
            },
            r"gt_labels must have shape \(2,\)",
        ),
    ],
    ids=["missing-key", "wrong-key", "shape-mismatch", "not-3d", "soft-masks", "scores", "labels"],
)
def test_load_npz_dataset_rejects_bad_contents_naming_the_file(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=rf"bad\.npz: .*{message}"):
        io.load_npz_dataset(tmp_path / "bad.npz")


def test_load_npz_dataset_names_a_missing_or_unreadable_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.npz"):
        io.load_npz_dataset(tmp_path / "absent.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"cannot read .*broken\.npz"):
        io.load_npz_dataset(tmp_path / "broken.npz")


@pytest.mark.parametrize("method", ["bilinear", "nearest", "cubic"])
def test_resize_maps_equals_jax_image_resize(method):
    maps = np.random.default_rng(3).random((3, 8, 12)).astype(np.float32)
    for size in ((16, 24), (5, 7)):
        expected = jax.image.resize(maps, (3, *size), method=method)
        np.testing.assert_allclose(io.resize_maps(maps, size, method), expected, rtol=1e-6)


def test_resize_maps_is_bilinear_by_default_and_accepts_one_map():
    anomaly_map = np.random.default_rng(4).random((8, 12)).astype(np.float32)
    default = io.resize_maps(anomaly_map, (16, 24))
    np.testing.assert_array_equal(default, io.resize_maps(anomaly_map, (16, 24), "bilinear"))
    np.testing.assert_allclose(default, jax.image.resize(anomaly_map, (16, 24), "bilinear"))
    assert not np.allclose(default, io.resize_maps(anomaly_map, (16, 24), "nearest"))
    np.testing.assert_array_equal(io.resize_maps(anomaly_map, (8, 12)), anomaly_map)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: io.resize_maps(np.zeros((2, 2)), (4, 4), "area"), "method"),
        (lambda: io.resize_maps(np.zeros((2, 2)), (4,)), "size"),
        (lambda: io.resize_maps(np.zeros((2, 2)), (0, 4)), "size"),
        (lambda: io.resize_maps(np.zeros(4), (4, 4)), "maps"),
        (lambda: list(io.iter_mvtec_batches([], 2, resize_method="linear")), "resize_method"),
        (lambda: list(io.iter_mvtec_batches([], 0)), "batch_size"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_iter_batches_streams_an_array_dataset():
    data = io.ArrayDataset(
        anomaly_maps=np.arange(5 * 4, dtype=np.float32).reshape(5, 2, 2),
        gt_masks=np.zeros((5, 2, 2), bool),
        gt_labels=np.array([0, 1, 0, 1, 1], np.int32),
        pred_scores=np.arange(5, dtype=np.float32),
    )
    batches = list(io.iter_batches(data, 2))
    assert [batch.name for batch in batches] == [("000", "001"), ("002", "003"), ("004",)]
    np.testing.assert_array_equal(
        np.concatenate([batch.gt_label for batch in batches]), data.gt_labels
    )
    np.testing.assert_array_equal(
        np.concatenate([batch.anomaly_map for batch in batches]), data.anomaly_maps
    )


def test_without_pillow_numpy_formats_work_and_images_ask_for_the_extra(mvtec, monkeypatch):
    _, maps, _, expected_maps = mvtec
    monkeypatch.setitem(sys.modules, "PIL", None)
    np.testing.assert_allclose(io.load_map(maps / "good" / "000.npy"), expected_maps["good", "000"])
    with pytest.raises(ImportError, match=r"pip install 'jaxmetrics_ad\[cli\]'"):
        io.load_map(maps / "crack" / "000.png")


# --- Issue 8: values are checked as stored, before any cast could round or wrap them ------------


def save_set(path: Path, num_images: int = 3, **changes) -> Path:
    arrays = {
        "anomaly_maps": np.linspace(0, 1, num_images * 16).reshape(num_images, 4, 4),
        "gt_masks": np.zeros((num_images, 4, 4), bool),
        **changes,
    }
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gt_labels": np.array([0.0, 0.9, 1.0])}, r"gt_labels: expected .*0 or 1.*got 0\.9 at index 1"),
        ({"gt_labels": np.array([0, 1, 2**32 + 1], np.int64)}, r"gt_labels: .*got 4294967297 at index 2"),
        ({"gt_labels": np.array([0, -1, 1])}, r"gt_labels: .*got -1 at index 1"),
        ({"gt_labels": np.array([0, 1, np.nan])}, r"gt_labels: .*got nan at index 2"),
        ({"gt_labels": np.array(["0", "1", "1"])}, r"gt_labels: expected labels of a bool, integer or float dtype, got dtype <U1"),
        ({"gt_masks": np.full((3, 4, 4), 2**32 + 1, np.int64)}, r"gt_masks: expected a mask .*got 4294967297 at index \(0, 0, 0\)"),
        ({"gt_masks": np.array([0, 1, 255] * 16, np.uint8).reshape(3, 4, 4)}, r"gt_masks: .*got both 1 at index \(0, 0, 1\) and 255 at index \(0, 0, 2\)"),
        ({"gt_masks": np.full((3, 4, 4), 0.9)}, r"gt_masks: .*got 0\.9 at index \(0, 0, 0\)"),
        ({"anomaly_maps": np.where(np.eye(4) > 0, np.nan, 0.0)[None].repeat(3, 0)}, r"anomaly_maps: expected finite scores .*got nan at index \(0, 0, 0\)"),
        ({"anomaly_maps": np.full((3, 4, 4), 1e39)}, r"anomaly_maps: expected scores within the float32 range.*got 1e\+39"),
        ({"anomaly_maps": np.zeros((3, 4, 4), np.complex64)}, r"anomaly_maps: expected scores of a bool, integer or float dtype, got dtype complex64"),
        ({"pred_scores": np.array([0.1, np.inf, 0.3])}, r"pred_scores: expected finite scores .*got inf at index 1"),
        ({"anomaly_maps": np.zeros((0, 4, 4)), "gt_masks": np.zeros((0, 4, 4))}, r"anomaly_maps: expected at least one image, got shape \(0, 4, 4\)"),
        ({"anomaly_maps": np.zeros((3, 0, 4)), "gt_masks": np.zeros((3, 0, 4))}, r"anomaly_maps: expected images of at least 1x1 pixels"),
    ],
    ids=["soft-label", "int64-label", "negative-label", "nan-label", "string-labels", "int64-mask",
         "mixed-1-and-255-mask", "soft-mask", "nan-map", "float32-overflow", "complex-map",
         "inf-score", "no-images", "no-pixels"],
)  # fmt: skip
def test_load_npz_dataset_rejects_bad_values_naming_file_field_and_value(
    tmp_path, changes, message
):
    path = save_set(tmp_path / "bad.npz", **changes)
    with pytest.raises(ValueError, match=rf"bad\.npz: {message}"):
        io.load_npz_dataset(path)


@pytest.mark.parametrize(
    ("labels", "masks"),
    [
        (np.array([False, True, True]), np.array([0, 1], bool)),
        (np.array([0.0, 1.0, 1.0]), np.array([0, 255], np.uint8)),
        (np.array([0, 1, 1], np.int64), np.array([0, 1], np.int64)),
        (np.array([0, 1, 1], np.uint8), np.array([0.0, 1.0])),
    ],
    ids=["bool", "float-0-1-and-uint8-0-255", "int64-0-1", "uint8-and-float-masks"],
)
def test_load_npz_dataset_keeps_accepting_binary_labels_and_masks(tmp_path, labels, masks):
    gt_masks = np.zeros((3, 4, 4), bool)
    gt_masks[1:, 1, 1] = True
    stored = np.where(gt_masks, masks[1], masks[0]).astype(masks.dtype)
    data = io.load_npz_dataset(save_set(tmp_path / "set.npz", gt_labels=labels, gt_masks=stored))
    np.testing.assert_array_equal(data.gt_labels, [0, 1, 1])
    np.testing.assert_array_equal(data.gt_masks, gt_masks)
    assert data.gt_labels.dtype == np.int32 and data.gt_masks.dtype == bool


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose header claims width × height pixels (a 'decompression bomb')."""
    buffer = BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("reader", ["load_map", "load_mask", "image_size"])
def test_png_with_a_huge_header_is_a_value_error_naming_the_file(tmp_path, reader):
    bomb = png_claiming_size(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(ValueError, match=r"bomb\.png: expected an image within Pillow's decompres"):
        getattr(io, reader)(bomb)


def test_image_size_reads_the_header(mvtec):
    dataset, _, _, _ = mvtec
    assert io.image_size(dataset / "test" / "good" / "000.png") == IMAGE_SIZE


def test_load_map_names_a_float32_overflow_and_rejects_complex_scores(tmp_path):
    np.save(tmp_path / "huge.npy", np.array([[0.0, 1e39]]))
    with pytest.raises(ValueError, match=r"huge\.npy: expected scores within the float32 range"):
        io.load_map(tmp_path / "huge.npy")
    np.save(tmp_path / "complex.npy", np.zeros((2, 2), np.complex128))
    with pytest.raises(ValueError, match=r"complex\.npy: expected scores of a bool, integer or"):
        io.load_map(tmp_path / "complex.npy")
