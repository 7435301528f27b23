"""The eager numpy updates (CPU) give the states the XLA updates give: see jaxmetrics_ad.numpy_updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import jaxmetrics_ad as jm
from jaxmetrics_ad import numpy_updates
from jaxmetrics_ad.histogram import ScoreHistogram
from jaxmetrics_ad.numpy_updates import histogram_add
from jaxmetrics_ad.numpy_updates import numpy_updates as use_numpy
from jaxmetrics_ad.synthetic import make_category


def _tail_multiset(histogram, row: int) -> list[tuple]:
    scores = np.asarray(histogram.tail_scores[row])
    channels = np.asarray(histogram.tail_channels[row])
    weights = np.asarray(histogram.tail_weights[:, row])
    real = channels >= 0
    return sorted(
        (float(s), int(c), *np.round(w, 7).tolist())
        for s, c, w in zip(scores[real], channels[real], weights[:, real].T)
    )


def _assert_same_histogram(mine, theirs, exact_weights: bool = True) -> None:
    """Same grid, counts and tails; the same weight sums (bit for bit with ``exact_weights``: when
    tail samples return to the bins, the two paths add them in another order)."""
    for name in ("exponent", "offset", "core_min", "core_max", "score_min", "score_max"):
        assert np.asarray(getattr(mine, name)) == np.asarray(getattr(theirs, name)), name
    np.testing.assert_array_equal(np.asarray(mine.counts.lo), np.asarray(theirs.counts.lo))
    np.testing.assert_array_equal(np.asarray(mine.counts.hi), np.asarray(theirs.counts.hi))
    if exact_weights:
        np.testing.assert_array_equal(np.asarray(mine.weights), np.asarray(theirs.weights))
    else:
        np.testing.assert_allclose(np.asarray(mine.weights), np.asarray(theirs.weights), rtol=1e-6)
    if mine.tail_size:
        np.testing.assert_array_equal(np.asarray(mine.tail_cuts), np.asarray(theirs.tail_cuts))
        for row in (0, 1):
            assert _tail_multiset(mine, row) == _tail_multiset(theirs, row)


def _batches(seed: int, count: int, size: int) -> list[tuple[np.ndarray, ...]]:
    """Scores with ties, far outliers, NaN/inf, left-out channels, and a drifting range."""
    rng = np.random.default_rng(seed)
    batches = []
    for step in range(count):
        scores = np.round(rng.normal(step * 0.3, 1.0 + step, size), 2).astype(np.float32)
        scores[rng.integers(0, size, 3)] = rng.choice([1e9, -1e7, np.nan, np.inf], 3)
        channels = rng.integers(-1, 2, size).astype(np.int32)
        weights = rng.random((1, size)).astype(np.float32)
        batches.append((scores, channels, weights))
    return batches


@pytest.mark.parametrize("tail_size", [0, 1, 8, 64])
@pytest.mark.parametrize("size", [5, 40, 3000])
def test_histogram_add_matches_the_xla_update(tail_size, size):
    mine = ScoreHistogram.auto(num_bins=32, num_channels=2, num_weights=1, tail_size=tail_size)
    theirs = mine
    for scores, channels, weights in _batches(size + tail_size, 6, size):
        mine = histogram_add(mine, scores, channels, weights)
        theirs = theirs.add(jnp.asarray(scores), jnp.asarray(channels), jnp.asarray(weights))
        _assert_same_histogram(mine, theirs, exact_weights=tail_size == 0)


@pytest.mark.parametrize("float_slots", [True, False])
def test_binning_in_chunks_with_float_or_int_slots_matches_the_xla_update(monkeypatch, float_slots):
    monkeypatch.setattr(numpy_updates, "_CHUNK", 1)  # chunks of 4 * (2 * 32 + 1) samples
    if not float_slots:
        monkeypatch.setattr(numpy_updates, "_FLOAT_SLOTS", 0)
    mine = ScoreHistogram.auto(num_bins=32, num_channels=2, num_weights=1, tail_size=8)
    theirs = mine
    for scores, channels, weights in _batches(11, 4, 3000):
        mine = histogram_add(mine, scores, channels, weights)
        theirs = theirs.add(jnp.asarray(scores), jnp.asarray(channels), jnp.asarray(weights))
        _assert_same_histogram(mine, theirs, exact_weights=False)


def test_histogram_add_with_fixed_edges_and_a_window_matches_the_xla_update():
    fixed = ScoreHistogram.fixed([-1.0, 0.0, 0.5, 2.0], num_channels=2)
    windowed = ScoreHistogram.auto(num_bins=16, num_channels=6)
    for scores, channels, _ in _batches(3, 4, 500):
        _assert_same_histogram(histogram_add(fixed, scores, channels), fixed.add(scores, channels))
        rows = np.where(channels >= 0, channels + 2, -1)
        _assert_same_histogram(
            histogram_add(windowed, scores, rows, window=(2, 2)),
            windowed.add(scores, rows, window=(jnp.int32(2), 2)),
        )


@pytest.mark.parametrize("large_counts", [False, True])
def test_widening_a_grid_with_empty_channels_or_counts_past_32_bits_matches_xla(large_counts):
    from jaxmetrics_ad.histogram import WideCount

    start = ScoreHistogram.auto(num_bins=16, num_channels=4, num_weights=1)
    narrow = np.linspace(0.0, 1.0, 50, dtype=np.float32)
    start = histogram_add(start, narrow, np.arange(50, dtype=np.int32) % 2)  # channels 2, 3 empty
    if large_counts:  # a bin past 2**32 in channel 1
        hi = np.asarray(start.counts.hi).copy()
        hi[1, np.flatnonzero(np.asarray(start.counts.lo)[1])[0]] = 3
        start = start.replace(counts=WideCount(lo=np.asarray(start.counts.lo), hi=hi))
    wide = np.array([-40.0, 0.3, 70.0], np.float32)
    channels = np.array([0, 1, 2], np.int32)
    weights = np.ones((1, 3), np.float32)
    mine = histogram_add(start, wide, channels, weights)
    theirs = start.add(jnp.asarray(wide), jnp.asarray(channels), jnp.asarray(weights))
    assert int(mine.exponent) > int(start.exponent)  # the grid did widen
    _assert_same_histogram(mine, theirs)


def _pixel_suite(**aupimo):
    fields = ("anomaly_map", "gt_mask")
    return [
        jm.AUROC(thresholds=jm.DEFAULT_NUM_BINS, fields=fields),
        jm.AUPR(thresholds=jm.DEFAULT_NUM_BINS, fields=fields),
        jm.F1Max(thresholds=jm.DEFAULT_NUM_BINS, fields=fields),
        jm.AUPRO(thresholds=jm.DEFAULT_NUM_BINS),
        jm.AUPIMO(thresholds=1024, fpr_bounds=(1e-3, 1e-2), **aupimo),
    ]


def _evaluate(metrics, data, batch: int):
    evaluator = jm.Evaluator(test_metrics=metrics)
    for start in range(0, len(data.gt_masks), batch):
        part = slice(start, start + batch)
        evaluator = evaluator.update(
            {"anomaly_map": data.anomaly_maps[part], "gt_mask": data.gt_masks[part]}
        )
    return evaluator


@pytest.mark.parametrize("whole_suite, aupimo", [(True, {"capacity": 40}), (False, {})])
def test_the_pixel_suite_gives_the_values_of_the_xla_updates(whole_suite, aupimo):
    data = make_category(num_normal=12, num_anomalous=24, size=(48, 40), seed=4)
    metrics = _pixel_suite(**aupimo)
    metrics = metrics if whole_suite else metrics[-1:]  # AUPIMO without capacity: weighted masks
    mine = _evaluate(metrics, data, batch=7)
    with use_numpy(False):
        theirs = _evaluate(metrics, data, batch=7)
    for name, value in theirs.compute().items():
        np.testing.assert_allclose(np.asarray(mine.compute()[name]), value, atol=1e-6, err_msg=name)
    if whole_suite:
        assert type(mine.metrics()["AUROC"].state.counts.lo) is np.ndarray
        assert isinstance(theirs.metrics()["AUROC"].state.counts.lo, jax.Array)
        pro_mine, pro_theirs = mine.metrics()["AUPRO"].state, theirs.metrics()["AUPRO"].state
        assert int(pro_mine.num_regions) == int(pro_theirs.num_regions)
        _assert_same_histogram(pro_mine.samples, pro_theirs.samples, exact_weights=False)
    pimo_mine, pimo_theirs = mine.metrics()["AUPIMO"].state, theirs.metrics()["AUPIMO"].state
    _assert_same_histogram(pimo_mine.normal, pimo_theirs.normal)
    _assert_same_histogram(pimo_mine.anomalous, pimo_theirs.anomalous)
    np.testing.assert_array_equal(
        np.asarray(pimo_mine.tail_scores), np.asarray(pimo_theirs.tail_scores)
    )
    for name in ("tail_cutoff", "num_pixels", "num_normal", "num_anomalous", "num_images"):
        assert np.asarray(getattr(pimo_mine, name)) == np.asarray(getattr(pimo_theirs, name))


def test_the_pixel_suite_compiles_nothing_eagerly_on_cpu():
    compiles = []

    def listen(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    data = make_category(num_normal=3, num_anomalous=5, size=(37, 29), seed=9)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        evaluator = _evaluate(_pixel_suite(capacity=8), data, batch=3)
        values = {name: float(value) for name, value in evaluator.compute().items()}
        bounds = [float(np.nanmax(m.error_bound())) for m in evaluator.metrics().values()]
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []
    assert all(np.isfinite(v) for v in values.values()) and all(b >= 0 for b in bounds)


def test_valid_leaves_out_the_same_images_in_numpy():
    data = make_category(num_normal=4, num_anomalous=6, size=(20, 24), seed=2)
    valid = np.arange(10) % 3 != 1
    for metric in (
        jm.AUPRO(thresholds=64),
        jm.AUPIMO(thresholds=64, capacity=10, fpr_bounds=(1e-2, 1e-1)),
    ):
        mine = metric.update(data.anomaly_maps, data.gt_masks, valid=valid)
        with use_numpy(False):
            theirs = metric.update(data.anomaly_maps, data.gt_masks, valid=valid)
        np.testing.assert_allclose(np.asarray(mine.compute()), theirs.compute(), atol=1e-6)


def test_a_numpy_state_continues_under_jit_as_an_xla_one():
    rng = np.random.default_rng(0)
    first, second = rng.random(500).astype(np.float32), rng.random(500).astype(np.float32)
    labels = (rng.random(500) > 0.7).astype(np.int32)
    metric = jm.AUROC(thresholds=64)
    mine = jax.jit(lambda m, s, y: m.update(s, y))(metric.update(first, labels), second, labels)
    with use_numpy(False):
        theirs = metric.update(first, labels).update(second, labels)
    assert float(mine.compute()) == float(theirs.compute())
    _assert_same_histogram(mine.state, theirs.state)


def test_the_switch_is_scoped():
    assert numpy_updates.numpy_updates_apply()
    with use_numpy(False):
        assert not numpy_updates.numpy_updates_apply()
        with use_numpy(True):
            assert numpy_updates.numpy_updates_apply()
    assert numpy_updates.numpy_updates_apply()


def test_fixed_buffer_add_matches_the_xla_update():
    from jaxmetrics_ad.buffer import FixedBuffer

    mine = theirs = FixedBuffer.empty(capacity=40)
    for scores, channels, _ in _batches(7, 3, 12):  # NaN/inf and channel -1 take no slot
        mine = numpy_updates.fixed_buffer_add(mine, scores, channels)
        theirs = theirs.add(jnp.asarray(scores), jnp.asarray(channels))
        assert int(mine.count) == int(theirs.count)
        for got, want in zip(mine.arrays(), theirs.arrays()):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("name", ["AUROC", "AUPR", "F1Max", "F1AdaptiveThreshold"])
def test_exact_image_metrics_with_capacity_update_and_compute_in_numpy(name):
    rng = np.random.default_rng(5)
    scores, labels = rng.random(30).astype(np.float32), rng.integers(0, 2, 30)

    def evaluate():
        metric = getattr(jm, name)(None, capacity=32)
        for part in np.array_split(np.arange(30), 3):
            metric = metric.update(scores[part], labels[part])
        return metric

    mine = evaluate()
    with use_numpy(False):
        theirs = evaluate()
    assert type(mine.state.scores) is np.ndarray
    assert isinstance(theirs.state.scores, jax.Array)
    assert float(mine.compute()) == float(theirs.compute())


def _tail_batches(kind: str, count: int = 3, size: int = 3000) -> list[tuple[np.ndarray, ...]]:
    """Batches whose tails a strided sample guesses well (``smooth``), or badly: every 30th score
    is among the highest, so the sample sees only them (``sampled_high``)."""
    rng = np.random.default_rng(21)
    batches = []
    for step in range(count):
        scores = rng.normal(step, 1.0, size).astype(np.float32)
        if kind == "sampled_high":
            scores[::30] = 100.0 + np.arange(scores[::30].size, dtype=np.float32) + step
            scores[1::30] = -100.0 - np.arange(scores[1::30].size, dtype=np.float32) - step
        channels = rng.integers(0, 2, size).astype(np.int32)
        weights = rng.random((1, size)).astype(np.float32)
        batches.append((scores, channels, weights))
    return batches


@pytest.mark.parametrize("kind, guessed", [("smooth", True), ("sampled_high", False)])
def test_large_batches_pick_the_xla_tails_from_a_guess_or_without_one(monkeypatch, kind, guessed):
    monkeypatch.setattr(numpy_updates, "_CHUNK", 256)
    monkeypatch.setattr(numpy_updates, "_GUESS_SAMPLES", 100)  # every 30th score is sampled
    found = []
    search = numpy_updates._extremes_beyond
    monkeypatch.setattr(
        numpy_updates, "_extremes_beyond", lambda *a: found.append(search(*a)) or found[-1]
    )
    mine = ScoreHistogram.auto(num_bins=32, num_channels=2, num_weights=1, tail_size=64)
    theirs = mine
    for scores, channels, weights in _tail_batches(kind):
        mine = histogram_add(mine, scores, channels, weights)
        theirs = theirs.add(jnp.asarray(scores), jnp.asarray(channels), jnp.asarray(weights))
        _assert_same_histogram(mine, theirs, exact_weights=False)
    assert found and (found[0] is not None) == guessed  # the first batch: every score is beyond


def test_range_without_some_scores_is_the_masked_range(monkeypatch):
    monkeypatch.setattr(numpy_updates, "_CHUNK", 8)
    rng = np.random.default_rng(3)
    scores = rng.normal(size=50).astype(np.float32)
    for left_out in (np.arange(8, 16), np.array([0, 7, 20, 49]), np.arange(50), np.arange(0)):
        kept = np.ones(50, bool)
        kept[left_out] = False
        want = (
            np.min(scores, where=kept, initial=np.inf),
            np.max(scores, where=kept, initial=-np.inf),
        )
        assert numpy_updates._range_without(scores, left_out) == want


def _region_weights_image_by_image(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The reference: each whole image labelled on its own by scipy (8-connected)."""
    indices, weights, count = [], [], 0
    for number, image in enumerate(mask):
        labels, found = ndimage.label(image, structure=np.ones((3, 3)))
        pixels = np.flatnonzero(image)
        region_of = labels.ravel()[pixels]
        sizes = np.bincount(region_of).astype(np.float32)
        indices.append(number * image.size + pixels)
        weights.append(np.float32(1.0) / sizes[region_of])
        count += found
    return np.concatenate(indices), np.concatenate(weights), count


