"""The ``jaxmetrics-ad`` command line: evaluate anomaly maps on disk, or run a self-contained demo.

``jaxmetrics-ad demo`` generates an MVTec-like category in memory and evaluates the full suite
(:mod:`jaxmetrics_ad.suite`). ``jaxmetrics-ad evaluate`` reads anomaly maps and ground truth (MVTec
AD layout, or one ``.npz``), streams them in batches and prints, and optionally saves, the metric
table and curve plots. Run ``jaxmetrics-ad evaluate --help`` for the options. A ``--dataset`` root holding
several categories (``ROOT/<category>/test/...``) is evaluated category by category
(:func:`jaxmetrics_ad.datasets.evaluate_dataset`): one row per category plus their mean.

Pixel AUROC, AUPR, F1Max and AUPRO are binned by default: their state has a fixed size, so memory
stays flat however many images there are, and the certified bounds on |binned − exact| of AUROC and
AUPRO are printed. ``--exact`` keeps every pixel and sorts, reproducing the MVTec AD script and
anomalib to float precision; its memory grows with the pixels (~2 GB peak for 300 images of
256×256). Image metrics and AUPIMO are exact either way.

Compiled programs are kept in jax's persistent cache (``~/.cache/jaxmetrics_ad/xla``), so only the
first run on a given image size pays for compiling. Errors in the input end the run with one
message naming the file on stderr and exit status 1 (2 for a usage error); ``--output`` is written
whole or not at all. A metric that the data leaves undefined (e.g. AUPIMO without enough normal
pixels) is reported as NaN (``null`` in JSON) with a warning; a metric that fails for any other
reason (out of memory, a bug) ends the run with status 1 and writes nothing. Ctrl-C ends it with
status 130 and one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io as text_io
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxmetrics_ad import io, suite
from jaxmetrics_ad.classification import DEFAULT_NUM_BINS
from jaxmetrics_ad.layouts import LAYOUTS
from jaxmetrics_ad.protocols import PROTOCOLS

PROGRAM = "jaxmetrics-ad"
OUTPUT_SUFFIXES = (".json", ".csv")
DATASET_OUTPUT_SUFFIXES = (".md", ".csv", ".json", ".tex")
DEFAULT_FPR_LIMIT = 0.3
# How many curve points a PNG needs; exact curves have one point per distinct score.
_PLOT_POINTS = 20_000
# Exit status after Ctrl-C: 128 + SIGINT, as a shell reports a program that the signal ended.
EXIT_INTERRUPTED = 130
_PACKAGE_FOLDER = Path(__file__).resolve().parent
# jax logs, with a traceback, any exception raised inside a host callback before re-raising it.
_CALLBACK_LOGGER = "jax._src.callback"


class InputError(Exception):
    """A problem with the command's input that the user must fix (reported without a traceback)."""


class MetricFailure(Exception):
    """A metric failed to compute for a reason other than the data leaving it undefined."""


def _is_interrupt(error: BaseException) -> bool:
    """Ctrl-C, also when jax re-raised it from a host callback as a runtime error.

    jax reports an exception raised inside ``jax.pure_callback`` as a ``JaxRuntimeError`` whose
    message ends with the callback's traceback, the exception itself on the last line.
    """
    if isinstance(error, KeyboardInterrupt):
        return True
    last_line = (str(error).strip().splitlines() or [""])[-1]
    return isinstance(error, RuntimeError) and last_line.startswith("KeyboardInterrupt")


def _raised_here(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is in jaxmetrics_ad's own code."""
    frame = error.__traceback__
    if frame is None:
        return False
    while frame.tb_next is not None:
        frame = frame.tb_next
    return Path(frame.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_FOLDER)


def _undefined_by_data(error: BaseException) -> bool:
    """Whether a metric's exception means "undefined on this data", so that NaN is the answer.

    The metrics raise a plain ValueError or RuntimeError from their own code for that (AUPIMO with
    no normal image, or too few normal pixels to reach its FPR bound). Anything else is a failure:
    MemoryError, jax's runtime errors (out of device memory, an exception inside a host callback,
    which are RuntimeError subclasses), or a ValueError raised deep in numpy by a bug.
    """
    chain, link = [], error
    while link is not None and len(chain) < 32:
        chain.append(link)
        link = link.__cause__ or link.__context__
    return (
        type(error) in (ValueError, RuntimeError)
        and _raised_here(error)
        and not any(isinstance(link, (MemoryError, KeyboardInterrupt)) for link in chain)
    )


def _one_line(error: BaseException) -> str:
    r"""``error`` as one line; a traceback that jax folded into its message is cut to the exception.

    >>> _one_line(RuntimeError("INTERNAL: callback error: Traceback (most recent call last):\n"
    ...                        '  File "x.py", line 1\nMemoryError: 2 GiB'))
    'INTERNAL: MemoryError: 2 GiB'
    """
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if len(lines) > 1 and "Traceback (most recent call last)" in str(error):
        return f"{lines[0].split(':', 1)[0]}: {lines[-1]}"
    return " ".join(lines)


def _compute_metric(name: str, metric: Any) -> float:
    """One metric's value: NaN with a warning when the data leaves it undefined, else it raises.

    Raises:
        KeyboardInterrupt: Ctrl-C, also when jax re-raised it as a runtime error.
        MetricFailure: any other failure (out of memory, a bug): the run must not report a value.
    """
    import jax

    try:
        return float(jax.device_get(metric.compute()))
    except Exception as error:
        if _is_interrupt(error):
            raise KeyboardInterrupt from error
        if _undefined_by_data(error):
            warnings.warn(f"{name} is NaN: {error}", UserWarning, stacklevel=2)
            return float("nan")
        text = _one_line(error)
        if isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text:
            text += " (out of memory)"
        raise MetricFailure(
            f"{name}: expected a value (or NaN where the data leaves it undefined), got "
            f"{type(error).__name__} while computing: {text}; no results were written"
        ) from error


def _metric_names(text: str) -> list[str]:
    return [name for name in text.replace(",", " ").split() if name]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _fpr_limit(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a value in (0, 1], got {text}")
    return value


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--binned",
        dest="exact",
        action="store_false",
        help="pixel AUROC, AUPR, F1Max, AUPRO from auto-ranging bins: fixed-size state (default)",
    )
    mode.add_argument(
        "--exact",
        dest="exact",
        action="store_true",
        help="pixel metrics from every pixel, sorted (as the MVTec AD script); ~2 GB per 20 Mpx",
    )
    parser.set_defaults(exact=False)
    parser.add_argument(
        "--bins",
        type=_positive_int,
        default=DEFAULT_NUM_BINS,
        help=f"bins per binned pixel curve (default: {DEFAULT_NUM_BINS})",
    )
    parser.add_argument(
        "--metrics",
        type=_metric_names,
        default=None,
        help="comma-separated subset of: " + ", ".join(suite.SUITE_METRICS),
    )
    parser.add_argument(
        "--fpr-limit",
        type=_fpr_limit,
        default=None,
        help=f"FPR up to which AUPRO integrates (default: {DEFAULT_FPR_LIMIT}; a --protocol sets its own)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help=f"images per batch (default: about {suite.BATCH_PIXELS / 1e6:.0f} Mpx per batch)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=(
            "write the results to this .json or .csv file; for a dataset root or a --protocol "
            "also .md (Markdown) or .tex (LaTeX, booktabs); by extension"
        ),
    )
    parser.add_argument("--plots", type=Path, help="write ROC, PR, PRO and PIMO curves (PNG) here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--no-compile-cache",
        dest="compile_cache",
        action="store_false",
        help="do not keep compiled programs in ~/.cache/jaxmetrics_ad/xla for later runs",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``jaxmetrics-ad``.

    >>> build_parser().parse_args(["demo", "--images", "20"]).images
    20
    """
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Streaming evaluation metrics for visual anomaly detection."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="evaluate the full suite on a generated MVTec-like category (no downloads)",
        description="Generate a deterministic MVTec-like category in memory and evaluate it.",
    )
    demo.add_argument("--images", type=_positive_int, default=300, help="number of test images")
    demo.add_argument("--size", type=_positive_int, default=256, help="image height and width")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    _add_common_options(demo)

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate anomaly maps against ground truth on disk",
        description=(
            "Evaluate anomaly maps against ground truth: an MVTec AD category (--dataset, with "
            "test/<defect>/<name>.png and ground_truth/<defect>/<name>_mask.png) and one map per "
            "test image (--maps, <defect>/<name>.npy|.npz|.tiff|.png), or one .npz (--npz) with "
            "anomaly_maps, gt_masks and optionally pred_scores, gt_labels. Image scores default "
            "to the map maximum."
        ),
    )
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--dataset",
        type=Path,
        help=(
            "MVTec AD category folder (with --maps), or a dataset root holding several categories "
            "(<category>/test/...; --maps then mirrors it by category): one row per category "
            "plus their mean"
        ),
    )
    source.add_argument(
        "--npz", type=Path, help="one .npz file holding the whole set (read into memory at once)"
    )
    evaluate.add_argument("--maps", type=Path, help="anomaly maps folder mirroring test/")
    evaluate.add_argument(
        "--categories",
        type=_metric_names,
        default=None,
        help="with a dataset root: comma-separated categories to evaluate (default: all found)",
    )
    evaluate.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=None,
        help=(
            "a benchmark's metric set: mvtec_ad and visa (image AUROC, pixel AUROC, AU-PRO to FPR "
            "0.3), mvtec_ad2 (AU-PRO to FPR 0.05, SegF1 at a threshold fitted on validation/good, "
            "oracle F1Max), mvtec_loco (image AUROC, AU-sPRO to FPR 0.05); default: the suite"
        ),
    )
    evaluate.add_argument(
        "--layout",
        choices=("auto", *LAYOUTS),
        default="auto",
        help=(
            "folder layout of every category (default: detected per category): mvtec_ad "
            "(= visa after its 1cls split), mvtec_ad2 (test_public/), mvtec_loco "
            "(ground_truth/<defect>/<name>/000.png, defects_config.json)"
        ),
    )
    evaluate.add_argument(
        "--resize",
        choices=io.RESIZE_METHODS,
        default="bilinear",
        help="how maps are brought to the mask size (default: bilinear)",
    )
    _add_common_options(evaluate)

    compare = commands.add_parser(
        "compare",
        help="compare two models image by image (Wilcoxon signed-rank and paired t-test)",
        description=(
            "Compare two models' per-image values (e.g. per-image AUPIMO) on the same images: "
            "paired Wilcoxon signed-rank test, paired t-test, mean difference with its confidence "
            "interval, wins/losses/ties and the per-image table. Each file is JSON: "
            '{"model": "name", "per_image": {"image name": value or null, ...}} (paired by name), '
            '{"per_image": [values]} or a bare list (paired by position), or a bare mapping. '
            "Images where either value is null/NaN are dropped and counted."
        ),
    )
    compare.add_argument("a", type=Path, help="per-image values of model A (.json)")
    compare.add_argument("b", type=Path, help="per-image values of model B (.json)")
    compare.add_argument(
        "--names", nargs=2, metavar=("A", "B"), help="model names (default: the files' names)"
    )
    compare.add_argument(
        "--alternative",
        choices=("two-sided", "greater", "less"),
        default="two-sided",
        help="alternative of both tests; greater: A scores higher (default: two-sided)",
    )
    compare.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="level of the mean difference's confidence interval (default: 0.95)",
    )
    compare.add_argument(
        "--max-rows",
        type=int,
        default=20,
        help="image rows printed, largest |difference| first (default: 20; 0: none, -1: all)",
    )
    compare.add_argument("--output", type=Path, help="write the comparison to this .json file")
    return parser


def _is_dataset_root(args: argparse.Namespace) -> bool:
    """Whether ``evaluate --dataset`` names a root of several categories rather than one category."""
    from jaxmetrics_ad import layouts

    dataset = getattr(args, "dataset", None)
    return dataset is not None and dataset.is_dir() and not layouts.is_category(dataset)


def _layout(args: argparse.Namespace) -> str | None:
    layout = getattr(args, "layout", "auto")
    return None if layout in (None, "auto") else layout


def _one_category_in_dataset_engine(args: argparse.Namespace) -> bool:
    """One category folder evaluated as a one-row dataset: with a --protocol, or in a layout other
    than MVTec AD's (MVTec AD 2, MVTec LOCO), which only the dataset engine reads."""
    from jaxmetrics_ad import layouts

    dataset = getattr(args, "dataset", None)
    if dataset is None or not dataset.is_dir() or not layouts.is_category(dataset):
        return False
    if getattr(args, "protocol", None) is not None:
        return True
    layout = _layout(args)
    if layout is None:
        try:
            layout = layouts.detect_layout(dataset)
        except ValueError:
            return False  # the single-category reader names the problem
    return layouts.canonical_layout(layout) != "mvtec_ad"


def _uses_dataset_engine(args: argparse.Namespace) -> bool:
    return _is_dataset_root(args) or _one_category_in_dataset_engine(args)


def _check_output_paths(args: argparse.Namespace) -> None:
    """Fail before any work when the results could not be written."""
    if getattr(args, "protocol", None) is not None:
        if args.metrics is not None:
            raise InputError(f"--metrics: --protocol {args.protocol} fixes the metrics")
        if args.fpr_limit is not None:
            raise InputError(f"--fpr-limit: --protocol {args.protocol} fixes the FPR limits")
    if _uses_dataset_engine(args):
        if getattr(args, "categories", None) is not None and not _is_dataset_root(args):
            raise InputError(
                f"--categories: {args.dataset} is one category; give the dataset root that "
                "holds the categories"
            )
        _check_dataset_output(args)
        return
    if getattr(args, "categories", None) is not None:
        raise InputError(
            f"--categories: {args.dataset} is one category (it holds test/); give the dataset "
            "root that holds the categories"
        )
    if args.output is not None:
        if args.output.is_dir():
            raise InputError(
                f"--output {args.output}: expected a .json or .csv file name, got an existing folder"
            )
        if args.output.suffix.lower() not in OUTPUT_SUFFIXES:
            raise InputError(
                f"--output {args.output}: expected a .json or .csv file name, "
                f"got suffix {args.output.suffix!r}"
            )
        if not args.output.parent.is_dir():
            raise InputError(f"--output {args.output}: folder {args.output.parent} does not exist")
        if not os.access(args.output.parent, os.W_OK | os.X_OK):
            raise InputError(f"--output {args.output}: folder {args.output.parent} is not writable")
    if args.plots is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError as error:
            raise InputError(
                "--plots needs matplotlib, an optional dependency: pip install 'jaxmetrics_ad[plot]'"
            ) from error
        if args.plots.exists() and not args.plots.is_dir():
            raise InputError(f"--plots {args.plots}: exists and is not a folder")


@contextlib.contextmanager
def _progress(total: int, quiet: bool) -> Iterator[Any]:
    """A callback advancing a tqdm bar on stderr (none when quiet, not a terminal, or no tqdm)."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if quiet or tqdm is None:
        yield None
        return
    # disable=None: tqdm hides the bar when stderr is not a terminal (logs, pipes, tests)
    with tqdm(total=total, unit="img", file=sys.stderr, disable=None, leave=False) as bar:
        yield bar.update


def _mvtec_batches(args: argparse.Namespace) -> tuple[int, Iterator[io.Batch]]:
    if args.maps is None:
        raise InputError("--dataset needs --maps, the folder of anomaly maps")
    if not args.dataset.is_dir():
        raise InputError(f"dataset folder not found: {args.dataset}")
    records = io.find_mvtec_pairs(args.maps, args.dataset)
    batch_size = args.batch_size or suite.batch_size_for(
        len(records), _image_pixels(records[0].image_path)
    )
    return len(records), io.iter_mvtec_batches(records, batch_size, args.resize)


def _image_pixels(path: Path) -> int:
    """Pixels of an image, from its header (it sets the evaluation size of a normal image)."""
    height, width = io.image_size(path)
    return width * height


def _npz_batches(args: argparse.Namespace) -> tuple[int, Iterator[io.Batch]]:
    if args.maps is not None:
        raise InputError("--maps goes with --dataset; an --npz file holds the maps itself")
    dataset = io.load_npz_dataset(args.npz)
    image_pixels = dataset.anomaly_maps[0].size
    batch_size = args.batch_size or suite.batch_size_for(len(dataset), image_pixels)
    return len(dataset), io.iter_batches(dataset, batch_size)


def _mode_text(args: argparse.Namespace) -> str:
    if args.exact:
        return "exact (every pixel kept and sorted, as the MVTec AD script and anomalib)"
    return (
        f"binned, {args.bins} auto-ranging bins per pixel curve (AUROC, AUPR, F1Max, AUPRO); "
        "image metrics and AUPIMO exact"
    )


def format_table(values: dict[str, float]) -> str:
    """The results as an aligned two-column text table.

    >>> print(format_table({"image_AUROC": 0.9512, "pixel_AUPRO": 0.8}))
    metric       value
    image_AUROC  0.9512
    pixel_AUPRO  0.8000
    """
    width = max(len("metric"), *(len(name) for name in values))
    lines = [f"{'metric':<{width}}  value"]
    lines += [f"{name:<{width}}  {value:.4f}" for name, value in values.items()]
    return "\n".join(lines)


def _report(result: suite.SuiteResult, args: argparse.Namespace, title: str) -> str:
    lines = [
        f"{title}: {result.num_images} images ({result.num_anomalous} anomalous), "
        f"{result.num_pixels / 1e6:.1f} Mpx",
        f"mode: {_mode_text(args)}",
        "",
        format_table(result.values),
        "",
    ]
    bounds = {name: b for name, b in suite.error_bounds(result.evaluator).items() if np.isfinite(b)}
    if bounds:
        listed = ", ".join(f"{name} ≤ {bound:.1e}" for name, bound in bounds.items())
        lines.append(f"certified bounds on |binned - exact|: {listed}")
    lines.append(
        f"time: {result.seconds:.2f} s (batches {result.update_seconds:.2f} s, compute "
        f"{result.compute_seconds:.2f} s, jit compiles included), "
        f"{result.num_pixels / 1e6 / result.seconds:.3g} Mpx/s"
    )
    return "\n".join(lines)


def _json_number(value: float) -> float | None:
    """NaN (undefined) is not JSON: it becomes null."""
    return value if np.isfinite(value) else None


def _named(batches: Iterator[io.Batch], names: list[str]) -> Iterator[io.Batch]:
    """The batches, each one's image names appended to ``names`` (in update order)."""
    for batch in batches:
        names.extend(batch.name)
        yield batch


def per_image_values(result: suite.SuiteResult, image_names: Sequence[str]) -> dict[str, Any]:
    """``{"pixel_AUPIMO": {image: value or None}}`` when the suite has AUPIMO (else empty): the
    ``per_image`` entry that ``jaxmetrics-ad compare`` reads. None for normal images, and for
    every image when AUPIMO is undefined on the data."""
    from jaxmetrics_ad import protocols

    aupimo = result.evaluator.metrics().get("pixel_AUPIMO")
    if aupimo is None or not aupimo.is_exact:
        return {}
    try:
        values = protocols.per_image_aupimo(aupimo).tolist()
    except (ValueError, RuntimeError):
        values = [float("nan")] * len(image_names)
    if len(values) != len(image_names):
        return {}
    return {"pixel_AUPIMO": {n: _json_number(v) for n, v in zip(image_names, values)}}


def _results_document(
    result: suite.SuiteResult, args: argparse.Namespace, image_names: Sequence[str] = ()
) -> dict[str, Any]:
    values = {name: _json_number(value) for name, value in result.values.items()}
    per_image = per_image_values(result, image_names)
    extra = {"per_image": per_image} if per_image else {}
    return {
        "metrics": values,
        "mode": "exact" if args.exact else "binned",
        "num_bins": None if args.exact else args.bins,
        "error_bounds": {
            name: _json_number(bound)
            for name, bound in suite.error_bounds(result.evaluator).items()
        },
        "fpr_limit": args.fpr_limit,
        "num_images": result.num_images,
        "num_anomalous": result.num_anomalous,
        "num_pixels": result.num_pixels,
        "seconds": round(result.seconds, 3),
        **extra,
    }


def _results_text(
    result: suite.SuiteResult, args: argparse.Namespace, path: Path, image_names: Sequence[str] = ()
) -> str:
    if path.suffix.lower() == ".json":
        document = _results_document(result, args, image_names)
        return json.dumps(document, indent=2, allow_nan=False) + "\n"
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", "value"])
    for name, value in result.values.items():
        writer.writerow([name, repr(value)])
    return buffer.getvalue()


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename.

    Readers never see a half-written file, and a failure leaves any previous file as it was.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "results.json"
    >>> write_atomically(target, "{}")
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('{}', ['results.json'])
    """
    # mkstemp creates a new file of an unpredictable name (O_EXCL): nothing planted at a guessable
    # name, such as a symlink to another file, is followed or overwritten.
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with open(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp makes the file private (0600); give it the mode a newly written file would have.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _thinned(*curve: Any) -> list[np.ndarray]:
    """Curves of millions of points (exact mode) cut to evenly spaced points for drawing."""
    arrays = [np.asarray(values) for values in curve]
    if arrays[0].shape[-1] <= _PLOT_POINTS:
        return arrays
    keep = np.unique(np.linspace(0, arrays[0].shape[-1] - 1, _PLOT_POINTS).round().astype(int))
    return [values[..., keep] for values in arrays]


def write_plots(result: suite.SuiteResult, folder: Path, fpr_limit: float) -> list[Path]:
    """Save ROC and PR curves (image and pixel), and PRO and PIMO curves when evaluated, as PNGs.

    A curve that cannot be drawn from this data (e.g. PIMO without a normal image) is skipped
    with a warning.

    >>> import tempfile
    >>> from jaxmetrics_ad.synthetic import make_category
    >>> data = make_category(4, 4, size=(32, 32))
    >>> result = suite.evaluate(suite.build_suite(["image_AUROC"]), io.iter_batches(data, 8))
    >>> [path.name for path in write_plots(result, Path(tempfile.mkdtemp()), 0.3)]
    ['roc.png']
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxmetrics_ad import plotting

    folder.mkdir(parents=True, exist_ok=True)
    metrics, values = result.evaluator.metrics(), result.values
    figures: dict[str, Any] = {}

    def axes(name: str):
        if name not in figures:
            figures[name] = plt.subplots(figsize=(5, 4.5))[1]
        return figures[name]

    for level in ("image", "pixel"):
        if f"{level}_AUROC" in metrics:
            fpr, tpr = _thinned(*metrics[f"{level}_AUROC"].curve())
            auc = values[f"{level}_AUROC"]
            plotting.plot_roc(fpr, tpr, auc=auc, ax=axes("roc"), label=level)
        if f"{level}_AUPR" in metrics:
            recall, precision = _thinned(*metrics[f"{level}_AUPR"].curve())
            ap = values[f"{level}_AUPR"]
            plotting.plot_pr(recall, precision, ap=ap, ax=axes("pr"), label=level)
    if "pixel_AUPRO" in metrics:
        fpr, pro = _thinned(*metrics["pixel_AUPRO"].curve())
        aupro = values["pixel_AUPRO"]
        plotting.plot_pro(fpr, pro, aupro=aupro, fpr_limit=fpr_limit, ax=axes("pro"), log_x=False)
    if "pixel_AUPIMO" in metrics:
        try:
            curves = suite.pimo_curves(metrics["pixel_AUPIMO"])
        except (ValueError, RuntimeError) as error:
            warnings.warn(f"no PIMO plot: {error}", UserWarning, stacklevel=2)
        else:
            label = f"AUPIMO = {values['pixel_AUPIMO']:.4f}" if "pixel_AUPIMO" in values else None
            shared_fpr, tprs = _thinned(curves.shared_fpr, curves.per_image_tprs)
            plotting.plot_pimo(shared_fpr, tprs, ax=axes("pimo"), label=label)
    written = []
    for name, ax in figures.items():
        path = folder / f"{name}.png"
        ax.figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
        written.append(path)
    return written


def _demo_batches(args: argparse.Namespace) -> tuple[int, Iterator[io.Batch]]:
    from jaxmetrics_ad.synthetic import make_category

    start = time.perf_counter()
    num_anomalous = (2 * args.images) // 3
    data = make_category(
        num_normal=args.images - num_anomalous,
        num_anomalous=num_anomalous,
        size=(args.size, args.size),
        seed=args.seed,
    )
    print(
        f"generated {args.images} images of {args.size}x{args.size} in "
        f"{time.perf_counter() - start:.2f} s",
        file=sys.stderr,
    )
    batch_size = args.batch_size or suite.batch_size_for(len(data), args.size**2)
    return len(data), io.iter_batches(data, batch_size)


def enable_compile_cache(folder: Path | None = None) -> Path | None:
    """Turn on jax's persistent compilation cache, so that later runs skip compiling.

    The folder defaults to ``$XDG_CACHE_HOME/jaxmetrics_ad/xla`` (``~/.cache/...``). A cache the user
    configured already (``JAX_COMPILATION_CACHE_DIR``) is left alone. Returns the folder in use.
    The first run of the demo spends about half its time compiling; later runs skip that.

    >>> import jax, tempfile
    >>> previous = jax.config.jax_compilation_cache_dir
    >>> enable_compile_cache(Path(tempfile.mkdtemp())).is_dir()
    True
    >>> jax.config.update("jax_compilation_cache_dir", previous)
    """
    import jax

    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return Path(configured)
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder = Path(base) / "jaxmetrics_ad" / "xla"
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Most of the suite's programs compile in 0.1-1 s; jax's default only caches slower ones.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    return folder


def _compare(args: argparse.Namespace) -> int:
    """``jaxmetrics-ad compare A.json B.json``: the per-image table and the paired tests."""
    from jaxmetrics_ad import comparison

    if args.output is not None and args.output.suffix.lower() != ".json":
        raise InputError(f"--output {args.output}: expected a .json file name")
    if args.output is not None and not args.output.parent.is_dir():
        raise InputError(f"--output {args.output}: folder {args.output.parent} does not exist")
    (values_a, model_a), (values_b, model_b) = (
        comparison.read_per_image(path) for path in (args.a, args.b)
    )
    names = args.names or (model_a or args.a.stem, model_b or args.b.stem)
    if names[0] == names[1]:
        names = (f"{names[0]} (A)", f"{names[1]} (B)")
    try:
        result = comparison.compare_per_image(
            values_a,
            values_b,
            names=tuple(names),
            alternative=args.alternative,
            confidence=args.confidence,
        )
    except (ValueError, TypeError) as error:
        raise InputError(f"{args.a} vs {args.b}: {error}") from error
    max_rows = None if args.max_rows < 0 else args.max_rows
    print(result.to_markdown(max_rows=max_rows))
    if args.output is not None:
        text = json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n"
        try:
            write_atomically(args.output, text)
        except OSError as error:
            raise InputError(f"--output {args.output}: cannot write: {error}") from error
        print(f"comparison written to {args.output}")
    return 0


def _check_dataset_output(args: argparse.Namespace) -> None:
    if args.plots is not None:
        raise InputError(
            "--plots: plots are drawn for one category with the default suite; give a category "
            "folder without --protocol"
        )
    if args.output is None:
        return
    expected = "expected a .md, .csv, .json or .tex file name"
    if args.output.is_dir():
        raise InputError(f"--output {args.output}: {expected}, got an existing folder")
    if args.output.suffix.lower() not in DATASET_OUTPUT_SUFFIXES:
        raise InputError(f"--output {args.output}: {expected}, got suffix {args.output.suffix!r}")
    if not args.output.parent.is_dir():
        raise InputError(f"--output {args.output}: folder {args.output.parent} does not exist")
    if not os.access(args.output.parent, os.W_OK | os.X_OK):
        raise InputError(f"--output {args.output}: folder {args.output.parent} is not writable")


def _evaluate_dataset(args: argparse.Namespace) -> int:
    """``evaluate --dataset ROOT``: every category (or --categories) with one suite, and the mean."""
    from jaxmetrics_ad import datasets

    if args.maps is None:
        raise InputError("--dataset needs --maps, the folder of anomaly maps")
    start = time.perf_counter()

    def progress(name: str, index: int, total: int, result: suite.SuiteResult) -> None:
        if not args.quiet:
            print(
                f"[{index + 1}/{total}] {name}: {result.num_images} images "
                f"({result.num_anomalous} anomalous) in {result.seconds:.2f} s",
                file=sys.stderr,
            )

    options: dict[str, Any] = {"exact": args.exact, "num_bins": args.bins}
    if args.protocol is None:
        options.update(names=args.metrics, fpr_limit=args.fpr_limit)
    common = dict(
        protocol=args.protocol,
        layout=_layout(args),
        batch_size=args.batch_size,
        resize=args.resize,
        compute_metric=_compute_metric,
        on_category=progress,
        **options,
    )
    if _is_dataset_root(args):
        results = datasets.evaluate_dataset(args.dataset, args.maps, args.categories, **common)
    else:
        if not args.maps.is_dir():
            raise InputError(f"anomaly maps folder not found: {args.maps}")
        results = datasets.evaluate_categories(
            {args.dataset.name: (args.dataset, args.maps)}, **common
        )
    categories = [name for name in results if name != datasets.MEAN]
    _, counts = datasets.mean_over_categories({name: results[name] for name in categories})
    protocol = f"protocol {args.protocol}" if args.protocol else "the default suite"
    lines = [
        f"{args.dataset}: {len(categories)} categories, {protocol}",
        f"mode: {_mode_text(args)}",
        "",
        datasets.format_markdown(results),
        "",
    ]
    lines += [
        f"mean {name}: over {count} of {len(categories)} categories (NaN elsewhere)"
        for name, count in counts.items()
        if count < len(categories)
    ]
    lines.append(f"time: {time.perf_counter() - start:.2f} s (jit compiles included)")
    print("\n".join(lines))
    if args.output is not None:
        text = datasets.format_results(results, args.output)
        try:
            write_atomically(args.output, text)
        except OSError as error:
            raise InputError(
                f"--output {args.output}: cannot write the results: {error}"
            ) from error
        print(f"results written to {args.output}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "compare":
        return _compare(args)
    _check_output_paths(args)
    if args.compile_cache:
        enable_compile_cache()
    suite.build_suite(args.metrics)  # rejects unknown names before any work
    if args.fpr_limit is None and getattr(args, "protocol", None) is None:
        args.fpr_limit = DEFAULT_FPR_LIMIT
    if args.command == "evaluate" and _uses_dataset_engine(args):
        return _evaluate_dataset(args)
    if args.command == "demo":
        num_images, batches = _demo_batches(args)
        title = "demo (synthetic MVTec-like category)"
    elif args.npz is not None:
        num_images, batches = _npz_batches(args)
        title = str(args.npz)
    else:
        num_images, batches = _mvtec_batches(args)
        title = str(args.dataset)
    evaluator = suite.build_suite(
        args.metrics,
        exact=args.exact,
        num_bins=args.bins,
        fpr_limit=args.fpr_limit,
        num_images=num_images,
    )
    # Metric by metric through _compute_metric: only "undefined on this data" becomes NaN. (The
    # suite's on_error="warn" turns every ValueError and RuntimeError into NaN, and jax raises a
    # RuntimeError for an out-of-memory device or an exception inside a host callback.)
    image_names: list[str] = []
    with _progress(num_images, args.quiet) as on_batch:
        result = suite.evaluate(
            evaluator, _named(batches, image_names), on_batch, compute_metric=_compute_metric
        )
    print(_report(result, args, title))
    if args.output is not None:
        text = _results_text(result, args, args.output, image_names)
        try:
            write_atomically(args.output, text)
        except OSError as error:
            raise InputError(
                f"--output {args.output}: cannot write the results: {error}"
            ) from error
        print(f"results written to {args.output}")
    if args.plots is not None:
        try:
            written = write_plots(result, args.plots, args.fpr_limit)
        except OSError as error:
            raise InputError(f"--plots {args.plots}: cannot write the plots: {error}") from error
        for path in written:
            print(f"plot written to {path}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (one class only, AUPIMO out of range, ...) as one plain line on stderr."""
    print(f"{PROGRAM}: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jaxmetrics-ad`` with ``argv`` (default: the process arguments); returns the exit code.

    0 on success; 1 when the input cannot be evaluated (the message on stderr names the file) or a
    metric failed for a reason other than the data (out of memory, ...); 2 on a usage error; 130
    (:data:`EXIT_INTERRUPTED`) after Ctrl-C. Nothing is written to ``--output`` unless it is 0.

    >>> main(["evaluate", "--npz", "no/such/file.npz"])
    1
    """
    args = build_parser().parse_args(argv)
    callback_logger = logging.getLogger(_CALLBACK_LOGGER)
    callback_logger.addFilter(_without_interrupt_tracebacks)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return _run(args)
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError as error:
        print(f"{PROGRAM}: error: out of memory ({_one_line(error)})", file=sys.stderr)
        return 1
    except (
        InputError,
        MetricFailure,
        FileNotFoundError,
        ValueError,
        ImportError,
        RuntimeError,
    ) as error:
        if _is_interrupt(error):
            print(f"{PROGRAM}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"{PROGRAM}: error: {_one_line(error)}", file=sys.stderr)
        return 1
    finally:
        callback_logger.removeFilter(_without_interrupt_tracebacks)


def _without_interrupt_tracebacks(record: logging.LogRecord) -> bool:
    """Logging filter: drop jax's traceback of a Ctrl-C inside a host callback (one line is said)."""
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))
