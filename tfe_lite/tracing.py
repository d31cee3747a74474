"""AutoGraph leaves the protocol code as it is.

A user's ``tf.function`` is converted by AutoGraph, and AutoGraph converts every function it calls in turn,
unless the function's module is one of those it knows to leave alone (TensorFlow, Keras, NumPy ...). The
protocol and private-layer code needs no conversion (it branches and loops only on Python values, and the
library traces its own functions with ``autograph=False``), but converting it is slow: tracing the
nonlinear functions of a Pond tensor (max pooling, sigmoid, softmax) inside a user's ``tf.function`` spent
most of its time in AutoGraph's conversion of tfe_lite's comparison circuits. :func:`leave_unconverted`
adds ``tfe_lite.protocols`` and ``tfe_lite.keras_layers`` to AutoGraph's rules, as TensorFlow does for
Keras; the user's own function is still converted. The DP and federated code is left to AutoGraph.

AutoGraph has no public API for such a rule (``tf.autograph.experimental.do_not_convert`` marks one
function at a time), so this edits ``tensorflow.python.autograph.core.config.CONVERSION_RULES``; if a
TensorFlow release moves it, tracing still works, only slower, and a warning says so.
"""

from __future__ import annotations

import warnings

#: The packages AutoGraph calls as they are.
UNCONVERTED = ("tfe_lite.protocols", "tfe_lite.keras_layers")


def leave_unconverted(packages: tuple[str, ...] = UNCONVERTED) -> bool:
    """Have AutoGraph call the functions of ``packages`` unconverted (idempotent); whether the rule is in place."""
    try:
        from tensorflow.python.autograph.core import config, config_lib
    except ImportError as error:  # pragma: no cover - a TensorFlow without this module
        warnings.warn(f"AutoGraph's conversion rules were not found ({error}): tf.functions that call tfe_lite "
                      "trace more slowly (AutoGraph converts the protocol code)", RuntimeWarning, stacklevel=2)
        return False
    present = {str(rule) for rule in config.CONVERSION_RULES}
    rules = tuple(rule for rule in map(config_lib.DoNotConvert, packages) if str(rule) not in present)
    config.CONVERSION_RULES = rules + tuple(config.CONVERSION_RULES)
    return True
