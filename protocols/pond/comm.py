"""Moving tensors between players, and counting what crosses.

Every tensor that leaves one player's device for another's goes through :meth:`Channel.send`, which
places a copy on the receiver's device and records the bytes in the active :class:`CommunicationLog` s.
Local mode copies between logical devices of one process; a multi-host config turns the same copy into
a gRPC transfer, so the counts are those a network would carry.

Counts are taken when the computation is built: eagerly that is each execution; inside ``tf.function``
it is once per trace (the traced graph then moves the same bytes on every call).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Transfer:
    src: str
    dst: str
    what: str
    nbytes: int | None  # None when the shape is not known statically
    phase: str = "online"


class CommunicationLog:
    """Transfers recorded while the log was active."""

    def __init__(self):
        self.transfers: list[Transfer] = []

    def record(self, transfer: Transfer) -> None:
        self.transfers.append(transfer)

    def total_bytes(self, phase: str | None = None) -> int:
        """Bytes moved between players (in ``phase`` when given); raises if a size was not static."""
        selected = [t for t in self.transfers if phase is None or t.phase == phase]
        unknown = [t for t in selected if t.nbytes is None]
        if unknown:
            raise ValueError(f"{len(unknown)} transfers had shapes unknown at trace time, e.g. {unknown[0]}")
        return sum(t.nbytes for t in selected)

    @property
    def messages(self) -> int:
        return len(self.transfers)

    def by_link(self) -> dict[tuple[str, str], int]:
        links: dict[tuple[str, str], int] = collections.defaultdict(int)
        for t in self.transfers:
            links[(t.src, t.dst)] += t.nbytes or 0
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

    @contextlib.contextmanager
    def count(self):
        log = CommunicationLog()
        self._logs.append(log)
        try:
            yield log
        finally:
            self._logs.remove(log)

    @contextlib.contextmanager
    def phase(self, name: str):
        previous, self._phase = self._phase, name
        try:
            yield
        finally:
            self._phase = previous

    def send(self, tensor: tf.Tensor, src, dst, what: str) -> tf.Tensor:
        """``tensor`` (on ``src``'s device) as a tensor on ``dst``'s device."""
        if src == dst:
            return tensor
        elements = tensor.shape.num_elements()
        nbytes = None if elements is None else elements * tensor.dtype.size
        transfer = Transfer(src.name, dst.name, what, nbytes, self._phase)
        for log in self._logs:
            log.record(transfer)
        with tf.device(dst.device):
            return tf.identity(tensor, name=f"recv_{what}")
