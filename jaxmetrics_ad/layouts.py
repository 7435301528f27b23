"""Folder layouts of the anomaly-detection benchmarks, paired with a folder of anomaly maps.

One category folder in each layout (``<category>`` below), and where its anomaly maps go:

* ``mvtec_ad`` — MVTec AD, and VisA after its ``1cls`` split (the same layout; ``visa`` is an
  alias): ``test/<defect>/<name>.png``, masks ``ground_truth/<defect>/<name>_mask.png``, none for
  ``good``. VisA's split writes ``test/{good,bad}/<name>.JPG`` and names the masks
  ``ground_truth/bad/<name>.png``; either mask name is read.
* ``mvtec_ad2`` — MVTec AD 2: ``test_public/{good,bad}/<name>.png``, masks
  ``test_public/ground_truth/bad/<name>_mask.png``; the defect-free validation images
  ``validation/good/<name>.png`` (SegF1's threshold is fitted on their maps).
* ``mvtec_loco`` — MVTec LOCO AD: ``test/{good,logical_anomalies,structural_anomalies}/NNN.png``,
  one ground-truth folder per defective image, ``ground_truth/<defect>/NNN/000.png, 001.png, ...``,
  each PNG one defect (its non-zero pixels, holding that defect type's ``pixel_value``), and
  ``defects_config.json`` (a list of ``{"defect_name", "pixel_value", "saturation_threshold",
  "relative_saturation"}``) giving each defect type's saturation.

**Maps mirror the test folder**: one map per test image at ``<maps>/<defect>/<name>.<ext>``
(``<ext>`` one of :data:`jaxmetrics_ad.io.MAP_SUFFIXES`), where ``<defect>/<name>`` is the image's
path under ``test/`` (``test_public/`` for MVTec AD 2). MVTec AD 2's validation maps mirror the
category folder instead: ``<maps>/validation/good/<name>.<ext>``. Every test image needs a map,
every map a test image. Maps are resized to the mask size (the image size).

:func:`detect_layout` tells the layout from the folder; :func:`load_category` pairs every file
(raising one error naming the path when something is missing) and :func:`iter_batches` reads the
category batch by batch, checking every mask against its image's size.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxmetrics_ad import io
from jaxmetrics_ad.spro import _config_entries, defects_from_ground_truth

LAYOUTS = ("mvtec_ad", "visa", "mvtec_ad2", "mvtec_loco")
"""Layout names; ``visa`` (after its 1cls split) reads as ``mvtec_ad``."""
AD2_TEST = "test_public"
VALIDATION = "validation"
LOCO_CONFIG = "defects_config.json"
GROUND_TRUTH = "ground_truth"
NORMAL = "good"


@dataclasses.dataclass(frozen=True)
class TestImage:
    """One test (or validation) image with its anomaly map and ground-truth files.

    Attributes:
        defect: its folder under the test folder (``"good"`` for normal images).
        name: file name without extension.
        image_path, map_path: the image (its size is the mask size) and its anomaly map.
        mask_paths: ground-truth files: none for a normal image, one mask (MVTec AD, AD 2) or one
            PNG per defect (MVTec LOCO).
        label: 1 for anomalous images, 0 for normal ones.
    """

    __test__ = False  # not a pytest test class

    defect: str
    name: str
    image_path: Path
    map_path: Path
    mask_paths: tuple[Path, ...]
    label: int

    @property
    def key(self) -> str:
        """``"<defect>/<name>"``, the image's name in results."""
        return f"{self.defect}/{self.name}"


