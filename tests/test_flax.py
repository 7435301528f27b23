"""The Evaluator as state of Flax eval loops (nnx and linen) with a real conv autoencoder.

The anomaly map is the autoencoder's squared reconstruction error (random weights in the nnx test,
a few training steps on normal images in the linen one). The references are sklearn's values on the very maps the model produces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx, struct
from flax.training import train_state
from sklearn.metrics import roc_auc_score

import jaxmetrics_ad as jm
from jaxmetrics_ad.synthetic import make_category

BATCH = 6
BINS = 2048


@pytest.fixture(scope="module")
def dataset() -> dict[str, np.ndarray]:
    category = make_category(num_normal=8, num_anomalous=10, size=(32, 32), seed=7)
    # The synthetic maps double as grey images: defects are bright blobs on smooth noise.
    return {
        "image": category.anomaly_maps[..., None],
        "gt_mask": category.gt_masks,
        "gt_label": category.gt_labels,
    }


def batches(dataset: dict[str, np.ndarray]):
    for start in range(0, len(dataset["gt_label"]), BATCH):
        yield {k: v[start : start + BATCH] for k, v in dataset.items()}


def make_evaluator() -> jm.Evaluator:
    pixel = ("anomaly_map", "gt_mask")
    return jm.Evaluator(
        val_metrics=[jm.F1AdaptiveThreshold(BINS, fields=pixel, prefix="pixel_")],
        test_metrics=[
            jm.AUROC(BINS, fields=("pred_score", "gt_label"), prefix="image_"),
            jm.AUROC(BINS, fields=pixel, prefix="pixel_"),
            jm.AUROC(None, capacity=18 * 32 * 32, fields=pixel, prefix="exact_pixel_"),
        ],
    )


def anomaly_batch(reconstruction: jax.Array, batch: dict) -> dict[str, jax.Array]:
    maps = jnp.mean((reconstruction - batch["image"]) ** 2, axis=-1)
    return {
        "anomaly_map": maps,
        "pred_score": jnp.max(maps, axis=(1, 2)),
        "gt_mask": batch["gt_mask"],
        "gt_label": batch["gt_label"],
    }


def assert_sklearn_values(evaluator: jm.Evaluator, maps: np.ndarray, dataset) -> None:
    results = evaluator.compute("test")
    pixel = roc_auc_score(dataset["gt_mask"].ravel(), maps.ravel())
    image = roc_auc_score(dataset["gt_label"], maps.max(axis=(1, 2)))
    np.testing.assert_allclose(float(results["exact_pixel_AUROC"]), pixel, atol=1e-6)
    metrics = evaluator.metrics("test")
    bound = float(metrics["pixel_AUROC"].error_bound())
    assert abs(float(results["pixel_AUROC"]) - pixel) <= bound + 1e-6
    assert (
        abs(float(results["image_AUROC"]) - image)
        <= float(metrics["image_AUROC"].error_bound()) + 1e-6
    )
    assert 0.5 < pixel < 1.0  # the model finds the defects, imperfectly


class NnxAutoEncoder(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.encode = nnx.Conv(1, 8, kernel_size=(3, 3), strides=2, rngs=rngs)
        self.hidden = nnx.Conv(8, 8, kernel_size=(3, 3), rngs=rngs)
        self.decode = nnx.ConvTranspose(8, 1, kernel_size=(3, 3), strides=2, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.decode(nnx.relu(self.hidden(nnx.relu(self.encode(images)))))


def test_an_nnx_eval_loop_carries_the_evaluator_through_nnx_jit(dataset):
    model = NnxAutoEncoder(nnx.Rngs(0))  # fixed random weights (the linen test trains its model)

    @nnx.jit(static_argnames="stage")
    def eval_step(model, evaluator, batch, stage):
        return evaluator.update(anomaly_batch(model(batch["image"]), batch), stage=stage)

    evaluator = make_evaluator()
    for batch in batches(dataset):
        evaluator = eval_step(model, evaluator, batch, "val")
        evaluator = eval_step(model, evaluator, batch, "test")

    maps = np.asarray(jnp.mean((model(dataset["image"]) - dataset["image"]) ** 2, axis=-1))
    assert_sklearn_values(evaluator, maps, dataset)
    threshold = float(evaluator.compute("val")["pixel_F1AdaptiveThreshold"])
    assert maps.min() <= threshold <= maps.max()


class LinenAutoEncoder(nn.Module):
    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        hidden = nn.relu(nn.Conv(8, (3, 3), strides=2)(images))
        hidden = nn.relu(nn.Conv(8, (3, 3))(hidden))
        return nn.ConvTranspose(1, (3, 3), strides=2)(hidden)


class EvalState(struct.PyTreeNode):
    """A TrainState-style carry: the model state and the metrics travel together."""

    model: train_state.TrainState
    evaluator: jm.Evaluator


def test_a_linen_eval_loop_carries_the_evaluator_in_a_train_state_style_struct(dataset):
    module = LinenAutoEncoder()
    params = module.init(jax.random.key(0), dataset["image"][:1])["params"]
    state = train_state.TrainState.create(apply_fn=module.apply, params=params, tx=optax.adam(1e-2))
    normal_images = jnp.asarray(dataset["image"][dataset["gt_label"] == 0])

    @jax.jit
    def train_step(state, images):
        def loss(params):
            return jnp.mean((state.apply_fn({"params": params}, images) - images) ** 2)

        return state.apply_gradients(grads=jax.grad(loss)(state.params))

    @jax.jit
    def eval_step(carry: EvalState, batch) -> EvalState:
        reconstruction = carry.model.apply_fn({"params": carry.model.params}, batch["image"])
        evaluator = carry.evaluator.update(anomaly_batch(reconstruction, batch), stage="test")
        return carry.replace(evaluator=evaluator)

    for _ in range(5):
        state = train_step(state, normal_images)
    carry = EvalState(model=state, evaluator=make_evaluator())
    for batch in batches(dataset):
        carry = eval_step(carry, batch)

    reconstruction = module.apply({"params": state.params}, dataset["image"])
    maps = np.asarray(jnp.mean((reconstruction - dataset["image"]) ** 2, axis=-1))
    assert_sklearn_values(carry.evaluator, maps, dataset)
    assert int(carry.evaluator.metrics("val")["pixel_F1AdaptiveThreshold"].num_updates) == 0
