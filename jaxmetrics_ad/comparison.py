"""Paired comparison of two models image by image (the AUPIMO paper's protocol).

Given one value per image for each of two models on the same images (per-image AUPIMO from
``jm.AUPIMO(return_average=False)``, or any per-image metric), :func:`compare_per_image` pairs the
values, drops the images where either value is NaN (normal images have no AUPIMO) and reports:

* the paired **Wilcoxon signed-rank test** (``scipy.stats.wilcoxon``, its default
  ``zero_method="wilcox"``: zero differences are left out of the ranks) and the paired **t-test**
  (``scipy.stats.ttest_rel``), both with the same ``alternative``;
* the mean difference ``A − B`` and its t confidence interval (``ttest_rel``'s, so one-sided for a
  one-sided ``alternative``); the median difference;
* wins (``A > B``), losses (``A < B``) and ties (``A == B`` exactly);
* the per-image table (:meth:`Comparison.table`, :meth:`Comparison.to_markdown`).

Every statistic is scipy's own, computed in float64 on the host. The differences are ``a - b``, so
``alternative="greater"`` tests whether model A scores higher.

Per-image values come as arrays (paired by position, ``image_names`` optional), as mappings
``{image name: value}`` (paired by name: both must hold the same names), or as what
``AUPIMO(return_average=False).compute()`` returns (its ``AUPIMOResult``, or the
``(PIMOResult, AUPIMOResult)`` pair). The command line reads the JSON files described in
:func:`read_per_image` (``jaxmetrics-ad compare A.json B.json``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ALTERNATIVES = ("two-sided", "greater", "less")
"""The alternatives of both tests; ``greater``: model A's values are higher than model B's."""


def _per_image_values(values: Any, which: str) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """``(float64 values, names or None)`` of one model's per-image values."""
    if isinstance(values, tuple) and len(values) == 2 and hasattr(values[1], "aupimos"):
        values = values[1]  # AUPIMO(return_average=False).compute() -> (PIMOResult, AUPIMOResult)
    if hasattr(values, "aupimos"):
        values = values.aupimos
    names = None
    if isinstance(values, Mapping):
        names = tuple(str(name) for name in values)
        values = [np.nan if v is None else v for v in values.values()]
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{which}: expected per-image numbers (an array, a list or a mapping image -> value), "
            f"got {type(values).__name__}"
        ) from error
    if array.ndim != 1:
        raise ValueError(f"{which}: expected one value per image (1-D), got shape {array.shape}")
    if np.any(np.isinf(array)):
        raise ValueError(f"{which}: {int(np.isinf(array).sum())} values are infinite")
    return array, names


