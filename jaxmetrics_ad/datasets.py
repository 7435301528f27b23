"""Evaluate a whole dataset, category by category, with one suite or a benchmark's protocol.

A dataset root holds one folder per category, each in one of the layouts of
:mod:`jaxmetrics_ad.layouts` (MVTec AD, VisA after its 1cls split, MVTec AD 2, MVTec LOCO; detected
per category, or given as ``layout=``); the maps root mirrors it by category: the maps of
``ROOT/<category>/test/<defect>/<name>.png`` are ``MAPS/<category>/<defect>/<name>.<ext>``
(``test_public/`` for MVTec AD 2, whose validation maps are ``MAPS/<category>/validation/good/``).

The metrics are the default suite (:func:`jaxmetrics_ad.suite.build_suite`, ``names=`` a subset) or
a protocol's (:mod:`jaxmetrics_ad.protocols`, ``protocol="mvtec_ad"`` ...). The results are nested
``{category: {metric: value}, "mean": {metric: mean over categories}}`` (a
:class:`DatasetResults`, a dict that also carries per-image AUPIMO and the SegF1 thresholds). The
mean ignores NaN (a metric the data of a category leaves undefined, e.g. AUPIMO without enough
normal pixels) and a warning says over how many categories such a metric was averaged.

**One compile for the whole run.** Every category's batches are padded to one batch size per
image size (padded images are left out with ``valid=``), and the metrics' configurations do not
depend on the category (MVTec AD 2's SegF1 reads maps binarised on the host at the category's
threshold), so the jitted updates compiled for the first category serve the others.
"""

from __future__ import annotations

import csv
import io as text_io
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MEAN = "mean"
"""Key (and table row) of the mean over categories."""
PER_IMAGE = "per_image"
"""Key of the per-image values in the JSON output (read by ``jaxmetrics-ad compare``)."""
PROTOCOL = "protocol"
"""Key of the protocol's settings in the JSON output."""
_RESERVED = (MEAN, PER_IMAGE, PROTOCOL)


