"""PRO and AUPRO give the same values whichever labeller labels the masks (host scipy or jax.lax),
eagerly and inside jit; the default "auto" leaves the configuration as it was."""

from __future__ import annotations

import flax.serialization
import jax
import numpy as np
import pytest
from scipy import ndimage

import jaxmetrics_ad as jm

SHAPE = (6, 24, 20)
LABELLERS = ("auto", "host", "lax")


def random_batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, 16, SHAPE) / 16
    masks = ndimage.binary_opening(rng.random(SHAPE) < 0.35, np.ones((1, 2, 2)))
    masks[rng.random(SHAPE[0]) < 0.35] = False
    maps = np.where(masks & (rng.random(SHAPE) < 0.6), np.minimum(maps + 0.5, 1.0), maps)
    return maps.astype(np.float32), masks


def jitted_value(metric: jm.Metric, batches) -> float:
    update = jax.jit(lambda metric, maps, masks: metric.update(maps, masks))
    for maps, masks in batches:
        metric = update(metric, maps, masks)
    return float(metric.compute())


@pytest.mark.parametrize(
    "make",
    [
        lambda **options: jm.AUPRO(thresholds=np.arange(16) / 16, **options),
        lambda **options: jm.AUPRO(**options),
        lambda **options: jm.PRO(0.5, **options),
    ],
    ids=["AUPRO-binned", "AUPRO-exact", "PRO"],
)
def test_values_do_not_depend_on_the_labeller(make):
    batches = [random_batch(1), random_batch(2)]
    labelled = [(maps, scipy_labels(masks)) for maps, masks in batches]
    reference = jitted_value(make(region_labels=True), labelled)
    for labeller in LABELLERS:
        assert jitted_value(make(labeller=labeller), batches) == reference, labeller
        eager = make(labeller=labeller)
        for maps, masks in batches:
            eager = eager.update(maps, masks)
        assert float(eager.compute()) == reference, labeller


def scipy_labels(masks: np.ndarray) -> np.ndarray:
    eight = np.ones((3, 3))
    return np.stack([ndimage.label(mask, structure=eight)[0] for mask in masks]).astype(np.int32)


def test_default_labeller_leaves_repr_and_saved_configuration_unchanged():
    for cls in (jm.PRO, jm.AUPRO):
        assert cls().labeller == "auto"
        assert "labeller" not in repr(cls()) and "labeller" not in dict(cls()._config)
        lax = cls(labeller="lax")
        assert lax.labeller == "lax" and "labeller='lax'" in repr(lax)
        # the labeller survives flattening (jit), and a saved state restores under its labeller
        assert jax.tree_util.tree_map(lambda x: x, lax).labeller == "lax"
        restored = flax.serialization.from_bytes(
            cls(labeller="lax"), flax.serialization.to_bytes(lax)
        )
        assert restored.labeller == "lax"


@pytest.mark.parametrize("labeller", ["gpu", "", None])
def test_unknown_labeller_is_rejected(labeller):
    for cls in (jm.PRO, jm.AUPRO):
        with pytest.raises(ValueError, match="labeller must be one of"):
            cls(labeller=labeller)
