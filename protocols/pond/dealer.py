"""Triple dealers: where the Beaver triples and square pairs of the servers come from.

A dealer is a :class:`TripleSource`. For a :class:`TripleSpec` — a bilinear ring operation ``f`` (``mul``,
``matmul``, ``conv2d``) with operand shapes, or ``square`` — it hands ``server0`` the shares ``a0, b0, c0``
and ``server1`` the shares ``a1, b1, c1`` of random ``a``, ``b`` and ``c = f(a, b)`` (``c = a * a`` for a
square pair, with no ``b``).

* :class:`OnlineDealer`: the crypto producer makes each triple when it is needed.
* :class:`PrecomputedDealer`: the producer makes triples ahead of time (the offline phase); the online
  phase only reads them. Pools live in variables on the servers and are consumed through run-time
  counters, so a ``tf.function`` never reuses a triple: it fails when a pool runs out.

Seeded triples: the producer draws two fresh seeds. Server0's shares ``a0, b0, c0`` are all expanded from
seed 0 (streams 0, 1, 2), server1's ``a1, b1`` from seed 1; only ``c1 = f(a, b) - c0`` travels in full.
A triple thus costs ``64 + 8 * size(c)`` bytes of producer traffic.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from tfe_lite import prg, ring
from tfe_lite.errors import ConfigError, TripleExhaustedError

_A, _B, _C = 0, 1, 2  # expansion streams of a seed


def _ring_mul(spec, a, b):
    return a * b


def _ring_square(spec, a, b):
    return a * a


def _ring_matmul(spec, a, b):
    return ring.matmul(a, b)


def _ring_conv2d(spec, a, b):
    return ring.conv2d(a, b, spec.strides, spec.padding)


_OPS: dict[str, Callable] = {
    "mul": _ring_mul,
    "square": _ring_square,
    "matmul": _ring_matmul,
    "conv2d": _ring_conv2d,
}


@dataclasses.dataclass(frozen=True)
class TripleSpec:
    """Which correlated randomness an interactive product needs."""

    op: str
    shape_a: tuple
    shape_b: tuple | None = None
    strides: tuple = (1, 1)
    padding: str = "VALID"

    def apply(self, a: tf.Tensor, b: tf.Tensor | None) -> tf.Tensor:
        """``f(a, b)`` over Z/2^64."""
        return _OPS[self.op](self, a, b)

    def __str__(self) -> str:
        if self.shape_b is None:
            return f"{self.op}{list(self.shape_a)}"
        return f"{self.op}({list(self.shape_a)}, {list(self.shape_b)})"


@dataclasses.dataclass
class Triple:
    """Server0's and server1's shares of ``(a, b, c = f(a, b))``; ``b`` is None for square pairs."""

    a0: tf.Tensor
    b0: tf.Tensor | None
    c0: tf.Tensor
    a1: tf.Tensor
    b1: tf.Tensor | None
    c1: tf.Tensor


class TripleSource(abc.ABC):
    """Interface of every dealer. A dealer serves one protocol instance, which binds it."""

    protocol = None

    def bind(self, protocol) -> None:
        if self.protocol is not None and self.protocol is not protocol:
            raise ConfigError(f"{type(self).__name__} is already bound to another protocol instance.")
        self.protocol = protocol

    @abc.abstractmethod
    def triple(self, spec: TripleSpec) -> Triple:
        """Shares of a fresh triple for ``spec``, each on its server's device."""


class OnlineDealer(TripleSource):
    """The crypto producer makes each triple on demand, from fresh seeds.

    Steps for ``spec`` with bilinear ``f``:
      1. producer: seeds ``s0, s1`` from its stream; ``a_i, b_i`` = expand(``s_i``); ``c0`` = expand(``s0``);
         ``c1 = f(a0 + a1, b0 + b1) - c0``.
      2. producer -> server0: ``s0`` (32 bytes); server0 expands ``a0, b0, c0``.
      3. producer -> server1: ``s1`` and ``c1``; server1 expands ``a1, b1``.
    """

    def triple(self, spec: TripleSpec) -> Triple:
        prot = self.protocol
        producer, s0, s1 = prot.producer, prot.server0, prot.server1
        with tf.device(producer.device):
            stream = prot.streams.stream(producer)
            seed0, seed1 = stream.next_seed(), stream.next_seed()
            a = prg.expand_seed(seed0, spec.shape_a, stream=_A) + prg.expand_seed(seed1, spec.shape_a, stream=_A)
            b = None
            if spec.shape_b is not None:
                b = prg.expand_seed(seed0, spec.shape_b, stream=_B) + prg.expand_seed(seed1, spec.shape_b, stream=_B)
            c = spec.apply(a, b)
            c1 = c - prg.expand_seed(seed0, c.shape, stream=_C)
        send = prot.channel.send
        seed0 = send(seed0, producer, s0, "triple_seed")
        seed1 = send(seed1, producer, s1, "triple_seed")
        c1 = send(c1, producer, s1, "triple_c1")
        with tf.device(s0.device):
            a0 = prg.expand_seed(seed0, spec.shape_a, stream=_A)
            b0 = None if b is None else prg.expand_seed(seed0, spec.shape_b, stream=_B)
            c0 = prg.expand_seed(seed0, c.shape, stream=_C)
        with tf.device(s1.device):
            a1 = prg.expand_seed(seed1, spec.shape_a, stream=_A)
            b1 = None if b is None else prg.expand_seed(seed1, spec.shape_b, stream=_B)
        return Triple(a0, b0, c0, a1, b1, c1)


