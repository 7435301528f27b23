"""Read anomaly maps and ground truth from disk (MVTec AD layout or one .npz) and batch them.

Two inputs are supported, matching what anomaly-detection code usually leaves on disk:

* ground truth in the MVTec AD folder layout — ``<dataset_dir>/test/<defect>/<name>.png``
  images and ``<dataset_dir>/ground_truth/<defect>/<name>_mask.png`` masks (``<name>.png`` as
  VisA's 1cls split names them), none for ``good`` —
  with one anomaly map per test image under ``<maps_dir>/<defect>/<name>.<ext>`` (``.npy``,
  ``.npz``, ``.tiff``/``.tif`` or ``.png``);
* a single ``.npz`` holding ``anomaly_maps`` (N, H, W), ``gt_masks`` (N, H, W) and optionally
  ``pred_scores`` and ``gt_labels``.

Maps are brought to the mask size with :func:`resize_maps` (bilinear by default), as the MVTec AD
and AUPIMO protocols evaluate at the ground-truth resolution. Only one batch of images is in memory
at a time, so memory does not grow with the dataset. Image scores default to the map maximum.

Pillow is needed only for image files (PNG/TIFF); it is the optional extra ``cli``. NumPy formats
work without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

MAP_SUFFIXES = (".npy", ".npz", ".tiff", ".tif", ".png")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tiff", ".tif")
RESIZE_METHODS = ("bilinear", "nearest", "cubic")
_PILLOW_SUFFIXES = (".png", ".tiff", ".tif", ".jpg", ".jpeg", ".bmp")
_NORMAL_DEFECT = "good"


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """A whole evaluation set held in memory as arrays.

    Attributes:
        anomaly_maps: float32 (N, H, W) pixel anomaly scores.
        gt_masks: bool (N, H, W) ground-truth defect masks.
        gt_labels: int32 (N,) image labels, 1 = anomalous.
        pred_scores: float32 (N,) image anomaly scores.

    >>> data = ArrayDataset(np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), bool),
    ...                     np.array([0, 1], np.int32), np.zeros(2, np.float32))
    >>> len(data)
    2
    """

    anomaly_maps: np.ndarray
    gt_masks: np.ndarray
    gt_labels: np.ndarray
    pred_scores: np.ndarray

    def __len__(self) -> int:
        return len(self.gt_labels)


class Batch(NamedTuple):
    """One batch of images, named after the anomalib batch fields.

    Being a NamedTuple, it unpacks as a tuple and also reads as an object with the fields
    ``anomaly_map``, ``gt_mask``, ``gt_label`` and ``pred_score`` that metrics look up.

    >>> batch = Batch(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 2), bool),
    ...               np.zeros(1, np.int32), np.zeros(1, np.float32), ("good/000",))
    >>> maps, masks, labels, scores, names = batch
    >>> batch.gt_mask.shape
    (1, 2, 2)
    """

    anomaly_map: np.ndarray
    gt_mask: np.ndarray
    gt_label: np.ndarray
    pred_score: np.ndarray
    name: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class MVTecRecord:
    """One test image of an MVTec-layout dataset with its anomaly map and mask files.

    Attributes:
        defect: defect folder name (``"good"`` for normal images).
        name: file name without extension, e.g. ``"000"``.
        image_path: the test image; its size is the mask size of normal images.
        map_path: the anomaly map file.
        mask_path: the ground-truth mask file, ``None`` for normal images.
        label: 1 for anomalous images, 0 for normal ones.

    >>> record = MVTecRecord("good", "000", Path("test/good/000.png"), Path("maps/good/000.npy"),
    ...                      None, 0)
    >>> record.label
    0
    """

    defect: str
    name: str
    image_path: Path
    map_path: Path
    mask_path: Path | None
    label: int


def _require_pillow(path: Path):
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(
            f"reading {path} needs Pillow, an optional dependency: pip install 'jaxmetrics_ad[cli]'"
        ) from error
    return Image


class _FileNamedError(ValueError):
    """A ValueError whose message already names the file (not wrapped in "cannot read ...")."""


@contextlib.contextmanager
def _open_image(path: Path) -> Iterator[Any]:
    """``PIL.Image.open(path)``, with Pillow's decompression-bomb check reported as a ValueError.

    Pillow refuses, from the header alone, images of more than twice ``PIL.Image.MAX_IMAGE_PIXELS``
    pixels with its own exception class, which is neither an OSError nor a ValueError.
    """
    image_module = _require_pillow(path)
    try:
        image = image_module.open(path)
    except image_module.DecompressionBombError as error:
        raise _FileNamedError(
            f"{path}: expected an image within Pillow's decompression-bomb limit "
            f"(PIL.Image.MAX_IMAGE_PIXELS), got {error}"
        ) from error
    with image:
        yield image


def _read_image(path: Path) -> tuple[np.ndarray, float | None]:
    """Decode a single-channel image: its samples and, for integer samples, their full scale."""
    with _open_image(path) as image:
        image.load()
        mode, file_format = image.mode, image.format
        pixels = np.asarray(image)
    if mode == "L":
        return pixels, 255.0
    # PNG stores at most 16 bits per sample, so Pillow's 32-bit "I" mode holds 16-bit data there.
    if mode.startswith("I;16") or (mode == "I" and file_format == "PNG"):
        return pixels, 65535.0
    if mode in ("1", "I", "F"):
        return pixels, None
    raise ValueError(
        f"expected a single-channel (grayscale, 16-bit or float) image, got mode {mode!r}"
    )


def _read_array(path: Path) -> tuple[np.ndarray, float | None]:
    """Read one 2-D array from a NumPy or image file, naming the file in every error.

    Returns the array and, for integer image files, the sample value that stands for 1.0.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", *_PILLOW_SUFFIXES):
        raise ValueError(
            f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(MAP_SUFFIXES)}"
        )
    full_scale = None
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            arrays = list(_read_npz(path).values())
        else:
            array, full_scale = _read_image(path)
    except _FileNamedError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    if suffix == ".npz":
        if len(arrays) != 1:
            raise ValueError(f"{path}: expected an .npz holding one array, found {len(arrays)}")
        array = arrays[0]
    # Maps are often saved with a channel axis of size 1, as (1, H, W) or (H, W, 1).
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D (H, W) array, got shape {array.shape}")
    return array, full_scale


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        raise ValueError("this is an .npy file, not an .npz archive")
    with loaded:
        return {key: loaded[key] for key in loaded.files}


