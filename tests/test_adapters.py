"""Tests for jaxmetrics_ad.adapters: clu, flax.nnx and function-quadruple metrics as our metrics.

Each wrapped metric is fed through jm.Evaluator (eagerly, under jax.jit and as a lax.scan carry) and
compared with numpy / scikit-learn on the same data; merge and all_reduce (under a named vmap axis,
which runs the same collectives as pmap) must equal the single-stream value. metrax does not
install here, so its API (a clu metric class with keyword ``predictions``/``labels`` and a constant
``threshold``) is covered by a clu metric of that shape defined below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import clu.metrics
import flax.serialization
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from sklearn.metrics import precision_score

import jaxmetrics_ad as jm
from jaxmetrics_ad.adapters import WrappedMetric

RNG = np.random.default_rng(3)
NUM_BATCHES, BATCH = 4, 16
SCORES = RNG.uniform(0.0, 1.0, (NUM_BATCHES, BATCH)).astype(np.float32)
LABELS = (RNG.uniform(size=(NUM_BATCHES, BATCH)) < SCORES).astype(np.int32)


def batches() -> list[dict[str, np.ndarray]]:
    return [{"pred_score": s, "gt_label": y} for s, y in zip(SCORES, LABELS)]


@flax.struct.dataclass
class Precision(clu.metrics.Metric):
    """A metrax-style metric (metrax's metrics are clu metrics of this shape)."""

    true_positives: jax.Array
    predicted_positives: jax.Array

    @classmethod
    def empty(cls) -> Precision:
        return cls(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))

    @classmethod
    def from_model_output(cls, predictions, labels, threshold: float = 0.5) -> Precision:
        predicted = (predictions >= threshold).astype(jnp.float32)
        return cls(jnp.sum(predicted * labels), jnp.sum(predicted))

    def merge(self, other: Precision) -> Precision:
        return type(self)(
            self.true_positives + other.true_positives,
            self.predicted_positives + other.predicted_positives,
        )

    def compute(self) -> jax.Array:
        return self.true_positives / self.predicted_positives


def _max_init():
    return jnp.full((), -jnp.inf)


def _max_update(state, values):
    return jnp.maximum(state, jnp.max(values))


MAX_SCORE = jm.MetricFunctions(_max_init, _max_update, jnp.maximum, lambda state: state)


def clu_average(prefix: str = "image_") -> WrappedMetric:
    return jm.wrap_metric(
        clu.metrics.Average, fields=("pred_score",), keywords=("values",), prefix=prefix
    )


def wrapped_metrics() -> list[WrappedMetric]:
    return [
        clu_average(),
        jm.wrap_metric(  # the mean score of anomalous images: gt_label is clu's mask
            clu.metrics.Average,
            fields=("pred_score", "gt_label"),
            keywords=("values", "mask"),
            prefix="anomalous_",
        ),
        jm.wrap_metric(
            Precision,
            fields=("pred_score", "gt_label"),
            keywords=("predictions", "labels"),
            options={"threshold": 0.6},
            additive=True,
        ),
        jm.wrap_metric(
            nnx.metrics.Average, fields=("pred_score",), keywords=("values",), prefix="nnx_"
        ),
        jm.wrap_metric(nnx.metrics.Welford("score"), fields=("pred_score",), keywords=("score",)),
        jm.wrap_metric(MAX_SCORE, fields=("pred_score",), keywords=("values",), name="MaxScore"),
    ]


def expected() -> dict[str, float]:
    scores, labels = SCORES.ravel().astype(np.float64), LABELS.ravel()
    return {
        "image_Average": scores.mean(),
        "anomalous_Average": scores[labels == 1].mean(),
        "Precision": precision_score(labels, scores >= 0.6),
        "nnx_Average": scores.mean(),
        "Welford": scores.mean(),  # Statistics.mean; the std is checked separately
        "MaxScore": scores.max(),
    }


def as_numbers(results: dict) -> dict[str, float]:
    numbers = {}
    for name, value in results.items():
        if isinstance(value, nnx.metrics.Statistics):
            numbers[name] = float(value.mean)
            numbers[name + "_std"] = float(value.standard_deviation)
        else:
            numbers[name] = float(value)
    return numbers


