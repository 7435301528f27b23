"""Exact tails of the score histogram: the K highest and lowest scores kept exactly, the bins
between them, every cumulative count exact, updates and merges order-independent."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jaxmetrics_ad.histogram import ScoreHistogram, _top_k


def _samples(seed: int, size: int, tied: bool = False, outliers: int = 0):
    rng = np.random.default_rng(seed)
    labels = (rng.random(size) < 0.3).astype(np.int32)
    scores = rng.random(size).astype(np.float32) + 0.3 * labels
    if tied:
        scores = np.round(scores * 8).astype(np.float32) / 8
    if outliers:
        where = rng.choice(size, outliers, replace=False)
        scores[where] = rng.choice([1e9, -1e9, 3e7], outliers).astype(np.float32)
    weights = rng.random((1, size)).astype(np.float32)
    return scores.astype(np.float32), labels, weights


def _fill(histogram: ScoreHistogram, scores, labels, weights, parts: int) -> ScoreHistogram:
    for index in np.array_split(np.arange(scores.size), parts):
        histogram = histogram.add(
            jnp.asarray(scores[index]), jnp.asarray(labels[index]), jnp.asarray(weights[:, index])
        )
    return histogram


def _brute_force(thresholds, scores, labels, weights):
    above = scores[None, :] >= np.asarray(thresholds, np.float64)[:, None]
    counts = np.stack([(above & (labels == c)).sum(axis=1) for c in (0, 1)])
    summed = (above * weights[0][None, :].astype(np.float64)).sum(axis=1)
    return counts, summed


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("outliers", [0, 3, 40])
@pytest.mark.parametrize("parts", [1, 6])
def test_every_cumulative_count_equals_the_samples_at_or_above_its_threshold(tied, outliers, parts):
    scores, labels, weights = _samples(1, 3000, tied, outliers)
    empty = ScoreHistogram.auto(num_bins=64, num_channels=2, num_weights=1, tail_size=16)
    histogram = _fill(empty, scores, labels, weights, parts)
    for reader in (histogram.cumulative_on_host, histogram.cumulative):
        thresholds, counts, summed = (np.asarray(a) for a in reader())
        expected_counts, expected_weights = _brute_force(thresholds, scores, labels, weights)
        np.testing.assert_array_equal(counts, expected_counts)
        np.testing.assert_allclose(summed[0], expected_weights, rtol=1e-5, atol=1e-3)
        assert np.all(thresholds[1:] <= thresholds[:-1])


@pytest.mark.parametrize("parts", [1, 3])
def test_left_out_samples_never_reach_a_tail_or_a_bin(parts):
    scores, labels, weights = _samples(7, 6000, tied=True, outliers=5)
    channels = np.where(np.random.default_rng(8).random(6000) < 0.4, -1, labels)
    empty = ScoreHistogram.auto(num_bins=64, num_channels=2, num_weights=1, tail_size=512)
    histogram = _fill(empty, scores, channels, weights, parts)
    keep = channels >= 0
    for reader in (histogram.cumulative_on_host, histogram.cumulative):
        thresholds, counts, summed = (np.asarray(a) for a in reader())
        expected, expected_weights = _brute_force(
            thresholds, scores[keep], channels[keep], weights[:, keep]
        )
        np.testing.assert_array_equal(counts, expected)
        np.testing.assert_allclose(summed[0], expected_weights, rtol=1e-5, atol=1e-3)


def test_a_far_outlier_leaves_the_bins_at_full_resolution():
    scores, labels, _ = _samples(2, 20000)
    scores[0] = 1e9
    exact = roc_auc_score(labels, scores)

    def area(histogram):
        _, counts, _ = histogram.cumulative_on_host()
        fpr = np.concatenate([[0.0], counts[0] / counts[0, -1]])
        tpr = np.concatenate([[0.0], counts[1] / counts[1, -1]])
        return np.trapezoid(tpr, fpr)

    plain = ScoreHistogram.auto(num_bins=1024, num_channels=2).add(scores, labels)
    tailed = ScoreHistogram.auto(num_bins=1024, num_channels=2, tail_size=8).add(scores, labels)
    assert abs(area(plain) - exact) > 0.2  # one pixel widened every bin to ~1e6
    assert abs(area(tailed) - exact) < 1e-3
    assert float(tailed.core_max) < 2.0 and float(tailed.score_max) == 1e9


@pytest.mark.parametrize("tied", [False, True])
def test_updates_and_merges_in_any_order_give_the_same_state(tied):
    scores, labels, weights = _samples(3, 5000, tied, outliers=5)
    empty = ScoreHistogram.auto(num_bins=32, num_channels=2, num_weights=1, tail_size=8)
    reference = jax.tree_util.tree_leaves(empty.add(scores, labels, weights))
    rng = np.random.default_rng(4)
    for trial in range(4):
        order = rng.permutation(scores.size)
        parts = np.array_split(order, [7, 30, 31, 900, 2000][: trial + 2])
        states = [empty.add(scores[p], labels[p], weights[:, p]) for p in parts]
        merged = functools.reduce(lambda a, b: a.merge(b), states[::-1])
        streamed = _fill(empty, scores[order], labels[order], weights[:, order], trial + 3)
        for state in (merged, streamed):
            for got, want in zip(
                jax.tree_util.tree_leaves(state.cumulative_on_host()),
                [*ScoreHistogram.cumulative_on_host(empty.add(scores, labels, weights))],
            ):
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
            # counts, cuts and tail membership are bit for bit the same
            got_leaves = jax.tree_util.tree_leaves(state)
            for index in (0, 1):  # the count words
                np.testing.assert_array_equal(got_leaves[index], reference[index])
            np.testing.assert_array_equal(state.tail_cuts, empty.add(scores, labels).tail_cuts)
            np.testing.assert_array_equal(
                np.sort(np.asarray(state.tail_scores), axis=1),
                np.sort(np.asarray(empty.add(scores, labels).tail_scores), axis=1),
            )


def test_fewer_samples_than_the_tails_hold_are_all_kept_exactly():
    scores, labels = np.array([0.5, 0.2, 0.9], np.float32), np.array([0, 1, 1])
    histogram = ScoreHistogram.auto(num_bins=8, num_channels=2, tail_size=4).add(scores, labels)
    thresholds, counts, _ = histogram.cumulative_on_host()
    assert float(histogram.core_min) == np.inf  # nothing binned
    expected, _ = _brute_force(thresholds, scores, labels, np.zeros((1, 3)))
    np.testing.assert_array_equal(counts, expected)
    assert histogram.total_counts().tolist() == [1.0, 2.0]


def test_tied_scores_never_split_between_a_tail_and_the_bins():
    scores = np.full(100, 0.5, np.float32)
    scores[:3] = [2.0, 2.0, 2.0]
    histogram = ScoreHistogram.auto(num_bins=8, num_channels=1, tail_size=2)
    histogram = histogram.add(scores, np.zeros(100, np.int32))
    # three samples at 2.0 do not fit two slots: all three stay in the bins
    assert np.all(np.isnan(np.asarray(histogram.tail_scores[0])))
    assert float(histogram.core_max) == 2.0


def test_add_inside_jit_equals_eager():
    scores, labels, weights = _samples(5, 4000, outliers=4)
    empty = ScoreHistogram.auto(num_bins=64, num_channels=2, num_weights=1, tail_size=16)
    eager = empty.add(scores, labels, weights)
    jitted = jax.jit(lambda h, s, c, w: h.add(s, c, w))(empty, scores, labels, weights)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_array_equal(a, b)


def test_all_reduce_equals_merging_the_device_states():
    scores, labels, weights = _samples(6, 4096, outliers=6)
    empty = ScoreHistogram.auto(num_bins=64, num_channels=2, num_weights=1, tail_size=8)
    shards = [slice(i * 1024, (i + 1) * 1024) for i in range(4)]
    states = [empty.add(scores[s], labels[s], weights[:, s]) for s in shards]
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *states)
    reduced = jax.vmap(lambda h: h.all_reduce("devices"), axis_name="devices")(stacked)
    merged = functools.reduce(lambda a, b: a.merge(b), states)
    first = jax.tree_util.tree_map(lambda leaf: leaf[0], reduced)
    for got, want in zip(first.cumulative_on_host(), merged.cumulative_on_host()):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_bad_tail_size_and_mismatched_merge_are_rejected():
    with pytest.raises(ValueError, match="tail_size"):
        ScoreHistogram.auto(num_bins=8, num_channels=1, tail_size=-1)
    with pytest.raises(ValueError, match="tail sizes"):
        ScoreHistogram.auto(8, 1, tail_size=2).merge(ScoreHistogram.auto(8, 1, tail_size=3))


def _large_keys(kind: str, size: int) -> np.ndarray:
    """Keys for the two-stage top-k: smooth runs, noise, a few values tied many times, and
    left-out samples (-inf) in most rows."""
    rng = np.random.default_rng(11)
    if kind == "smooth":
        return np.sin(np.linspace(0, 40, size)).astype(np.float32)
    if kind == "noise":
        return rng.random(size).astype(np.float32)
    if kind == "tied":
        return rng.integers(0, 5, size).astype(np.float32)
    keys = rng.random(size).astype(np.float32)
    keys[rng.random(size) < 0.999] = -np.inf
    return keys


@pytest.mark.parametrize("count", [2**18, 2**18 + 5])  # whole rows of 32, and a few keys over
@pytest.mark.parametrize("kind", ["smooth", "noise", "tied", "mostly_left_out"])
def test_two_stage_top_k_selects_the_same_keys_as_lax_top_k(kind, count):
    size = 1023  # count is large enough for the two stages
    keys = _large_keys(kind, count)
    values, index = jax.jit(lambda k: _top_k(k, size))(keys)
    want, _ = jax.lax.top_k(keys, size)
    np.testing.assert_array_equal(np.sort(values), np.sort(np.asarray(want)))
    np.testing.assert_array_equal(keys[np.asarray(index)], values)
    assert np.unique(np.asarray(index)).size == size


def test_one_large_batch_gives_the_state_of_many_small_ones():
    scores, labels, weights = _samples(12, 2**18, outliers=50)
    scores = np.sort(scores)  # long sorted runs, as in smooth anomaly maps
    empty = ScoreHistogram.auto(num_bins=64, num_channels=2, num_weights=1, tail_size=1023)
    whole = jax.jit(ScoreHistogram.add)(empty, scores, labels, weights)
    add = jax.jit(ScoreHistogram.add)
    parts = empty
    for index in np.array_split(np.arange(scores.size), 16):  # below the two-stage size
        parts = add(parts, scores[index], labels[index], weights[:, index])
    np.testing.assert_array_equal(whole.counts.lo, parts.counts.lo)
    np.testing.assert_array_equal(whole.tail_cuts, parts.tail_cuts)
    for field in ("tail_scores", "tail_channels"):
        np.testing.assert_array_equal(
            np.sort(np.asarray(getattr(whole, field)), axis=1),
            np.sort(np.asarray(getattr(parts, field)), axis=1),
        )
    np.testing.assert_allclose(whole.weights, parts.weights, rtol=1e-5)