@pytest.mark.parametrize("seed", range(4))
def test_region_weights_on_stacked_boxes_are_those_of_each_whole_image(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        shape = (int(rng.integers(1, 6)), int(rng.integers(1, 14)), int(rng.integers(1, 14)))
        mask = rng.random(shape) < rng.random()  # empty to full, regions touching the borders
        in_region, weights, regions = numpy_updates.region_weights(mask)
        want_index, want_weights, want_regions = _region_weights_image_by_image(mask)
        np.testing.assert_array_equal(in_region, want_index)
        np.testing.assert_array_equal(weights[0], want_weights)
        assert int(regions) == want_regions


@pytest.mark.parametrize("cores", [2, 1])
def test_aupro_labelled_in_the_background_or_on_one_core_matches_xla(monkeypatch, cores):
    monkeypatch.setattr(numpy_updates, "_cores", lambda: cores)
    data = make_category(num_normal=5, num_anomalous=9, size=(40, 48), seed=6)
    order = np.random.default_rng(0).permutation(14)  # normal images inside the label groups
    maps, masks = data.anomaly_maps[order], data.gt_masks[order]
    metric = jm.AUPRO(thresholds=256)
    mine = metric.update(maps[:8], masks[:8]).update(maps[8:], masks[8:])
    with use_numpy(False):
        theirs = metric.update(maps[:8], masks[:8]).update(maps[8:], masks[8:])
    assert int(mine.state.num_regions) == int(theirs.state.num_regions)
    _assert_same_histogram(mine.state.samples, theirs.state.samples, exact_weights=False)
    assert float(mine.compute()) == pytest.approx(float(theirs.compute()), abs=1e-7)


def test_work_in_the_background_raises_its_errors_where_its_result_is_read(monkeypatch):
    for cores in (1, 2):
        monkeypatch.setattr(numpy_updates, "_cores", lambda cores=cores: cores)
        failed = numpy_updates.in_background(np.reshape, np.arange(3), (2, 2))
        with pytest.raises(ValueError):
            failed.result()
        assert numpy_updates.in_background(np.add, 1, 2).result() == 3


def test_the_range_the_input_check_found_is_the_range_binned():
    from jaxmetrics_ad.validation import check_finite, checks_once, known_range

    rng = np.random.default_rng(8)
    maps = rng.normal(size=(4, 30, 20)).astype(np.float32)
    channels = rng.random(maps.size) < 0.3
    start = ScoreHistogram.auto(num_bins=64, num_channels=2)  # no tails: the range is the grid's
    with checks_once():
        check_finite(maps, "anomaly_map")
        assert known_range(maps.ravel()) == (maps.min(), maps.max())
        assert known_range(maps[1:]) is None  # another buffer
        mine = histogram_add(start, maps.ravel(), channels)
    theirs = start.add(jnp.asarray(maps.ravel()), jnp.asarray(channels))
    _assert_same_histogram(mine, theirs)


@pytest.mark.parametrize("widen", [False, True])
def test_an_update_leaves_the_state_it_started_from_as_it_was(widen):
    rng = np.random.default_rng(9)
    start = histogram_add(
        ScoreHistogram.auto(num_bins=32, num_channels=3),
        rng.random(500).astype(np.float32),
        rng.integers(0, 3, 500).astype(np.int32),
    )
    before = jax.tree_util.tree_map(np.copy, start)
    scores = rng.random(200).astype(np.float32) * (8 if widen else 1)  # 8: the grid moves
    channels = rng.integers(1, 3, 200).astype(np.int32)
    later = histogram_add(start, scores, channels, window=(1, 2))  # channels 1 and 2 only
    assert (int(later.exponent) != int(start.exponent)) == widen
    for kept, held in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(start)):
        np.testing.assert_array_equal(np.asarray(held), kept)


def test_binned_pimo_reads_bools_stored_as_0xff_and_leaves_the_masks_as_they_were():
    from jaxmetrics_ad.pimo_binned import BinnedCurves

    data = make_category(num_normal=3, num_anomalous=5, size=(24, 20), seed=2)
    maps, masks = data.anomaly_maps.copy(), data.gt_masks.copy()
    maps.reshape(-1)[np.flatnonzero(masks)[0]] = np.nan  # an unreadable mask pixel
    raw = (masks.astype(np.uint8) * 255).view(bool)
    start = BinnedCurves.empty(64, None, 16)
    clean_state, clean_invalid = numpy_updates.binned_curves_add(start, maps, masks)
    raw_state, raw_invalid = numpy_updates.binned_curves_add(start, maps, raw)
    for mine, theirs in zip(
        jax.tree_util.tree_leaves(raw_state), jax.tree_util.tree_leaves(clean_state)
    ):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    assert int(raw_invalid) == int(clean_invalid) == 1
    np.testing.assert_array_equal(masks, data.gt_masks)  # not written in place
