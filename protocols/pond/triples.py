"""What a dealer deals: the kinds of correlated randomness (:data:`KINDS`) and their specs.

For a :class:`TripleSpec` a dealer (:mod:`.dealer`) hands ``server0`` the parts ``a0, b0, c0`` and
``server1`` the parts ``a1, b1, c1`` of random ``a``, ``b`` and ``c = f(a, b)``; ``f`` and how each value
is shared depend on the spec's ``op``:

================ =========================== ========================== ============================
op               a, b                        c                          used by
================ =========================== ========================== ============================
``mul``          additive shares             ``a * b``, additive        private ``*``
``matmul``       additive shares             ``a @ b``, additive        private ``@``
``conv2d``       additive shares             ``conv2d(a, b)``, additive private ``conv2d``
``square``       ``a`` additive (no ``b``)   ``a * a``, additive        ``square``
``and``          XOR shares of 64-bit words  ``a & b``, XOR shares      binary circuits
``edabit``       ``a`` additive (no ``b``)   bit planes of ``a``, XOR   comparisons (a mask ``r``)
``dabit``        a bit plane, XOR (no ``b``) its bits, additive         binary -> arithmetic
``dabit_mul``    a bit plane, XOR; ``b``     its bits ``s`` and         a bit times a value
                 additive                    ``s * b``, additive
``edabit_dabit`` a bit plane, XOR; ``b``     bit planes of ``b``, XOR;  a comparison's mask and a
                 additive                    ``s``, ``s * b``, additive bit times the compared value
================ =========================== ========================== ============================

Bit planes (:func:`tfe_lite.ring.bit_slice`) hold one bit of 64 elements per word. An ``edabit`` spec of
``shape_a`` and ``bits = B`` deals a uniform ring tensor ``a`` of ``shape_a`` and XOR shares of its ``B``
low bit planes (``[B, ceil(n / 64)]`` for ``n`` elements). A ``dabit`` spec of ``shape_a`` deals one uniform
plane ``[ceil(n / 64)]`` in XOR shares and, as ``c``, additive shares of its ``n`` bits (0/1, ``shape_a``).
A ``dabit_mul`` spec (``shape_b == shape_a``) also deals a uniform additive ``b`` and gives as ``c`` the
stack ``[s, s * b]`` (``[2, *shape_a]``) of the bits ``s`` and their products with ``b``. An ``edabit_dabit``
spec (``shape_b == shape_a``, ``bits = B``) is an edaBit and a ``dabit_mul`` in one, whose ``b`` is the
edaBit's mask: ``c`` is flat, the ``B`` low bit planes of ``b`` (``B * ceil(n / 64)`` words, XOR shares)
followed by the ``2 n`` values of ``[s, s * b]`` (additive shares); :meth:`TripleSpec.join_c` and
:meth:`TripleSpec.split_off_c_halves` share it, :meth:`TripleSpec.c_parts` takes it apart.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from tfe_lite import ring
from tfe_lite.errors import ConfigError


def _broadcast_shape(spec) -> tuple:
    return tuple(np.broadcast_shapes(spec.shape_a, spec.shape_b))


def _conv_shape(spec) -> tuple:
    n, h, w, _ = spec.shape_a
    kh, kw, _, cout = spec.shape_b
    sh, sw = spec.strides
    if spec.padding == "SAME":
        return (n, -(-h // sh), -(-w // sw), cout)
    return (n, (h - kh) // sh + 1, (w - kw) // sw + 1, cout)


@dataclasses.dataclass(frozen=True)
class _Kind:
    """How one kind of correlated randomness is made: ``f``, ``c``'s shape, and how a, b, c are shared."""

    f: Callable
    c_shape: Callable
    has_b: bool = True
    ab: str = "add"  # "add": additive shares; "xor": XOR shares of words; "mixed": a XOR, b additive
    c: str = "add"  # "add", "xor" or "mixed" (XOR shares, then additive ones: ``c_xor_size``)
    a_shape: Callable = lambda s: s.shape_a  # the shape of ``a`` (of its bit plane, for a daBit)
    bits: bool = False  # whether the spec takes ``bits``
    c_xor_size: Callable | None = None  # c = "mixed": how many leading (flat) elements are XOR shares

    @property
    def ab_a(self) -> str:
        return "xor" if self.ab == "mixed" else self.ab

    @property
    def ab_b(self) -> str:
        return "add" if self.ab == "mixed" else self.ab


