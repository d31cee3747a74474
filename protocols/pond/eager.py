"""Eager Pond operations run as small traced functions, so that the players' kernels overlap as in a graph.

Called eagerly, a Pond operation dispatches its TensorFlow ops one at a time: server0's half of a product,
then server1's, then the producer's triple, each waiting for the one before, on a machine where the traced
graph runs them side by side (500x500 private matmul and reveal: 1.2 to 1.3 times its traced time). Here an
eager call of an operation with operands it has seen before (same operation, same shapes, same Python
arguments) runs a ``tf.function`` of that operation, traced once and cached per protocol:

* calls with a new signature run eagerly until :data:`TRACE_AFTER_CALLS` of them have taken
  :data:`TRACE_AFTER_SECONDS` in all (no trace for one-off shapes, which tests and interactive use make
  many of, nor for cheap calls repeated a few times); the next call traces, later ones reuse the trace;
* Pond tensors become the function's tensor inputs (their shares stay on the servers' devices); Python
  numbers, strings, players, slices and small numpy arrays (up to :data:`CONSTANT_ELEMENTS` elements) are
  part of the cache key and constants of the trace; the values ``share`` is given (numpy arrays or
  numbers, any size) become a float64 input placed on the owner's device, after the same host check as
  the eager path (a bad value takes the eager path, which raises the usual :class:`~tfe_lite.EncodingError`);
* anything else (a ``tf.Tensor`` operand, whose device the protocol must inspect; a large numpy array)
  takes the eager path, as do a checked protocol (its overflow check raises eagerly) and a dealer other
  than :class:`~.dealer.OnlineDealer` (a precomputed dealer reports exhaustion eagerly; a user's dealer
  may keep state in Python, which a trace would freeze).

Nothing random is frozen into a trace: seeds come from each player's counter variable (an atomic
increment when the function runs) and the traffic counters count each execution (see :mod:`.comm`). A
function is called under the process-wide eager lock (:func:`tfe_lite.devices.eager_serialized`: a call
of a function is itself an eager op on the operands' logical devices), like the eager ops it replaces;
inside it the players' ops run in parallel.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from tfe_lite.devices import eager_lock
from tfe_lite.players import Player
from tfe_lite.state import lifted_variable

from .dealer import OnlineDealer
from .tensors import PondTensor, PrivateTensor, PublicTensor

#: Numpy operands up to this many elements are constants of a trace (and part of its cache key).
CONSTANT_ELEMENTS = 4096
#: Traced operations kept per protocol; beyond it new signatures run eagerly.
MAX_FUNCTIONS = 512
#: A signature is traced after this many eager calls that took TRACE_AFTER_SECONDS in all (see
#: :class:`EagerFunctions`).
TRACE_AFTER_CALLS = 8
TRACE_AFTER_SECONDS = 0.1

_STATE = threading.local()  # .inside: an eager Pond operation is running in this thread


class _Eager(Exception):
    """This call cannot run as a cached function; run it eagerly."""


class _Tensor:
    """Where a tensor input goes in an operation's arguments (its index among the function's inputs)."""

    def __init__(self, index: int) -> None:
        self.index = index


class _Pond:
    """Where a Pond tensor goes: its type and the indices of its two tensors."""

    def __init__(self, kind: type, index: int) -> None:
        self.kind, self.index = kind, index


class _Signature:
    """An eager call taken apart: the hashable ``key``, the tensor ``inputs`` and the argument
    ``template`` (the arguments with tensors replaced by :class:`_Tensor` / :class:`_Pond` markers)."""

    def __init__(self, protocol) -> None:
        self.protocol = protocol
        self.inputs: list[tf.Tensor] = []
        self.key_parts: list[Any] = []

    def tensor(self, t: tf.Tensor) -> _Tensor:
        self.inputs.append(t)
        self.key_parts.append(("tensor", tuple(t.shape), t.dtype.name, t.device))
        return _Tensor(len(self.inputs) - 1)

    def value(self, value: Any) -> Any:
        """The template of ``value``, adding its key and tensors; raises :class:`_Eager` if it cannot."""
        if isinstance(value, PondTensor):
            if value.protocol is not self.protocol:
                raise _Eager  # the eager path names the error
            pair = value.shares if isinstance(value, PrivateTensor) else value.values
            marker = _Pond(type(value), len(self.inputs))
            self.key_parts.append(type(value).__name__)
            for t in pair:
                self.tensor(t)
            return marker
        if value is None or value is Ellipsis or isinstance(value, (bool, int, float, str, Player, tf.DType)):
            self.key_parts.append((type(value).__name__, value))
            return value
        if isinstance(value, (tuple, list)):
            self.key_parts.append((type(value).__name__, len(value)))
            return type(value)(self.value(v) for v in value)
        if isinstance(value, slice):
            self.key_parts.append("slice")
            return slice(self.value(value.start), self.value(value.stop), self.value(value.step))
        if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "biuf":
            if value.size > CONSTANT_ELEMENTS:
                raise _Eager
            self.key_parts.append(("ndarray", value.dtype.str, value.shape, value.tobytes()))
            return value
        raise _Eager

    def share_values(self, values: Any, fixedpoint) -> _Tensor:
        """``share``'s host values as a float64 input. Values the eager check would refuse (non-finite or
        ``|x| >= 2**int_bits``; NaN fails both comparisons below) go the eager way, which names them; so do
        empty ones (the in-graph range check of ``fixedpoint.encode`` cannot take them)."""
        if isinstance(values, (tf.Tensor, tf.Variable, PondTensor)):
            raise _Eager
        array = np.asarray(values)
        if array.dtype.kind not in "biuf" or array.size == 0:
            raise _Eager
        array = array.astype(np.float64, copy=False)
        if not (array.max() < fixedpoint.bound and array.min() > -fixedpoint.bound):
            raise _Eager
        return self.tensor(tf.constant(array))


def _rebuild(template: Any, protocol, tensors: list[tf.Tensor]) -> Any:
    if isinstance(template, _Tensor):
        return tensors[template.index]
    if isinstance(template, _Pond):
        return template.kind(protocol, tensors[template.index], tensors[template.index + 1])
    if isinstance(template, (tuple, list)):
        return type(template)(_rebuild(v, protocol, tensors) for v in template)
    if isinstance(template, slice):
        return slice(*(_rebuild(v, protocol, tensors) for v in (template.start, template.stop, template.step)))
    return template


def _flatten_outputs(result: Any, tensors: list[tf.Tensor]) -> Any:
    """The template of an operation's result, appending its tensors to ``tensors``."""
    if isinstance(result, (PrivateTensor, PublicTensor)):
        marker = _Pond(type(result), len(tensors))
        tensors.extend(result.shares if isinstance(result, PrivateTensor) else result.values)
        return marker
    if isinstance(result, (tf.Tensor, tf.Variable)):
        tensors.append(tf.convert_to_tensor(result))
        return _Tensor(len(tensors) - 1)
    if isinstance(result, (tuple, list)):
        return type(result)(_flatten_outputs(v, tensors) for v in result)
    return result


