"""Logical CPU devices of this process.

TensorFlow fixes the number of logical CPU devices when its runtime initializes (the first op, or the first
device listing). Players of a :class:`tfe_lite.LocalConfig`, and replicas of a ``tf.distribute`` strategy
tested on one CPU, each need a logical device of their own, so this module asks for them early.
"""

from __future__ import annotations

import functools
import threading
from typing import Callable

import tensorflow as tf

from tfe_lite.errors import RuntimeConfigError

#: How many logical CPU devices are asked for when none is configured yet: room for the three protocol
#: players, several data owners and the host device ``/device:CPU:0``.
DEFAULT_LOGICAL_CPUS = 8


def ensure_logical_cpus(count: int) -> list[str]:
    """Make sure the process has at least ``count`` logical CPU devices and return their names.

    Before TensorFlow's runtime initializes this configures ``max(count, DEFAULT_LOGICAL_CPUS)`` devices
    (or keeps a larger configuration). Afterwards it can only check, and raises
    :class:`~tfe_lite.errors.RuntimeConfigError` with the remedy when there are too few.
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise RuntimeConfigError(
            f"Received an invalid value for `count`, expected a positive integer. Received: count={count!r}"
        )
    cpus = tf.config.list_physical_devices("CPU")
    configured = tf.config.get_logical_device_configuration(cpus[0]) or []
    wanted = max(count, DEFAULT_LOGICAL_CPUS, len(configured))
    if len(configured) < wanted:
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(wanted)]
            )
        except RuntimeError:
            pass  # runtime already initialized: check what it has below
    names = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(names) < count:
        raise RuntimeConfigError(
            f"tfe_lite needs {count} logical CPU devices but TensorFlow's runtime was initialized with "
            f"{len(names)} ({names}). Logical devices can only be configured before the first TensorFlow "
            f"op runs: call tfe_lite.devices.ensure_logical_cpus({count}) (or create the LocalConfig) at the "
            "start of the program."
        )
    return names


# TensorFlow 2.21's eager runtime mixes up operands when several Python threads run ops on logical devices
# other than the host's at once (measured: a few in a thousand right-shifts by 8 on /device:CPU:1 came out
# shifted by another thread's 56); the same ops inside a tf.function run concurrently without error. So
# eager work on the players' devices is serialized by one process-wide lock, and only graph executions
# overlap.
_EAGER_LOCK = threading.RLock()


def eager_lock() -> threading.RLock:
    """The process-wide eager lock (reentrant), for code that runs eager work other than through
    :func:`eager_serialized` (e.g. calls of traced functions on the players' devices)."""
    return _EAGER_LOCK


def eager_serialized(fn: Callable) -> Callable:
    """Run ``fn`` under the process-wide eager lock when it executes eagerly (not while tracing)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if tf.executing_eagerly():
            with _EAGER_LOCK:
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper
