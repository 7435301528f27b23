"""anomalib's PIMO threshold grid and AUPIMO integration rule, written once for numpy and jax.

Both PIMO modes and both ways of reading a binned state (numpy eagerly, jax inside jit) use these
functions; ``xp`` picks the array module. With numpy the arithmetic is float64 (the grid is then
exactly ``torch.linspace``'s), with jax it is float32 (jit-able; the grid may differ in the last bit).

* :func:`anomalib_thresholds` / :func:`threshold_grid`: the K thresholds between two scores.
* :func:`integration_band`: the threshold indices where the shared FPR is nearest the two bounds
  and how many points lie between them; :func:`check_integration_band` raises and warns as anomalib.
* :func:`trapezoid_weights`: per-threshold weights ``w`` such that ``Σ_k w_k · TPR_k`` is the
  trapezoid area under a TPR curve against ln(shared FPR) over the band.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# anomalib refuses to integrate over this few points (unless forced) and warns below the second.
MIN_INTEGRATION_POINTS = 30
RECOMMENDED_INTEGRATION_POINTS = 300
# anomalib warns when the shared FPR met at a bound is off from it by more than this (relative).
BOUND_RTOL = 1e-2

Array = np.ndarray | jax.Array


def threshold_grid(lowest: Any, highest: Any, num_thresholds: int, xp: ModuleType = np) -> Array:
    """``num_thresholds`` float32 values from ``lowest`` to ``highest`` as ``torch.linspace`` makes.

    The step is rounded to float32; the first half counts up from ``lowest``, the second half down
    from ``highest``. With numpy each value is computed in float64 and rounded to float32 once
    (numpy's own linspace differs in the last bit for about half of them, which changes which
    pixels clear a threshold); with jax (``xp=jnp``, jit-able) the arithmetic is float32.

    Example:
        >>> import jax.numpy as jnp
        >>> threshold_grid(1.0, 7.0, 7).tolist()
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
        >>> threshold_grid(jnp.float32(1.0), jnp.float32(7.0), 7, jnp).tolist()
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    """
    wide = np.float64 if xp is np else jnp.float32
    low, high = xp.asarray(lowest, xp.float32), xp.asarray(highest, xp.float32)
    step = ((high - low) / xp.float32(num_thresholds - 1)).astype(wide)
    index = xp.arange(num_thresholds, dtype=wide)
    from_low = low.astype(wide) + step * index
    from_high = high.astype(wide) - step * (num_thresholds - 1 - index)
    return xp.where(index < num_thresholds // 2, from_low, from_high).astype(xp.float32)


def anomalib_thresholds(lowest: float, highest: float, num_thresholds: int) -> np.ndarray:
    """anomalib's grid, computed with numpy: :func:`threshold_grid` with ``xp=np``.

    Example:
        >>> anomalib_thresholds(1.0, 7.0, 7).tolist()
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    """
    return threshold_grid(lowest, highest, num_thresholds, np)


class IntegrationBand(NamedTuple):
    """Where the AUPIMO integral runs: threshold indices ``low_index < high_index`` when usable.

    A low FPR bound is met at a high threshold: ``high_index`` is where the shared FPR is nearest
    the *lower* bound. ``num_points`` counts the band's points with a finite ln(shared FPR);
    ``in_range`` is False when a bound lies outside the shared FPR values. Scalars: numpy ints and
    bools, or jax arrays.
    """

    low_index: Any
    high_index: Any
    num_points: Any
    in_range: Any

    def usable(self, force: bool) -> Any:
        """True when the rule integrates here (the cases where anomalib raises give False).

        Example:
            >>> import numpy as np
            >>> band = integration_band(np.geomspace(1.0, 1e-3, 64), (1e-2, 1e-1))
            >>> bool(band.usable(force=False)), bool(band.usable(force=True))
            (False, True)
        """
        enough = (self.num_points > MIN_INTEGRATION_POINTS) | force
        return self.in_range & (self.low_index < self.high_index) & (self.num_points > 0) & enough


def _nearest_index(shared_fpr: Array, level: float, xp: ModuleType) -> Any:
    """Index of the shared FPR nearest ``level`` (first on ties; NaN entries never chosen).

    At level 1.0 many thresholds reach FPR 1: like the reference code, take the highest one.
    """
    if level == 1.0:
        last = shared_fpr.shape[0] - 1
        return last - xp.argmax((shared_fpr == 1.0)[::-1])
    distance = xp.abs(shared_fpr - level)
    return xp.argmin(xp.where(xp.isnan(distance), xp.inf, distance))


def integration_band(
    shared_fpr: Array, fpr_bounds: tuple[float, float], xp: ModuleType = np
) -> IntegrationBand:
    """anomalib's integration band over a descending shared FPR (NaN entries: not known there).

    Example:
        >>> import numpy as np
        >>> shared_fpr = np.geomspace(1.0, 1e-3, 301)  # ln(FPR) evenly spaced
        >>> band = integration_band(shared_fpr, (1e-2, 1e-1))
        >>> int(band.low_index), int(band.high_index), int(band.num_points), bool(band.in_range)
        (100, 200, 101, True)
    """
    lower_fpr, upper_fpr = fpr_bounds
    high_index = _nearest_index(shared_fpr, lower_fpr, xp)
    low_index = _nearest_index(shared_fpr, upper_fpr, xp)
    in_range = (xp.nanmin(shared_fpr) <= lower_fpr) & (upper_fpr <= xp.nanmax(shared_fpr))
    step = xp.arange(shared_fpr.shape[0])
    in_band = (step >= low_index) & (step <= high_index) & (shared_fpr > 0)
    return IntegrationBand(low_index, high_index, xp.sum(in_band), in_range)


def check_integration_band(
    shared_fpr: np.ndarray,
    fpr_bounds: tuple[float, float],
    force: bool,
    name: str,
    stacklevel: int = 4,
) -> IntegrationBand:
    """:func:`integration_band` (numpy), raising and warning where anomalib does.

    ``shared_fpr`` is descending and NaN below the thresholds an exact tail covers. A bound outside
    the shared FPR → ValueError; bounds met at one threshold, or at most
    :data:`MIN_INTEGRATION_POINTS` points without ``force`` → RuntimeError (with it a
    RuntimeWarning); a bound met more than :data:`BOUND_RTOL` off, non-finite ln(FPR) points, or
    fewer than :data:`RECOMMENDED_INTEGRATION_POINTS` points → UserWarning.

    Example:
        >>> import numpy as np, warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")  # 101 points: fewer than recommended
        ...     band = check_integration_band(np.geomspace(1.0, 1e-3, 301), (1e-2, 1e-1), False, "m")
        >>> int(band.num_points)
        101
    """
    lower_fpr, upper_fpr = fpr_bounds
    covered = np.flatnonzero(~np.isnan(shared_fpr))
    first = int(covered[0]) if covered.size else len(shared_fpr)
    if first == len(shared_fpr) or (first > 0 and shared_fpr[first] < upper_fpr):
        reached = shared_fpr[first] if first < len(shared_fpr) else 0.0
        raise ValueError(
            f"{name}: the kept upper tail of the normal pixels reaches a shared FPR of only "
            f"{reached:.3g}, below the upper FPR bound {upper_fpr}: normal images added late scored "
            "far lower than the early ones, which the tail let go of; update in shuffled order, or "
            "use return_average=False (keeps every normal pixel)"
        )
    band = integration_band(shared_fpr, fpr_bounds, np)
    if not band.in_range:
        known = shared_fpr[first:]
        level = upper_fpr if known.min() <= lower_fpr <= known.max() else lower_fpr
        raise ValueError(
            f"fpr_bounds value {level} is outside the shared FPR range "
            f"[{known.min()}, {known.max()}]"
        )
    low_index, high_index = int(band.low_index), int(band.high_index)
    for bound, index in ((lower_fpr, high_index), (upper_fpr, low_index)):
        if not np.isclose(shared_fpr[index], bound, rtol=BOUND_RTOL):
            warnings.warn(
                f"{name}: FPR bound {bound} is not met within {BOUND_RTOL:.0%}: the nearest shared "
                f"FPR is {shared_fpr[index]}",
                UserWarning,
                stacklevel=stacklevel,
            )
    if low_index >= high_index:
        raise RuntimeError(
            f"{name}: fpr_bounds {fpr_bounds} are met at threshold indices {low_index} and "
            f"{high_index}, which must be strictly increasing; increase num_thresholds"
        )
    num_points = int(band.num_points)
    if num_points == 0:
        raise RuntimeError(f"{name}: no finite ln(shared FPR) in the integration range")
    if num_points < high_index - low_index + 1:
        warnings.warn(
            f"{name}: dropping {high_index - low_index + 1 - num_points} non-finite ln(shared FPR) "
            "points",
            UserWarning,
            stacklevel=stacklevel,
        )
    if num_points <= MIN_INTEGRATION_POINTS:
        message = (
            f"{name}: only {num_points} points in the FPR integration range (more than "
            f"{MIN_INTEGRATION_POINTS} needed); increase num_thresholds"
        )
        if not force:
            raise RuntimeError(message + " or pass force=True")
        warnings.warn(message + "; computation was forced", RuntimeWarning, stacklevel=stacklevel)
    if num_points < RECOMMENDED_INTEGRATION_POINTS:
        warnings.warn(
            f"{name}: AUPIMO may be inaccurate with only {num_points} points in the FPR "
            f"integration range (fewer than {RECOMMENDED_INTEGRATION_POINTS})",
            UserWarning,
            stacklevel=stacklevel,
        )
    return IntegrationBand(low_index, high_index, num_points, True)


def trapezoid_weights(shared_fpr: Array, band: IntegrationBand, xp: ModuleType = np) -> Array:
    """(K,) weights ``w``: ``Σ_k w_k · TPR_k`` is the trapezoid area against ln(shared FPR).

    Over the band only, between consecutive points with a finite ln(shared FPR) (anomalib drops the
    others; the shared FPR descends, so they are the band's last points), ln(FPR) ascending so that
    areas are positive. The area is linear in the TPRs: one weight vector serves every image.

    Example:
        >>> import numpy as np
        >>> shared_fpr = np.exp(-np.arange(5.0))  # ln(FPR) = 0, -1, ..., -4
        >>> band = integration_band(shared_fpr, (np.exp(-3.0), np.exp(-1.0)))
        >>> trapezoid_weights(shared_fpr, band).tolist()
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        log_fpr = xp.log(shared_fpr)
    step = xp.arange(shared_fpr.shape[0] - 1)
    inside = (step >= band.low_index) & (step < band.high_index)
    inside = inside & xp.isfinite(log_fpr[:-1]) & xp.isfinite(log_fpr[1:])
    widths = xp.where(inside, log_fpr[:-1] - log_fpr[1:], 0.0)
    return 0.5 * (xp.pad(widths, (0, 1)) + xp.pad(widths, (1, 0)))