def check(results: dict) -> None:
    numbers = as_numbers(results)
    scores = SCORES.ravel().astype(np.float64)
    want = {**expected(), "Welford_std": scores.std()}  # Welford's std divides by N
    assert sorted(numbers) == sorted(want)
    for name, value in want.items():
        assert numbers[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_names_are_prefix_and_wrapped_class_name():
    names = [m.name for m in wrapped_metrics()]
    assert names == [
        "image_Average",
        "anomalous_Average",
        "Precision",
        "nnx_Average",
        "Welford",
        "MaxScore",
    ]
    assert clu_average().fields == ("pred_score",) and clu_average().keywords == ("values",)
    assert clu_average().strict is True and clu_average().prefix == "image_"


def test_evaluator_eager_equals_numpy():
    ev = jm.Evaluator(wrapped_metrics())
    for batch in batches():
        ev = ev.update(batch)
    check(ev.compute())


def test_evaluator_under_jit_equals_numpy():
    step = jax.jit(lambda ev, batch: ev.update(batch))
    ev = jm.Evaluator(wrapped_metrics())
    for batch in batches():
        ev = step(ev, batch)
    check(jax.jit(lambda ev: ev.compute())(ev))
    check(ev.compute())


def test_evaluator_as_a_scan_carry_equals_numpy():
    stacked = {"pred_score": SCORES, "gt_label": LABELS}

    @jax.jit
    def run(ev, data):
        return jax.lax.scan(lambda ev, batch: (ev.update(batch), None), ev, data)[0]

    check(run(jm.Evaluator(wrapped_metrics()), stacked).compute())


def test_merge_of_two_streams_equals_one_stream():
    ev_a = ev_b = jm.Evaluator(wrapped_metrics())
    for index, batch in enumerate(batches()):
        if index % 2:
            ev_a = ev_a.update(batch)
        else:
            ev_b = ev_b.update(batch)
    check(ev_a.merge(ev_b).compute())
    check(jax.jit(lambda a, b: a.merge(b).compute())(ev_a, ev_b))


def test_all_reduce_over_a_named_axis_equals_one_stream():
    # vmap with axis_name runs psum/all_gather as pmap would, on one CPU device
    def per_device(scores, labels):
        ev = jm.Evaluator(wrapped_metrics()).update({"pred_score": scores, "gt_label": labels})
        return ev.all_reduce("devices").compute()

    results = jax.vmap(per_device, axis_name="devices")(SCORES, LABELS)
    for device in range(NUM_BATCHES):
        check(jax.tree_util.tree_map(lambda x, d=device: x[d], results))


def test_additive_states_reduce_with_psum_others_with_all_gather():
    def collectives(metric: WrappedMetric) -> set[str]:
        reduce = jax.make_jaxpr(lambda m: m.all_reduce("d"), axis_env=[("d", 2)])
        text = str(reduce(metric.update(SCORES[0])))
        return {name for name in ("psum", "all_gather") if name in text}

    assert clu_average().additive and collectives(clu_average()) == {"psum"}
    maximum = jm.wrap_metric(MAX_SCORE, fields=("pred_score",), keywords=("values",), name="Max")
    assert not maximum.additive
    assert "all_gather" in collectives(maximum)


def test_clu_last_value_reduces_with_clu_semantics():
    # clu's LastValue merges to the newer value but reduces across devices by averaging
    last = jm.wrap_metric(clu.metrics.LastValue, fields=("pred_score",), keywords=("value",))
    values = jnp.array([1.0, 2.0, 6.0])
    reduced = jax.vmap(lambda v: last.update(v).all_reduce("d").compute(), axis_name="d")(values)
    np.testing.assert_allclose(reduced, np.full(3, 3.0))
    merged = last.update(jnp.array(1.0)).merge(last.update(jnp.array(6.0)))
    assert float(merged.compute()) == 6.0


def test_nnx_metric_passed_in_is_not_modified():
    template = nnx.metrics.Average("values")
    template.update(values=jnp.array([100.0]))  # data in the template is dropped (reset)
    metric = jm.wrap_metric(template, fields=("pred_score",), keywords=("values",))
    metric = metric.update(SCORES[0])
    assert float(metric.compute()) == pytest.approx(float(SCORES[0].mean()))
    assert float(template.compute()) == 100.0


def test_nnx_welford_merge_and_reduce_equal_numpy_std():
    welford = jm.wrap_metric(nnx.metrics.Welford, fields=("pred_score",), keywords=("values",))
    merged = welford.update(SCORES[0]).merge(welford.update(SCORES[1:].ravel()))
    statistics = merged.compute()
    assert float(statistics.mean) == pytest.approx(SCORES.mean(), rel=1e-6)
    assert float(statistics.standard_deviation) == pytest.approx(SCORES.std(), rel=1e-5)


def test_a_non_strict_metric_skips_batches_without_its_field():
    pixel = jm.wrap_metric(
        clu.metrics.Average, fields=("anomaly_map",), keywords=("values",), strict=False
    )
    ev = jm.Evaluator([clu_average(), pixel])
    for batch in batches():
        ev = ev.update(batch)
    assert sorted(ev.compute()) == ["image_Average"]
    assert pixel.compute() is None
    with pytest.raises(ValueError, match="anomaly_map"):
        pixel.__class__(clu.metrics.Average, ("anomaly_map",), ("values",)).update_from(
            batches()[0]
        )


def test_a_strict_metric_without_data_raises():
    with pytest.raises(ValueError, match="no data"):
        clu_average().compute()


def test_metrics_sharing_a_configuration_share_one_state_in_an_evaluator():
    ev = jm.Evaluator([clu_average("a_"), clu_average("b_")])
    for batch in batches():
        ev = ev.update(batch)
    results = ev.compute()
    assert float(results["a_Average"]) == float(results["b_Average"])
    assert float(results["a_Average"]) == pytest.approx(SCORES.mean(), rel=1e-6)


def test_evaluator_with_wrapped_clu_metrics_round_trips_through_bytes():
    ev = jm.Evaluator([clu_average(), jm.AUROC(prefix="image_")])
    for batch in batches()[:2]:
        ev = ev.update(batch)
    restored = flax.serialization.from_bytes(
        jm.Evaluator([clu_average(), jm.AUROC(prefix="image_")]), flax.serialization.to_bytes(ev)
    )
    assert as_numbers(restored.compute()) == as_numbers(ev.compute())


def test_merge_refuses_another_wrapped_metric():
    maximum = jm.wrap_metric(MAX_SCORE, fields=("pred_score",), keywords=("values",), name="Max")
    with pytest.raises(ValueError, match="cannot merge"):
        clu_average(prefix="").merge(maximum)
    masked = jm.wrap_metric(
        clu.metrics.Average, fields=("pred_score", "gt_label"), keywords=("values", "mask")
    )
    with pytest.raises(ValueError, match="cannot merge"):
        clu_average(prefix="").merge(masked)


def test_equal_wraps_are_equal_configurations():
    first, second = clu_average(), clu_average()
    assert first._config == second._config
    assert float(first.update(SCORES[0]).merge(second.update(SCORES[1])).compute()) == (
        pytest.approx(SCORES[:2].mean(), rel=1e-6)
    )


def test_nnx_metric_without_a_known_merge_asks_for_one():
    class Last(nnx.metrics.Metric):
        def __init__(self):
            self.value = nnx.metrics.MetricState(jnp.zeros(()))

        def reset(self):
            self.value[...] = jnp.zeros(())

        def update(self, *, values):
            self.value[...] = values[-1]

        def compute(self):
            return self.value[...]

    last = jm.wrap_metric(Last, fields=("pred_score",), keywords=("values",))
    assert float(last.update(SCORES[0]).compute()) == float(SCORES[0, -1])
    with pytest.raises(TypeError, match="merge="):
        last.update(SCORES[0]).merge(last.update(SCORES[1]))
    newest = jm.wrap_metric(
        Last, fields=("pred_score",), keywords=("values",), merge=lambda a, b: b
    )
    merged = newest.update(SCORES[0]).merge(newest.update(SCORES[1]))
    assert float(merged.compute()) == float(SCORES[1, -1])


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: jm.wrap_metric(object, fields=("pred_score",)), TypeError, "expected a clu"),
        (lambda: jm.wrap_metric(clu.metrics.Average, fields="pred_score"), TypeError, "fields"),
        (
            lambda: jm.wrap_metric(clu.metrics.Average, fields=("a", "b"), keywords=("values",)),
            ValueError,
            "keywords",
        ),
        (lambda: jm.wrap_metric(MAX_SCORE, fields=("pred_score",)), ValueError, "name="),
        (
            lambda: jm.wrap_metric(
                Precision, fields=("s",), keywords=("predictions",), options={"labels": [1]}
            ),
            TypeError,
            "hashable",
        ),
        (
            lambda: jm.wrap_metric(
                Precision, fields=("s",), keywords=("predictions",), options={"predictions": 1}
            ),
            ValueError,
            "also keywords",
        ),
    ],
    ids=["unknown", "string-fields", "keyword-count", "quadruple-name", "unhashable", "clash"],
)
def test_bad_configurations_raise(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_update_takes_one_array_per_field():
    with pytest.raises(TypeError, match="takes 1 arrays"):
        clu_average().update(SCORES[0], LABELS[0])


# -- real collectives: pmap and shard_map over 4 CPU devices, in a child process ---------------------


def sharded_child() -> dict[str, dict[str, float]]:
    """Each device updates with its batch, then all_reduce: every device must hold the total."""
    assert jax.device_count() == NUM_BATCHES, jax.devices()
    evaluator = jm.Evaluator(wrapped_metrics())
    data = {"pred_score": SCORES, "gt_label": LABELS}  # one batch per device
    per_device = jax.tree_util.tree_map(lambda x: jnp.stack([x] * NUM_BATCHES), evaluator)
    pmapped = jax.pmap(
        lambda ev, batch: ev.update(batch).all_reduce("devices"), axis_name="devices"
    )(per_device, data)
    results = {"pmap": as_numbers(jax.tree_util.tree_map(lambda x: x[0], pmapped).compute())}
    mesh = jax.make_mesh((NUM_BATCHES,), ("devices",))

    def local(batch):
        batch = jax.tree_util.tree_map(lambda x: x[0], batch)
        return evaluator.update(batch).all_reduce("devices")

    reduced = jax.jit(
        jax.shard_map(local, mesh=mesh, in_specs=P("devices"), out_specs=P(), check_vma=False)
    )(jax.device_put(data, NamedSharding(mesh, P("devices"))))
    results["shard_map"] = as_numbers(reduced.compute())
    return results


def test_pmap_and_shard_map_all_reduce_equal_numpy():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(
        JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_BATCHES}"
    )
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "sharded"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for kind in ("pmap", "shard_map"):
        check(results[kind])


if __name__ == "__main__":
    if sys.argv[1:] != ["sharded"]:
        raise SystemExit(f"usage: {sys.argv[0]} sharded")
    print(json.dumps(sharded_child()))