class _Pool:
    """Precomputed triples of one spec: stacked variables on each server and a counter per server."""

    def __init__(self, prot, spec: TripleSpec, triples: list[Triple]):
        self.spec = spec
        self.size = len(triples)
        self.parts = {}
        for server, names in ((prot.server0, ("a0", "b0", "c0")), (prot.server1, ("a1", "b1", "c1"))):
            with tf.init_scope(), tf.device(server.device):
                for name in names:
                    values = [getattr(t, name) for t in triples]
                    if values[0] is not None:
                        self.parts[name] = tf.Variable(tf.stack(values), trainable=False, name=f"pool_{name}")
                self.parts["next" + names[0][-1]] = tf.Variable(np.int64(0), trainable=False, name="pool_next")

    def take(self, prot) -> Triple:
        taken = {}
        for server, index in ((prot.server0, "0"), (prot.server1, "1")):
            counter = self.parts[f"next{index}"]
            with tf.device(server.device):
                if tf.executing_eagerly() and int(counter.numpy()) >= self.size:
                    raise TripleExhaustedError(self._exhausted_message())
                i = counter.assign_add(1) - 1
                check = tf.debugging.assert_less(i, np.int64(self.size), message=self._exhausted_message())
                with tf.control_dependencies([check]):
                    for name in ("a", "b", "c"):
                        var = self.parts.get(name + index)
                        taken[name + index] = None if var is None else tf.gather(var, i)
        return Triple(**taken)

    def remaining(self) -> int:
        return self.size - int(self.parts["next0"].numpy())

    def _exhausted_message(self) -> str:
        return (
            f"The precomputed dealer has no {self.spec} triple left: all {self.size} were used. "
            "Precompute more (PrecomputedDealer.precompute / precompute_for)."
        )


class _Recorder(TripleSource):
    """Stands in for a dealer while a computation is traced, to list the triples it needs."""

    def __init__(self, protocol):
        self.protocol = protocol
        self.specs: list[TripleSpec] = []

    def triple(self, spec: TripleSpec) -> Triple:
        self.specs.append(spec)
        prot = self.protocol
        c_shape = spec.apply(tf.zeros(spec.shape_a, tf.int64),
                             None if spec.shape_b is None else tf.zeros(spec.shape_b, tf.int64)).shape
        parts = {}
        for server, index in ((prot.server0, "0"), (prot.server1, "1")):
            with tf.device(server.device):
                parts["a" + index] = tf.zeros(spec.shape_a, tf.int64)
                parts["b" + index] = None if spec.shape_b is None else tf.zeros(spec.shape_b, tf.int64)
                parts["c" + index] = tf.zeros(c_shape, tf.int64)
        return Triple(**parts)


class PrecomputedDealer(TripleSource):
    """Triples made in an offline phase and stored on the servers for the online phase.

    ``precompute(spec, count)`` has ``generator`` (an :class:`OnlineDealer` by default: the crypto producer
    with seeded triples) make ``count`` triples now; their traffic is logged under phase ``"offline"``.
    ``precompute_for(fn, *args, runs=n)`` traces ``fn`` to find the triples it needs and makes them for
    ``n`` runs. During the online phase :meth:`triple` only reads the pools; an empty pool raises
    :class:`~tfe_lite.errors.TripleExhaustedError` (eagerly) or fails the graph's run-time check.
    """

    def __init__(self, generator: TripleSource | None = None):
        self.generator = generator or OnlineDealer()
        self._pools: dict[TripleSpec, list[_Pool]] = collections.defaultdict(list)

    def bind(self, protocol) -> None:
        super().bind(protocol)
        self.generator.bind(protocol)

    def precompute(self, spec: TripleSpec, count: int) -> None:
        if not isinstance(count, int) or count < 1:
            raise ConfigError(f"Received an invalid value for `count`, expected a positive integer. Received: count={count!r}")
        with self.protocol.channel.phase("offline"):
            triples = [self.generator.triple(spec) for _ in range(count)]
        self._pools[spec].append(_Pool(self.protocol, spec, triples))

    def plan(self, fn: Callable, *args) -> list[TripleSpec]:
        """The triples one run of ``fn(*args)`` needs, found by tracing it (nothing runs)."""
        recorder = _Recorder(self.protocol)
        previous, self.protocol.dealer = self.protocol.dealer, recorder
        try:
            tf.function(fn).get_concrete_function(*args)
        finally:
            self.protocol.dealer = previous
        return recorder.specs

    def precompute_for(self, fn: Callable, *args, runs: int = 1) -> dict[TripleSpec, int]:
        """Make the triples of ``runs`` runs of ``fn(*args)``; returns how many of each spec were made."""
        needed = collections.Counter(self.plan(fn, *args))
        for spec, count in needed.items():
            self.precompute(spec, count * runs)
        return {spec: count * runs for spec, count in needed.items()}

    def remaining(self, spec: TripleSpec) -> int:
        return sum(pool.remaining() for pool in self._pools.get(spec, ()))

    def triple(self, spec: TripleSpec) -> Triple:
        pools = self._pools.get(spec)
        if not pools:
            raise TripleExhaustedError(
                f"The precomputed dealer has no pool for {spec}; precompute it first "
                f"(known specs: {[str(s) for s in self._pools] or 'none'})."
            )
        if tf.executing_eagerly():
            for pool in pools:
                if pool.remaining() > 0:
                    return pool.take(self.protocol)
        return pools[-1].take(self.protocol)