class EagerFunctions:
    """One protocol's cache of traced operations, keyed by operation and :class:`_Signature` key.

    A signature is traced once ``calls`` eager calls of it have taken ``trace_after`` seconds in all: a
    trace costs one to six eager runs of the operation (measured on this project's 2-core machine: a
    512x512 private matmul, 0.05 to 0.1 s eagerly, traces in about 0.2 s; a relu of 4 elements, 0.24 s
    eagerly, in 1.5 s), which only repeated use pays back, so one-off shapes and cheap calls stay eager.
    ``max_functions=0`` keeps every call eager (``benchmarks/matmul.py`` compares that path)."""

    def __init__(
        self, max_functions: int = MAX_FUNCTIONS, trace_after: float = TRACE_AFTER_SECONDS,
        calls: int = TRACE_AFTER_CALLS,
    ) -> None:
        self._max = max_functions
        self._trace_after = trace_after
        self._calls = calls
        self._lock = threading.Lock()
        self._spent: dict = {}  # signature key -> [eager calls, seconds they took]
        self._functions: dict = {}

    def __len__(self) -> int:
        return len(self._functions)

    def call(self, protocol, method: Callable, args: tuple, kwargs: dict) -> Any:
        """``method(protocol, *args, **kwargs)``: from the cached trace of its signature, or eagerly."""
        key = None
        signature = _Signature(protocol)
        try:
            if method.__name__ == "share" and args:
                template_args = (signature.share_values(args[0], protocol.fixedpoint),) + tuple(
                    signature.value(a) for a in args[1:]
                )
            else:
                template_args = tuple(signature.value(a) for a in args)
            template_kwargs = {name: signature.value(kwargs[name]) for name in sorted(kwargs)}
            key = (method.__name__, tuple(signature.key_parts), tuple(sorted(kwargs)))
        except _Eager:
            pass
        function = None
        if key is not None:
            with self._lock:
                function = self._functions.get(key)
                calls, spent = self._spent.get(key, (0, 0.0))
                if function is None and calls >= self._calls and spent >= self._trace_after:
                    if len(self._functions) < self._max:
                        function = self._functions[key] = _Traced(protocol, method, template_args, template_kwargs)
        if function is not None:
            return function(signature.inputs)
        start = time.perf_counter()
        _STATE.inside = True
        try:
            result = method(protocol, *args, **kwargs)
        finally:
            _STATE.inside = False
        if key is not None and self._max > 0:
            with self._lock:
                if key in self._spent or len(self._spent) < 8 * self._max:
                    calls, spent = self._spent.get(key, (0, 0.0))
                    self._spent[key] = (calls + 1, spent + time.perf_counter() - start)
        return result


