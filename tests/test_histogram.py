"""The score histogram state: exact counts, any score range, exact re-binning, psum."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmetrics_ad.counts import WideCount, running_count
from jaxmetrics_ad.histogram import ScoreHistogram, _binary_exponent, power_of_two


def test_wide_counts_stay_exact_past_two_to_the_32():
    counts = WideCount.zeros((2,)).add(jnp.array([1, 3], jnp.int32))
    for _ in range(33):  # doubling: 2**33 and 3 * 2**33
        counts = counts.merge(counts)
    assert counts.as_int() == 2**33 + 3 * 2**33
    assert np.asarray(counts.hi).tolist() == [2, 6]
    assert np.asarray(counts.lo).tolist() == [0, 0]
    big = WideCount.zeros(()).add(jnp.array(2**31 - 1, jnp.int32))
    big = big.add(jnp.array(2**31 - 1, jnp.int32)).add(jnp.array(5, jnp.int32))
    assert big.as_int() == 2 * (2**31 - 1) + 5


@pytest.mark.parametrize("low,high", [(-50.0, 2000.0), (0.0, 1.0), (1e-6, 3e-6), (-3e5, -2e5)])
def test_auto_bins_cover_any_score_range_and_count_every_sample(low, high):
    rng = np.random.default_rng(0)
    scores = rng.uniform(low, high, 10_000).astype(np.float32)
    channels = rng.integers(0, 2, 10_000)
    histogram = ScoreHistogram.auto(num_bins=1000, num_channels=2).add(scores, channels)
    width = 2.0 ** int(histogram.exponent)
    assert (high - low) / 999 <= width <= 2 * (high - low) / 999 * 1.01
    cells = np.floor(scores.astype(np.float64) / width).astype(np.int64) - int(histogram.offset)
    assert cells.min() >= 0 and cells.max() < 1000
    expected = np.zeros((2, 1000))
    np.add.at(expected, (channels, cells), 1)
    np.testing.assert_array_equal(np.asarray(histogram.counts.as_float()), expected)


def test_rebinning_in_any_batch_order_gives_bitwise_the_same_state():
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=300).astype(np.float32) * 10.0**k for k in (0, 3, -1, 2)]
    labels = [rng.integers(0, 2, 300) for _ in batches]
    empty = ScoreHistogram.auto(num_bins=512, num_channels=2, num_weights=1)
    one_pass = empty.add(np.concatenate(batches), np.concatenate(labels), np.ones((1, 1200)))
    state = empty
    for scores, label in zip(batches[::-1], labels[::-1]):
        part = empty.add(scores, label, np.ones((1, 300)))
        state = part.merge(state)
    for leaf_a, leaf_b in zip(
        jax.tree_util.tree_leaves(one_pass), jax.tree_util.tree_leaves(state)
    ):
        np.testing.assert_array_equal(leaf_a, leaf_b)


def test_weights_sum_per_bin_and_negative_channels_are_left_out():
    histogram = ScoreHistogram.fixed([0.0, 1.0], num_channels=1, num_weights=1)
    histogram = histogram.add(
        jnp.array([-1.0, 0.5, 0.7, 2.0, jnp.nan]),
        jnp.array([0, 0, -1, 0, 0]),
        jnp.array([[1.0, 2.0, 4.0, 8.0, 16.0]]),
    )
    np.testing.assert_array_equal(histogram.counts.as_float(), [[1, 1, 1]])
    np.testing.assert_array_equal(histogram.weights, [[1.0, 2.0, 8.0]])
    thresholds, counts, weights = histogram.cumulative()
    np.testing.assert_array_equal(thresholds, [1.0, 0.0, -np.inf])
    np.testing.assert_array_equal(counts, [[1, 2, 3]])
    np.testing.assert_array_equal(weights, [[8.0, 10.0, 11.0]])


def test_all_reduce_over_eight_devices_equals_one_pass():
    code = textwrap.dedent(
        """
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        import jax, numpy as np
        from jaxmetrics_ad.histogram import ScoreHistogram
        rng = np.random.default_rng(0)
        scores = (rng.normal(size=(8, 500)) * np.logspace(-2, 3, 8)[:, None]).astype(np.float32)
        labels = rng.integers(0, 2, (8, 500))
        empty = ScoreHistogram.auto(num_bins=256, num_channels=2)
        reduced = jax.pmap(lambda s, y: empty.add(s, y).all_reduce("d"), axis_name="d")(scores, labels)
        single = empty.add(scores.ravel(), labels.ravel())
        for a, b in zip(jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(reduced)):
            for device in range(8):
                np.testing.assert_array_equal(a, b[device])
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def test_weights_of_left_out_samples_are_dropped_even_when_the_batch_is_smaller_than_the_bins():
    # The drop index must lie past the histogram, not past the (smaller) batch.
    histogram = ScoreHistogram.auto(num_bins=64, num_channels=2, num_weights=1)
    histogram = histogram.add(
        jnp.array([0.1, 0.5, 0.9]), jnp.array([0, 1, -1]), jnp.array([[1.0, 1.0, 5.0]])
    )
    assert float(histogram.weights.sum()) == 2.0


@pytest.mark.parametrize("size", [5, 40_000, 2**20, 2**20 + 7])
@pytest.mark.parametrize("density", [0.0, 0.003, 0.5, 1.0])
def test_running_count_equals_numpys_cumsum_for_bool_and_int_flags(size, density):
    flags = np.random.default_rng(size).random(size) < density
    want = np.cumsum(flags)
    counted = jax.jit(running_count)
    np.testing.assert_array_equal(counted(flags), want)  # bit-packed words past 32768 flags
    np.testing.assert_array_equal(counted(flags.astype(np.int32)), want)  # blocked sums


def test_power_of_two_and_binary_exponent_equal_numpys_ldexp_and_frexp():
    exponents = np.arange(-126, 255, dtype=np.int32)  # normal powers, then inf past 127
    want = np.ldexp(np.float32(1.0), exponents).astype(np.float32)
    np.testing.assert_array_equal(jax.jit(power_of_two)(exponents), want)
    rng = np.random.default_rng(5)
    values = np.float32(10.0) ** rng.uniform(-37, 38, 100_000).astype(np.float32)
    values = np.concatenate([values, np.float32([2.0**-126, 1.0, 0.5, 3.4e38, np.inf])])
    _, want_exponents = np.frexp(values)
    want_exponents = np.where(np.isfinite(values), want_exponents, 0)
    np.testing.assert_array_equal(jax.jit(_binary_exponent)(values), want_exponents)
