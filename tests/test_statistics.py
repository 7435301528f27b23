"""MinMax, AnomalyScoreDistribution and ManualThreshold against numpy."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxmetrics_ad as jm


def test_minmax_tracks_the_running_extremes_and_is_inf_when_empty():
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=50).astype(np.float32) * 100 for _ in range(4)]
    metric = jm.MinMax()
    minimum, maximum = metric.compute()
    assert (float(minimum), float(maximum)) == (np.inf, -np.inf)
    for batch in batches:
        metric = metric.update(batch)
    minimum, maximum = metric.compute()
    assert float(minimum) == np.concatenate(batches).min()
    assert float(maximum) == np.concatenate(batches).max()
    halves = jm.MinMax().update(batches[0]).merge(jm.MinMax().update(batches[1]))
    assert float(halves.compute()[1]) == max(batches[0].max(), batches[1].max())


def test_anomaly_score_distribution_equals_numpy_log_statistics_across_batches():
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.1, 5.0, 30).astype(np.float32)
    maps = rng.uniform(0.1, 5.0, (30, 4, 5)).astype(np.float32)
    metric = jm.AnomalyScoreDistribution()
    for start in range(0, 30, 7):
        metric = metric.update(scores[start : start + 7], maps[start : start + 7])
    image_mean, image_std, pixel_mean, pixel_std = metric.compute()
    np.testing.assert_allclose(image_mean, np.log(scores).mean(), rtol=1e-5)
    np.testing.assert_allclose(image_std, np.log(scores).std(ddof=1), rtol=1e-5)
    np.testing.assert_allclose(pixel_mean, np.log(maps).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pixel_std, np.log(maps).std(0, ddof=1), rtol=1e-5)


def test_anomaly_score_distribution_rejects_non_positive_scores_and_bad_shapes():
    with pytest.raises(ValueError, match="pred_score: values must be positive"):
        jm.AnomalyScoreDistribution().update(np.array([0.0, 1.0]), np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=r"anomaly_map \(N, H, W\)"):
        jm.AnomalyScoreDistribution().update(np.ones(2), np.ones((2, 2)))
    fixed = jm.AnomalyScoreDistribution(map_shape=(2, 2))
    with pytest.raises(ValueError, match="expected maps of shape"):
        fixed.update(np.ones(2), np.ones((2, 3, 3)))
    assert jax.jit(lambda m: m.update(np.ones(2), np.ones((2, 2, 2))))(fixed).num_updates == 1


def test_manual_threshold_ignores_updates():
    metric = jm.ManualThreshold(default_value=0.25)
    assert float(metric.compute()) == 0.25
    assert float(metric.update([0.9, 0.1], [1, 0]).compute()) == 0.25


def test_anomaly_score_distribution_rejects_a_new_map_size_instead_of_dropping_pixels():
    maps = np.ones((3, 4, 4), np.float32)
    metric = jm.AnomalyScoreDistribution().update(np.ones(3), maps)
    message = r"anomaly_map: earlier updates had maps of shape \(4, 4\), this batch has \(5, 5\)"
    with pytest.raises(ValueError, match=message):
        metric.update(np.ones(2), np.ones((2, 5, 5)))


def test_anomaly_score_distribution_states_of_different_map_sizes_do_not_merge():
    small = jm.AnomalyScoreDistribution().update(np.ones(2), np.ones((2, 4, 4)))
    large = jm.AnomalyScoreDistribution().update(np.ones(2), np.ones((2, 5, 5)))
    with pytest.raises(ValueError, match=r"different map sizes: \(4, 4\) and \(5, 5\)"):
        small.merge(large)
    rng = np.random.default_rng(2)
    scores, maps = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, (5, 4, 4))
    first = jm.AnomalyScoreDistribution().update(scores[:2], maps[:2])
    for merged in (
        first.merge(jm.AnomalyScoreDistribution().update(scores[2:], maps[2:])),
        jm.AnomalyScoreDistribution().merge(jm.AnomalyScoreDistribution().update(scores, maps)),
    ):
        image_mean, _, pixel_mean, pixel_std = merged.compute()
        np.testing.assert_allclose(image_mean, np.log(scores).mean(), rtol=1e-5)
        np.testing.assert_allclose(pixel_mean, np.log(maps).mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pixel_std, np.log(maps).std(0, ddof=1), rtol=1e-5)


def test_anomaly_score_distribution_ignores_empty_batches_and_names_the_eager_problem():
    empty = jm.AnomalyScoreDistribution().update(np.ones(0), np.ones((0, 4, 4)))
    with pytest.raises(ValueError, match="no images: every batch given to update"):
        empty.compute()  # said "invalid samples ... were given inside jit"
    scores = np.array([1.0, np.e])
    value = empty.update(scores, np.ones((2, 4, 4))).compute()
    np.testing.assert_allclose([float(value[0]), float(value[1])], [0.5, np.sqrt(0.5)], rtol=1e-6)
    in_jit = jax.jit(lambda m: m.update(np.ones(0), np.ones((0, 4, 4))).compute())
    assert all(np.isnan(np.asarray(v)).all() for v in in_jit(jm.AnomalyScoreDistribution((4, 4))))
