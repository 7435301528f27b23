"""Our metrics inside ``flax.nnx``: an ``nnx.Metric`` that holds one of them, for ``nnx.MultiMetric``.

``nnx`` metrics are stateful objects updated in place with keyword arguments
(``metrics.update(anomaly_map=..., gt_mask=..., loss=...)``, every metric of an ``nnx.MultiMetric``
gets every keyword). :class:`NNXMetric` keeps a jaxmetrics_ad metric (an immutable pytree) in an
``nnx`` variable and replaces it on each update, reading only the metric's own ``fields`` from the
keywords, so it sits next to ``nnx.metrics.Average`` and works under ``nnx.jit``.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from jaxmetrics_ad.base import Metric


class NNXMetric(nnx.Metric):
    """An ``nnx.Metric`` around a jaxmetrics_ad metric (its configuration and state).

    ``update(**outputs)`` reads the metric's ``fields`` and ignores other keywords; an nnx ``mask``
    of one flag per image becomes the metric's ``valid``. ``compute()`` is the metric's value and
    ``reset()`` empties it. :attr:`metric` is the wrapped metric as it stands.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import jaxmetrics_ad as jm
        >>> metrics = nnx.MultiMetric(
        ...     loss=nnx.metrics.Average("loss"),
        ...     auroc=jm.NNXMetric(jm.AUROC(thresholds=64)),
        ... )
        >>> metrics.update(loss=jnp.array([0.5]), pred_score=jnp.array([0.2, 0.9]), gt_label=jnp.array([0, 1]))
        >>> {name: float(value) for name, value in metrics.compute().items()}
        {'loss': 0.5, 'auroc': 1.0}
    """

    def __init__(self, metric: Metric) -> None:
        if not isinstance(metric, Metric):
            raise TypeError(f"metric: expected a jaxmetrics_ad metric, got {type(metric).__name__}")
        self.state = nnx.metrics.MetricState(metric.reset())

    @property
    def metric(self) -> Metric:
        """The wrapped metric with the data seen so far."""
        return self.state.get_value()

    def reset(self) -> None:
        """Forget the data (the configuration stays)."""
        self.state.set_value(self.metric.reset())

    def update(self, mask: Any = None, **outputs: Any) -> None:
        """Add one batch: the metric's fields are read from ``outputs``, other entries ignored."""
        metric = self.metric
        valid = None
        if mask is not None:
            valid = mask if metric.masks_samples else None
            if valid is None:
                raise TypeError(f"{metric.name}: this metric cannot leave out images (mask=...)")
        self.state.set_value(metric.update_from(outputs, valid=valid))

    def compute(self) -> Any:
        """The metric's value."""
        return self.metric.compute()
