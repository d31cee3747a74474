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
respects its bounds before sharing it (one bit, whether they hold, leaves the device); both raise
:class:`~tfe_lite.errors.EncodingError` naming what
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
        traffic: where the protocol's transfers (shares, reveal) are counted, once per round.
        min_clients: fewest submissions whose sum may be revealed (default 2).

    Each client's submission is one traced function (made on its first submission, reused every round):
    on the client's device it checks the bounds and encodes and masks the vector (``protocol.share``);
    server0 and server1 add their shares into running sums held in variables on their own devices. The
    round's sum exists only as those two shares until :meth:`result` reveals it to the aggregator.
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
        self._sums: dict[int, tuple[tf.Variable, tf.Variable]] = {}
        self._submitters: dict[tuple[str, int, tuple[int, ...]], tf.types.experimental.GenericFunction] = {}
        self._count: contextlib.ExitStack | None = None
        self._size: int | None = None
        self.senders: list[str] = []

    @property
    def bound(self) -> float:
        return self.protocol.fixedpoint.bound

    def begin(self) -> None:
        """Start a round: the servers' running sums are zeroed, the round's traffic counted from here."""
        self._close_count()
        self.senders, self._size = [], None
        for share0, share1 in self._sums.values():
            for server, share in ((self.protocol.server0, share0), (self.protocol.server1, share1)):
                with tf.device(server.device):
                    share.assign(tf.zeros_like(share))
        if self.traffic is not None:
            self._count = contextlib.ExitStack()
            self._log = self._count.enter_context(self.protocol.count_communication())

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
        if not bounds:
            raise ConfigError("Secure aggregation needs the public bounds of every submitted vector.")
        sizes = tuple(size for _, size, _ in bounds)
        n = vector.shape.num_elements()
        if sum(sizes) != n:
            raise ConfigError(f"`bounds` cover {sum(sizes)} entries; the vector of {client.name!r} has {n}.")
        if self._size not in (None, n):
            raise ConfigError(f"All vectors of a round must have one size; {client.name!r} sent {n}, others {self._size}.")
        self._size = n
        limits = tf.constant([bound for _, _, bound in bounds], tf.float32)
        try:
            self._submitter(client, n, sizes)(vector, limits)
        except tf.errors.InvalidArgumentError as error:
            if "refuses to share" not in str(error):
                raise
            self._refuse(client, vector, bounds)
        self.senders.append(client.name)

    def result(self) -> tf.Tensor | None:
        """The float64 sum, revealed on the aggregator's device; None (nothing revealed) below ``min_clients``."""
        try:
            if len(self.senders) < self.min_clients or self._size is None:
                return None
            share0, share1 = self._sums[self._size]
            total = self.protocol.from_shares(share0.read_value(), share1.read_value(), fixedpoint=self.protocol.fixedpoint)
            return total.reveal(to=self.aggregator.name, dtype=tf.float64)
        finally:
            self._close_count()

    # ------------------------------------------------------------------------------------------ helpers
    def _close_count(self) -> None:
        if self._count is not None:
            self._count.close()
            self._count = None
            self.traffic.merge(self._log.by_link())

    def _submitter(self, client: Player, n: int, sizes: tuple[int, ...]):
        key = (client.name, n, sizes)
        if key in self._submitters:
            return self._submitters[key]
        if n not in self._sums:
            with tf.device(self.protocol.server0.device):
                share0 = tf.Variable(tf.zeros([n], tf.int64), trainable=False, name="sum_share0")
            with tf.device(self.protocol.server1.device):
                share1 = tf.Variable(tf.zeros([n], tf.int64), trainable=False, name="sum_share1")
            self._sums[n] = (share0, share1)
        share0, share1 = self._sums[n]
        protocol, names = self.protocol, f"Client {client.name!r} refuses to share"

        def submit(vector, limits):
            with tf.device(client.device):  # the bounds are checked where the vector is
                maxima = tf.stack([tf.reduce_max(tf.abs(part)) for part in tf.split(vector, list(sizes))])
                within = tf.reduce_all(tf.logical_and(tf.math.is_finite(maxima), maxima <= limits))
                check = tf.debugging.Assert(within, [f"{names}: its entries exceed the bounds that keep the secure sum "
                                                     "in the fixed-point range."])
                with tf.control_dependencies([check]):
                    vector = tf.identity(vector)
            shared = protocol.share(vector, owner=client.name)
            with tf.device(protocol.server0.device):
                share0.assign_add(shared.share0)
            with tf.device(protocol.server1.device):
                share1.assign_add(shared.share1)

        signature = [tf.TensorSpec([n], tf.float32), tf.TensorSpec([len(sizes)], tf.float32)]
        self._submitters[key] = tf.function(submit, input_signature=signature, autograph=False)
        return self._submitters[key]

    @eager_serialized
    def _refuse(self, client: Player, vector: tf.Tensor, bounds: Bounds) -> None:
        """The client reports why it refused to share (its largest magnitudes leave its device only now)."""
        with tf.device(client.device):
            maxima = tf.stack([tf.reduce_max(tf.abs(p)) for p in tf.split(vector, [size for _, size, _ in bounds])]).numpy()
        for (name, _, bound), largest in zip(bounds, maxima):
            if not np.isfinite(largest) or largest > bound:
                raise EncodingError(
                    f"Client {client.name!r} cannot share its `{name}` entries: the largest magnitude is "
                    f"{float(largest):g}, above the bound {bound:g} that keeps the secure sum inside the fixed-point "
                    "range. Lower the client learning rate, or use a fixed-point config with more int_bits."
                )