#: The kinds of correlated randomness a dealer makes, by ``TripleSpec.op``.
KINDS: dict[str, _Kind] = {
    "mul": _Kind(lambda s, a, b: a * b, _broadcast_shape),
    "matmul": _Kind(lambda s, a, b: ring.matmul(a, b), lambda s: s.shape_a[:-1] + s.shape_b[-1:]),
    "conv2d": _Kind(lambda s, a, b: ring.conv2d(a, b, s.strides, s.padding), _conv_shape),
    "square": _Kind(lambda s, a, b: a * a, lambda s: s.shape_a, has_b=False),
    "and": _Kind(lambda s, a, b: tf.bitwise.bitwise_and(a, b), _broadcast_shape, ab="xor", c="xor"),
    "edabit": _Kind(lambda s, a, b: ring.bit_slice(a, s.bits), lambda s: (s.bits, ring.plane_words(_size(s))),
                    has_b=False, c="xor", bits=True),
    "dabit": _Kind(lambda s, a, b: tf.reshape(ring.bit_unslice(a, _size(s)), s.shape_a), lambda s: s.shape_a,
                   has_b=False, ab="xor", a_shape=lambda s: (ring.plane_words(_size(s)),)),
    "dabit_mul": _Kind(lambda s, a, b: _dabit_mul(s, a, b), lambda s: (2, *s.shape_a), ab="mixed",
                       a_shape=lambda s: (ring.plane_words(_size(s)),)),
    "edabit_dabit": _Kind(lambda s, a, b: _edabit_dabit(s, a, b), lambda s: (_planes_size(s) + 2 * _size(s),),
                          ab="mixed", c="mixed", a_shape=lambda s: (ring.plane_words(_size(s)),), bits=True,
                          c_xor_size=lambda s: _planes_size(s)),
}


def _dabit_mul(spec, plane, b) -> tf.Tensor:
    bits = tf.reshape(ring.bit_unslice(plane, _size(spec)), spec.shape_a)
    return tf.stack([bits, bits * b])


def _edabit_dabit(spec, plane, b) -> tf.Tensor:
    planes = tf.reshape(ring.bit_slice(b, spec.bits), [-1])
    return tf.concat([planes, tf.reshape(_dabit_mul(spec, plane, b), [-1])], axis=0)


def _planes_size(spec) -> int:
    return spec.bits * ring.plane_words(_size(spec))


