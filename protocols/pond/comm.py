"""Moving tensors between players, and counting what crosses.

Every tensor that leaves one player's device for another's goes through :meth:`Channel.send`, which
places a copy on the receiver's device and counts the bytes. Local mode copies between logical devices of
one process; a multi-host config turns the same copy into a gRPC transfer, so the counts are those a
network would carry.

Counts are taken when the transfer runs. Eagerly that is when it is built; inside a ``tf.function`` each
send also increments a traffic counter (an int64 variable on the receiver's device, one per link, kind of
message and phase), so every execution of a traced function is counted, and tracing alone counts nothing.
A :class:`CommunicationLog` (``with prot.count_communication() as log:``) holds the eager transfers made
while it was open and, when it closes, what the graph counters added meanwhile: all of this protocol's
traffic in that time, from any thread. Read it after the ``with`` block.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading

import numpy as np
import tensorflow as tf

from tfe_lite.errors import ProtocolError
from tfe_lite.state import lifted_variable


@dataclasses.dataclass(frozen=True)
class Transfer:
    """``count`` messages of kind ``what`` from ``src`` to ``dst``, ``nbytes`` bytes in all."""

    src: str
    dst: str
    what: str
    nbytes: int
    phase: str = "online"
    count: int = 1


class CommunicationLog:
    """Transfers recorded while the log was active (graph executions are added when it closes)."""

    def __init__(self):
        self.transfers: list[Transfer] = []

    def record(self, transfer: Transfer) -> None:
        self.transfers.append(transfer)

    def total_bytes(self, phase: str | None = None) -> int:
        """Bytes moved between players (in ``phase`` when given: ``"online"`` or ``"offline"``)."""
        return sum(t.nbytes for t in self.transfers if phase is None or t.phase == phase)

    @property
    def messages(self) -> int:
        return sum(t.count for t in self.transfers)

    def by_link(self) -> dict[tuple[str, str], int]:
        links: dict[tuple[str, str], int] = collections.defaultdict(int)
        for t in self.transfers:
            links[(t.src, t.dst)] += t.nbytes
        return dict(links)

    def summary(self) -> str:
        lines = [f"{self.messages} messages, {self.total_bytes():,} bytes"]
        for (src, dst), n in sorted(self.by_link().items()):
            lines.append(f"  {src} -> {dst}: {n:,} bytes")
        return "\n".join(lines)


class Channel:
    """The only way tensors move between players."""

    def __init__(self):
        self._logs: list[CommunicationLog] = []
        self._phase = "online"
        self._counters: dict[tuple[str, str, str, str], tf.Variable] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def count(self):
        if not tf.executing_eagerly():
            raise ProtocolError(
                "count_communication() counts executions: open it around the calls of a tf.function, not inside "
                "one (the counters inside the graph count every run)."
            )
        log = CommunicationLog()
        start = self._read_counters()
        with self._lock:
            self._logs.append(log)
        try:
            yield log
        finally:
            with self._lock:
                self._logs.remove(log)
            for key, (nbytes, count) in self._read_counters().items():
                before = start.get(key, (0, 0))
                if count > before[1]:
                    src, dst, what, phase = key
                    log.record(Transfer(src, dst, what, nbytes - before[0], phase, count - before[1]))

    @contextlib.contextmanager
    def phase(self, name: str):
        previous, self._phase = self._phase, name
        try:
            yield
        finally:
            self._phase = previous

    def send(self, tensor: tf.Tensor, src, dst, what: str) -> tf.Tensor:
        """``tensor`` (on ``src``'s device) as a tensor on ``dst``'s device, counted."""
        if src == dst:
            return tensor
        with tf.device(dst.device):
            received = tf.identity(tensor, name=f"recv_{what}")
        elements = tensor.shape.num_elements()
        if tf.executing_eagerly():
            transfer = Transfer(src.name, dst.name, what, elements * tensor.dtype.size, self._phase)
            with self._lock:
                for log in self._logs:
                    log.record(transfer)
            return received
        counter = self._counter((src.name, dst.name, what, self._phase), dst.device)
        with tf.device(dst.device):
            if elements is None:
                counted = tf.stack([tf.size(tensor, out_type=tf.int64) * tensor.dtype.size, tf.constant(1, tf.int64)])
            else:  # one constant: [bytes, 1 message]
                counted = tf.constant([elements * tensor.dtype.size, 1], tf.int64)
            counter.assign_add(counted, name=f"count_{what}")
        return received

    def send_many(self, tensors, src, dst, what: str, *, like=None) -> list[tf.Tensor]:
        """Several tensors of one dtype (on ``src``'s device) as tensors on ``dst``'s device, in **one** message.

        Between processes every message is an RPC of its own, so tensors that go over one link in one round
        travel packed: flattened and concatenated on ``src``, split and reshaped on ``dst`` (bytes counted as
        the parts' sum, one message). Shapes must be fully known, or ``like`` gives, on ``dst``, a tensor of
        each one's shape (a server's own part of an opening); otherwise the tensors go one by one.
        """
        tensors = list(tensors)
        if len(tensors) == 1:
            return [self.send(tensors[0], src, dst, what)]
        if src == dst or not tensors:
            return tensors
        dtypes = {t.dtype for t in tensors}
        if len(dtypes) != 1:
            raise ProtocolError(f"send_many packs tensors of one dtype. Received dtypes: {sorted(d.name for d in dtypes)}")
        static = all(t.shape.is_fully_defined() for t in tensors)
        if not static and like is None:
            return [self.send(t, src, dst, what) for t in tensors]
        with tf.device(src.device):
            packed = tf.concat([t if t.shape.rank == 1 else tf.reshape(t, [-1]) for t in tensors], axis=0,
                               name=f"pack_{what}")
        received = self.send(packed, src, dst, what)
        with tf.device(dst.device):
            if static:  # flat parts come out of the split as they went in
                parts = tf.split(received, [t.shape.num_elements() for t in tensors])
                return [part if t.shape.rank == 1 else tf.reshape(part, t.shape) for part, t in zip(parts, tensors)]
            shapes = [tf.shape(t) for t in like]
            sizes = [tf.size(t) for t in like]
            return [tf.reshape(part, shape) for part, shape in zip(tf.split(received, sizes), shapes)]

    def _counter(self, key: tuple[str, str, str, str], device: str) -> tf.Variable:
        with self._lock:
            if key not in self._counters:
                self._counters[key] = lifted_variable(np.zeros(2, np.int64), device=device, name="traffic")
            return self._counters[key]

    def _read_counters(self) -> dict[tuple[str, str, str, str], tuple[int, int]]:
        with self._lock:
            counters = dict(self._counters)
        return {key: tuple(int(v) for v in var.numpy()) for key, var in counters.items()}
