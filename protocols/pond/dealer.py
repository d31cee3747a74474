"""Dealers: where the servers' correlated randomness (Beaver triples and their kin) comes from.

A dealer is a :class:`TripleSource`. For a :class:`TripleSpec` it hands ``server0`` the parts ``a0, b0, c0``
and ``server1`` the parts ``a1, b1, c1`` of random ``a``, ``b`` and ``c = f(a, b)``. What ``f`` is, and how
each value is shared, depends on the spec's ``op`` (:data:`~.triples.KINDS`, tabled in :mod:`.triples`).

* :class:`OnlineDealer`: the crypto producer makes each triple when it is needed.
* :class:`PrecomputedDealer`: the producer makes triples ahead of time (the offline phase); the online
  phase only reads them.

Seeded triples: the producer draws two fresh seeds; server ``i`` expands ``a_i, b_i`` and ``g_i`` from seed
``i`` (streams 0, 1, 2). ``c``'s elements are split in halves: for the first ``floor(size / 2)`` server1's
part is its ``g_1`` and server0 receives ``c - g_1`` there (``xor`` for XOR-shared kinds); for the rest
server0's part is its ``g_0`` and server1 receives ``c - g_0``. Neither link from the producer carries all
of ``c``, and each received half is uniform to its receiver (masked by the other server's expansion, which
it cannot compute). A triple thus
costs ``64 + 8 * size(c)`` bytes of producer traffic, half on each link, in one message to each server (or
several triples in one pair of messages: :meth:`TripleSource.triples`).
"""

from __future__ import annotations

import abc
import collections
import itertools
import re
import threading
from typing import Callable

import numpy as np
import tensorflow as tf

from tfe_lite import prg
from tfe_lite.devices import eager_serialized
from tfe_lite.errors import ConfigError, ProtocolError, TripleExhaustedError
from tfe_lite.random import AtomicCounter
from tfe_lite.state import lifted_variable

from .triples import KINDS, Triple, TripleSpec  # noqa: F401  (re-exported: dealers deal them)

def _join(sharing: str, x0, x1) -> tf.Tensor:
    return x0 + x1 if sharing == "add" else tf.bitwise.bitwise_xor(x0, x1)


class TripleSource(abc.ABC):
    """Interface of every dealer. A dealer serves one protocol instance, which binds it."""

    protocol = None

    def bind(self, protocol) -> None:
        if self.protocol is not None and self.protocol is not protocol:
            raise ConfigError(f"{type(self).__name__} is already bound to another protocol instance.")
        self.protocol = protocol

    @abc.abstractmethod
    def triple(self, spec: TripleSpec) -> Triple:
        """Parts of a fresh triple for ``spec``, each on its server's device."""

    def triples(self, specs) -> list[Triple]:
        """Fresh triples for several specs that one operation needs together (a dealer may send them in
        fewer messages)."""
        return [self.triple(spec) for spec in specs]