def _size(spec) -> int:
    return int(np.prod(spec.shape_a, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class TripleSpec:
    """Which correlated randomness an interactive operation needs (``op`` is a key of :data:`KINDS`)."""

    op: str
    shape_a: tuple
    shape_b: tuple | None = None
    strides: tuple = (1, 1)
    padding: str = "VALID"
    bits: int | None = None  # ``edabit``: how many low bit planes of ``a`` are dealt

    def __post_init__(self):
        if self.op not in KINDS:
            raise ConfigError(f"Received an invalid value for `op`, expected one of {sorted(KINDS)}. Received: op={self.op!r}")
        for name in ("shape_a", "shape_b"):
            shape = getattr(self, name)
            if shape is not None and not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
                raise ConfigError(f"Received an invalid value for `{name}`, expected a fully known shape. Received: {name}={shape!r}")
        if (self.shape_b is not None) != KINDS[self.op].has_b:
            raise ConfigError(f"A {self.op!r} spec {'needs' if KINDS[self.op].has_b else 'takes no'} `shape_b`. Received: shape_b={self.shape_b!r}")
        if self.op in ("dabit_mul", "edabit_dabit") and tuple(self.shape_b) != tuple(self.shape_a):
            raise ConfigError(f"A {self.op!r} spec needs shape_b == shape_a. Received: shape_a={self.shape_a!r}, shape_b={self.shape_b!r}")
        if KINDS[self.op].bits != (self.bits is not None):
            raise ConfigError(f"A {self.op!r} spec {'needs' if KINDS[self.op].bits else 'takes no'} `bits`. Received: bits={self.bits!r}")
        if self.bits is not None and not (isinstance(self.bits, (int, np.integer)) and 1 <= self.bits <= 64):
            raise ConfigError(f"Received an invalid value for `bits`, expected an integer in [1, 64]. Received: bits={self.bits!r}")

    @property
    def kind(self) -> _Kind:
        return KINDS[self.op]

    @property
    def part_shape_a(self) -> tuple:
        """The shape of ``a`` (``shape_a``, except for a daBit: its bit plane)."""
        return tuple(int(d) for d in self.kind.a_shape(self))

    @property
    def shape_c(self) -> tuple:
        return tuple(int(d) for d in self.kind.c_shape(self))

    def apply(self, a: tf.Tensor, b: tf.Tensor | None) -> tf.Tensor:
        """``f(a, b)`` over Z/2^64 (or on bit words, for the binary kinds)."""
        return self.kind.f(self, a, b)

    def join_c(self, c0: tf.Tensor, c1: tf.Tensor) -> tf.Tensor:
        """``c`` from its two parts, each element by its sharing."""
        return self._by_sharing(lambda sharing, x, y: x + y if sharing == "add" else tf.bitwise.bitwise_xor(x, y),
                                c0, c1)

    def split_off_c_halves(self, c: tf.Tensor, other_low: tf.Tensor, other_high: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The part that joins another part to ``c``, as two halves: ``c`` flattened and cut after its first
        ``floor(size / 2)`` elements, less the other part given as those two halves. Neither the other part
        is joined into a whole nor the result cut (two full-size copies saved)."""
        flat = tf.reshape(c, [-1])
        size = int(flat.shape[0])
        low, high = tf.split(flat, [size // 2, size - size // 2])
        op = lambda sharing, x, y: x - y if sharing == "add" else tf.bitwise.bitwise_xor(x, y)  # noqa: E731
        return (self._by_sharing(op, low, other_low), self._by_sharing(op, high, other_high, offset=size // 2))

    def _by_sharing(self, op, x, y, offset: int = 0) -> tf.Tensor:
        """``op`` per sharing of ``c``'s elements; ``x``, ``y`` hold them from flat position ``offset`` on."""
        if self.kind.c != "mixed":
            return op(self.kind.c, x, y)
        k = min(max(self.kind.c_xor_size(self) - offset, 0), int(x.shape[0]))
        if k == 0:
            return op("add", x, y)
        if k == int(x.shape[0]):
            return op("xor", x, y)
        return tf.concat([op("xor", x[:k], y[:k]), op("add", x[k:], y[k:])], axis=0)

    def c_parts(self, c: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """An ``edabit_dabit`` part of ``c`` as (its bit planes ``[bits, ceil(n / 64)]``, its ``[2, *shape_a]``
        stack of ``s`` and ``s * b``)."""
        k = self.kind.c_xor_size(self)
        return (tf.reshape(c[:k], [self.bits, ring.plane_words(_size(self))]),
                tf.reshape(c[k:], [2, *self.shape_a]))

    def __str__(self) -> str:
        if self.bits is not None:
            return f"{self.op}{list(self.shape_a)}[{self.bits} bits]"
        if self.shape_b is None:
            return f"{self.op}{list(self.shape_a)}"
        return f"{self.op}({list(self.shape_a)}, {list(self.shape_b)})"


@dataclasses.dataclass
class Triple:
    """Server0's and server1's parts of ``(a, b, c = f(a, b))``; ``b`` is None for kinds without one."""

    a0: tf.Tensor
    b0: tf.Tensor | None
    c0: tf.Tensor
    a1: tf.Tensor
    b1: tf.Tensor | None
    c1: tf.Tensor