@dataclasses.dataclass(frozen=True)
class Category:
    """One category folder paired with its maps (see :func:`load_category`).

    Attributes:
        layout: ``"mvtec_ad"``, ``"mvtec_ad2"`` or ``"mvtec_loco"``.
        folder, maps: the category folder and its maps folder.
        images: the test images, sorted by defect then name.
        validation: MVTec AD 2's ``validation/good`` images with their maps (when asked for).
        defects_config: MVTec LOCO's parsed ``defects_config.json``.
    """

    layout: str
    folder: Path
    maps: Path
    images: tuple[TestImage, ...]
    validation: tuple[TestImage, ...] = ()
    defects_config: tuple[dict[str, Any], ...] | None = None

    @property
    def max_defects(self) -> int:
        """The most ground-truth files of one image (MVTec LOCO's defects per image)."""
        return max((len(image.mask_paths) for image in self.images), default=0)


def canonical_layout(layout: str) -> str:
    """The layout a name reads as (``visa`` is ``mvtec_ad``); ValueError for an unknown one."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    return "mvtec_ad" if layout == "visa" else layout


def is_category(folder: Path) -> bool:
    """Whether ``folder`` holds a test folder of a known layout (``test/`` or ``test_public/``)."""
    return (folder / "test").is_dir() or (folder / AD2_TEST).is_dir()


def detect_layout(folder: str | Path) -> str:
    """The layout of a category folder: ``mvtec_ad2`` (``test_public/``), ``mvtec_loco``
    (``test/`` and ``defects_config.json``) or ``mvtec_ad`` (``test/``).

    Raises:
        ValueError: none of these; or a LOCO test folder (``logical_anomalies``) without its
            ``defects_config.json``. The message names the folder.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> (folder / "test_public" / "good").mkdir(parents=True)
    >>> detect_layout(folder)
    'mvtec_ad2'
    """
    folder = Path(folder)
    if (folder / AD2_TEST).is_dir():
        return "mvtec_ad2"
    if (folder / "test").is_dir():
        if (folder / LOCO_CONFIG).is_file():
            return "mvtec_loco"
        if (folder / "test" / "logical_anomalies").is_dir():
            raise ValueError(
                f"{folder}: looks like MVTec LOCO (test/logical_anomalies) but has no "
                f"{folder / LOCO_CONFIG}"
            )
        return "mvtec_ad"
    raise ValueError(
        f"{folder}: not a known layout: expected test/<defect>/<name>.png (MVTec AD, VisA, MVTec "
        f"LOCO) or {AD2_TEST}/{{good,bad}}/<name>.png (MVTec AD 2)"
    )


def _pair(
    test_dir: Path, maps_dir: Path, skip_test: Sequence[str] = (), skip_maps: Sequence[str] = ()
) -> list[tuple[str, str, Path, Path]]:
    """(defect, name, image, map) of every image under ``test_dir/<defect>/``, sorted; each image
    needs exactly one map ``maps_dir/<defect>/<name>.<ext>`` and each map an image."""
    for folder, role in ((maps_dir, "anomaly maps folder"), (test_dir, "test images folder")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{role} not found: {folder}")
    images = {
        (defect_dir.name, image.stem): image
        for defect_dir in io._visible_entries(test_dir)
        if defect_dir.is_dir() and defect_dir.name not in skip_test
        for image in io._visible_entries(defect_dir)
        if image.is_file() and image.suffix.lower() in io.IMAGE_SUFFIXES
    }
    if not images:
        raise ValueError(f"no test images ({', '.join(io.IMAGE_SUFFIXES)}) found under {test_dir}")
    maps: dict[tuple[str, str], Path] = {}
    for defect_dir in io._visible_entries(maps_dir):
        if not defect_dir.is_dir() or defect_dir.name in skip_maps:
            continue
        for map_path in io._visible_entries(defect_dir):
            if map_path.suffix.lower() not in io.MAP_SUFFIXES or not map_path.is_file():
                continue
            key = (defect_dir.name, map_path.stem)
            if key not in images:
                raise ValueError(
                    f"anomaly map {map_path} has no test image {test_dir / key[0] / key[1]}.<ext>"
                )
            if key in maps:
                raise ValueError(f"two anomaly maps for one image: {maps[key]} and {map_path}")
            maps[key] = map_path
    paired = []
    for (defect, name), image_path in sorted(images.items()):
        if (defect, name) not in maps:
            raise FileNotFoundError(
                f"no anomaly map for test image {image_path}: expected "
                f"{maps_dir / defect / name}.<ext> with ext in {', '.join(io.MAP_SUFFIXES)}"
            )
        paired.append((defect, name, image_path, maps[(defect, name)]))
    return paired


def _mask_file(truth_dir: Path, defect: str, name: str, image_path: Path) -> tuple[Path, ...]:
    if defect == NORMAL:
        return ()
    return (io.mask_path_of(truth_dir, defect, name, image_path),)


def _loco_files(truth_dir: Path, defect: str, name: str, image_path: Path) -> tuple[Path, ...]:
    if defect == NORMAL:
        return ()
    folder = truth_dir / defect / name
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no ground-truth folder for anomalous image {image_path}: expected {folder}/000.png"
        )
    files = tuple(path for path in io._visible_entries(folder) if path.suffix.lower() == ".png")
    if not files:
        raise FileNotFoundError(f"ground-truth folder {folder} of {image_path} holds no .png")
    return files


def _read_defects_config(path: Path) -> tuple[dict[str, Any], ...]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    if isinstance(document, dict):
        document = [document]
    if not isinstance(document, list) or not all(isinstance(e, dict) for e in document):
        raise ValueError(f"{path}: expected a JSON list of defect entries, got {document!r:.80}")
    try:
        _config_entries(document)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: {error}") from error
    return tuple(document)


def load_category(
    folder: str | Path, maps: str | Path, layout: str | None = None, *, validation: bool = False
) -> Category:
    """Pair every test image of a category folder with its map and ground truth.

    Args:
        folder: the category folder (see the module docstring for the layouts).
        maps: its anomaly maps, mirroring the test folder.
        layout: one of :data:`LAYOUTS`, or None to :func:`detect_layout`.
        validation: MVTec AD 2: also pair ``validation/good`` with ``<maps>/validation/good``.

    Raises:
        FileNotFoundError, ValueError: a folder, map, mask or ground-truth folder is missing, a map
            has no image, the layout is unknown; the message names the path.
    """
    folder, maps = Path(folder), Path(maps)
    layout = detect_layout(folder) if layout is None else canonical_layout(layout)
    config = None
    validation_images: tuple[TestImage, ...] = ()
    if layout == "mvtec_ad2":
        test_dir = folder / AD2_TEST
        truth_dir = test_dir / GROUND_TRUTH
        paired = _pair(test_dir, maps, skip_test=(GROUND_TRUTH,), skip_maps=(VALIDATION,))
        masks_of = _mask_file
        if validation:
            images_dir = folder / VALIDATION
            if not (images_dir / NORMAL).is_dir():
                raise FileNotFoundError(
                    f"MVTec AD 2 validation images not found: {images_dir / NORMAL} (SegF1's "
                    "threshold is fitted on them)"
                )
            validation_images = tuple(
                TestImage(defect, name, image, map_path, (), 0)
                for defect, name, image, map_path in _pair(images_dir, maps / VALIDATION)
            )
    else:
        test_dir, truth_dir = folder / "test", folder / GROUND_TRUTH
        paired = _pair(test_dir, maps)
        masks_of = _mask_file
        if layout == "mvtec_loco":
            config_path = folder / LOCO_CONFIG
            if not config_path.is_file():
                raise FileNotFoundError(f"MVTec LOCO defects config not found: {config_path}")
            config = _read_defects_config(config_path)
            masks_of = _loco_files
    images = tuple(
        TestImage(
            defect,
            name,
            image,
            map_path,
            masks_of(truth_dir, defect, name, image),
            int(defect != NORMAL),
        )
        for defect, name, image, map_path in paired
    )
    return Category(layout, folder, maps, images, validation_images, config)


def _sized(array: np.ndarray, path: Path, image: TestImage) -> np.ndarray:
    size = io.image_size(image.image_path)
    if array.shape != size:
        raise ValueError(
            f"ground truth {path} is {array.shape[0]}x{array.shape[1]} but its image "
            f"{image.image_path} is {size[0]}x{size[1]}"
        )
    return array


def _loco_defects(
    image: TestImage, config: Sequence[dict[str, Any]], max_defects: int
) -> tuple[np.ndarray, np.ndarray]:
    """(masks (D, H, W) bool, saturation areas (D,)) of one MVTec LOCO image."""
    if not image.mask_paths:
        height, width = io.image_size(image.image_path)
        return np.zeros((max_defects, height, width), bool), np.zeros(max_defects, np.float32)
    arrays = []
    for path in image.mask_paths:
        array = _sized(io._read_array(path)[0], path, image)
        io._check_numeric(array, str(path), "a defect mask")
        if not np.any(array):
            raise ValueError(
                f"ground truth {path}: expected one defect (non-zero pixels), got none"
            )
        arrays.append(array)
    try:
        return defects_from_ground_truth(arrays, config, max_defects=max_defects)
    except ValueError as error:
        folder = image.mask_paths[0].parent
        raise ValueError(f"ground truth {folder}: {error}") from error


def iter_batches(
    category: Category,
    batch_size: int,
    resize: str = "bilinear",
    *,
    max_defects: int | None = None,
    images: Sequence[TestImage] | None = None,
) -> Iterator[dict[str, Any]]:
    """The category's test images (or ``images``) batch by batch, as dicts of host arrays.

    Fields: ``anomaly_map`` (N, H, W) float32 resized to the mask size, ``gt_mask`` (N, H, W)
    bool, ``gt_label`` (N,) int32, ``pred_score`` (N,) the map maxima, ``name`` (``"<defect>/<name>"``
    per image); MVTec LOCO adds ``defect_masks`` (N, D, H, W) and ``saturation_area`` (N, D),
    padded with empty masks to ``max_defects`` (default: the category's most).

    Raises:
        ValueError: a file cannot be read, a mask is not binary or not its image's size, a LOCO
            pixel value is not in ``defects_config.json``; the message names the file.
    """
    io._check_batch_size(batch_size)
    if resize not in io.RESIZE_METHODS:
        raise ValueError(f"resize must be one of {io.RESIZE_METHODS}, got {resize!r}")
    records = category.images if images is None else tuple(images)
    loco = category.layout == "mvtec_loco" and images is None
    depth = max(1, category.max_defects if max_defects is None else max_defects)
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        batch: dict[str, Any] = {}
        if loco:
            defects = [_loco_defects(image, category.defects_config, depth) for image in chunk]
            defect_masks = io._stack_same_shape(
                [masks for masks, _ in defects],
                [image.image_path for image in chunk],
                "ground truth of",
            )
            batch["defect_masks"] = defect_masks
            batch["saturation_area"] = np.stack([areas for _, areas in defects])
            gt_masks = defect_masks.any(axis=1)
        else:
            masks = [
                _sized(io.load_mask(image.mask_paths[0]), image.mask_paths[0], image)
                if image.mask_paths
                else np.zeros(io.image_size(image.image_path), bool)
                for image in chunk
            ]
            sources = [
                image.mask_paths[0] if image.mask_paths else image.image_path for image in chunk
            ]
            gt_masks = io._stack_same_shape(masks, sources, "mask of")
        maps = io._stack_same_shape(
            [io.load_map(image.map_path) for image in chunk],
            [image.map_path for image in chunk],
            "anomaly map",
        )
        anomaly_maps = io.resize_maps(maps, gt_masks.shape[1:], resize)
        batch.update(
            anomaly_map=anomaly_maps,
            gt_mask=gt_masks,
            gt_label=np.array([image.label for image in chunk], np.int32),
            pred_score=anomaly_maps.max(axis=(1, 2)),
            name=tuple(image.key for image in chunk),
        )
        yield batch
