"""The Pond protocol class: players, encoding, dealer and channel, and one thin method per operation.

See :class:`Pond` (``help(Pond)``) for usage, the operations and their cost, and the ranges that must hold.
The operations' protocols live in their own modules: :mod:`.linear` (local ops), :mod:`.beaver`
(products), :mod:`.truncation`, :mod:`.dealer` (correlated randomness), :mod:`.comm` (transfers).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfe_lite import prg, ring
from tfe_lite.devices import eager_serialized
from tfe_lite.errors import ConfigError, EncodingError, PlayerError, ProtocolError, ShapeError
from tfe_lite.fixedpoint import FixedPointConfig, decode, encode
from tfe_lite.players import CRYPTO_PRODUCER, SERVER0, SERVER1, Config, LocalConfig, Player
from tfe_lite.random import RandomStreams

from . import beaver, checks, comparison, linear
from .comm import Channel
from .functions import _ADD, ApproximationOps, ComparisonOps
from .dealer import OnlineDealer, PrecomputedDealer, TripleSource, TripleSpec
from .eager import EagerFunctions, traced_when_eager
from .gradients import GradientOps
from .tensors import PondTensor, PrivateTensor, PublicTensor
from .truncation import truncate_private, truncate_public

_DEALERS = {"online": OnlineDealer, "precomputed": PrecomputedDealer}
_COMPARISONS = ("auto", "dealt", "assisted")
_PRIV, _PUB = PrivateTensor, PublicTensor
#: Where plain values given as operands come from, for the traffic count (the program building the graph).
DRIVER = Player("driver", "")


class Pond(ComparisonOps, ApproximationOps, GradientOps):
    """Pond three-party computation: two servers hold additive shares over Z/2^64, a producer deals triples.

    Pond (Dahl et al., "Private Machine Learning in TensorFlow using Secure Computation", 2018) is secure
    against one semi-honest (honest-but-curious) player among ``server0``, ``server1`` and
    ``crypto-producer``: neither server alone learns anything from its shares and the masked values it
    sees, and the producer never sees any share of a private input.

    Usage::

        config = tfe_lite.LocalConfig(["alice", "bob"])
        prot = Pond(config)
        x = prot.share(np.array([2.0, 3.0]), owner="alice")   # plaintext stays on alice's device
        w = prot.share(np.array([5.0, 1.0]), owner="bob")
        y = (x * w).reduce_sum() * 0.5 + 1.0
        y.reveal(to="alice").numpy()                          # 7.5, decoded on alice's device

    Args:
        config: the players (default: a :class:`~tfe_lite.LocalConfig` with the three protocol players).
        fixedpoint: a :class:`~tfe_lite.FixedPointConfig` or a preset name (``"default"``: 16 fractional
            bits, ``|x| < 2**12``; see :mod:`tfe_lite.fixedpoint` for every preset's range, resolution and
            truncation failure probability).
        dealer: ``"online"``, ``"precomputed"`` or a :class:`TripleSource` instance.
        seed: fixes every player's keys, for repeatable tests only (default: keys from the OS CSPRNG).
        comparison: how comparisons (and relu, max, max pooling) run, exactly either way: ``"dealt"`` (the
            producer deals all the correlated randomness beforehand; 7 rounds, :mod:`.comparison`),
            ``"assisted"`` (the producer takes part online; 3 rounds and more computation per element,
            :mod:`.assisted`; needs the online dealer: for links where rounds dominate) or ``"auto"`` (the
            default: on a multi-host config with the online dealer, comparisons of up to
            :data:`~.comparison.ASSISTED_MAX_ELEMENTS` elements assisted and larger ones dealt; otherwise
            dealt). Pin it to compare results bit for bit across configs.

    Operators on Pond tensors: ``+ - *`` (elementwise, numpy broadcasting), ``@`` (matmul), unary ``-``,
    ``/`` by a public value, ``**`` by a positive integer, indexing ``x[...]`` and iteration over the first
    axis, and the comparisons ``< > <= >=`` (private fixed-point 0/1 results, exact). A numpy array, Python
    number or ``tf.Tensor`` on either side is a *public* operand (known to both servers); a ``tf.Tensor``
    on a player's device is refused (``share`` it). There is no ``/`` by a private value (``reciprocal``).

    Non-linear operations (exact, on the comparison protocol of :mod:`.comparison`): ``less``,
    ``greater``, ``less_equal``, ``greater_equal``, ``sign``, ``relu`` (with its derivative mask),
    ``maximum``, ``reduce_max``, ``argmax``, ``max_pool2d``. Approximations with stated error bounds (see
    :mod:`.approximations` for the methods, ranges and bounds): ``exp``, ``log``, ``reciprocal``, ``rsqrt``,
    ``sigmoid``, ``tanh``, ``softmax``.

    Operations and their cost (``n`` elements; 8 bytes a ring element; a seed is 32 bytes):

    ======================================== ================================ ==================================
    operation                                how                              traffic
    ======================================== ================================ ==================================
    ``share(x, owner)``                      owner masks with a fresh seed    32 B to server0, 8n B to server1
    ``reveal(to=p)``                         both shares to ``p``             16n B
    ``+ - neg reshape transpose [..]``       local on each share              none
    ``concat reduce_sum``                    local                            none
    private x public ``* @ conv2d``          local, then local truncation     none
    ``avg_pool2d``                           local sums, public ``* 1/count`` none
    private x private ``*``, ``@``, conv2d   Beaver triple, one round         16 (size x + size y) B online,
                                                                              64 + 8 size(z) B from the producer
    ``square``                               square pair, one round           16n B online, 64 + 8n B producer
    ======================================== ================================ ==================================

    A Beaver product costs 4 ring products on the servers (2 each) and 1 by the producer.

    Ranges that must hold (``f = frac_bits``, ``B = 2**int_bits``):

    * inputs (``share``, ``public``, integer scalars): ``|x| < B``, else :class:`~tfe_lite.EncodingError`;
    * the result of every operation: ``|z| < B``. Sums (``+``, ``reduce_sum``, the accumulations inside
      ``@`` and ``conv2d``) wrap modulo 2^64 without notice beyond ``2**(63 - f)``, and products beyond
      ``2**(63 - 2 f)`` before truncation (``2**31`` for ``f = 16``): ``50000 * 50000`` wraps;
    * truncation after a product of real value ``z`` fails with probability ``|z| * 2**(2 f - 64)`` per
      element (``2**-32`` for ``|z| <= 1`` and ``f = 16``; ``2**-margin`` at the bound), giving an error of
      about ``2**(64 - f)``; otherwise the result is within one unit of ``2**-f`` of the truncated product.
    * matmul: both operands of the same rank >= 2 and equal leading (batch) dimensions.

    Eager speed: an operation called eagerly again with the same shapes and arguments runs as a cached
    ``tf.function`` of itself, so that the servers' and the producer's kernels overlap as in a traced graph
    (see :mod:`.eager` for what is cached, and what always runs eagerly).

    Concurrency: seeds, masks and triples are drawn through atomic counters, so concurrent executions of
    traced functions never reuse randomness. Eager operations from several threads are safe but run one at
    a time (TensorFlow's eager runtime mixes up operands across threads on logical devices); for parallel
    work, trace the computation (``tf.function``) and call it from the threads.
    """

    def __init__(self, config: Config | None = None, *, fixedpoint: FixedPointConfig | str = "default",
                 dealer: TripleSource | str = "online", seed: int | None = None, checked: bool = False,
                 comparison: str = "auto"):
        self.config = config if config is not None else LocalConfig()
        if not isinstance(self.config, Config):
            raise ConfigError(f"Received an invalid value for `config`, expected a tfe_lite Config. Received: config={config!r}")
        self.fixedpoint = _fixedpoint(fixedpoint)
        self.server0 = self.config.get_player(SERVER0)
        self.server1 = self.config.get_player(SERVER1)
        self.producer = self.config.get_player(CRYPTO_PRODUCER)
        # Keys are made on each player's device; a multi-host config (``remote``) refuses a driver-side key.
        self.streams = RandomStreams(seed, on_device=getattr(self.config, "remote", False))
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
        if not isinstance(checked, bool):
            raise ConfigError(f"Received an invalid value for `checked`, expected True or False. Received: checked={checked!r}")
        self.checked = checked
        if comparison not in _COMPARISONS:
            raise ConfigError(f"Received an invalid value for `comparison`, expected one of {list(_COMPARISONS)}. Received: comparison={comparison!r}")
        #: Whether the crypto producer is online (the online dealer), as the assisted comparison needs.
        self.producer_online = online = type(self.dealer) is OnlineDealer
        if comparison == "assisted" and not online:
            raise ConfigError(
                f"comparison='assisted' needs the crypto producer online (dealer='online'); this protocol's dealer is "
                f"{type(self.dealer).__name__}. Use comparison='dealt' (or 'auto') with a precomputed dealer."
            )
        #: ``"auto"``, ``"dealt"`` or ``"assisted"``: which comparison protocol runs (see :func:`.comparison.protocol_for`).
        self.comparison = comparison
        self._eager_functions = EagerFunctions()  # eager operations run as cached traces (see .eager)

    def __repr__(self) -> str:
        return f"Pond({self.config!r}, fixedpoint={self.fixedpoint}, dealer={type(self.dealer).__name__})"

    # ------------------------------------------------------------------------------ inputs and outputs
    @eager_serialized
    def share(self, values, owner) -> PrivateTensor:
        """Secret-share real ``values`` held by player ``owner``.

        Steps: on the owner's device, encode ``x``, draw a fresh seed ``s`` and ``x0 = expand(s)``,
        ``x1 = x - x0``; send ``s`` to server0 (32 bytes), which expands ``x0``, and ``x1`` to server1.
        The plaintext is never placed on another device. ``values`` must have a static shape.
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
        """A public value known to both servers, encoded by each.

        Numbers and numpy arrays are constants of the computation. A ``tf.Tensor`` of the driving program
        is copied to both servers (counted as traffic from ``"driver"``); one on a player's device is refused
        (:class:`~tfe_lite.PlayerError`): a data owner's would hand its plaintext to both servers, a server's
        may be a share.
        """
        if isinstance(values, PondTensor):
            raise ProtocolError(f"`values` is already a Pond tensor: {values!r}")
        plain = isinstance(values, (tf.Tensor, tf.Variable))
        if plain:
            self._check_plain(values, "values")
        copies = []
        for server in (self.server0, self.server1):
            value = values
            if plain:
                value = self.channel.send(tf.convert_to_tensor(values), DRIVER, server, "public")
            with tf.device(server.device):
                copies.append(encode(value, self.fixedpoint))
        return PublicTensor(self, *copies)

    @eager_serialized
    def from_shares(self, share0, share1, *, fixedpoint: FixedPointConfig | str) -> PrivateTensor:
        """A private tensor from existing int64 shares (placed on server0 and server1).

        Shares do not record how their value is encoded, so ``fixedpoint`` (the config or preset name the
        shares were made with) is required; it must equal this protocol's.
        """
        fixedpoint = _fixedpoint(fixedpoint)
        if fixedpoint != self.fixedpoint:
            raise ConfigError(
                f"Received shares encoded with {fixedpoint}, but this protocol encodes with {self.fixedpoint}: "
                "their values would decode wrongly. Use a protocol with the same fixed-point config."
            )
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

    def decode(self, x: tf.Tensor, dtype: tf.DType = tf.float64) -> tf.Tensor:
        """The real value of an int64 encoding under this protocol's fixed-point config (no communication)."""
        return decode(x, self.fixedpoint, dtype)

    def count_communication(self):
        """Context manager yielding a :class:`~.comm.CommunicationLog` of the traffic while it is open
        (eager operations and every execution of traced functions; read it after the block)."""
        return self.channel.count()

    # --------------------------------------------------------------------------------------- helpers
    def _check_plain(self, tensor, name: str) -> None:
        """Refuse a plain tensor on a player's device as an operand: it would become public.

        A data owner's tensor is plaintext that both servers would receive; a server's may be a share,
        which the other server must never see. Tensors of the driving program (the host) are public."""
        device = tf.DeviceSpec.from_string(tensor.device or "")
        if not device.device_type:
            return
        for player in self.config.players:
            spec = tf.DeviceSpec.from_string(player.device)
            same_job = device.job is None or spec.job is None or device.job == spec.job
            if same_job and (device.device_type, device.device_index) == (spec.device_type, spec.device_index):
                server = player in (self.server0, self.server1)
                why = "it may be a share, which the other server must never see" if server else "that is its plaintext"
                raise PlayerError(
                    f"`{name}` is a tf.Tensor on {player.name}'s device ({tensor.device}): as a public operand it "
                    f"would be copied to both servers, and {why}. "
                    f"Share it with prot.share(value, owner={player.name!r}), or copy it to the host first if it is "
                    "meant to be public."
                )

    def _result(self, op: str, z):
        """``z``, checked against the fixed-point range in checked mode (see the class docstring)."""
        if not self.checked or not isinstance(z, PrivateTensor) or z.shape.num_elements() == 0:
            return z
        count, _ = comparison.out_of_range_count(self, z)
        message = (f"Checked mode: the result of {op} (shape {z.shape}) has values outside the fixed-point range "
                   f"±2**{self.fixedpoint.int_bits}: it overflowed. Count of such elements:")
        if tf.executing_eagerly():
            if int(count) > 0:
                raise EncodingError(f"{message} {int(count)}.")
            return z
        with tf.device(self.server0.device):
            check = tf.debugging.Assert(tf.equal(count, 0), [message, count])
        with tf.control_dependencies([check]):
            return linear.local(self, z, tf.identity)

    def _own(self, value, name: str):
        """``value`` as a tensor of this protocol: Pond tensors are checked, plain values become public."""
        if isinstance(value, PondTensor):
            if value.protocol is not self:
                raise ProtocolError(
                    f"`{name}` belongs to another protocol instance ({value.protocol!r}); tensors of two "
                    "protocol instances cannot be mixed."
                )
            return value
        if isinstance(value, (tf.Tensor, tf.Variable)):
            self._check_plain(value, name)
        return self.public(value)

    # -------------------------------------------------------------------------------------- linear ops
    @eager_serialized
    def add(self, x, y):
        """``x + y``: local (server0 adds a public operand to its share)."""
        x, y = self._own(x, "x"), self._own(y, "y")
        checks.broadcast("add", x, y)
        return self._result("add", _ADD[(type(x), type(y))](self, x, y))

    @eager_serialized
    def sub(self, x, y):
        """``x - y``: local."""
        return self.add(x, self.neg(self._own(y, "y")))

    @eager_serialized
    def neg(self, x):
        """``-x``: each server negates its share (local)."""
        return linear.local(self, self._own(x, "x"), tf.negative)

    @eager_serialized
    def reduce_sum(self, x, axis=None, keepdims: bool = False):
        """Sum over ``axis`` (None: all axes) like ``tf.reduce_sum``: local."""
        x = self._own(x, "x")
        axis = checks.axis(x.shape, axis, "reduce_sum")
        return self._result("reduce_sum", linear.local(self, x, lambda t: tf.reduce_sum(t, axis=axis, keepdims=keepdims)))

    @eager_serialized
    def reshape(self, x, shape):
        """``tf.reshape`` of each share (local); ``shape`` may hold one ``-1``."""
        x = self._own(x, "x")
        shape = checks.reshape(x.shape, shape)
        return linear.local(self, x, lambda t: tf.reshape(t, shape))

    @eager_serialized
    def transpose(self, x, perm=None):
        """``tf.transpose`` of each share (local); ``perm`` a permutation of the axes (default: reversed)."""
        x = self._own(x, "x")
        perm = checks.transpose(x.shape, perm)
        return linear.local(self, x, lambda t: tf.transpose(t, perm))

    @eager_serialized
    def slice(self, x, index):
        """``x[index]`` with TensorFlow's indexing rules (ints, slices, ``...``, ``None``): local."""
        x = self._own(x, "x")
        checks.slice_shape(x.shape, index)
        return linear.local(self, x, lambda t: t[index])

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
        """Elementwise ``x * y`` (broadcasting). Integer Python scalars scale exactly, without truncation
        (they must be encodable: ``|k| < 2**int_bits``)."""
        for a, b, name in ((x, y, "y"), (y, x, "x")):
            if checks.is_integer_scalar(b) and isinstance(a, PondTensor):
                k = checks.integer_scalar(b, self.fixedpoint, name)
                return self._result("mul", linear.local(self, self._own(a, "x"), lambda t: t * np.int64(k)))
        x, y = self._own(x, "x"), self._own(y, "y")
        checks.broadcast("multiply", x, y)
        if x is y and isinstance(x, PrivateTensor):
            return self.square(x)
        spec = TripleSpec("mul", tuple(x.shape), tuple(y.shape))
        return self._result("mul", _PRODUCT[(type(x), type(y))](self, x, y, spec))

    @eager_serialized
    def square(self, x):
        """``x * x`` from a square pair (private) or locally (public)."""
        x = self._own(x, "x")
        if isinstance(x, PublicTensor):
            return truncate_public(self, linear.local(self, x, tf.square))
        return self._result("square", truncate_private(self, beaver.square(self, x)))

    @eager_serialized
    def matmul(self, x, y):
        """``x @ y``: both of the same rank >= 2 (batched: equal leading dimensions), ``x.shape[-1] ==
        y.shape[-2]``."""
        x, y = self._own(x, "x"), self._own(y, "y")
        checks.matmul(x, y)
        spec = TripleSpec("matmul", tuple(x.shape), tuple(y.shape))
        return self._result("matmul", _PRODUCT[(type(x), type(y))](self, x, y, spec))

    @eager_serialized
    def conv2d(self, x, filters, strides=1, padding: str = "SAME"):
        """2-D convolution like ``tf.nn.conv2d``: ``x`` is NHWC, ``filters`` ``[kh, kw, C_in, C_out]``."""
        x, filters = self._own(x, "x"), self._own(filters, "filters")
        strides, padding = checks.pair(strides, "strides"), checks.padding(padding)
        checks.conv2d(x, filters, padding)
        spec = TripleSpec("conv2d", tuple(x.shape), tuple(filters.shape), strides, padding)
        return self._result("conv2d", _PRODUCT[(type(x), type(filters))](self, x, filters, spec))

    @eager_serialized
    def avg_pool2d(self, x, pool_size, strides=None, padding: str = "VALID"):
        """Average pooling like ``tf.nn.avg_pool2d`` (SAME averages over the in-bounds window only).

        Window sums are local; the division is a product with the public ``1 / count`` and a truncation.
        """
        x = self._own(x, "x")
        pool_size = checks.pair(pool_size, "pool_size")
        strides = pool_size if strides is None else checks.pair(strides, "strides")
        padding = checks.padding(padding)
        checks.pool2d("avg_pool2d", x, pool_size, padding)
        sums = linear.local(self, x, lambda t: ring.sum_pool2d(t, pool_size, strides, padding))
        counts = np.outer(*(checks.window_counts(n, k, s, padding) for n, k, s in zip(x.shape[1:3], pool_size, strides)))
        return self.mul(sums, (1.0 / counts)[None, :, :, None])

    @eager_serialized
    def truncate(self, x):
        """Divide by ``2**frac_bits`` (after a product computed by hand on the ring)."""
        x = self._own(x, "x")
        return (truncate_private if isinstance(x, PrivateTensor) else truncate_public)(self, x)

    def div(self, x, y):
        """``x / y`` for a public divisor ``y`` (a product with ``1 / y``)."""
        if isinstance(y, PrivateTensor):
            raise ProtocolError("Division by a private value is not available: only a public divisor is supported.")
        if isinstance(y, PublicTensor):
            raise ProtocolError("Division by an encoded public tensor is not available: divide by a number or numpy array.")
        if isinstance(y, (tf.Tensor, tf.Variable)):
            self._check_plain(y, "y")
        return self.mul(x, 1.0 / np.asarray(y, np.float64) if not isinstance(y, (tf.Tensor, tf.Variable))
                        else 1.0 / tf.cast(y, tf.float64))

    def pow(self, x, exponent: int):
        """``x ** k`` for an integer ``k >= 1``, by repeated squaring (``floor(log2 k)`` squares and at most
        as many products)."""
        if not checks.is_integer_scalar(exponent) or exponent < 1:
            raise ProtocolError(f"Received an invalid exponent, expected an integer >= 1. Received: exponent={exponent!r}")
        result, base = None, self._own(x, "x")
        while exponent:
            if exponent & 1:
                result = base if result is None else self.mul(result, base)
            exponent >>= 1
            if exponent:
                base = self.square(base)
        return result


#: The operations that run as cached traces when called eagerly with a signature seen before (the local
#: reshaping ops, ``neg``, ``reduce_sum``, ``concat``, ``public`` and ``from_shares`` cost less than a call
#: of a function, and run eagerly).
_TRACED_WHEN_EAGER = (
    "share", "reveal", "add", "sub", "mul", "square", "matmul", "conv2d", "avg_pool2d", "truncate", "div", "pow",
    "less", "greater", "less_equal", "greater_equal", "sign", "relu", "maximum", "reduce_max", "argmax",
    "max_pool2d", "exp", "log", "reciprocal", "rsqrt", "sigmoid", "tanh", "softmax",
)
for _name in _TRACED_WHEN_EAGER:
    setattr(Pond, _name, traced_when_eager(getattr(Pond, _name)))
del _name


def _fixedpoint(value) -> FixedPointConfig:
    if isinstance(value, str):
        value = FixedPointConfig.preset(value)
    if not isinstance(value, FixedPointConfig):
        raise ConfigError(f"Received an invalid value for `fixedpoint`, expected a FixedPointConfig or preset name. Received: fixedpoint={value!r}")
    return value


def _product_private_private(prot, x, y, spec):
    return truncate_private(prot, beaver.product(prot, x, y, spec))


def _product_local(prot, x, y, spec):
    out_type = PublicTensor if isinstance(x, PublicTensor) and isinstance(y, PublicTensor) else PrivateTensor
    if out_type is PrivateTensor:
        # Only one operand is private: each server applies f to its share and its copy of the public operand.
        return truncate_private(prot, linear.local2(prot, x, y, spec.apply, PrivateTensor))
    return truncate_public(prot, linear.local2(prot, x, y, spec.apply, PublicTensor))



_PRODUCT = {
    (_PRIV, _PRIV): _product_private_private,
    (_PRIV, _PUB): _product_local,
    (_PUB, _PRIV): _product_local,
    (_PUB, _PUB): _product_local,
}
