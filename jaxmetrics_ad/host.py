"""Running numpy code on the host from inside jit: exact-mode computations sort with numpy.

numpy's sort measures ~30x faster than XLA's on CPU, so exact metrics compute on the host. jax hands
callbacks jax arrays; running jax operations on them inside the callback can deadlock under ``pmap``
(every device thread waits in its callback), so :func:`on_host` converts them to numpy first.

Eagerly (no argument is traced) the function is simply called on numpy copies, without a callback:
an eager ``pure_callback`` on arrays replicated over several devices (e.g. one device's slice of a
``pmap`` output) returns an array whose ``{maximal device=0}`` sharding no later jax operation
accepts. Under ``vmap`` the callback runs once per element (``vmap_method="sequential"``), as the
host functions take one state's samples at a time.

Inside a callback, numpy runs on one of XLA's threads, which set the CPU to treat subnormal floats
as zero (and flush results to zero): there ``1e-40 < 2e-40`` is False, so a host sort would tie
every subnormal score at 0. Callbacks therefore hand their numpy work to one worker thread started
when this module is imported (threads inherit the floating-point mode of the thread that starts
them, so it must not be started from a callback) and wait for it: exact means exact.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmetrics_ad.validation import is_traced


def on_host(function: Callable[..., Any], result_shape: Any, *arrays: jax.Array) -> Any:
    """``function(*numpy_arrays)`` through ``jax.pure_callback``; works eagerly and under jit/pmap/vmap.

    ``result_shape`` is a pytree of ``jax.ShapeDtypeStruct``; the result must match it.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> total = lambda x: np.float32(np.sort(x)[-1])
        >>> float(jax.jit(lambda x: on_host(total, jax.ShapeDtypeStruct((), jnp.float32), x))(jnp.arange(3.0)))
        2.0
        >>> jax.vmap(lambda x: on_host(total, jax.ShapeDtypeStruct((), jnp.float32), x))(jnp.eye(2)).tolist()
        [1.0, 1.0]
    """

    def call(*values: Any) -> Any:
        # undefined cases (one class only) become NaN by design, not a RuntimeWarning
        with np.errstate(divide="ignore", invalid="ignore"):
            return function(*(np.asarray(v) for v in values))

    def call_in_worker(*values: Any) -> Any:
        return _WORKER.run(call, *values)

    if is_traced(*arrays):
        return jax.pure_callback(call_in_worker, result_shape, *arrays, vmap_method="sequential")
    return jax.tree_util.tree_map(_as_declared, result_shape, call(*arrays))


def _as_declared(spec: jax.ShapeDtypeStruct, value: Any) -> jax.Array:
    """``value`` as a jax array of ``spec``'s dtype; ValueError when its shape differs (as in jit)."""
    array = np.asarray(value)
    if array.shape != tuple(spec.shape):
        raise ValueError(
            f"on_host: the host function returned shape {array.shape}, declared {tuple(spec.shape)}"
        )
    return jnp.asarray(array.astype(spec.dtype, copy=False))


class _FloatExactWorker:
    """One daemon thread that runs host functions with the floating-point mode of the importing
    thread (normally the main thread: subnormals kept), for callers on XLA's threads.

    Example:
        >>> tiny = np.array([1e-40, 2e-40], np.float32)
        >>> _WORKER.run(lambda x: bool(x[0] < x[1]), tiny)
        True
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._start()

    def _start(self) -> None:
        self._jobs = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="jaxmetrics_ad-host", daemon=True).start()

    def _serve(self) -> None:
        while True:
            function, values, done, outcome = self._jobs.get()
            try:
                outcome.append((True, function(*values)))
            except BaseException as error:  # re-raised in the caller's thread
                outcome.append((False, error))
            done.set()

    def run(self, function: Callable[..., Any], *values: Any) -> Any:
        """``function(*values)`` on the worker thread; its exceptions are raised here."""
        done, outcome = threading.Event(), []
        self._jobs.put((function, values, done, outcome))
        done.wait()
        succeeded, result = outcome[0]
        if not succeeded:
            raise result
        return result


_WORKER = _FloatExactWorker()
# A forked child has no worker thread: start one there (from the thread that forked, not XLA's).
os.register_at_fork(after_in_child=_WORKER._start)
