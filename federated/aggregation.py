"""Summing the clients' update vectors for the aggregator: in the clear, or securely with Pond.

Each client submits one flat float32 vector (its weighted update and loss, or its DP record; see
:mod:`tfe_lite.federated.fedavg`). Both aggregators offer ``begin()``, ``submit(client, vector, bounds)``
and ``result()``, so who sends and who drops out is decided by the caller alone:

* a client that drops out *before sending* never calls ``submit``: it is absent from the sum, and the
  caller leaves its weight out;
* a client that drops *after sending* has already submitted: its contribution is in the servers' shares
  and counts; nothing waits for it afterwards, so a round never waits on a client.

:class:`PlainAggregator` is plain FedAvg: every vector is sent to the aggregator, which sees it.

:class:`SecureAggregator` (Pond): each client secret-shares its vector from its own device
(``prot.share(vector, owner=client)``: encode and mask there, a 32-byte seed to server0 and the masked
vector to server1); the servers add the shares locally; ``result()`` reveals only the sum, to the
aggregator. Neither server alone learns anything about any vector (its share is uniform), the crypto
producer sees nothing, and the aggregator learns the sum only. A round with fewer than ``min_clients``
submissions reveals nothing (with one client, the sum would be its update): its shares are dropped.

Fixed-point range: the sum is exact modulo 2^64 and decodes correctly only while every entry of the sum
stays inside ``±2**int_bits``. Before the round the caller states a public bound of each client's
entries per segment (``bounds``: ``[(name, size, bound)]``); :meth:`SecureAggregator.check_range` refuses
a round whose bounds can add up to the range, and each client checks on its own device that its vector
respects its bounds before sharing it; both raise :class:`~tfe_lite.errors.EncodingError` naming what
to change. Encoding rounds every entry to ``2**-frac_bits``, so the revealed sum is within
``k * 2**-(frac_bits + 1)`` of the exact sum of ``k`` vectors.
"""

from __future__ import annotations

import collections
import contextlib
from typing import Sequence

import numpy as np
import tensorflow as tf

from tfe_lite.devices import eager_serialized
from tfe_lite.errors import ConfigError, EncodingError
from tfe_lite.players import Player

from .errors import PlacementError
from .workers import same_device

Bounds = Sequence[tuple[str, int, float]]


class Traffic:
    """Bytes that crossed between players, per link ``(src, dst)``."""

    def __init__(self):
        self.links: dict[tuple[str, str], int] = collections.defaultdict(int)

    def add(self, src: str, dst: str, nbytes: int) -> None:
        if src != dst:
            self.links[(src, dst)] += int(nbytes)

    def merge(self, by_link: dict[tuple[str, str], int]) -> None:
        for (src, dst), nbytes in by_link.items():
            self.add(src, dst, nbytes)

    def sent_by(self, name: str) -> int:
        return sum(n for (src, _), n in self.links.items() if src == name)

    def received_by(self, name: str) -> int:
        return sum(n for (_, dst), n in self.links.items() if dst == name)

    def total(self) -> int:
        return sum(self.links.values())


@eager_serialized
def send(tensor: tf.Tensor, src: Player, dst: Player, traffic: Traffic | None) -> tf.Tensor:
    """``tensor`` (held by ``src``) copied to ``dst``'s device, its bytes counted in ``traffic``."""
    if src.name == dst.name:
        return tensor
    with tf.device(dst.device):
        received = tf.identity(tensor)
    if traffic is not None:
        traffic.add(src.name, dst.name, tensor.shape.num_elements() * tensor.dtype.size)
    return received