def _paired(
    a: Any, b: Any, image_names: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    values_a, names_a = _per_image_values(a, "a")
    values_b, names_b = _per_image_values(b, "b")
    if (names_a is None) != (names_b is None):
        raise ValueError(
            "a and b: one holds image names (a mapping) and the other does not; give both as "
            "mappings image -> value or both as arrays"
        )
    if names_a is not None and names_b is not None:
        if image_names is not None:
            raise ValueError("image_names: the mappings name their images already")
        if set(names_a) != set(names_b):
            only_a = sorted(set(names_a) - set(names_b))
            only_b = sorted(set(names_b) - set(names_a))
            raise ValueError(
                f"the two models were evaluated on different images: {len(only_a)} only in a "
                f"{_few(only_a)}, {len(only_b)} only in b {_few(only_b)}"
            )
        if len(set(names_a)) != len(names_a):
            raise ValueError("a: an image name appears twice")
        position = {name: index for index, name in enumerate(names_b)}
        values_b = values_b[[position[name] for name in names_a]]
        return values_a, values_b, names_a
    if values_a.shape != values_b.shape:
        raise ValueError(
            f"a has {values_a.size} images but b has {values_b.size}; both must hold the same images"
        )
    if image_names is None:
        names = tuple(str(index) for index in range(values_a.size))
    else:
        names = tuple(str(name) for name in image_names)
        if len(names) != values_a.size:
            raise ValueError(f"image_names: expected {values_a.size} names, got {len(names)}")
    return values_a, values_b, names


def _few(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"({shown}{', ...' if len(names) > limit else ''})" if names else ""


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The paired comparison of two models' per-image values (see :func:`compare_per_image`).

    Attributes:
        names: the two models' names ``(A, B)``.
        images: names of the images compared (both values finite), in input order.
        a, b: their values (float64).
        dropped: images left out because a value is NaN; ``dropped_only_a`` / ``dropped_only_b``
            count those where only model A's / only model B's value is NaN.
        alternative, confidence: as given.
        wilcoxon_statistic, wilcoxon_pvalue: ``scipy.stats.wilcoxon(a, b, alternative=...)``.
        ttest_statistic, ttest_pvalue, ttest_df: ``scipy.stats.ttest_rel(a, b, alternative=...)``.
        mean_difference, ci_low, ci_high: mean of ``a - b`` and ``ttest_rel``'s confidence interval
            at ``confidence``.
        median_difference: median of ``a - b``.
        wins, losses, ties: images with ``a > b``, ``a < b``, ``a == b``.
    """

    names: tuple[str, str]
    images: tuple[str, ...]
    a: np.ndarray
    b: np.ndarray
    dropped: tuple[str, ...]
    dropped_only_a: int
    dropped_only_b: int
    alternative: str
    confidence: float
    wilcoxon_statistic: float
    wilcoxon_pvalue: float
    ttest_statistic: float
    ttest_pvalue: float
    ttest_df: float
    mean_difference: float
    ci_low: float
    ci_high: float
    median_difference: float
    wins: int
    losses: int
    ties: int

    @property
    def num_images(self) -> int:
        """Images compared (both values finite)."""
        return len(self.images)

    @property
    def differences(self) -> np.ndarray:
        """``a - b`` per compared image."""
        return self.a - self.b

    def table(self) -> list[dict[str, Any]]:
        """One row per compared image: ``image``, both values, ``difference``, ``outcome``.

        ``outcome`` is ``"win"`` when model A's value is higher, ``"loss"`` when lower, else ``"tie"``.
        """
        outcomes = np.where(self.a > self.b, "win", np.where(self.a < self.b, "loss", "tie"))
        return [
            {
                "image": image,
                self.names[0]: float(value_a),
                self.names[1]: float(value_b),
                "difference": float(value_a - value_b),
                "outcome": str(outcome),
            }
            for image, value_a, value_b, outcome in zip(self.images, self.a, self.b, outcomes)
        ]

    def summary(self) -> dict[str, Any]:
        """The statistics without the per-image table (NaN becomes None, JSON-ready)."""
        return {
            "models": list(self.names),
            "num_images": self.num_images,
            "num_dropped": len(self.dropped),
            "dropped_only_a": self.dropped_only_a,
            "dropped_only_b": self.dropped_only_b,
            "alternative": self.alternative,
            "confidence": self.confidence,
            f"mean_{self.names[0]}": _number(np.mean(self.a)) if self.num_images else None,
            f"mean_{self.names[1]}": _number(np.mean(self.b)) if self.num_images else None,
            "mean_difference": _number(self.mean_difference),
            "ci_low": _number(self.ci_low),
            "ci_high": _number(self.ci_high),
            "median_difference": _number(self.median_difference),
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "wilcoxon_statistic": _number(self.wilcoxon_statistic),
            "wilcoxon_pvalue": _number(self.wilcoxon_pvalue),
            "ttest_statistic": _number(self.ttest_statistic),
            "ttest_pvalue": _number(self.ttest_pvalue),
            "ttest_df": _number(self.ttest_df),
        }

    def to_dict(self) -> dict[str, Any]:
        """:meth:`summary` plus ``per_image`` (the :meth:`table` rows) and ``dropped`` (names)."""
        return {**self.summary(), "dropped": list(self.dropped), "per_image": self.table()}

    def to_markdown(self, max_rows: int | None = None) -> str:
        """The per-image table as Markdown, largest ``|difference|`` first, then the statistics.

        ``max_rows`` keeps only that many image rows (the statistics cover every image).
        """
        rows = sorted(self.table(), key=lambda row: -abs(row["difference"]))
        shown = rows if max_rows is None else rows[:max_rows]
        first, second = self.names
        lines = [
            f"| image | {first} | {second} | difference | outcome |",
            "|---|---:|---:|---:|---|",
        ]
        lines += [
            f"| {row['image']} | {row[first]:.4f} | {row[second]:.4f} | "
            f"{row['difference']:+.4f} | {row['outcome']} |"
            for row in shown
        ]
        if len(shown) < len(rows):
            lines.append(f"| ... {len(rows) - len(shown)} more images | | | | |")
        return "\n".join(lines) + "\n\n" + self.report()

    def report(self) -> str:
        """The statistics as a few lines of text."""
        first, second = self.names
        percent = f"{100 * self.confidence:g}%"
        lines = [
            f"{first} vs {second}: {self.num_images} images compared"
            + (f", {len(self.dropped)} dropped (NaN)" if self.dropped else ""),
            f"mean {first} {_text(np.mean(self.a) if self.num_images else math.nan)}, "
            f"mean {second} {_text(np.mean(self.b) if self.num_images else math.nan)}",
            f"mean difference ({first} - {second}) {_text(self.mean_difference, '+.4f')}, "
            f"{percent} CI [{_text(self.ci_low, '+.4f')}, {_text(self.ci_high, '+.4f')}], "
            f"median {_text(self.median_difference, '+.4f')}",
            f"{first} wins {self.wins}, loses {self.losses}, ties {self.ties}",
            f"Wilcoxon signed-rank ({self.alternative}): W = {_text(self.wilcoxon_statistic, 'g')}, "
            f"p = {_text(self.wilcoxon_pvalue, '.4g')}",
            f"paired t-test ({self.alternative}): t = {_text(self.ttest_statistic, '.4f')}, "
            f"df = {_text(self.ttest_df, 'g')}, p = {_text(self.ttest_pvalue, '.4g')}",
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        first, second = self.names
        return (
            f"Comparison({first!r} vs {second!r}: {self.num_images} images, "
            f"{len(self.dropped)} dropped; mean difference {_text(self.mean_difference, '+.4g')} "
            f"[{_text(self.ci_low, '+.4g')}, {_text(self.ci_high, '+.4g')}]; "
            f"wins/losses/ties {self.wins}/{self.losses}/{self.ties}; "
            f"Wilcoxon p={_text(self.wilcoxon_pvalue, '.3g')}, t-test p={_text(self.ttest_pvalue, '.3g')})"
        )


def _number(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _text(value: Any, spec: str = ".4f") -> str:
    value = float(value)
    if math.isnan(value):
        return "nan"
    return format(value, spec)


def compare_per_image(
    a: Any,
    b: Any,
    *,
    names: tuple[str, str] = ("A", "B"),
    image_names: Sequence[str] | None = None,
    alternative: str = "two-sided",
    confidence: float = 0.95,
) -> Comparison:
    """Compare two models image by image: Wilcoxon signed-rank test, paired t-test, mean difference.

    Args:
        a, b: each model's per-image values: arrays paired by position, mappings
            ``{image name: value}`` paired by name (None is NaN), or an ``AUPIMOResult`` (or the
            ``(PIMOResult, AUPIMOResult)`` pair) from ``AUPIMO(return_average=False).compute()``.
        names: the models' names, used in the table and the report.
        image_names: names of the images for array inputs (default: their positions).
        alternative: ``"two-sided"``, ``"greater"`` (A higher than B) or ``"less"``.
        confidence: the level of the mean difference's confidence interval.

    Images where either value is NaN are dropped and counted. A test that scipy cannot compute on
    so few images gives NaN (e.g. the t-test with one image).

    Raises:
        ValueError: different images (names or counts), infinite values, no image with two finite
            values, a bad ``alternative`` or ``confidence``.

    Example:
        >>> import numpy as np, jaxmetrics_ad as jm
        >>> a = np.array([0.9, 0.8, np.nan, 0.7, 0.95, 0.6])
        >>> b = np.array([0.85, 0.82, np.nan, 0.5, 0.9, 0.4])
        >>> c = jm.compare_per_image(a, b, names=("ours", "baseline"))
        >>> c.num_images, len(c.dropped), (c.wins, c.losses, c.ties)
        (5, 1, (4, 1, 0))
        >>> round(c.mean_difference, 4), round(c.wilcoxon_pvalue, 4), round(c.ttest_pvalue, 4)
        (0.096, 0.125, 0.0963)
        >>> print(c.to_markdown(max_rows=2).splitlines()[2])
        | 3 | 0.7000 | 0.5000 | +0.2000 | win |
    """
    from scipy import stats

    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    names = tuple(str(name) for name in names)
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"names: expected two different model names, got {names!r}")
    values_a, values_b, images = _paired(a, b, image_names)
    nan_a, nan_b = np.isnan(values_a), np.isnan(values_b)
    keep = ~(nan_a | nan_b)
    if not keep.any():
        raise ValueError(
            f"no image has a value for both models ({values_a.size} images, every one NaN in a or b)"
        )
    kept_a, kept_b = values_a[keep], values_b[keep]
    difference = kept_a - kept_b
    with warnings.catch_warnings():  # tiny or constant samples: scipy warns and returns NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            wilcoxon = stats.wilcoxon(kept_a, kept_b, alternative=alternative)
            w_statistic, w_pvalue = float(wilcoxon.statistic), float(wilcoxon.pvalue)
        except ValueError:  # scipy refuses, e.g. every difference zero in some versions
            w_statistic = w_pvalue = math.nan
        ttest = stats.ttest_rel(kept_a, kept_b, alternative=alternative)
        interval = ttest.confidence_interval(confidence)
    return Comparison(
        names=names,  # type: ignore[arg-type]
        images=tuple(name for name, kept in zip(images, keep) if kept),
        a=kept_a,
        b=kept_b,
        dropped=tuple(name for name, kept in zip(images, keep) if not kept),
        dropped_only_a=int(np.sum(nan_a & ~nan_b)),
        dropped_only_b=int(np.sum(nan_b & ~nan_a)),
        alternative=alternative,
        confidence=confidence,
        wilcoxon_statistic=w_statistic,
        wilcoxon_pvalue=w_pvalue,
        ttest_statistic=float(ttest.statistic),
        ttest_pvalue=float(ttest.pvalue),
        ttest_df=float(ttest.df),
        mean_difference=float(np.mean(difference)),
        ci_low=float(interval.low),
        ci_high=float(interval.high),
        median_difference=float(np.median(difference)),
        wins=int(np.sum(difference > 0)),
        losses=int(np.sum(difference < 0)),
        ties=int(np.sum(difference == 0)),
    )


def read_per_image(path: str | Path) -> tuple[dict[str, float] | list[float], str | None]:
    """One model's per-image values from a JSON file, and its model name if the file gives one.

    Accepted layouts (``null`` is NaN, e.g. AUPIMO of a normal image):

    * ``{"per_image": {"image name": value, ...}}`` — paired with the other file by image name;
    * ``{"per_image": [value, ...]}`` or a bare list ``[value, ...]`` — paired by position;
    * a bare mapping ``{"image name": value, ...}``.

    An optional top-level ``"model"`` string names the model. ``per_image`` may instead map metric
    names to such mappings/lists (``{"per_image": {"pixel_AUPIMO": {...}}}``) when it holds exactly
    one. The JSON that ``jaxmetrics-ad evaluate``/``demo --output x.json`` writes is such a file when
    its suite has AUPIMO (``"per_image": {"pixel_AUPIMO": {...}}``, images named
    ``<defect>/<name>``, or ``<category>/<defect>/<name>`` for a dataset root); otherwise write it
    from ``AUPIMO(return_average=False)`` (see :func:`write_per_image`).

    Raises:
        ValueError: the file is missing, not JSON, or not one of the layouts (one line, naming it).

    Example:
        >>> import json, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.json"
        >>> _ = path.write_text(json.dumps({"model": "ours", "per_image": {"x": 0.5, "y": None}}))
        >>> read_per_image(path)
        ({'x': 0.5, 'y': nan}, 'ours')
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ValueError(f"{path}: file not found") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read: {error}") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    model = None
    values: Any = document
    if isinstance(document, dict) and "per_image" in document:
        model = document.get("model")
        if model is not None and not isinstance(model, str):
            raise ValueError(f"{path}: 'model' must be a string, got {model!r}")
        values = document["per_image"]
        if (
            isinstance(values, dict)
            and values
            and all(isinstance(v, (dict, list)) for v in values.values())
        ):
            if len(values) != 1:
                raise ValueError(
                    f"{path}: 'per_image' holds several metrics {sorted(values)}; keep one"
                )
            values = next(iter(values.values()))
    if isinstance(values, dict):
        return {str(k): _file_number(v, path, f"image {k!r}") for k, v in values.items()}, model
    if isinstance(values, list):
        return [_file_number(v, path, f"entry {i}") for i, v in enumerate(values)], model
    raise ValueError(
        f'{path}: expected {{"per_image": {{image: value}}}}, {{"per_image": [values]}}, a '
        f"list or a mapping of per-image values, got {type(values).__name__}"
    )


def _file_number(value: Any, path: Path, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: {where}: expected a number or null, got {value!r}")
    return float(value)


def write_per_image(
    path: str | Path,
    values: Any,
    *,
    image_names: Sequence[str] | None = None,
    model: str | None = None,
) -> None:
    """Write one model's per-image values as :func:`read_per_image` reads them (NaN as null).

    ``values`` is what :func:`compare_per_image` accepts for one model.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.json"
        >>> write_per_image(path, np.array([np.nan, 0.25]), image_names=["good/0", "crack/1"])
        >>> read_per_image(path)
        ({'good/0': nan, 'crack/1': 0.25}, None)
    """
    array, names = _per_image_values(values, "values")
    if names is None:
        names = (
            tuple(str(name) for name in image_names)
            if image_names is not None
            else tuple(str(index) for index in range(array.size))
        )
    if len(names) != array.size:
        raise ValueError(f"image_names: expected {array.size} names, got {len(names)}")
    document: dict[str, Any] = {} if model is None else {"model": model}
    document["per_image"] = {
        name: (None if math.isnan(value) else float(value)) for name, value in zip(names, array)
    }
    Path(path).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
