"""The Pond protocol: two servers hold additive shares over Z/2^64, a crypto producer deals triples.

Pond (Dahl et al., "Private Machine Learning in TensorFlow using Secure Computation", 2018) is secure
against one semi-honest (honest-but-curious) player among ``server0``, ``server1`` and
``crypto-producer``: neither server alone learns anything from its shares and the masked values it sees,
and the producer never sees any share of a private input.

Usage::

    config = tfe_lite.LocalConfig(["alice"])
    prot = Pond(config)
    x = prot.share(np.array([2.0]), owner="alice")   # plaintext stays on alice's device
    y = x * 3.5 + prot.public([1.0])
    y.reveal(to="alice")                              # decoded on alice's device

Operations and their cost:

* ``+``, ``-``, negation, ``reshape``, ``transpose``, slicing, ``concat``, ``reduce_sum``: local, no
  traffic (:mod:`.linear`).
* private x public ``*``, ``@``, ``conv2d``, average pooling: local ring products then local truncation.
* private x private ``*``, ``@``, ``conv2d``, ``square``: Beaver triples (:mod:`.beaver`), 4 ring products
  on the servers + 1 by the dealer, one round of opening, then local truncation (:mod:`.truncation`).

The protocol object holds the configuration, the fixed-point settings, the dealer, the players' seed
streams and the communication channel; operations are dispatched on operand kinds through explicit
tables.
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from tfe_lite import prg, ring
from tfe_lite.devices import eager_serialized
from tfe_lite.errors import ConfigError, ProtocolError, ShapeError
from tfe_lite.fixedpoint import FixedPointConfig, decode, encode
from tfe_lite.players import CRYPTO_PRODUCER, SERVER0, SERVER1, Config, LocalConfig
from tfe_lite.random import RandomStreams

from . import beaver, linear
from .comm import Channel
from .dealer import OnlineDealer, PrecomputedDealer, TripleSource, TripleSpec
from .tensors import PondTensor, PrivateTensor, PublicTensor
from .truncation import truncate_private, truncate_public

_DEALERS = {"online": OnlineDealer, "precomputed": PrecomputedDealer}
_PRIV, _PUB = PrivateTensor, PublicTensor


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return tuple(value)
    raise ConfigError(f"Received an invalid value for `{name}`, expected a positive int or a pair of them. Received: {name}={value!r}")


def _padding(padding: str) -> str:
    if not isinstance(padding, str) or padding.upper() not in ("SAME", "VALID"):
        raise ConfigError(f"Received an invalid value for `padding`, expected 'SAME' or 'VALID'. Received: padding={padding!r}")
    return padding.upper()


class Pond:
    """Pond three-party computation over a :class:`~tfe_lite.players.Config`.

    Args:
        config: the players (default: a :class:`LocalConfig` with the three protocol players).
        fixedpoint: a :class:`FixedPointConfig` or a preset name (``"default"``: 16 fractional bits).
        dealer: ``"online"``, ``"precomputed"`` or a :class:`TripleSource` instance.
        seed: fixes every player's keys, for repeatable tests only (default: keys from ``os.urandom``).
    """

    def __init__(self, config: Config | None = None, *, fixedpoint: FixedPointConfig | str = "default",
                 dealer: TripleSource | str = "online", seed: int | None = None):
        self.config = config if config is not None else LocalConfig()
        if not isinstance(self.config, Config):
            raise ConfigError(f"Received an invalid value for `config`, expected a tfe_lite Config. Received: config={config!r}")
        if isinstance(fixedpoint, str):
            fixedpoint = FixedPointConfig.preset(fixedpoint)
        if not isinstance(fixedpoint, FixedPointConfig):
            raise ConfigError(f"Received an invalid value for `fixedpoint`, expected a FixedPointConfig or preset name. Received: {fixedpoint!r}")
        self.fixedpoint = fixedpoint
        self.server0 = self.config.get_player(SERVER0)
        self.server1 = self.config.get_player(SERVER1)
        self.producer = self.config.get_player(CRYPTO_PRODUCER)
        self.streams = RandomStreams(seed)
        for player in self.config.players:  # variables are created now, never inside a trace
            self.streams.stream(player)
        self.channel = Channel()
        if isinstance(dealer, str):
            if dealer not in _DEALERS:
                raise ConfigError(f"Received an invalid value for `dealer`, expected one of {sorted(_DEALERS)} or a TripleSource. Received: dealer={dealer!r}")
            dealer = _DEALERS[dealer]()
        if not isinstance(dealer, TripleSource):
            raise ConfigError(f"Received an invalid value for `dealer`, expected a TripleSource. Received: dealer={dealer!r}")
        dealer.bind(self)
        self.dealer = dealer

    def __repr__(self) -> str:
        return f"Pond({self.config!r}, fixedpoint={self.fixedpoint}, dealer={type(self.dealer).__name__})"

    # ----------------------------------------------------------------------------------------- inputs
    @eager_serialized
    def share(self, values, owner) -> PrivateTensor:
        """Secret-share real ``values`` held by player ``owner``.

        Steps: on the owner's device, encode ``x``, draw a fresh seed ``s`` and ``x0 = expand(s)``,
        ``x1 = x - x0``; send ``s`` to server0 (32 bytes), which expands ``x0``, and ``x1`` to server1.
        The plaintext is never placed on another device.
        """
        owner = self.config.get_player(owner)
        with tf.device(owner.device):
            x = encode(values, self.fixedpoint)
            shape = x.shape
            if not shape.is_fully_defined():
                raise ShapeError(f"Cannot share `values` of partly unknown shape {shape}; the protocol needs static shapes.")
            seed = self.streams.stream(owner).next_seed()
            x1 = tf.subtract(x, prg.expand_seed(seed, shape), name="masked")
        seed = self.channel.send(seed, owner, self.server0, "share_seed")
        x1 = self.channel.send(x1, owner, self.server1, "share")
        with tf.device(self.server0.device):
            x0 = prg.expand_seed(seed, shape)
        return PrivateTensor(self, x0, x1)

    @eager_serialized
    def public(self, values) -> PublicTensor:
        """A public value, encoded by each server (no traffic)."""
        copies = []
        for server in (self.server0, self.server1):
            with tf.device(server.device):
                copies.append(encode(values, self.fixedpoint))
        return PublicTensor(self, *copies)

    @eager_serialized
    def from_shares(self, share0, share1) -> PrivateTensor:
        """A private tensor from existing int64 shares (placed on server0 and server1)."""
        parts = []
        for name, server, share in (("share0", self.server0, share0), ("share1", self.server1, share1)):
            with tf.device(server.device):
                share = tf.convert_to_tensor(share)
                if share.dtype != tf.int64:
                    raise ProtocolError(f"Received an invalid dtype for `{name}`, expected int64. Received: {share.dtype.name}")
                parts.append(tf.identity(share))
        if parts[0].shape != parts[1].shape:
            raise ShapeError(f"`share0` and `share1` must have the same shape. Received: {parts[0].shape} and {parts[1].shape}")
        return PrivateTensor(self, *parts)

    @eager_serialized
    def reveal(self, x: PrivateTensor, *, to, dtype: tf.DType = tf.float64) -> tf.Tensor:
        """Both shares go to player ``to``, which adds and decodes them on its device."""
        receiver = self.config.get_player(to)
        x = self._own(x, "x")
        if not isinstance(x, PrivateTensor):
            raise ProtocolError(f"reveal expects a PrivateTensor. Received: {x!r}")
        s0 = self.channel.send(x.share0, self.server0, receiver, "reveal")
        s1 = self.channel.send(x.share1, self.server1, receiver, "reveal")
        with tf.device(receiver.device):
            return decode(s0 + s1, self.fixedpoint, dtype)

    @eager_serialized
    def decode(self, x: tf.Tensor, dtype: tf.DType = tf.float64) -> tf.Tensor:
        return decode(x, self.fixedpoint, dtype)

    def count_communication(self):
        """Context manager yielding a :class:`~.comm.CommunicationLog` of the transfers made inside it."""
        return self.channel.count()

    # --------------------------------------------------------------------------------------- helpers
    def _own(self, value, name: str):
        """``value`` as a tensor of this protocol: Pond tensors are checked, plain values become public."""
        if isinstance(value, PondTensor):
            if value.protocol is not self:
                raise ProtocolError(
                    f"`{name}` belongs to another protocol instance ({value.protocol!r}); tensors of two "
                    "protocol instances cannot be mixed."
                )
            return value
        return self.public(value)

    def _dispatch(self, table: dict, op: str, x, y, *extra):
        x, y = self._own(x, "x"), self._own(y, "y")
        return table[(type(x), type(y))](self, x, y, *extra)

    @staticmethod
    def _broadcast(op: str, x, y) -> None:
        try:
            tf.broadcast_static_shape(x.shape, y.shape)
        except ValueError:
            raise ShapeError(f"Cannot {op} operands of shapes {x.shape} and {y.shape}: they do not broadcast.") from None

    # -------------------------------------------------------------------------------------- linear ops
    @eager_serialized
    def add(self, x, y):
        """``x + y``: local (server0 adds a public operand to its share)."""
        x, y = self._own(x, "x"), self._own(y, "y")
        self._broadcast("add", x, y)
        return _ADD[(type(x), type(y))](self, x, y)

    @eager_serialized
    def sub(self, x, y):
        return self.add(x, self.neg(self._own(y, "y")))

    @eager_serialized
    def neg(self, x):
        return linear.local(self, self._own(x, "x"), tf.negative)

    @eager_serialized
    def reduce_sum(self, x, axis=None, keepdims: bool = False):
        return linear.local(self, self._own(x, "x"), lambda t: tf.reduce_sum(t, axis=axis, keepdims=keepdims))

    @eager_serialized
    def reshape(self, x, shape):
        x = self._own(x, "x")
        _check_reshape(x.shape, shape)
        return linear.local(self, x, lambda t: tf.reshape(t, shape))

    @eager_serialized
    def transpose(self, x, perm=None):
        return linear.local(self, self._own(x, "x"), lambda t: tf.transpose(t, perm))

    @eager_serialized
    def slice(self, x, index):
        return linear.local(self, self._own(x, "x"), lambda t: t[index])

    @eager_serialized
    def concat(self, values, axis: int = 0):
        """Concatenate tensors; public operands join a private result through the trivial sharing."""
        values = [self._own(v, f"values[{i}]") for i, v in enumerate(values)]
        if not values:
            raise ShapeError("concat needs at least one tensor.")
        if all(isinstance(v, PublicTensor) for v in values):
            parts = [[v.on0 for v in values], [v.on1 for v in values]]
            out_type = PublicTensor
        else:
            values = [v if isinstance(v, PrivateTensor) else linear.as_private(self, v) for v in values]
            parts = [[v.share0 for v in values], [v.share1 for v in values]]
            out_type = PrivateTensor
        out = []
        for server, part in zip((self.server0, self.server1), parts):
            with tf.device(server.device):
                try:
                    out.append(tf.concat(part, axis))
                except (ValueError, tf.errors.InvalidArgumentError) as e:
                    raise ShapeError(f"Cannot concat shapes {[v.shape for v in values]} on axis {axis}: {e}") from None
        return out_type(self, *out)

    # ------------------------------------------------------------------------------------- products
    @eager_serialized
    def mul(self, x, y):
        """Elementwise ``x * y`` (broadcasting). Integer Python scalars scale exactly, without truncation."""
        for a, b in ((x, y), (y, x)):
            if isinstance(b, numbers.Integral) and not isinstance(b, bool) and isinstance(a, PondTensor):
                a = self._own(a, "x")
                return linear.local(self, a, lambda t: t * np.int64(b))
        x, y = self._own(x, "x"), self._own(y, "y")
        self._broadcast("multiply", x, y)
        if x is y and isinstance(x, PrivateTensor):
            return self.square(x)
        spec = TripleSpec("mul", tuple(x.shape), tuple(y.shape))
        return _PRODUCT[(type(x), type(y))](self, x, y, spec)

    @eager_serialized
    def square(self, x):
        """``x * x`` from a square pair (private) or locally (public)."""
        x = self._own(x, "x")
        if isinstance(x, PublicTensor):
            return truncate_public(self, linear.local(self, x, tf.square))
        return truncate_private(self, beaver.square(self, x))

    @eager_serialized
    def matmul(self, x, y):
        """``x @ y`` (rank 2, or batched with equal batch dimensions)."""
        x, y = self._own(x, "x"), self._own(y, "y")
        if x.rank is None or y.rank is None or x.rank < 2 or x.rank != y.rank or x.shape[-1] != y.shape[-2] \
                or x.shape[:-2] != y.shape[:-2]:
            raise ShapeError(f"Cannot matmul operands of shapes {x.shape} and {y.shape}.")
        spec = TripleSpec("matmul", tuple(x.shape), tuple(y.shape))
        return _PRODUCT[(type(x), type(y))](self, x, y, spec)

    @eager_serialized
    def conv2d(self, x, filters, strides=1, padding: str = "SAME"):
        """2-D convolution like ``tf.nn.conv2d``: ``x`` is NHWC, ``filters`` ``[kh, kw, C_in, C_out]``."""
        x, filters = self._own(x, "x"), self._own(filters, "filters")
        strides, padding = _pair(strides, "strides"), _padding(padding)
        if x.rank != 4 or filters.rank != 4 or x.shape[3] != filters.shape[2]:
            raise ShapeError(
                f"conv2d expects x of shape [N, H, W, C] and filters of shape [kh, kw, C, C_out]. "
                f"Received: x.shape={x.shape}, filters.shape={filters.shape}"
            )
        if padding == "VALID" and (x.shape[1] < filters.shape[0] or x.shape[2] < filters.shape[1]):
            raise ShapeError(f"conv2d with VALID padding needs the input at least as large as the filter. Received: x.shape={x.shape}, filters.shape={filters.shape}")
        spec = TripleSpec("conv2d", tuple(x.shape), tuple(filters.shape), strides, padding)
        return _PRODUCT[(type(x), type(filters))](self, x, filters, spec)

    @eager_serialized
    def avg_pool2d(self, x, pool_size, strides=None, padding: str = "VALID"):
        """Average pooling like ``tf.nn.avg_pool2d`` (SAME averages over the in-bounds window only).

        Window sums are local; the division is a product with the public ``1 / count`` and a truncation.
        """
        x = self._own(x, "x")
        pool_size = _pair(pool_size, "pool_size")
        strides = pool_size if strides is None else _pair(strides, "strides")
        padding = _padding(padding)
        if x.rank != 4:
            raise ShapeError(f"avg_pool2d expects x of shape [N, H, W, C]. Received: x.shape={x.shape}")
        if padding == "VALID" and (x.shape[1] < pool_size[0] or x.shape[2] < pool_size[1]):
            raise ShapeError(f"avg_pool2d with VALID padding needs the input at least as large as the window. Received: x.shape={x.shape}, pool_size={pool_size}")
        sums = linear.local(self, x, lambda t: ring.sum_pool2d(t, pool_size, strides, padding))
        counts = np.outer(*(_window_counts(n, k, s, padding) for n, k, s in zip(x.shape[1:3], pool_size, strides)))
        return self.mul(sums, (1.0 / counts)[None, :, :, None])

    @eager_serialized
    def truncate(self, x):
        """Divide by ``2**frac_bits`` (after a product computed by hand on the ring)."""
        x = self._own(x, "x")
        return (truncate_private if isinstance(x, PrivateTensor) else truncate_public)(self, x)


def _window_counts(size: int, window: int, stride: int, padding: str) -> np.ndarray:
    """How many in-bounds elements each output window of one axis covers (TensorFlow's padding rule)."""
    if padding == "VALID":
        out = (size - window) // stride + 1
        return np.full(out, window, np.float64)
    out = -(-size // stride)
    pad_before = max((out - 1) * stride + window - size, 0) // 2
    starts = np.arange(out) * stride - pad_before
    return (np.minimum(starts + window, size) - np.maximum(starts, 0)).astype(np.float64)


def _check_reshape(shape: tf.TensorShape, target) -> None:
    target = [int(d) for d in target]
    size = shape.num_elements()
    known = int(np.prod([d for d in target if d != -1]))
    unknown = target.count(-1)
    ok = unknown <= 1 and all(d >= -1 for d in target) and (
        (unknown == 0 and known == size) or (unknown == 1 and known > 0 and size % known == 0) or (unknown == 1 and size == 0))
    if not ok:
        raise ShapeError(f"Cannot reshape a tensor of shape {shape} ({size} elements) to {target}.")


def _product_private_private(prot, x, y, spec):
    return truncate_private(prot, beaver.product(prot, x, y, spec))


def _product_local(prot, x, y, spec):
    out_type = PublicTensor if isinstance(x, PublicTensor) and isinstance(y, PublicTensor) else PrivateTensor
    if out_type is PrivateTensor:
        # Only one operand is private: each server applies f to its share and its copy of the public operand.
        return truncate_private(prot, linear.local2(prot, x, y, spec.apply, PrivateTensor))
    return truncate_public(prot, linear.local2(prot, x, y, spec.apply, PublicTensor))


_ADD = {
    (_PRIV, _PRIV): linear.add_private_private,
    (_PRIV, _PUB): linear.add_private_public,
    (_PUB, _PRIV): linear.add_public_private,
    (_PUB, _PUB): linear.add_public_public,
}

_PRODUCT = {
    (_PRIV, _PRIV): _product_private_private,
    (_PRIV, _PUB): _product_local,
    (_PUB, _PRIV): _product_local,
    (_PUB, _PUB): _product_local,
}
