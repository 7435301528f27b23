"""Evaluate a whole MVTec-layout dataset, category by category, with one suite.

A dataset root holds one folder per category in the MVTec AD layout
(``ROOT/<category>/test/<defect>/<name>.png``, ``ROOT/<category>/ground_truth/<defect>/<name>_mask.png``);
the maps root mirrors it by category (``MAPS/<category>/<defect>/<name>.<ext>``). Each category is
paired with :func:`jaxmetrics_ad.io.find_mvtec_pairs` and evaluated with
:func:`jaxmetrics_ad.suite.evaluate`, exactly as one category is; the results are nested
``{category: {metric: value}, "mean": {metric: mean over categories}}``. The mean ignores NaN
(a metric the data of a category leaves undefined, e.g. AUPIMO without enough normal pixels) and
a warning says over how many categories such a metric was averaged.
"""

from __future__ import annotations

import csv
import io as text_io
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MEAN = "mean"
"""Key (and table row) of the mean over categories."""


def find_categories(root: str | Path) -> list[str]:
    """Names of the categories under ``root``: visible folders holding a ``test`` folder, sorted.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: ``root`` holds no category.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("screw/test", "bottle/test", "notes"):
    ...     (root / name).mkdir(parents=True)
    >>> find_categories(root)
    ['bottle', 'screw']
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    found = sorted(
        entry.name
        for entry in root.iterdir()
        if not entry.name.startswith(".") and (entry / "test").is_dir()
    )
    if not found:
        raise ValueError(
            f"{root}: no category found; expected folders <category>/test/<defect>/<name>.png "
            "(MVTec AD layout)"
        )
    if MEAN in found:
        raise ValueError(f"{root}: a category may not be named {MEAN!r} (the mean row's name)")
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


def evaluate_dataset(
    root: str | Path,
    maps: str | Path,
    categories: Sequence[str] | None = None,
    *,
    batch_size: int | None = None,
    resize: str = "bilinear",
    on_error: str = "warn",
    compute_metric: Callable[[str, Any], float] | None = None,
    on_category: Callable[[str, int, int, Any], None] | None = None,
    **suite_options: Any,
) -> dict[str, dict[str, float]]:
    """Evaluate every category of an MVTec-layout dataset (or ``categories``) with one suite.

    Args:
        root: the dataset root, ``root/<category>/test/...`` and ``root/<category>/ground_truth/...``.
        maps: the anomaly maps root, ``maps/<category>/<defect>/<name>.<ext>``.
        categories: names to evaluate, in this order (default: all found, sorted).
        batch_size: images per batch (default: :func:`~jaxmetrics_ad.suite.batch_size_for`).
        resize: how maps are brought to the mask size (:data:`jaxmetrics_ad.io.RESIZE_METHODS`).
        on_error: ``"warn"`` (default: a metric undefined on a category is NaN with a warning) or
            ``"raise"``; see :func:`jaxmetrics_ad.suite.compute`. ``compute_metric`` replaces it.
        on_category: called as ``on_category(name, index, total, result)`` after each category
            (``result`` a :class:`~jaxmetrics_ad.suite.SuiteResult`), e.g. for progress.
        **suite_options: :func:`~jaxmetrics_ad.suite.build_suite`'s ``names``, ``exact``,
            ``num_bins``, ``fpr_limit`` (``metrics`` is accepted for ``names``).

    Returns:
        ``{category: {metric: value}, "mean": {metric: NaN-aware mean over the categories}}``.
        A metric that is NaN on some categories is averaged over the others, with a warning
        saying over how many.

    Raises:
        FileNotFoundError, ValueError: no category under ``root``, an unknown category (the
            message lists those found), a category without test images or maps, a bad file.
            Every selected category is paired before any is evaluated.
    """
    from jaxmetrics_ad import io, suite

    if "metrics" in suite_options:
        if "names" in suite_options:
            raise TypeError("give the metrics as names= or metrics=, not both")
        suite_options["names"] = suite_options.pop("metrics")
    root, maps = Path(root), Path(maps)
    chosen = select_categories(root, categories)
    evaluator = suite.build_suite(**suite_options)  # rejects bad options before reading files
    if not maps.is_dir():
        raise FileNotFoundError(f"anomaly maps folder not found: {maps}")
    records = {}
    for name in chosen:
        try:
            records[name] = io.find_mvtec_pairs(maps / name, root / name)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"category {name}: {error}") from error
    results: dict[str, dict[str, float]] = {}
    for index, name in enumerate(chosen):
        found = records[name]
        height, width = io.image_size(found[0].image_path)
        size = batch_size or suite.batch_size_for(len(found), height * width)
        batches = io.iter_mvtec_batches(found, size, resize)
        result = suite.evaluate(
            evaluator, batches, on_error=on_error, compute_metric=compute_metric
        )
        results[name] = dict(result.values)
        if on_category is not None:
            on_category(name, index, len(chosen), result)
    means, counts = mean_over_categories(results)
    for metric, count in counts.items():
        if count < len(chosen):
            nan_in = [name for name in chosen if np.isnan(results[name][metric])]
            warnings.warn(
                f"mean {metric} is over {count} of {len(chosen)} categories "
                f"(NaN in {', '.join(nan_in)})",
                UserWarning,
                stacklevel=2,
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
    """The nested results as JSON, NaN as ``null``."""
    document = {
        category: {n: (float(v) if np.isfinite(v) else None) for n, v in values.items()}
        for category, values in results.items()
    }
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def format_results(results: Mapping[str, Mapping[str, float]], path: str | Path) -> str:
    """The results as the file ``path`` names by its extension: ``.md``, ``.csv`` or ``.json``."""
    suffix = Path(path).suffix.lower()
    formats = {".md": format_markdown, ".csv": format_csv, ".json": format_json}
    if suffix not in formats:
        raise ValueError(f"{path}: expected a .md, .csv or .json file name, got {suffix!r}")
    text = formats[suffix](results)
    return text if text.endswith("\n") else text + "\n"