class _Traced:
    """One operation traced for one signature (traced by its first call).

    A function called eagerly returns its outputs on the caller's device, which would put both shares of
    a result on the driver's. So the function returns nothing: it assigns each output to a variable on the
    device the output was computed on (made on the first trace), and the call reads them back there. The
    call and the reads run under the eager lock, so no other call of the same function writes in between
    (a read is a value: a later assignment does not change it)."""

    def __init__(self, protocol, method: Callable, template_args: tuple, template_kwargs: dict) -> None:
        self._outputs = None
        self._slots: list[tf.Variable] | None = None

        def run(*tensors):
            tensors = list(tensors)
            result = method(
                protocol,
                *_rebuild(template_args, protocol, tensors),
                **{k: _rebuild(v, protocol, tensors) for k, v in template_kwargs.items()},
            )
            flat: list[tf.Tensor] = []
            self._outputs = _flatten_outputs(result, flat)
            if self._slots is None:
                self._slots = [_slot(t) for t in flat]
            for slot, t in zip(self._slots, flat):
                slot.assign(t)

        self._protocol = protocol
        self._function = tf.function(run, autograph=False)

    def __call__(self, inputs: list[tf.Tensor]) -> Any:
        with eager_lock():
            self._function(*inputs)
            flat = []
            for slot in self._slots:
                with tf.device(slot.device):  # eagerly a read runs on the ambient device otherwise
                    flat.append(slot.read_value())
        return _rebuild(self._outputs, self._protocol, flat)


def _slot(t: tf.Tensor) -> tf.Variable:
    """A variable on ``t``'s device that can hold ``t``."""
    zeros = np.zeros([d or 0 for d in t.shape] if t.shape.rank is not None else [], t.dtype.as_numpy_dtype)
    shape = t.shape if t.shape.is_fully_defined() else tf.TensorShape(None)
    return lifted_variable(zeros, device=t.device, name="eager_result", shape=shape)


def traced_when_eager(method: Callable) -> Callable:
    """Wrap a Pond operation so that repeated eager calls run it as a cached traced function (see the
    module docstring); traced calls, and calls from inside another eager operation, run it directly."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not tf.executing_eagerly() or getattr(_STATE, "inside", False) or not _traceable(self):
            return method(self, *args, **kwargs)
        return self._eager_functions.call(self, method, args, kwargs)

    return wrapper


def _traceable(protocol) -> bool:
    return not protocol.checked and type(protocol.dealer) is OnlineDealer