def _example(array: np.ndarray, bad: np.ndarray) -> str:
    """The first value of ``array`` where ``bad`` holds, and its index, for an error message."""
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f" at index {index[0] if len(index) == 1 else index}" if index else ""
    return f"{array[index].item()!r}{where}"


def _check_numeric(array: np.ndarray, where: str, what: str) -> None:
    # bool, signed and unsigned integers, floats; not complex, strings, dates or objects
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"{where}: expected {what} of a bool, integer or float dtype, got dtype {array.dtype}"
        )


def _binary_mask(array: np.ndarray, where: str) -> np.ndarray:
    """Ground truth as bool, accepting bool, 0/255 (MVTec AD) or 0/1 values.

    The values are checked as stored, before any conversion, so that a soft mask (0.5) or an
    integer too large for a smaller type (2**32 + 1) is rejected rather than rounded or wrapped.
    """
    array = np.asarray(array)
    if array.dtype == bool:
        return array
    _check_numeric(array, where, "a mask")
    background = array == 0
    ones, full_scale = array == 1, array == 255
    if (background | full_scale).all() or (background | ones).all():
        return ~background
    expected = "a mask that is bool or holds only 0 and 255 (or only 0 and 1)"
    found = np.unique(array)
    listed = f"values found: {found[:6].tolist()}{' ...' if found.size > 6 else ''}"
    other = ~(background | ones | full_scale)
    if other.any():
        got = _example(array, other)
    else:
        got = f"both {_example(array, ones)} and {_example(array, full_scale)}"
    raise ValueError(f"{where}: expected {expected}, got {got} ({listed})")