def pack(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """One flat float32 vector from ``tensors``, built where the caller's device scope says."""
    return tf.concat([tf.reshape(tf.cast(t, tf.float32), [-1]) for t in tensors], 0)


def unpack(vector: tf.Tensor, shapes: Sequence[tf.TensorShape]) -> list[tf.Tensor]:
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    return [tf.reshape(part, s) for part, s in zip(tf.split(vector, sizes), shapes)]


def _check_placement(client: Player, vector: tf.Tensor) -> None:
    if tf.executing_eagerly() and not same_device(vector.device, client.device):
        raise PlacementError(
            f"The vector of client {client.name!r} is on {vector.device}, not on its device {client.device}: "
            "refusing to aggregate a private value that has left its client."
        )


class PlainAggregator:
    """Plain FedAvg aggregation: each vector is sent to the aggregator, which sums them in float64."""

    secure = False

    def __init__(self, aggregator: Player, traffic: Traffic | None = None, *, min_clients: int = 1):
        self.aggregator = aggregator
        self.traffic = traffic
        self.min_clients = min_clients
        self.begin()

    def begin(self) -> None:
        self._sum, self.senders = None, []

    def check_range(self, totals: dict[str, float]) -> None:
        """Nothing to check: the plain sum is float64."""

    def submit(self, client: Player, vector: tf.Tensor, bounds: Bounds = ()) -> None:
        _check_placement(client, vector)
        received = send(vector, client, self.aggregator, self.traffic)
        with tf.device(self.aggregator.device):
            received = tf.cast(received, tf.float64)
            self._sum = received if self._sum is None else self._sum + received
        self.senders.append(client.name)

    def result(self) -> tf.Tensor | None:
        """The float64 sum on the aggregator's device, or None below ``min_clients`` submissions."""
        return self._sum if len(self.senders) >= self.min_clients else None


class SecureAggregator:
    """Secure aggregation with Pond: the servers add the clients' shares; only the sum is revealed.

    Args:
        protocol: a :class:`tfe_lite.protocols.Pond` over the config of the clients and the aggregator.
        aggregator: the player the sum is revealed to.
        traffic: where the protocol's transfers (shares, reveal) are counted.
        min_clients: fewest submissions whose sum may be revealed (default 2).
    """

    secure = True

    def __init__(self, protocol, aggregator: Player, traffic: Traffic | None = None, *, min_clients: int = 2):
        if not isinstance(min_clients, int) or isinstance(min_clients, bool) or min_clients < 2:
            raise ConfigError(
                "Received an invalid value for `min_clients`, expected an integer >= 2 with secure aggregation "
                f"(the sum of one update is that update). Received: min_clients={min_clients!r}"
            )
        self.protocol = protocol
        self.aggregator = protocol.config.get_player(aggregator)
        self.traffic = traffic
        self.min_clients = min_clients
        self.begin()

    @property
    def bound(self) -> float:
        return self.protocol.fixedpoint.bound

    def begin(self) -> None:
        self._sum, self.senders = None, []

    def check_range(self, totals: dict[str, float]) -> None:
        """Refuse a round whose per-segment bounds, summed over its clients, can leave the range."""
        fixedpoint = self.protocol.fixedpoint
        over = {name: total for name, total in totals.items() if total >= self.bound}
        if over:
            detail = ", ".join(f"`{name}` entries up to {total:g}" for name, total in over.items())
            raise EncodingError(
                f"The secure sum of this round could leave the fixed-point range ±{self.bound:g} "
                f"(int_bits={fixedpoint.int_bits}): {detail}. Use a fixed-point config with more int_bits "
                "(fixedpoint='wide'), fewer clients per round, or a smaller l2_norm_clip."
            )

    def submit(self, client: Player, vector: tf.Tensor, bounds: Bounds = ()) -> None:
        """Check ``vector`` against ``bounds`` on the client's device, then share it from there."""
        _check_placement(client, vector)
        vector = self._check_bounds(client, vector, bounds)
        with self._counted():
            shared = self.protocol.share(vector, owner=client.name)
            self._sum = shared if self._sum is None else self._sum + shared
        self.senders.append(client.name)

    def result(self) -> tf.Tensor | None:
        """The float64 sum, revealed on the aggregator's device; None (nothing revealed) below ``min_clients``."""
        if len(self.senders) < self.min_clients:
            self._sum = None
            return None
        with self._counted():
            return self._sum.reveal(to=self.aggregator.name, dtype=tf.float64)

    @contextlib.contextmanager
    def _counted(self):
        """Count the protocol's transfers into ``traffic`` (eagerly; a traced call is counted by its caller)."""
        if self.traffic is None or not tf.executing_eagerly():
            yield
            return
        with self.protocol.count_communication() as log:
            yield
        self.traffic.merge(log.by_link())

    @eager_serialized
    def _check_bounds(self, client: Player, vector: tf.Tensor, bounds: Bounds) -> tf.Tensor:
        """``vector``, once the client has checked on its device that it respects ``bounds``.

        One bit leaves the device each round (whether the bounds hold); only a client that refuses reports
        its largest magnitudes, to say what is wrong. Inside a ``tf.function`` the check is an assertion
        placed on the client's device.
        """
        if not bounds:
            raise ConfigError("Secure aggregation needs the public bounds of every submitted vector.")
        sizes = [size for _, size, _ in bounds]
        if sum(sizes) != vector.shape.num_elements():
            raise ConfigError(f"`bounds` cover {sum(sizes)} entries; the vector of {client.name!r} has {vector.shape.num_elements()}.")
        with tf.device(client.device):
            maxima = tf.stack([tf.reduce_max(tf.abs(part)) for part in tf.split(vector, sizes)])
            limits = tf.constant([bound for _, _, bound in bounds], tf.float32)
            within = tf.reduce_all(tf.logical_and(tf.math.is_finite(maxima), maxima <= limits))
            if not tf.executing_eagerly():
                names = ", ".join(f"`{name}` <= {bound:g}" for name, _, bound in bounds)
                check = tf.debugging.Assert(within, [f"Client {client.name!r} refuses to share: its entries exceed the bounds "
                                                     f"({names}) that keep the secure sum in the fixed-point range."])
                with tf.control_dependencies([check]):
                    return tf.identity(vector)
        if bool(within.numpy()):
            return vector
        for (name, _, bound), largest in zip(bounds, maxima.numpy()):
            if not np.isfinite(largest) or largest > bound:
                raise EncodingError(
                    f"Client {client.name!r} cannot share its `{name}` entries: the largest magnitude is "
                    f"{float(largest):g}, above the bound {bound:g} that keeps the secure sum inside the fixed-point "
                    "range. Lower the client learning rate, or use a fixed-point config with more int_bits."
                )
        return vector