class OnlineDealer(TripleSource):
    """The crypto producer makes each triple on demand, from fresh seeds.

    Steps for the specs of one :meth:`triples` call, each with its ``f``:
      1. producer: seeds ``s0, s1`` from one draw of its stream; ``s_i`` expands into a keystream that
         holds, spec after spec, ``a_i``, ``b_i`` and the half of ``g_i`` that server ``i`` keeps (server0
         the elements after the first ``floor(size / 2)`` of the flattened ``c``, server1 those first
         elements); ``c = f(a, b)`` with ``a = a0 + a1`` (or ``a0 ^ a1`` for XOR-shared kinds); the
         correction ``k0 = c - g1`` on the first ``floor(size / 2)`` elements and ``k1 = c - g0`` on the
         rest (or ``^``).
      2. producer -> server0: ``s0`` and every ``k0``, in one message; server0 expands ``s0`` and has
         ``c0 = [k0, its half of g0]``.
      3. producer -> server1: ``s1`` and every ``k1``, in one message; server1 expands ``s1`` and has
         ``c1 = [its half of g1, k1]``.

    So a comparison's whole correlated randomness (an edaBit, a daBit and an AND triple per level) costs
    two producer messages, one 32-byte seed each, and few keystream ops (one for the small parts that follow
    one another, one for each large part: :data:`OWN_KEYSTREAM`). Each
    correction half is uniform to its receiver: masked by the other server's keystream.
    """

    def triple(self, spec: TripleSpec) -> Triple:
        return self.triples([spec])[0]

    @eager_serialized
    def triples(self, specs) -> list[Triple]:
        specs = list(specs)
        prot = self.protocol
        producer, s0, s1 = prot.producer, prot.server0, prot.server1
        lows, highs = [], []
        with tf.device(producer.device):
            seeds = prot.streams.stream(producer).next_seeds(2)
            seed0, seed1 = seeds[0], seeds[1]
            for spec, (a0, b0, g0), (a1, b1, g1) in zip(specs, _expansion(seed0, specs, 0), _expansion(seed1, specs, 1)):
                kind = spec.kind
                a = _join(kind.ab_a, a0, a1)
                b = _join(kind.ab_b, b0, b1) if kind.has_b else None
                # the correction is c less the other server's part: server1's g1 on the first half, g0 after
                low, high = spec.split_off_c_halves(spec.apply(a, b), g1, g0)
                lows.append(low)
                highs.append(high)
        send = prot.channel.send_many
        received0 = send([seed0] + lows, producer, s0, "triple_c0")
        received1 = send([seed1] + highs, producer, s1, "triple_c1")
        with tf.device(s0.device):
            parts0 = _expansion(received0[0], specs, 0)
        with tf.device(s1.device):
            parts1 = _expansion(received1[0], specs, 1)
        triples = []
        for spec, (a0, b0, g0), (a1, b1, g1), low, high in zip(specs, parts0, parts1, received0[1:], received1[1:]):
            with tf.device(s0.device):
                c0 = _join_halves(low, g0, spec.shape_c)
            with tf.device(s1.device):
                c1 = _join_halves(g1, high, spec.shape_c)
            triples.append(Triple(a0, b0, c0, a1, b1, c1))
        return triples


def _half(size: int, server: int) -> int:
    """How many of a flattened ``c``'s ``size`` elements server ``server`` takes from its own keystream:
    server0 all but the first ``floor(size / 2)`` (which it receives), server1 those first ones."""
    k = size // 2
    return size - k if server == 0 else k


#: Elements from which a part of a deal gets a keystream op of its own; smaller parts that follow one
#: another share one op and a split (whose copy is cheap for them).
OWN_KEYSTREAM = 1 << 14