def _binary_labels(values: np.ndarray, where: str) -> np.ndarray:
    """Image labels as int32, accepting only bool or the values 0 and 1 (checked before the cast)."""
    array = np.asarray(values)
    _check_numeric(array, where, "labels")
    bad = (array != 0) & (array != 1)
    if bad.any():
        raise ValueError(
            f"{where}: expected labels that are 0 or 1 (or bool), got {_example(array, bad)}"
        )
    return array.astype(np.int32)


def _float_scores(values: np.ndarray, where: str) -> np.ndarray:
    """Scores as float32, rejecting NaN, infinities and values float32 cannot hold."""
    array = np.asarray(values)
    _check_numeric(array, where, "scores")
    if array.dtype.kind == "f":
        not_finite = ~np.isfinite(array)
        if not_finite.any():
            raise ValueError(
                f"{where}: expected finite scores (no NaN or infinity), got "
                f"{_example(array, not_finite)}"
            )
    with np.errstate(over="ignore"):  # reported below, naming the file
        scores = array.astype(np.float32)
    overflowed = ~np.isfinite(scores)
    if overflowed.any():
        raise ValueError(
            f"{where}: expected scores within the float32 range (|score| < 3.4e38), "
            f"got {_example(array, overflowed)}"
        )
    return scores


def load_map(path: str | Path) -> np.ndarray:
    """Load one anomaly map as float32 (H, W).

    ``.npy`` and single-array ``.npz`` files are read as stored; ``.tiff``/``.tif``/``.png`` float
    images are read as stored and 8-bit/16-bit integer images are scaled to [0, 1].

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded, is not 2-D, or holds non-finite scores.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "000.npy"
    >>> np.save(path, np.full((2, 3), 0.5))
    >>> load_map(path)
    array([[0.5, 0.5, 0.5],
           [0.5, 0.5, 0.5]], dtype=float32)
    """
    path = Path(path)
    array, full_scale = _read_array(path)
    anomaly_map = _float_scores(array, str(path))
    if full_scale is not None:
        anomaly_map /= full_scale
    return anomaly_map


def load_mask(path: str | Path) -> np.ndarray:
    """Load one ground-truth mask as bool (H, W).

    MVTec AD masks hold 0 and 255; masks holding only 0 and 1 are accepted too. Any other value is
    rejected, since it usually means a map or a resized, interpolated mask was passed by mistake.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded, is not 2-D, or is not binary.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "000_mask.npy"
    >>> np.save(path, np.array([[0, 255], [0, 0]], np.uint8))
    >>> load_mask(path)
    array([[False,  True],
           [False, False]])
    """
    path = Path(path)
    array, _ = _read_array(path)
    return _binary_mask(array, str(path))


