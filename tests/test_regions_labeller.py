"""Choosing the labeller: scipy on the host on CPU ("auto"), the jax.lax labeller when asked for;
both give scipy's labels, eagerly, under jit and under vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxmetrics_ad import regions
from jaxmetrics_ad.regions import LABELLERS, connected_components

EIGHT_CONNECTED = np.ones((3, 3), int)


def random_masks(seed: int, shape=(4, 20, 37), density: float = 0.3) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < density


def scipy_reference(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    results = [ndimage.label(mask, structure=EIGHT_CONNECTED) for mask in masks]
    return np.stack([labels for labels, _ in results]), np.array([count for _, count in results])


def compiled_text(labeller: str, shape=(2, 16, 16)) -> str:
    spec = jax.ShapeDtypeStruct(shape, jnp.bool_)
    function = jax.jit(lambda masks: connected_components(masks, labeller=labeller))
    return function.lower(spec).compile().as_text()


@pytest.mark.parametrize("seed", range(3))
def test_every_labeller_gives_scipys_labels_eagerly_jitted_and_vmapped(seed):
    masks = random_masks(seed, density=0.15 + 0.2 * seed)
    expected_labels, expected_counts = scipy_reference(masks)
    for labeller in LABELLERS:
        jitted = jax.jit(lambda m, labeller=labeller: connected_components(m, labeller=labeller))
        vmapped = jax.vmap(lambda m, labeller=labeller: connected_components(m, labeller=labeller))
        for labels, counts in (
            connected_components(masks, labeller=labeller),
            jitted(masks),
            vmapped(masks),  # one (H, W) mask per element
            jax.vmap(jitted)(masks.reshape(2, 2, *masks.shape[1:])),
        ):
            assert labels.dtype == jnp.int32 and counts.dtype == jnp.int32
            np.testing.assert_array_equal(
                np.asarray(labels).reshape(expected_labels.shape), expected_labels, labeller
            )
            np.testing.assert_array_equal(np.asarray(counts).ravel(), expected_counts, labeller)


def test_auto_on_cpu_compiles_a_host_callback_and_no_lax_labeller():
    assert jax.default_backend() == "cpu"
    auto, host, lax = compiled_text("auto"), compiled_text("host"), compiled_text("lax")
    callback = 'custom_call_target="xla_ffi_python_cpu_callback"'
    assert callback in auto and callback in host and callback not in lax
    # the lax labeller's union-find loop is not in the CPU program
    assert " while(" not in auto and " while(" not in host and " while(" in lax


def test_auto_eagerly_on_cpu_labels_on_the_host(monkeypatch):
    calls = []
    scipy_labels = regions._scipy_labels
    monkeypatch.setattr(
        regions, "_scipy_labels", lambda m: calls.append(m.shape) or scipy_labels(m)
    )
    masks = random_masks(5)
    labels, _ = connected_components(masks)
    assert calls == [masks.shape]
    np.testing.assert_array_equal(np.asarray(labels), scipy_reference(masks)[0])
    connected_components(masks, labeller="lax")
    assert len(calls) == 1


def test_host_labeller_handles_empty_and_zero_sized_batches():
    for shape in ((0, 5, 5), (3, 0, 4), (2, 6, 6)):
        labels, counts = connected_components(np.zeros(shape, bool), labeller="host")
        assert labels.shape == shape and counts.shape == shape[:1]
        assert not np.asarray(labels).any() and not np.asarray(counts).any()


@pytest.mark.parametrize("labeller", ["scipy", "", None, 1])
def test_unknown_labeller_is_rejected(labeller):
    with pytest.raises(ValueError, match="labeller must be one of"):
        connected_components(np.zeros((2, 2), bool), labeller=labeller)