class DatasetResults(dict):
    """``{category: {metric: value}, "mean": {...}}``, plus what a table has no room for.

    Attributes:
        per_image: ``{metric: {"<category>/<defect>/<name>": value}}`` (per-image AUPIMO when the
            suite has AUPIMO; NaN for normal images), the values ``jm.compare_per_image`` pairs.
        thresholds: MVTec AD 2: ``{category: SegF1 threshold}`` fitted on ``validation/good``.
        layouts: ``{category: layout}`` as read.
        protocol: the protocol's name, or None for the default suite.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.per_image: dict[str, dict[str, float]] = {}
        self.thresholds: dict[str, float] = {}
        self.layouts: dict[str, str] = {}
        self.protocol: str | None = None


def find_categories(root: str | Path) -> list[str]:
    """Names of the categories under ``root``: visible folders holding ``test`` (MVTec AD, VisA,
    MVTec LOCO) or ``test_public`` (MVTec AD 2), sorted.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: ``root`` holds no category.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("screw/test", "bottle/test", "can/test_public", "notes"):
    ...     (root / name).mkdir(parents=True)
    >>> find_categories(root)
    ['bottle', 'can', 'screw']
    """
    from jaxmetrics_ad import layouts

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    found = sorted(
        entry.name
        for entry in root.iterdir()
        if not entry.name.startswith(".") and layouts.is_category(entry)
    )
    if not found:
        raise ValueError(
            f"{root}: no category found; expected folders <category>/test/<defect>/<name>.png "
            "(MVTec AD, VisA, MVTec LOCO) or <category>/test_public/... (MVTec AD 2)"
        )
    reserved = [name for name in found if name in _RESERVED]
    if reserved:
        raise ValueError(
            f"{root}: a category may not be named {reserved[0]!r} (reserved for the results' "
            f"{', '.join(_RESERVED)})"
        )
    return found


def select_categories(root: str | Path, categories: Sequence[str] | None = None) -> list[str]:
    """``categories`` (default: all found under ``root``), checked against those found.

    Raises:
        ValueError: an unknown or repeated name, or an empty selection; the message lists the
            categories found.
    """
    found = find_categories(root)
    if categories is None:
        return found
    if isinstance(categories, str):
        categories = [categories]
    chosen = list(categories)
    listed = ", ".join(found)
    if not chosen:
        raise ValueError(f"categories: choose at least one; found: {listed}")
    unknown = [name for name in chosen if name not in found]
    if unknown:
        raise ValueError(f"unknown categories {unknown} in {root}; found: {listed}")
    repeated = sorted({name for name in chosen if chosen.count(name) > 1})
    if repeated:
        raise ValueError(f"categories repeated: {repeated}")
    return chosen


def mean_over_categories(
    per_category: Mapping[str, Mapping[str, float]],
) -> tuple[dict[str, float], dict[str, int]]:
    """NaN-aware mean of each metric over categories, and how many categories each averages.

    >>> mean_over_categories({"a": {"m": 1.0, "n": float("nan")}, "b": {"m": 0.5, "n": 0.25}})
    ({'m': 0.75, 'n': 0.25}, {'m': 2, 'n': 1})
    """
    names = list(next(iter(per_category.values()), {}))
    means, counts = {}, {}
    for name in names:
        values = np.array([float(values[name]) for values in per_category.values()])
        finite = ~np.isnan(values)
        counts[name] = int(finite.sum())
        means[name] = float(np.mean(values[finite])) if finite.any() else float("nan")
    return means, counts


def _batch_sizes(categories: Mapping[str, Any], batch_size: int | None) -> dict[str, int]:
    """One batch size per image size, for every category of that size (so shapes agree)."""
    from jaxmetrics_ad import io, suite

    if batch_size is not None:
        return dict.fromkeys(categories, batch_size)
    pixels = {
        name: math.prod(io.image_size(category.images[0].image_path))
        for name, category in categories.items()
    }
    largest: dict[int, int] = {}
    for name, size in pixels.items():
        largest[size] = max(largest.get(size, 0), len(categories[name].images))
    return {
        name: max(1, min(largest[size], suite.BATCH_PIXELS // max(size, 1)))
        for name, size in pixels.items()
    }


def fit_validation_threshold(
    category: Any, batch_size: int, resize: str = "bilinear", k: float = 3.0
) -> float:
    """MVTec AD 2's SegF1 threshold: mean + ``k``·std of the pixels of the category's
    ``validation/good`` maps alone (:class:`~jaxmetrics_ad.ValidationThreshold`), each map resized to
    its image's size. ``category`` is a :class:`jaxmetrics_ad.layouts.Category` loaded with
    ``validation=True``."""
    import jaxmetrics_ad as jm
    from jaxmetrics_ad import layouts

    if not category.validation:
        raise ValueError(f"{category.folder}: no validation images to fit SegF1's threshold on")
    metric = jm.ValidationThreshold("mean_std", k=k)
    for batch in layouts.iter_batches(category, batch_size, resize, images=category.validation):
        padded, valid = jm.pad_batch({"anomaly_map": batch["anomaly_map"]}, batch_size)
        metric = metric.update(padded["anomaly_map"], valid=valid)
    return float(metric.compute())


def _compute_values(
    evaluator: Any,
    names: Mapping[str, str],
    on_error: str,
    compute_metric: Callable[[str, Any], float] | None,
) -> dict[str, float]:
    metrics = evaluator.metrics()
    values = {}
    for name, reported in names.items():
        metric = metrics[name]
        if compute_metric is not None:
            values[reported] = compute_metric(reported, metric)
            continue
        try:
            values[reported] = float(np.asarray(metric.compute()))
        except (ValueError, RuntimeError) as error:
            if on_error == "raise":
                raise
            warnings.warn(f"{reported} is NaN: {error}", UserWarning, stacklevel=3)
            values[reported] = float("nan")
    return values


def evaluate_category(
    category: Any,
    evaluator: Any,
    names: Mapping[str, str],
    batch_size: int,
    *,
    resize: str = "bilinear",
    on_error: str = "warn",
    compute_metric: Callable[[str, Any], float] | None = None,
    max_defects: int | None = None,
    threshold: float | None = None,
) -> tuple[Any, dict[str, float]]:
    """One category through ``evaluator``: every batch padded to ``batch_size``.

    Returns a :class:`~jaxmetrics_ad.suite.SuiteResult` (values under their reported ``names``)
    and the per-image AUPIMO ``{"<defect>/<name>": value}`` (empty without AUPIMO).
    ``threshold``: MVTec AD 2's SegF1 threshold (the batches then carry the binarised maps).
    """
    import jax

    import jaxmetrics_ad as jm
    from jaxmetrics_ad import layouts, protocols, suite

    read = {field for metric in evaluator.metrics().values() for field in metric.fields}
    start = time.perf_counter()
    num_images = num_anomalous = num_pixels = 0
    image_names: list[str] = []
    for batch in layouts.iter_batches(category, batch_size, resize, max_defects=max_defects):
        if protocols.SEGF1_FIELD in read:
            if threshold is None:
                raise ValueError("SegF1 needs the threshold fitted on the validation maps")
            batch[protocols.SEGF1_FIELD] = protocols.binarised(batch["anomaly_map"], threshold)
        missing = sorted(read - set(batch))
        if missing:
            raise ValueError(
                f"{category.folder}: the {category.layout} layout gives no {missing} "
                "(e.g. AU-sPRO needs MVTec LOCO's per-defect ground truth)"
            )
        padded, valid = jm.pad_batch({field: batch[field] for field in sorted(read)}, batch_size)
        evaluator = evaluator.update(padded, valid=valid)
        image_names += batch["name"]
        num_images += len(batch["name"])
        num_anomalous += int(np.count_nonzero(batch["gt_label"]))
        num_pixels += int(np.size(batch["anomaly_map"]))
    jax.block_until_ready(evaluator)
    computed = time.perf_counter()
    values = _compute_values(evaluator, names, on_error, compute_metric)
    per_image: dict[str, float] = {}
    aupimo = evaluator.metrics().get("pixel_AUPIMO")
    if aupimo is not None and aupimo.is_exact:
        try:
            per_image = dict(zip(image_names, protocols.per_image_aupimo(aupimo).tolist()))
        except (ValueError, RuntimeError):  # undefined on this data: its mean is NaN too
            per_image = dict.fromkeys(image_names, float("nan"))
    result = suite.SuiteResult(
        values=values,
        evaluator=evaluator,
        num_images=num_images,
        num_anomalous=num_anomalous,
        num_pixels=num_pixels,
        update_seconds=computed - start,
        compute_seconds=time.perf_counter() - computed,
    )
    return result, per_image


def evaluate_dataset(
    root: str | Path,
    maps: str | Path,
    categories: Sequence[str] | None = None,
    *,
    protocol: str | None = None,
    layout: str | None = None,
    batch_size: int | None = None,
    resize: str = "bilinear",
    on_error: str = "warn",
    compute_metric: Callable[[str, Any], float] | None = None,
    on_category: Callable[[str, int, int, Any], None] | None = None,
    segf1_k: float = 3.0,
    **suite_options: Any,
) -> DatasetResults:
    """Evaluate every category of a dataset root (or ``categories``) with one suite or protocol.

    Args:
        root: the dataset root, one folder per category (layouts: :mod:`jaxmetrics_ad.layouts`).
        maps: the anomaly maps root, ``maps/<category>/<defect>/<name>.<ext>``.
        categories: names to evaluate, in this order (default: all found, sorted).
        protocol: one of :data:`jaxmetrics_ad.protocols.PROTOCOLS` (``"mvtec_ad"``, ``"visa"``,
            ``"mvtec_ad2"``, ``"mvtec_loco"``): that benchmark's metrics under names that say what
            they are (``pixel_AUPRO@0.05``). Default: the suite (``names=`` picks a subset).
        layout: one of :data:`jaxmetrics_ad.layouts.LAYOUTS` for every category (default: detected
            per category).
        batch_size: images per batch (default: about :data:`~jaxmetrics_ad.suite.BATCH_PIXELS`
            pixels, one size for all categories of one image size).
        resize: how maps are brought to the mask size (:data:`jaxmetrics_ad.io.RESIZE_METHODS`).
        on_error: ``"warn"`` (default: a metric undefined on a category is NaN with a warning) or
            ``"raise"``. ``compute_metric(name, metric)`` replaces it.
        on_category: called as ``on_category(name, index, total, result)`` after each category
            (``result`` a :class:`~jaxmetrics_ad.suite.SuiteResult`), e.g. for progress.
        segf1_k: MVTec AD 2: SegF1's threshold is mean + ``segf1_k``·std of the validation pixels.
        **suite_options: :func:`~jaxmetrics_ad.suite.build_suite`'s ``names``, ``exact``,
            ``num_bins``, ``fpr_limit`` (``metrics`` is accepted for ``names``); with a protocol
            only ``exact`` and ``num_bins``.

    Returns:
        A :class:`DatasetResults`: ``{category: {metric: value}, "mean": {metric: NaN-aware mean
        over the categories}}``, with ``per_image`` AUPIMO and MVTec AD 2's ``thresholds``.

    Raises:
        FileNotFoundError, ValueError: no category under ``root``, an unknown category (the
            message lists those found), a folder of no known layout, a missing map, mask or
            validation folder, a bad file. Every selected category is paired before any is
            evaluated.
    """
    root, maps = Path(root), Path(maps)
    if layout is not None:
        from jaxmetrics_ad import layouts

        layouts.canonical_layout(layout)
    chosen = select_categories(root, categories)
    if not maps.is_dir():
        _build_spec(protocol, suite_options)  # rejects bad options before the missing folder
        raise FileNotFoundError(f"anomaly maps folder not found: {maps}")
    return evaluate_categories(
        {name: (root / name, maps / name) for name in chosen},
        protocol=protocol,
        layout=layout,
        batch_size=batch_size,
        resize=resize,
        on_error=on_error,
        compute_metric=compute_metric,
        on_category=on_category,
        segf1_k=segf1_k,
        **suite_options,
    )


def _build_spec(protocol: str | None, suite_options: dict[str, Any]) -> Any:
    from jaxmetrics_ad import protocols, suite

    if "metrics" in suite_options:
        if "names" in suite_options:
            raise TypeError("give the metrics as names= or metrics=, not both")
        suite_options["names"] = suite_options.pop("metrics")
    if protocol is not None:
        extra = sorted(set(suite_options) - {"exact", "num_bins"})
        if extra:
            raise TypeError(
                f"protocol={protocol!r} fixes the metrics and their FPR limits; drop {extra}"
            )
        return protocols.build_protocol(protocol, **suite_options)
    evaluator = suite.build_suite(**suite_options)
    names = {name: name for name in suite.reported_names(evaluator)}
    return protocols.ProtocolSuite(evaluator, names)


def evaluate_categories(
    folders: Mapping[str, tuple[str | Path, str | Path]],
    *,
    protocol: str | None = None,
    layout: str | None = None,
    batch_size: int | None = None,
    resize: str = "bilinear",
    on_error: str = "warn",
    compute_metric: Callable[[str, Any], float] | None = None,
    on_category: Callable[[str, int, int, Any], None] | None = None,
    segf1_k: float = 3.0,
    **suite_options: Any,
) -> DatasetResults:
    """:func:`evaluate_dataset` for categories given as ``{name: (category folder, maps folder)}``
    (e.g. one category folder on its own); the same arguments and results."""
    from jaxmetrics_ad import layouts

    spec = _build_spec(protocol, suite_options)  # rejects bad options before reading files
    chosen = list(folders)
    loaded = {}
    for name in chosen:
        folder, maps = (Path(path) for path in folders[name])
        try:
            loaded[name] = layouts.load_category(
                folder, maps, layout, validation=spec.needs_validation
            )
            if spec.needs_validation and loaded[name].layout != "mvtec_ad2":
                raise ValueError(
                    f"protocol {protocol!r} fits SegF1's threshold on MVTec AD 2's validation/good; "
                    f"{folder} is in the {loaded[name].layout} layout"
                )
            if spec.needs_defects and loaded[name].layout != "mvtec_loco":
                raise ValueError(
                    f"protocol {protocol!r} reads MVTec LOCO's per-defect ground truth and "
                    f"defects_config.json; {folder} is in the {loaded[name].layout} layout"
                )
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"category {name}: {error}") from error
    sizes = _batch_sizes(loaded, batch_size)
    max_defects = max(
        (c.max_defects for c in loaded.values() if c.layout == "mvtec_loco"), default=0
    )
    results = DatasetResults()
    results.protocol = protocol
    per_image: dict[str, float] = {}
    for index, name in enumerate(chosen):
        category = loaded[name]
        results.layouts[name] = category.layout
        threshold = None
        try:
            if spec.needs_validation:
                threshold = fit_validation_threshold(category, sizes[name], resize, segf1_k)
                results.thresholds[name] = threshold
            result, images = evaluate_category(
                category,
                spec.evaluator,
                spec.names,
                sizes[name],
                resize=resize,
                on_error=on_error,
                compute_metric=compute_metric,
                max_defects=max_defects or None,
                threshold=threshold,
            )
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"category {name}: {error}") from error
        results[name] = dict(result.values)
        per_image.update({f"{name}/{image}": value for image, value in images.items()})
        if on_category is not None:
            on_category(name, index, len(chosen), result)
    if per_image:
        results.per_image["pixel_AUPIMO"] = per_image
    means, counts = mean_over_categories({name: results[name] for name in chosen})
    for metric, count in counts.items():
        if count < len(chosen):
            nan_in = [name for name in chosen if np.isnan(results[name][metric])]
            warnings.warn(
                f"mean {metric} is over {count} of {len(chosen)} categories "
                f"(NaN in {', '.join(nan_in)})",
                UserWarning,
                stacklevel=3,
            )
    results[MEAN] = means
    return results


def _metric_names(results: Mapping[str, Mapping[str, float]]) -> list[str]:
    return list(results[MEAN]) if MEAN in results else list(next(iter(results.values()), {}))


def format_markdown(results: Mapping[str, Mapping[str, float]], digits: int = 4) -> str:
    """The nested results as a Markdown table: one row per category then the mean, metrics as columns.

    >>> print(format_markdown({"a": {"m": 0.5}, "mean": {"m": 0.5}}))
    | category | m |
    |---|---:|
    | a | 0.5000 |
    | mean | 0.5000 |
    """
    names = _metric_names(results)
    lines = ["| category | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for category, values in results.items():
        cells = ["NaN" if np.isnan(values[n]) else f"{values[n]:.{digits}f}" for n in names]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_csv(results: Mapping[str, Mapping[str, float]]) -> str:
    """The nested results as CSV (header ``category,<metrics>``), values at full precision."""
    names = _metric_names(results)
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["category", *names])
    for category, values in results.items():
        writer.writerow([category, *(repr(float(values[n])) for n in names)])
    return buffer.getvalue()


def format_json(results: Mapping[str, Mapping[str, float]]) -> str:
    """The nested results as JSON, NaN as ``null``.

    A :class:`DatasetResults` with per-image values adds ``"per_image": {metric: {image: value}}``
    (the layout ``jaxmetrics-ad compare`` reads, so two models' files compare directly), and one
    from a protocol adds ``"protocol": {"name", "layouts", "segf1_thresholds"}``.
    """
    document: dict[str, Any] = {
        category: {n: _json_number(v) for n, v in values.items()}
        for category, values in results.items()
    }
    if getattr(results, "protocol", None) is not None:
        document[PROTOCOL] = {
            "name": results.protocol,
            "layouts": dict(results.layouts),
            "segf1_thresholds": {k: _json_number(v) for k, v in results.thresholds.items()},
        }
    per_image = getattr(results, "per_image", None)
    if per_image:
        document[PER_IMAGE] = {
            metric: {image: _json_number(v) for image, v in values.items()}
            for metric, values in per_image.items()
        }
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def _json_number(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    r"""``text`` with LaTeX's special characters escaped.

    >>> print(latex_escape("pixel_AUPRO@0.3 & 50%"))
    pixel\_AUPRO@0.3 \& 50\%
    """
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def format_latex(results: Mapping[str, Mapping[str, float]], digits: int = 4) -> str:
    r"""The nested results as a booktabs ``tabular``: one row per category, a rule, the mean row.

    Needs ``\usepackage{booktabs}``; NaN prints as ``--``.

    >>> print(format_latex({"screw_a": {"image_AUROC": 0.5}, "mean": {"image_AUROC": 0.5}}))
    \begin{tabular}{lr}
    \toprule
    category & image\_AUROC \\
    \midrule
    screw\_a & 0.5000 \\
    \midrule
    mean & 0.5000 \\
    \bottomrule
    \end{tabular}
    """
    names = _metric_names(results)
    lines = [
        "\\begin{tabular}{l" + "r" * len(names) + "}",
        "\\toprule",
        " & ".join(["category", *map(latex_escape, names)]) + r" \\",
        "\\midrule",
    ]
    for category, values in results.items():
        if category == MEAN:
            lines.append("\\midrule")
        cells = ["--" if np.isnan(values[n]) else f"{values[n]:.{digits}f}" for n in names]
        lines.append(" & ".join([latex_escape(str(category)), *cells]) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines)


FORMATS = {".md": format_markdown, ".csv": format_csv, ".json": format_json, ".tex": format_latex}
"""Output formats by file extension."""


def format_results(results: Mapping[str, Mapping[str, float]], path: str | Path) -> str:
    """The results as the file ``path`` names by its extension: ``.md``, ``.csv``, ``.json`` or
    ``.tex`` (LaTeX, booktabs)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: expected a .md, .csv, .json or .tex file name, got {suffix!r}")
    text = FORMATS[suffix](results)
    return text if text.endswith("\n") else text + "\n"
