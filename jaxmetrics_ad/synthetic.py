"""Generate a deterministic, MVTec-like anomaly-detection test set in memory, for demos and tests.

Ground truth looks like MVTec AD's: most defective images have several defect regions of different
kinds — smooth irregular blobs, stains made of thresholded smooth noise (often several pieces),
thin 1–3 px scratches along random polylines, and small chips that touch only at a corner (one
region under 8-connectivity, two under 4-connectivity: the case that tells labellers apart).

Anomaly maps imitate a decent but imperfect detector: smooth background noise with a per-image
offset, responses on the defects that are blurred, of varying strength and only partly cover each
defect (thin scratches come out weaker), and false-positive bumps on normal and defective images
alike. With the defaults, pixel AUROC lands around 0.94–0.96, AUPRO (FPR ≤ 0.3) around 0.84 and
image AUROC around 0.96, so curves look like those of a real model rather than a perfect one.

Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed`` — no downloads, no
SciPy — and 300 images of 256×256 take about 1.5 s on two CPU cores.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxmetrics_ad.io import ArrayDataset

DEFECT_TYPES = ("blob", "scratch", "stain", "mixed")
NORMAL_TYPE = "good"

# Sizes below are in pixels of a 256-px image and scale with the image, except scratch thickness.
_BACKGROUND_SIGMA = 4.0
_COVERAGE_SIGMA = 6.0
_RESPONSE_SIGMA = 1.0
_STAIN_SIGMA = 4.0
_CHUNK_SIZE = 32
# Detector model, in units of the background noise's standard deviation (tuned so that pixel AUROC
# and AUPRO land in the ranges stated above).
_RESPONSE_LEVELS = (3.0, 9.0)
_IMAGE_OFFSET_STD = 0.2
_COVERAGE_MEAN = 0.8
_COVERAGE_SPREAD = 0.5
_COVERAGE_FLOOR = 0.3
_BUMPS_PER_IMAGE = 0.6
_BUMP_LEVELS = (2.0, 5.0)


@dataclasses.dataclass(frozen=True)
class SyntheticCategory(ArrayDataset):
    """An in-memory test set: maps, masks, labels, image scores and the defect type of each image.

    Attributes:
        anomaly_maps: float32 (N, H, W) pixel scores in (0, 1).
        gt_masks: bool (N, H, W) ground-truth defect masks, all false for normal images.
        gt_labels: int32 (N,) 1 for defective images, 0 for normal ones.
        pred_scores: float32 (N,) image scores, the maximum of each map.
        defect_types: (N,) ``"good"`` or one of :data:`DEFECT_TYPES`.

    >>> category = make_category(num_normal=2, num_anomalous=2, size=(32, 32))
    >>> len(category), category.anomaly_maps.shape
    (4, (4, 32, 32))
    """

    defect_types: tuple[str, ...]


def _gaussian_transfer(height: int, width: int, sigma: float) -> np.ndarray:
    """Frequency response of a Gaussian blur on an (height, width) grid, in rfft2 layout."""
    frequency_y = np.fft.fftfreq(height).astype(np.float32)[:, None]
    frequency_x = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    return np.exp(-2.0 * np.pi**2 * sigma**2 * (frequency_y**2 + frequency_x**2))


def _gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-blur the last two axes through the FFT (periodic boundary), keeping float32."""
    height, width = images.shape[-2:]
    spectrum = np.fft.rfft2(images) * _gaussian_transfer(height, width, sigma)
    return np.fft.irfft2(spectrum, s=(height, width)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise with unit standard deviation per image.

    Drawn directly in the frequency domain, and only where the blur lets anything through: that
    skips the forward FFT and most of the random numbers.
    """
    *batch_shape, height, width = shape
    transfer = _gaussian_transfer(height, width, sigma).ravel()
    passed = np.flatnonzero(transfer > 1e-6)
    num_images = int(np.prod(batch_shape))
    spectrum = np.zeros((num_images, transfer.size), np.complex64)
    real, imaginary = rng.standard_normal((2, num_images, passed.size), dtype=np.float32)
    spectrum[:, passed] = (real + 1j * imaginary) * transfer[passed]
    spectrum = spectrum.reshape(num_images, height, -1)
    noise = np.fft.irfft2(spectrum, s=(height, width)).astype(np.float32)
    noise /= noise.std(axis=(-2, -1), keepdims=True)
    return noise.reshape(shape)


def _combine_patch(target: np.ndarray, top: int, left: int, patch: np.ndarray, combine) -> None:
    """Combine a 2-D patch into target at (top, left) in place, clipping it at the borders."""
    height, width = target.shape
    rows = slice(max(top, 0), min(top + patch.shape[0], height))
    cols = slice(max(left, 0), min(left + patch.shape[1], width))
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return
    patch = patch[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]
    combine(target[rows, cols], patch, out=target[rows, cols])


def _blob(rng: np.random.Generator, scale: float) -> np.ndarray:
    """A smooth irregular ellipse: its radius wobbles with a few low angular harmonics."""
    radius_y, radius_x = rng.uniform(4.0, 26.0, size=2) * scale
    extent = int(np.ceil(1.5 * max(radius_y, radius_x)))
    y, x = np.mgrid[-extent : extent + 1, -extent : extent + 1].astype(np.float32)
    rotation = rng.uniform(0.0, np.pi)
    along = x * np.cos(rotation) + y * np.sin(rotation)
    across = -x * np.sin(rotation) + y * np.cos(rotation)
    radius = np.hypot(along / radius_x, across / radius_y)
    angle = np.arctan2(across, along)
    boundary = np.ones_like(radius)
    for harmonic in (2, 3, 4):
        boundary += rng.uniform(0.0, 0.15) * np.cos(harmonic * angle + rng.uniform(0, 2 * np.pi))
    return radius <= boundary


def _stain(rng: np.random.Generator, scale: float) -> np.ndarray:
    """Thresholded smooth noise under a round window: one or several irregular pieces."""
    side = max(int(rng.uniform(30.0, 70.0) * scale), 5) | 1
    noise = _smooth_noise(rng, (side, side), _STAIN_SIGMA * scale)
    y, x = np.mgrid[:side, :side] - side // 2
    window = np.clip(1.0 - np.hypot(y, x) / (side / 2), 0.0, None)
    field = (noise + 1.5) * window
    return field >= np.quantile(field, 1.0 - rng.uniform(0.06, 0.2))


def _corner_chips(rng: np.random.Generator, scale: float) -> np.ndarray:
    """Two rectangles that touch only at one corner, diagonally."""
    height_a, width_a, height_b, width_b = np.maximum(
        rng.integers(3, 11, size=4) * scale, 2
    ).astype(int)
    chips = np.zeros((height_a + height_b, width_a + width_b), bool)
    chips[:height_a, :width_a] = True
    chips[height_a:, width_a:] = True
    return chips if rng.random() < 0.5 else chips[:, ::-1]


def _scratch(rng: np.random.Generator, scale: float) -> np.ndarray:
    """A 1–3 px thick polyline of one to three segments with gentle turns."""
    num_segments = rng.integers(1, 4)
    lengths = rng.uniform(20.0, 70.0, size=num_segments) * scale
    headings = rng.uniform(0.0, 2 * np.pi) + np.cumsum(
        np.r_[0.0, rng.uniform(-0.6, 0.6, size=num_segments - 1)]
    )
    # Sampling every quarter pixel makes consecutive rounded points 8-neighbours: no gaps.
    steps = np.concatenate(
        [
            np.repeat(np.c_[np.sin(heading), np.cos(heading)], int(4 * length), axis=0)
            for heading, length in zip(headings, lengths, strict=True)
        ]
    )
    points = np.rint(np.cumsum(0.25 * steps, axis=0)).astype(int)
    thickness = int(rng.integers(1, 4))
    points -= points.min(axis=0)
    canvas = np.zeros(points.max(axis=0) + thickness, bool)
    for offset_y in range(thickness):
        for offset_x in range(thickness):
            canvas[points[:, 0] + offset_y, points[:, 1] + offset_x] = True
    return canvas


def _draw_defects(
    rng: np.random.Generator, defect_type: str, strength: np.ndarray, scale: float
) -> None:
    """Paint the defects of one image into ``strength``: each shape carries its response level."""
    shapes = []
    if defect_type in ("blob", "mixed"):
        shapes += [
            _blob(rng, scale) for _ in range(rng.integers(1, 4 if defect_type == "blob" else 3))
        ]
        if rng.random() < 0.35:
            shapes.append(_corner_chips(rng, scale))
    if defect_type in ("scratch", "mixed"):
        shapes += [
            _scratch(rng, scale)
            for _ in range(rng.integers(1, 4 if defect_type == "scratch" else 3))
        ]
    if defect_type == "stain":
        shapes += [_stain(rng, scale) for _ in range(rng.integers(1, 3))]
    height, width = strength.shape
    for shape in shapes:
        top = int(rng.integers(-shape.shape[0] // 4, height - 3 * shape.shape[0] // 4))
        left = int(rng.integers(-shape.shape[1] // 4, width - 3 * shape.shape[1] // 4))
        # Real detectors respond to some defects much more strongly than to others.
        level = np.float32(rng.uniform(*_RESPONSE_LEVELS))
        _combine_patch(strength, top, left, np.where(shape, level, np.float32(0.0)), np.maximum)


def _false_positive_bumps(rng: np.random.Generator, latent: np.ndarray, scale: float) -> None:
    """Add Gaussian bumps where nothing is wrong, as real detectors do on texture and edges."""
    height, width = latent.shape
    for _ in range(rng.poisson(_BUMPS_PER_IMAGE)):
        sigma = rng.uniform(3.0, 8.0) * scale
        extent = int(3 * sigma)
        y, x = np.mgrid[-extent : extent + 1, -extent : extent + 1]
        bump = rng.uniform(*_BUMP_LEVELS) * np.exp(-(y**2 + x**2) / (2 * sigma**2))
        top, left = rng.integers(0, height) - extent, rng.integers(0, width) - extent
        _combine_patch(latent, int(top), int(left), bump.astype(np.float32), np.add)


def make_category(
    num_normal: int = 100,
    num_anomalous: int = 200,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
) -> SyntheticCategory:
    """Generate an MVTec-like category: normal and defective images with masks and anomaly maps.

    Images come in a random order (so every batch mixes normal and defective images); defective ones
    are spread evenly over :data:`DEFECT_TYPES`. The same arguments always give identical arrays.

    Args:
        num_normal: number of defect-free images.
        num_anomalous: number of defective images.
        size: (height, width) of every image; shapes and blur widths scale with it.
        seed: seed of the ``numpy.random.Generator`` everything is drawn from.

    >>> category = make_category(num_normal=3, num_anomalous=5, size=(64, 64), seed=1)
    >>> category.gt_masks.shape, category.gt_labels.sum(), category.defect_types.count("good")
    ((8, 64, 64), np.int64(5), 3)
    >>> bool((category.pred_scores == category.anomaly_maps.max(axis=(1, 2))).all())
    True
    """
    for name, count in (("num_normal", num_normal), ("num_anomalous", num_anomalous)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{name} must be a non-negative int, got {count!r}")
    if num_normal + num_anomalous == 0:
        raise ValueError("num_normal + num_anomalous must be at least 1")
    if len(size) != 2 or min(size) < 16:
        raise ValueError(f"size must be (height, width) with sides of at least 16, got {size}")
    height, width = (int(side) for side in size)
    rng = np.random.default_rng(seed)
    scale = min(height, width) / 256.0
    num_images = num_normal + num_anomalous

    anomalous_types = [DEFECT_TYPES[index % len(DEFECT_TYPES)] for index in range(num_anomalous)]
    defect_types = np.array([NORMAL_TYPE] * num_normal + anomalous_types)[
        rng.permutation(num_images)
    ]

    strength = np.zeros((num_images, height, width), np.float32)
    for image_index, defect_type in enumerate(defect_types):
        # Shapes may reach past the border; redraw in the rare case that none of a defect stays in.
        while defect_type != NORMAL_TYPE and not strength[image_index].any():
            _draw_defects(rng, str(defect_type), strength[image_index], scale)
    gt_masks = strength > 0

    anomaly_maps = np.empty((num_images, height, width), np.float32)
    for start in range(0, num_images, _CHUNK_SIZE):
        chunk = slice(start, min(start + _CHUNK_SIZE, num_images))
        chunk_shape = (chunk.stop - chunk.start, height, width)
        latent = _smooth_noise(rng, chunk_shape, _BACKGROUND_SIGMA * scale)
        latent += rng.normal(0.0, _IMAGE_OFFSET_STD, size=(chunk_shape[0], 1, 1)).astype(np.float32)
        coverage = np.clip(
            _COVERAGE_MEAN
            + _COVERAGE_SPREAD * _smooth_noise(rng, chunk_shape, _COVERAGE_SIGMA * scale),
            _COVERAGE_FLOOR,
            1,
        )
        latent += _gaussian_blur(strength[chunk], _RESPONSE_SIGMA * scale) * coverage
        for image_latent in latent:
            _false_positive_bumps(rng, image_latent, scale)
        # A logistic squashes the latent score into (0, 1) like a normalised detector output.
        anomaly_maps[chunk] = 1.0 / (1.0 + np.exp(3.0 - latent))

    return SyntheticCategory(
        anomaly_maps=anomaly_maps,
        gt_masks=gt_masks,
        gt_labels=(defect_types != NORMAL_TYPE).astype(np.int32),
        pred_scores=anomaly_maps.max(axis=(1, 2)),
        defect_types=tuple(str(defect_type) for defect_type in defect_types),
    )


LOCO_DEFECTS = (
    {
        "defect_name": "synthetic_logical",
        "pixel_value": 255,
        "saturation_threshold": 0.5,
        "relative_saturation": True,
    },
    {
        "defect_name": "synthetic_structural",
        "pixel_value": 254,
        "saturation_threshold": 40,
        "relative_saturation": False,
    },
)
"""The ``defects_config.json`` that :func:`write_category` writes for ``layout="mvtec_loco"``."""
_LOCO_FOLDERS = {"blob": 0, "stain": 0, "scratch": 1, "mixed": 1}


def loco_defects(mask: np.ndarray) -> list[np.ndarray]:
    """How :func:`write_category` splits a mask into MVTec LOCO defects: its left and right halves
    (those that hold defect pixels), one ground-truth image each.

    >>> mask = np.zeros((2, 4), bool)
    >>> mask[0, 0] = mask[1, 3] = True
    >>> [piece.nonzero()[1].tolist() for piece in loco_defects(mask)]
    [[0], [3]]
    """
    half = mask.shape[1] // 2
    pieces = []
    for columns in (slice(0, half), slice(half, None)):
        piece = np.zeros_like(mask, dtype=bool)
        piece[:, columns] = mask[:, columns]
        if piece.any():
            pieces.append(piece)
    return pieces


def write_category(
    data: SyntheticCategory,
    folder,
    maps,
    layout: str = "mvtec_ad",
    *,
    anomaly_maps: np.ndarray | None = None,
    validation_maps: np.ndarray | None = None,
) -> None:
    """Write a generated category to disk in a benchmark's layout, with its maps as ``.npy``.

    ``layout`` is one of :data:`jaxmetrics_ad.layouts.LAYOUTS`; the files are those
    :mod:`jaxmetrics_ad.layouts` reads (black test images of the maps' size, 0/255 masks, maps
    at ``maps/<defect>/<NNN>.npy``). ``anomaly_maps`` replaces ``data.anomaly_maps`` (e.g. a
    second model's); MVTec AD 2 also needs ``validation_maps`` (N, H, W) of defect-free images,
    written as ``validation/good``. MVTec LOCO: blob and stain images become
    ``logical_anomalies``, scratch and mixed ones ``structural_anomalies``, each mask split by
    :func:`loco_defects` into one ground-truth PNG per defect holding its type's pixel value
    (:data:`LOCO_DEFECTS`, written as ``defects_config.json``). Needs Pillow.

    >>> import tempfile, pathlib
    >>> base = pathlib.Path(tempfile.mkdtemp())
    >>> write_category(make_category(2, 2, size=(32, 32)), base / "can", base / "maps" / "can")
    >>> sorted(p.name for p in (base / "can").iterdir())
    ['ground_truth', 'test']
    """
    import json
    from pathlib import Path

    from PIL import Image

    from jaxmetrics_ad.layouts import canonical_layout

    layout = canonical_layout(layout)
    folder, maps = Path(folder), Path(maps)
    values = data.anomaly_maps if anomaly_maps is None else np.asarray(anomaly_maps, np.float32)

    def png(path: Path, pixels: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)

    def npy(path: Path, array: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)

    black = np.zeros(data.gt_masks.shape[1:], np.uint8)
    test = folder / ("test_public" if layout == "mvtec_ad2" else "test")
    for index, (kind, mask) in enumerate(zip(data.defect_types, data.gt_masks)):
        name = f"{index:03d}"
        if kind == NORMAL_TYPE:
            defect = NORMAL_TYPE
        elif layout == "mvtec_ad2":
            defect = "bad"
        elif layout == "mvtec_loco":
            defect = ("logical_anomalies", "structural_anomalies")[_LOCO_FOLDERS[kind]]
        else:
            defect = kind
        png(test / defect / f"{name}.png", black)
        npy(maps / defect / f"{name}.npy", values[index])
        if defect == NORMAL_TYPE:
            continue
        if layout == "mvtec_ad2":
            png(test / "ground_truth" / defect / f"{name}_mask.png", mask * np.uint8(255))
        elif layout == "mvtec_loco":
            value = LOCO_DEFECTS[_LOCO_FOLDERS[kind]]["pixel_value"]
            for number, piece in enumerate(loco_defects(mask)):
                path = folder / "ground_truth" / defect / name / f"{number:03d}.png"
                png(path, piece * np.uint8(value))
        else:
            png(folder / "ground_truth" / defect / f"{name}_mask.png", mask * np.uint8(255))
    if layout == "mvtec_loco":
        text = json.dumps(list(LOCO_DEFECTS), indent=2)
        (folder / "defects_config.json").write_text(text + "\n", encoding="utf-8")
    if layout == "mvtec_ad2":
        if validation_maps is None:
            raise ValueError("layout='mvtec_ad2' needs validation_maps (defect-free images)")
        for index, validation_map in enumerate(np.asarray(validation_maps, np.float32)):
            name = f"{index:03d}"
            png(
                folder / "validation" / "good" / f"{name}.png",
                np.zeros(validation_map.shape, np.uint8),
            )
            npy(maps / "validation" / "good" / f"{name}.npy", validation_map)