def _expansion(seed: tf.Tensor, specs, server: int) -> list[tuple]:
    """Server ``server``'s ``(a_i, b_i or None, its half of g_i flattened)`` for each spec, from the keystream
    of ``seed`` (on the current device), the same layout for the producer and the server: the parts one
    after another, each from a block boundary of stream 0."""
    shapes = []
    for spec in specs:
        shapes += [spec.part_shape_a] + ([spec.shape_b] if spec.kind.has_b else [])
        shapes.append((_half(int(np.prod(spec.shape_c, dtype=np.int64)), server),))
    sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
    blocks = [-(-size // prg.BLOCK_INT64S) for size in sizes]
    starts = np.concatenate([[0], np.cumsum(blocks)[:-1]]).astype(int).tolist()
    flat, run = [None] * len(sizes), []

    def expand_run():  # consecutive small parts: one keystream over their blocks, split (padding dropped)
        if len(run) == 1:
            flat[run[0]] = prg.expand_seed(seed, [sizes[run[0]]], first_block=starts[run[0]])
        elif run:
            pieces = [n for j in run for n in (sizes[j], blocks[j] * prg.BLOCK_INT64S - sizes[j])]
            words = prg.expand_seed(seed, [sum(pieces)], first_block=starts[run[0]])
            for j, part in zip(run, tf.split(words, pieces)[::2]):
                flat[j] = part
        run.clear()

    for j, size in enumerate(sizes):
        if size >= OWN_KEYSTREAM:
            expand_run()
            flat[j] = prg.expand_seed(seed, [size], first_block=starts[j])
        else:
            run.append(j)
    expand_run()
    parts = iter(_shaped(part, shape) for part, shape in zip(flat, shapes))
    return [(next(parts), next(parts) if spec.kind.has_b else None, next(parts)) for spec in specs]


def _shaped(flat: tf.Tensor, shape) -> tf.Tensor:
    return flat if len(shape) == 1 else tf.reshape(flat, shape)


def _join_halves(low: tf.Tensor, high: tf.Tensor, shape) -> tf.Tensor:
    """The tensor of ``shape`` whose flattened halves (:meth:`TripleSpec.split_off_c_halves`) are ``low``
    and ``high``."""
    return tf.reshape(tf.concat([low, high], axis=0), shape)


_dealer_ids = itertools.count()
_TAKE = re.compile(r"(?:^|/)pond_take_d(\d+)_s(\d+)(?:_\d+)?$")


class _Pool:
    """Every precomputed triple of one spec: stacked variables on each server, one index on server0.

    Triple ``i`` is row ``i`` of each server's variables. A take reads-and-advances the index atomically on
    server0 and sends it to server1 (8 bytes; the takes of one operation in one message), so both servers always use the same triple, each triple is
    used at most once, and a run that fails half-way wastes its triple instead of putting the servers out
    of step. The variables have an unknown leading dimension and grow by :meth:`append`; a traced function
    reads them at run time, so triples precomputed after it was traced serve it too.
    """

    def __init__(self, prot, spec: TripleSpec, op_name: str):
        self.spec, self.op_name = spec, op_name
        kind = spec.kind
        shapes = {"a": spec.part_shape_a, "b": spec.shape_b if kind.has_b else None, "c": spec.shape_c}
        self.parts: dict[str, tf.Variable] = {}
        for server, index in ((prot.server0, "0"), (prot.server1, "1")):
            for name, shape in shapes.items():
                if shape is not None:
                    self.parts[name + index] = lifted_variable(
                        np.zeros((0, *shape), np.int64), device=server.device, name=f"pool_{name}{index}",
                        shape=tf.TensorShape([None, *shape]),
                    )
        self.index = AtomicCounter(variable=lifted_variable(
            np.zeros(3, np.int64), device=prot.server0.device, name="pool_index"))

    def size(self) -> int:
        """How many rows the pool holds (used triples included)."""
        return int(tf.raw_ops.VariableShape(input=self.parts["a0"].handle)[0])

    def append(self, triples: list[Triple]) -> None:
        # Indices handed out while the pool was empty belong to runs that failed; rows for them are filler
        # that no take reads, so that the new triples get indices no one holds yet.
        filler = max(0, int(self.index.read_value()) - self.size())
        for name, var in self.parts.items():
            with tf.device(var.device):
                new = tf.stack([getattr(t, name) for t in triples])
                pad = tf.zeros([filler, *new.shape[1:]], tf.int64)
                var.assign(tf.concat([var, pad, new], axis=0))

    def next_index(self) -> tf.Tensor:
        """Read-and-advance the index (on server0): the row of this take."""
        return self.index.next(name=self.op_name) - 1

    def rows(self, server, index: str, i) -> dict:
        """Server ``index``'s parts of row ``i`` (checked against the rows stored), on its device."""
        taken = {}
        with tf.device(server.device):
            # VariableShape, not tf.shape: tf.shape of a variable reads (copies) the whole pool.
            stored = tf.raw_ops.VariableShape(input=self.parts["a" + index].handle, out_type=tf.int64)[0]
            check = tf.debugging.assert_less(i, stored, message=self.exhausted_message())
            with tf.control_dependencies([check]):
                for name in ("a", "b", "c"):
                    var = self.parts.get(name + index)
                    taken[name + index] = None if var is None else tf.gather(var, i)
        return taken

    def remaining(self) -> int:
        return max(0, self.size() - int(self.index.read_value()))

    def exhausted_message(self, used: int | None = None) -> str:
        count = "" if used is None else f"all {used} were used"
        return (
            f"The precomputed dealer has no {self.spec} triple left{': ' + count if count else ''}. "
            "Precompute more (PrecomputedDealer.precompute / precompute_for)."
        )


def _take_all(prot, pools: list) -> list[Triple]:
    """One triple from each pool; server0 advances the indices and sends them to server1 in one message."""
    with tf.device(prot.server0.device):
        indices = [pool.next_index() for pool in pools]
    at1 = prot.channel.send_many([tf.reshape(i, [1]) for i in indices], prot.server0, prot.server1, "triple_index")
    triples = []
    for pool, i0, i1 in zip(pools, indices, at1):
        with tf.device(prot.server1.device):
            i1 = tf.reshape(i1, [])
        triples.append(Triple(**pool.rows(prot.server0, "0", i0), **pool.rows(prot.server1, "1", i1)))
    return triples


class PrecomputedDealer(TripleSource):
    """Triples made in an offline phase and stored on the servers for the online phase.

    ``precompute(spec, count)`` has ``generator`` (an :class:`OnlineDealer` by default: the crypto producer
    with seeded triples) make ``count`` triples now; their traffic is logged under phase ``"offline"``.
    ``precompute_for(fn, *args, runs=n)`` traces ``fn`` to find the triples it needs and makes them for
    ``n`` runs. During the online phase :meth:`triple` only reads the pools: each take is an atomic index on
    server0, sent to server1, so concurrent runs and failed runs never reuse a triple or put the servers
    out of step; an empty pool raises :class:`~tfe_lite.errors.TripleExhaustedError` (eagerly) or fails
    the graph's run-time check. Pools are resolved at run time: a function traced before ``precompute``
    serves from triples made after. Precomputed triples stay in memory until the dealer is dropped (used
    ones too: pools only grow, so that a concurrent take never sees a row move).
    """

    def __init__(self, generator: TripleSource | None = None):
        self.generator = generator or OnlineDealer()
        self._id = next(_dealer_ids)
        self._pools: dict[TripleSpec, _Pool] = {}
        self._specs: list[TripleSpec] = []
        self._lock = threading.Lock()

    def bind(self, protocol) -> None:
        super().bind(protocol)
        self.generator.bind(protocol)

    def _pool(self, spec: TripleSpec, create: bool) -> _Pool | None:
        with self._lock:
            if spec not in self._pools and create:
                name = f"pond_take_d{self._id}_s{len(self._specs)}"
                self._pools[spec] = _Pool(self.protocol, spec, name)
                self._specs.append(spec)
            return self._pools.get(spec)

    @eager_serialized
    def precompute(self, spec: TripleSpec, count: int) -> None:
        """Make ``count`` triples for ``spec`` now (eagerly: this is the offline phase)."""
        if not isinstance(spec, TripleSpec):
            raise ConfigError(f"Received an invalid value for `spec`, expected a TripleSpec. Received: spec={spec!r}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ConfigError(f"Received an invalid value for `count`, expected a positive integer. Received: count={count!r}")
        if not tf.executing_eagerly():
            raise ProtocolError("PrecomputedDealer.precompute is the offline phase: call it eagerly, not inside tf.function.")
        with self.protocol.channel.phase("offline"):
            triples = self.generator.triples([spec] * count)
        self._pool(spec, create=True).append(triples)

    def plan(self, fn: Callable, *args) -> list[TripleSpec]:
        """The triples one run of ``fn(*args)`` takes, found by tracing it (nothing runs).

        ``fn`` is a Python function or a ``tf.function`` of this dealer's protocol, called with ``args``
        (tensors, numpy arrays or ``tf.TensorSpec`` s). The trace is an ordinary one, with the dealer as the
        protocol uses it: it takes triples from the pools at run time, so it can be kept and run once
        the triples are made. Every take in the traced graph (in nested functions too, and in both branches
        of a ``tf.cond``, of which one runs) is counted; a take inside a loop body (``tf.while_loop``, a
        ``for`` over a tensor) has no count known before running, and is refused.
        """
        if not callable(fn):
            raise ConfigError(f"Received an invalid value for `fn`, expected a callable. Received: fn={fn!r}")
        concrete = tf.function(fn).get_concrete_function(*args)
        counts = _count_takes(concrete.graph.as_graph_def(), self._id)
        return [self._specs[s] for s in sorted(counts) for _ in range(counts[s])]

    def precompute_for(self, fn: Callable, *args, runs: int = 1) -> dict[TripleSpec, int]:
        """Make the triples of ``runs`` runs of ``fn(*args)`` (see :meth:`plan`); returns how many of each
        spec were made."""
        if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
            raise ConfigError(f"Received an invalid value for `runs`, expected a positive integer. Received: runs={runs!r}")
        needed = collections.Counter(self.plan(fn, *args))
        for spec, count in needed.items():
            self.precompute(spec, count * runs)
        return {spec: count * runs for spec, count in needed.items()}

    def remaining(self, spec: TripleSpec) -> int:
        """How many triples of ``spec`` are left (precomputed and not yet taken)."""
        pool = self._pool(spec, create=False)
        return 0 if pool is None else pool.remaining()

    def triple(self, spec: TripleSpec) -> Triple:
        return self.triples([spec])[0]

    @eager_serialized
    def triples(self, specs) -> list[Triple]:
        """One triple of each spec from the pools: the indices travel to server1 in one message."""
        specs = list(specs)
        if not tf.executing_eagerly():
            # Inside a trace the pool may still be empty: the graph reads it when it runs.
            return _take_all(self.protocol, [self._pool(spec, create=True) for spec in specs])
        pools = [self._pool(spec, create=False) for spec in specs]
        for spec, pool in zip(specs, pools):
            if pool is None:
                raise TripleExhaustedError(
                    f"The precomputed dealer has no pool for {spec}; precompute it first "
                    f"(known specs: {[str(s) for s in self._specs] or 'none'})."
                )
        try:
            return _take_all(self.protocol, pools)
        except tf.errors.InvalidArgumentError as error:
            if "triple left" not in error.message:
                raise
            empty = next((p for p in pools if p.remaining() == 0), pools[0])
            raise TripleExhaustedError(empty.exhausted_message(empty.size())) from None


def _count_takes(graph_def, dealer_id: int) -> collections.Counter:
    """Pool takes of dealer ``dealer_id`` per spec index in one run of ``graph_def``'s top-level graph."""
    library = {f.signature.name: f for f in graph_def.library.function}

    def count(nodes, where: str) -> collections.Counter:
        total: collections.Counter = collections.Counter()
        for node in nodes:
            match = _TAKE.search(node.name) if node.op == "RngReadAndSkip" else None
            if match and int(match.group(1)) == dealer_id:
                total[int(match.group(2))] += 1
            branches: collections.Counter = collections.Counter()
            for attr in ("f", "body", "cond", "then_branch", "else_branch", "branches"):
                if attr not in node.attr:
                    continue
                value = node.attr[attr]
                names = [value.func.name] if value.WhichOneof("value") == "func" else [f.name for f in value.list.func]
                inner = [count(library[n].node_def, n) for n in names if n in library]
                if attr in ("body", "cond") and any(inner):
                    raise ConfigError(
                        f"Cannot plan triples for a loop: op {node.name!r} ({node.op}) in {where} takes triples in "
                        "its body, and how often it runs is known only at run time. Precompute with "
                        "PrecomputedDealer.precompute(spec, count) instead."
                    )
                for c in inner:
                    if attr in ("then_branch", "else_branch", "branches"):
                        branches |= c  # one branch runs: enough for the larger
                    else:
                        total += c
            total += branches
        return total

    return count(graph_def.node, "the traced function")
