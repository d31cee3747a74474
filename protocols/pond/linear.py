"""Operations that need no interaction: each server applies the same map to its share or copy.

For a private ``x = x0 + x1`` and a linear map ``g`` (reshape, transpose, slicing, sums, pooling sums,
products with public values), ``g(x) = g(x0) + g(x1)``: each server computes ``g`` on its own share.
Adding a public ``p`` to a private ``x`` changes server0's share only (``x0 + p``). Nothing is sent.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from .tensors import PrivateTensor, PublicTensor


def local(prot, x, fn: Callable[[tf.Tensor], tf.Tensor]):
    """``fn`` applied by each server to its share (private) or copy (public)."""
    parts = x.shares if isinstance(x, PrivateTensor) else x.values
    out = []
    for server, part in zip((prot.server0, prot.server1), parts):
        with tf.device(server.device):
            out.append(fn(part))
    return type(x)(prot, *out)


def local2(prot, x, y, fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], out_type):
    """``fn`` of the two operands' parts on each server (both private, both public, or mixed)."""
    out = []
    for i, server in enumerate((prot.server0, prot.server1)):
        xi = x.shares[i] if isinstance(x, PrivateTensor) else x.values[i]
        yi = y.shares[i] if isinstance(y, PrivateTensor) else y.values[i]
        with tf.device(server.device):
            out.append(fn(xi, yi))
    return out_type(prot, *out)


def add_private_private(prot, x, y):
    return local2(prot, x, y, tf.add, PrivateTensor)


def add_public_public(prot, x, y):
    return local2(prot, x, y, tf.add, PublicTensor)


def add_private_public(prot, x: PrivateTensor, p: PublicTensor):
    with tf.device(prot.server0.device):
        z0 = x.share0 + p.on0
    with tf.device(prot.server1.device):
        z1 = x.share1 + tf.zeros_like(p.on1)  # broadcast like server0's share
    return PrivateTensor(prot, z0, z1)


def add_public_private(prot, p: PublicTensor, x: PrivateTensor):
    return add_private_public(prot, x, p)


def as_private(prot, p: PublicTensor) -> PrivateTensor:
    """The trivial sharing of a public value: ``(p, 0)``."""
    with tf.device(prot.server1.device):
        zero = tf.zeros_like(p.on1)
    return PrivateTensor(prot, p.on0, zero)