def load_npz_dataset(path: str | Path) -> ArrayDataset:
    """Load a whole evaluation set from one ``.npz`` file.

    Required arrays: ``anomaly_maps`` (N, H, W) and ``gt_masks`` (N, H, W). Optional: ``gt_labels``
    (N,) — defaults to whether a mask has any defect pixel — and ``pred_scores`` (N,) — defaults to
    the map maximum. Masks must be bool or hold only 0/1 or 0/255, labels bool or 0/1, scores finite.
    Values are checked as stored, before any conversion: a soft label 0.9 is rejected, not cast to
    0, and an int64 label 2**32 + 1 is rejected, not wrapped to 1.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a required array is missing or empty, shapes disagree, a mask or a label is not
            binary, or a score is NaN or infinite; the message names the file and the array.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "set.npz"
    >>> masks = np.zeros((2, 4, 4), bool)
    >>> masks[1, :2, :2] = True
    >>> np.savez(path, anomaly_maps=np.arange(32.0).reshape(2, 4, 4), gt_masks=masks)
    >>> data = load_npz_dataset(path)
    >>> data.gt_labels, data.pred_scores
    (array([0, 1], dtype=int32), array([15., 31.], dtype=float32))
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        arrays = _read_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    missing = [key for key in ("anomaly_maps", "gt_masks") if key not in arrays]
    if missing:
        raise ValueError(
            f"{path}: missing array(s) {missing}; found {sorted(arrays)}. Expected anomaly_maps "
            "(N, H, W), gt_masks (N, H, W) and optionally pred_scores (N,), gt_labels (N,)"
        )
    raw_maps, raw_masks = arrays["anomaly_maps"], arrays["gt_masks"]
    if raw_maps.ndim != 3:
        raise ValueError(f"{path}: anomaly_maps must be (N, H, W), got shape {raw_maps.shape}")
    if raw_maps.shape[0] == 0:
        raise ValueError(
            f"{path}: anomaly_maps: expected at least one image, got shape {raw_maps.shape}"
        )
    if min(raw_maps.shape[1:]) == 0:
        raise ValueError(
            f"{path}: anomaly_maps: expected images of at least 1x1 pixels, got shape "
            f"{raw_maps.shape}"
        )
    if raw_masks.shape != raw_maps.shape:
        raise ValueError(
            f"{path}: gt_masks shape {raw_masks.shape} differs from anomaly_maps shape "
            f"{raw_maps.shape}; resize the maps to the mask size before saving"
        )
    num_images = raw_maps.shape[0]
    for key in ("gt_labels", "pred_scores"):
        if key in arrays and arrays[key].shape != (num_images,):
            raise ValueError(
                f"{path}: {key} must have shape ({num_images},), got {arrays[key].shape}"
            )
    # Every value is checked as stored, before any cast could round (0.9 -> 0) or wrap it.
    anomaly_maps = _float_scores(raw_maps, f"{path}: anomaly_maps")
    gt_masks = _binary_mask(raw_masks, f"{path}: gt_masks")
    if "gt_labels" in arrays:
        gt_labels = _binary_labels(arrays["gt_labels"], f"{path}: gt_labels")
    else:
        gt_labels = gt_masks.any(axis=(1, 2)).astype(np.int32)
    if "pred_scores" in arrays:
        pred_scores = _float_scores(arrays["pred_scores"], f"{path}: pred_scores")
    else:
        pred_scores = anomaly_maps.max(axis=(1, 2))
    return ArrayDataset(
        anomaly_maps=anomaly_maps,
        gt_masks=gt_masks,
        gt_labels=gt_labels,
        pred_scores=pred_scores,
    )


def iter_batches(dataset: ArrayDataset, batch_size: int) -> Iterator[Batch]:
    """Yield consecutive batches of an in-memory dataset; the last one may be smaller.

    Names are the image indices, zero-padded.

    >>> data = ArrayDataset(np.zeros((3, 2, 2), np.float32), np.zeros((3, 2, 2), bool),
    ...                     np.zeros(3, np.int32), np.zeros(3, np.float32))
    >>> [batch.name for batch in iter_batches(data, 2)]
    [('000', '001'), ('002',)]
    """
    _check_batch_size(batch_size)
    width = max(3, len(str(len(dataset) - 1)))
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        yield Batch(
            anomaly_map=dataset.anomaly_maps[start:stop],
            gt_mask=dataset.gt_masks[start:stop],
            gt_label=dataset.gt_labels[start:stop],
            pred_score=dataset.pred_scores[start:stop],
            name=tuple(f"{index:0{width}d}" for index in range(start, stop)),
        )


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _visible_entries(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))


def find_mvtec_pairs(maps_dir: str | Path, dataset_dir: str | Path) -> list[MVTecRecord]:
    """Pair every test image of an MVTec-layout category with its anomaly map and mask.

    ``dataset_dir`` is one category (e.g. ``mvtec/bottle``) holding ``test/<defect>/<name>.png`` and
    ``ground_truth/<defect>/<name>_mask.png``; ``maps_dir`` mirrors ``<defect>/<name>.<ext>`` with
    ext in :data:`MAP_SUFFIXES`. Files with other extensions under ``maps_dir`` are ignored. Records
    are sorted by defect then name.

    Raises:
        FileNotFoundError: a folder is missing, a test image has no map, or an anomalous image has
            no mask.
        ValueError: a map has no test image, an image has two maps, or there are no test images.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for path in ("data/test/good/000.png", "data/test/cut/000.png",
    ...              "data/ground_truth/cut/000_mask.png", "maps/good/000.npy", "maps/cut/000.npy"):
    ...     (root / path).parent.mkdir(parents=True, exist_ok=True)
    ...     (root / path).touch()
    >>> [(r.defect, r.name, r.label) for r in find_mvtec_pairs(root / "maps", root / "data")]
    [('cut', '000', 1), ('good', '000', 0)]
    """
    maps_dir, dataset_dir = Path(maps_dir), Path(dataset_dir)
    test_dir, truth_dir = dataset_dir / "test", dataset_dir / "ground_truth"
    for folder, role in ((maps_dir, "anomaly maps folder"), (test_dir, "test images folder")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{role} not found: {folder}")

    images = {
        (defect_dir.name, image.stem): image
        for defect_dir in _visible_entries(test_dir)
        if defect_dir.is_dir()
        for image in _visible_entries(defect_dir)
        if image.suffix.lower() in IMAGE_SUFFIXES
    }
    if not images:
        raise ValueError(f"no test images ({', '.join(IMAGE_SUFFIXES)}) found under {test_dir}")

    maps: dict[tuple[str, str], Path] = {}
    for defect_dir in _visible_entries(maps_dir):
        if not defect_dir.is_dir():
            continue
        for map_path in _visible_entries(defect_dir):
            if map_path.suffix.lower() not in MAP_SUFFIXES:
                continue
            key = (defect_dir.name, map_path.stem)
            if key not in images:
                raise ValueError(
                    f"anomaly map {map_path} has no test image {test_dir / key[0] / key[1]}.<ext>"
                )
            if key in maps:
                raise ValueError(f"two anomaly maps for one image: {maps[key]} and {map_path}")
            maps[key] = map_path

    records = []
    for (defect, name), image_path in sorted(images.items()):
        map_path = maps.get((defect, name))
        if map_path is None:
            raise FileNotFoundError(
                f"no anomaly map for test image {image_path}: expected "
                f"{maps_dir / defect / name}.<ext> with ext in {', '.join(MAP_SUFFIXES)}"
            )
        mask_path = None
        if defect != _NORMAL_DEFECT:
            mask_path = mask_path_of(truth_dir, defect, name, image_path)
        label = int(defect != _NORMAL_DEFECT)
        records.append(MVTecRecord(defect, name, image_path, map_path, mask_path, label))
    return records


def mask_path_of(truth_dir: Path, defect: str, name: str, image_path: Path) -> Path:
    """The mask of an anomalous image: ``<defect>/<name>_mask.png`` (MVTec AD), else
    ``<defect>/<name>.png`` (VisA after its 1cls split) under ``truth_dir``.

    Raises:
        FileNotFoundError: neither exists; the message names both.
    """
    mask_path = truth_dir / defect / f"{name}_mask.png"
    if mask_path.is_file():
        return mask_path
    visa_path = truth_dir / defect / f"{name}.png"
    if visa_path.is_file():
        return visa_path
    raise FileNotFoundError(
        f"no ground-truth mask for anomalous image {image_path}: expected {mask_path} "
        f"(or {visa_path.name}, as VisA names them)"
    )


@functools.partial(jax.jit, static_argnames=("shape", "method"))
def _jitted_resize(maps: jax.Array, shape: tuple[int, ...], method: str) -> jax.Array:
    return jax.image.resize(maps, shape, method=method)


def resize_maps(maps: np.ndarray, size: Sequence[int], method: str = "bilinear") -> np.ndarray:
    """Resize anomaly maps (H, W) or (N, H, W) to ``size`` = (height, width) with jax.image.resize.

    ``method`` is ``"bilinear"`` (the default, as in the MVTec AD and AUPIMO protocols),
    ``"nearest"`` or ``"cubic"``. Downsampling is antialiased, as jax.image.resize does by default.

    >>> resize_maps(np.array([[0.0, 1.0]]), (1, 4))
    array([[0.  , 0.25, 0.75, 1.  ]], dtype=float32)
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"method must be one of {RESIZE_METHODS}, got {method!r}")
    size = tuple(int(side) for side in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (height, width) with positive sides, got {size}")
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim not in (2, 3):
        raise ValueError(f"maps must be (H, W) or (N, H, W), got shape {maps.shape}")
    if maps.shape[-2:] == size:
        return maps
    return np.asarray(_jitted_resize(maps, (*maps.shape[:-2], *size), method))


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only.

    Raises:
        ValueError: the file cannot be decoded, or its header exceeds Pillow's decompression-bomb
            limit; the message names the file.
        ImportError: Pillow is not installed.
    """
    path = Path(path)
    try:
        with _open_image(path) as image:
            width, height = image.size
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    return height, width


def _stack_same_shape(arrays: list[np.ndarray], paths: list[Path], what: str) -> np.ndarray:
    for array, path in zip(arrays, paths, strict=True):
        if array.shape != arrays[0].shape:
            raise ValueError(
                f"{what} {path} is {array.shape[0]}x{array.shape[1]} but {paths[0]} in the same "
                f"batch is {arrays[0].shape[0]}x{arrays[0].shape[1]}; images of one batch must "
                "share a size"
            )
    return np.stack(arrays)


def iter_mvtec_batches(
    records: Sequence[MVTecRecord], batch_size: int, resize_method: str = "bilinear"
) -> Iterator[Batch]:
    """Load records batch by batch: maps resized to the mask size, masks, labels, map maxima.

    Only one batch is in memory at a time. Normal images get an all-false mask of their image size.
    Names are ``"<defect>/<name>"``.

    Raises:
        ValueError: a file cannot be read, a mask is not binary, or the masks (or the maps) of
            one batch differ in size; the message names the file.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> np.save(root / "000.npy", np.eye(2))
    >>> np.save(root / "000_mask.npy", np.eye(4, dtype=bool))
    >>> record = MVTecRecord("cut", "000", root / "000.png", root / "000.npy",
    ...                      root / "000_mask.npy", 1)
    >>> batch = next(iter_mvtec_batches([record], batch_size=8))
    >>> batch.anomaly_map.shape, batch.gt_mask.shape, batch.name
    ((1, 4, 4), (1, 4, 4), ('cut/000',))
    """
    _check_batch_size(batch_size)
    if resize_method not in RESIZE_METHODS:
        raise ValueError(f"resize_method must be one of {RESIZE_METHODS}, got {resize_method!r}")
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        masks = [
            load_mask(record.mask_path)
            if record.mask_path is not None
            else np.zeros(image_size(record.image_path), bool)
            for record in chunk
        ]
        mask_sources = [record.mask_path or record.image_path for record in chunk]
        gt_masks = _stack_same_shape(masks, mask_sources, "mask of")
        maps = _stack_same_shape(
            [load_map(record.map_path) for record in chunk],
            [record.map_path for record in chunk],
            "anomaly map",
        )
        anomaly_maps = resize_maps(maps, gt_masks.shape[1:], resize_method)
        yield Batch(
            anomaly_map=anomaly_maps,
            gt_mask=gt_masks,
            gt_label=np.array([record.label for record in chunk], np.int32),
            pred_score=anomaly_maps.max(axis=(1, 2)),
            name=tuple(f"{record.defect}/{record.name}" for record in chunk),
        )
