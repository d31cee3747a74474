"""Products of two private tensors by Beaver triples.

For a bilinear ring operation ``f`` (elementwise ``mul``, ``matmul``, ``conv2d``) and private ``x, y``
with a triple ``(a, b, c = f(a, b))`` from the dealer:
  1. server_i: ``e_i = x_i - a_i``, ``d_i = y_i - b_i``.
  2. open: the servers exchange ``e_i, d_i`` (one message each way); both now know ``e = x - a`` and ``d = y - b``, which are
     uniformly random and reveal nothing about ``x, y``.
  3. server0: ``z0 = c0 + f(e, b0) + f(a0 + e, d)``; server1: ``z1 = c1 + f(e, b1) + f(a1, d)``.
Then ``z0 + z1 = f(a, b) + f(e, b) + f(a, d) + f(e, d) = f(x, y)``. Bilinearity lets server0 fold
``f(a0, d) + f(e, d)`` into one evaluation, so a product costs **4** evaluations of ``f`` on the servers
(2 each), plus 1 by the producer to make the triple. Traffic: ``2 * 8 * (size(x) + size(y))`` bytes to open,
plus the triple's ``64 + 8 * size(z)`` (see :mod:`.dealer`).

Squares use a pair ``(a, c = a * a)``: open ``e = x - a``; ``z0 = c0 + e * (2 a0 + e)``, ``z1 = c1 + e * 2 a1``.

The results carry ``2 f`` fractional bits; the protocol truncates them (:mod:`.truncation`).
"""

from __future__ import annotations

import tensorflow as tf

from .dealer import TripleSpec
from .tensors import PrivateTensor


def open_masked(prot, m0: tf.Tensor, m1: tf.Tensor, what: str, join=tf.add) -> tuple[tf.Tensor, tf.Tensor]:
    """Both servers learn ``join(m0, m1)`` (a masked, uniformly random value; ``join`` is ``tf.add`` for
    additive shares, XOR for binary ones): its copies on server0, server1."""
    (on0,), (on1,) = open_together(prot, [m0], [m1], what, join)
    return on0, on1


def open_together(prot, parts0: list, parts1: list, what: str, join=tf.add) -> tuple[list, list]:
    """Both servers learn ``join(parts0[k], parts1[k])`` for every ``k`` (masked values), in one message each
    way (:meth:`~.comm.Channel.send_many`): the lists of their copies on server0 and on server1."""
    s0, s1 = prot.server0, prot.server1
    at0 = prot.channel.send_many(parts1, s1, s0, what, like=parts0)
    at1 = prot.channel.send_many(parts0, s0, s1, what, like=parts1)
    with tf.device(s0.device):
        on0 = [join(mine, theirs) for mine, theirs in zip(parts0, at0)]
    with tf.device(s1.device):
        on1 = [join(theirs, mine) for theirs, mine in zip(at1, parts1)]
    return on0, on1


def product(prot, x: PrivateTensor, y: PrivateTensor, spec: TripleSpec) -> PrivateTensor:
    """``f(x, y)`` with ``2 f`` fractional bits (not truncated), ``f`` given by ``spec``."""
    t = prot.dealer.triple(spec)
    s0, s1 = prot.server0, prot.server1
    with tf.device(s0.device):
        e0, d0 = x.share0 - t.a0, y.share0 - t.b0
    with tf.device(s1.device):
        e1, d1 = x.share1 - t.a1, y.share1 - t.b1
    (e_on0, d_on0), (e_on1, d_on1) = open_together(prot, [e0, d0], [e1, d1], "open_ed")
    with tf.device(s0.device):
        z0 = t.c0 + spec.apply(e_on0, t.b0) + spec.apply(t.a0 + e_on0, d_on0)
    with tf.device(s1.device):
        z1 = t.c1 + spec.apply(e_on1, t.b1) + spec.apply(t.a1, d_on1)
    return PrivateTensor(prot, z0, z1)


def square(prot, x: PrivateTensor) -> PrivateTensor:
    """``x * x`` with ``2 f`` fractional bits (not truncated), from a square pair."""
    t = prot.dealer.triple(TripleSpec("square", tuple(x.shape)))
    s0, s1 = prot.server0, prot.server1
    with tf.device(s0.device):
        e0 = x.share0 - t.a0
    with tf.device(s1.device):
        e1 = x.share1 - t.a1
    e_on0, e_on1 = open_masked(prot, e0, e1, "open_e")
    with tf.device(s0.device):
        z0 = t.c0 + e_on0 * (t.a0 + t.a0 + e_on0)
    with tf.device(s1.device):
        z1 = t.c1 + e_on1 * (t.a1 + t.a1)
    return PrivateTensor(prot, z0, z1)
