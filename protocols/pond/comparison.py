"""Exact comparisons on Pond: the sign bit of a shared value, with the crypto producer's help.

``msb(x)`` computes a sharing of the most significant bit of ``x`` (an additively shared element of
Z/2^64), that is ``[x < 0]`` for the signed reading, exactly: no failure probability for any input.

Steps (``n`` elements; the producer's correlated randomness comes through the dealer, online or precomputed):

1. Mask (1 round, 16n bytes). The producer deals an *edaBit*: additive shares of a uniform ``r`` and XOR
   shares of its 64 bits. Each server sends ``x_i + r_i``: both learn ``m = x + r``, uniform whatever ``x``.
2. Borrow. ``x = m - r``, so ``msb(x) = m_63 xor r_63 xor [m' < r']`` with ``m'``, ``r'`` the low 63 bits.
   ``m'`` is public, ``r'`` XOR-shared, so per bit ``g = r & ~m`` ("r is larger here") and ``p = ~(r xor m)``
   ("equal here") are XOR shares computed locally.
3. Prefix (6 rounds, 272n bytes). A parallel-prefix (Kogge-Stone) combination
   ``(g, p) <- (g xor (p & (g << s)), p & (p << s))`` for ``s = 1, 2, 4, ..., 32`` over 64-bit words leaves
   ``[r' > m']`` in bit 62 of ``g``. Each AND of XOR-shared words uses a binary Beaver triple: open
   ``e = x xor a``, ``d = y xor b`` (uniform); ``z = c xor (e & b) xor (d & a) xor (e & d)``. Both ANDs of a
   level share ``x = p``, so ``e`` is opened once for both (3 words per level, 2 in the last: 17 words).
4. To arithmetic (1 round, 2n bytes). The bit ``b`` (XOR-shared) is opened masked by a *daBit* ``s`` (XOR
   and additive shares of one random bit): ``t = b xor s`` is uniform; then ``b = t + s - 2 t s`` locally.

In all 8 rounds and ``16 + 272 + 2 = 290`` bytes per element between the servers; the producer sends
``8 (edaBit) + 11 * 8 (AND triples) + 8 (daBit)`` = 104 bytes per element and 32 bytes of seed per server
and dealt tensor. That is the full-ring version (checked mode uses it: it must judge any ring element).

Bounded version (``magnitude_bits = K <= 31``, used for every comparison of encodable values and their
differences, ``K = int_bits + frac_bits + 1``): the caller guarantees ``|x| < 2**K``; server0 adds ``2**K``
before masking, so ``msb(x) = 1 xor bit_K(x + 2**K)``, and the borrow comparison runs on the ``K`` low bits
only, two elements per 64-bit word (lanes of 32 bits; shifted bits never cross a lane). For ``K = 29``
(default preset): 7 rounds, ``16 + 14 * 16 / 2 + 2 = 130`` bytes per element between the servers.

Semi-honest security, one corrupted player of three: a server sees only its shares, ``m`` (uniform, since
``r`` is uniform and unknown to it), the opened ``e, d`` of each AND (uniform, masked by triple values it
does not know) and ``t`` (uniform, masked by ``s``); the producer sees nothing but its own seeds.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .dealer import TripleSpec
from .tensors import PrivateTensor

_BIT = np.int64(1)


def _shift_right(x: tf.Tensor, bits: int) -> tf.Tensor:
    """Logical right shift of int64 words."""
    return tf.bitcast(tf.bitwise.right_shift(tf.bitcast(x, tf.uint64), np.uint64(bits)), tf.int64)


def _open(prot, parts, what: str, dtype=tf.int64):
    """Both servers learn the XOR (``dtype`` other than int64: a small word) or the sum of two parts."""
    s0, s1 = prot.server0, prot.server1
    at0 = prot.channel.send(parts[1], s1, s0, what)
    at1 = prot.channel.send(parts[0], s0, s1, what)
    join = tf.bitwise.bitwise_xor if what.startswith("xor") else tf.add
    with tf.device(s0.device):
        on0 = join(parts[0], at0)
    with tf.device(s1.device):
        on1 = join(at1, parts[1])
    return on0, on1


def _and(prot, x: tuple, y: tuple) -> tuple:
    """XOR shares of ``x & y`` for XOR-shared int64 words (one round, one binary triple); ``x`` may have
    fewer dimensions than ``y`` (it broadcasts, and is opened once for all of ``y``'s rows)."""
    t = prot.dealer.triple(TripleSpec("and", tuple(x[0].shape), tuple(y[0].shape)))
    s0, s1 = prot.server0, prot.server1
    band, bxor = tf.bitwise.bitwise_and, tf.bitwise.bitwise_xor
    with tf.device(s0.device):
        e0, d0 = bxor(x[0], t.a0), bxor(y[0], t.b0)
    with tf.device(s1.device):
        e1, d1 = bxor(x[1], t.a1), bxor(y[1], t.b1)
    e_on = _open(prot, (e0, e1), "xor_and")
    d_on = _open(prot, (d0, d1), "xor_and")
    with tf.device(s0.device):
        e, d = e_on[0], d_on[0]
        z0 = bxor(bxor(t.c0, band(e, bxor(t.b0, d))), band(d, t.a0))  # c0 ^ e&b0 ^ d&a0 ^ e&d
    with tf.device(s1.device):
        e, d = e_on[1], d_on[1]
        z1 = bxor(t.c1, bxor(band(e, t.b1), band(d, t.a1)))
    return z0, z1


def _pack(words: tf.Tensor, lanes: int, n: int) -> tf.Tensor:
    """Flattened ``[n]`` words (each < 2**32 when ``lanes == 2``) as ``[ceil(n / lanes)]`` words: element
    ``i`` in the low half of word ``i`` and element ``h + i`` in its high half (``h = ceil(n / 2)``)."""
    if lanes == 1:
        return words
    half = (n + 1) // 2
    padded = tf.pad(words, [[0, 2 * half - n]])
    return tf.bitwise.bitwise_or(padded[:half], tf.bitwise.left_shift(padded[half:], np.int64(32)))


def _unpack_bit(words: tf.Tensor, position: int, lanes: int, n: int) -> tf.Tensor:
    """Bit ``position`` of each lane, back in element order (``[n]``)."""
    bits = [tf.bitwise.bitwise_and(_shift_right(words, position + 32 * lane), _BIT) for lane in range(lanes)]
    return tf.concat(bits, axis=0)[:n]


def msb(prot, x: PrivateTensor, magnitude_bits: int | None = None) -> PrivateTensor:
    """Additive shares of the raw bit ``[x < 0]`` (0 or 1, not fixed-point encoded), exactly.

    With ``magnitude_bits = K`` (``K <= 31``) the caller guarantees ``|x| < 2**K`` (true for in-range values
    and their differences): then ``x + 2**K`` is non-negative below ``2**(K+1)``, its bit ``K`` is the
    answer, and the borrow comparison runs on ``K`` bits only, two elements packed per 64-bit word
    (``ceil(log2 K)`` AND rounds: 14 opened words per 2 elements for ``K = 29``, 130 bytes per element
    instead of 290). Without it every ring element is handled (checked mode)."""
    shape = tuple(x.shape)
    n = int(np.prod(shape, dtype=np.int64))
    s0, s1 = prot.server0, prot.server1
    band, bxor, bnot = tf.bitwise.bitwise_and, tf.bitwise.bitwise_xor, tf.bitwise.invert
    bounded = magnitude_bits is not None and magnitude_bits <= 31
    bits, lanes = (magnitude_bits, 2) if bounded else (63, 1)
    mask = np.int64((1 << bits) - 1)
    r = prot.dealer.triple(TripleSpec("edabit", shape))
    with tf.device(s0.device):
        m0 = x.share0 + r.a0 + (np.int64(1) << np.int64(bits) if bounded else np.int64(0))
    with tf.device(s1.device):
        m1 = x.share1 + r.a1
    m_on = _open(prot, (m0, m1), "open_mask")
    g, p = [], []
    for i, (server, rbits) in enumerate(((s0, r.c0), (s1, r.c1))):
        with tf.device(server.device):
            m_low = band(tf.reshape(m_on[i], [-1]), mask)
            r_low = band(tf.reshape(rbits, [-1]), mask)
            g.append(_pack(band(r_low, bnot(m_low)), lanes, n))
            p.append(_pack(band(bxor(bnot(m_low), r_low), mask) if i == 0 else r_low, lanes, n))
    shift = 1
    while shift < bits:
        last = 2 * shift >= bits
        # With two lanes, bits shifted out of the low lane must not enter the high one.
        keep = np.int64(~(((1 << shift) - 1) << 32)) if lanes == 2 else np.int64(-1)
        lhs = [g] + ([] if last else [p])
        shifted = []
        for i, server in enumerate((s0, s1)):
            with tf.device(server.device):
                moved = [band(tf.bitwise.left_shift(w[i], np.int64(shift)), keep) for w in lhs]
                shifted.append(tf.stack(moved))
        # p & (g << s) and p & (p << s) in one AND: p is opened once for both rows.
        products = _and(prot, (p[0], p[1]), (shifted[0], shifted[1]))
        for i, server in enumerate((s0, s1)):
            with tf.device(server.device):
                g[i] = bxor(g[i], products[i][0])
                if not last:
                    p[i] = products[i][1]
        shift *= 2
    out = []
    for i, (server, rbits) in enumerate(((s0, r.c0), (s1, r.c1))):
        with tf.device(server.device):
            borrow = _unpack_bit(g[i], bits - 1, lanes, n)
            bit = bxor(borrow, band(_shift_right(tf.reshape(rbits, [-1]), bits), _BIT))
            if i == 0:
                top = band(_shift_right(tf.reshape(m_on[0], [-1]), bits), _BIT)
                bit = bxor(bit, bxor(top, _BIT) if bounded else top)
            out.append(tf.reshape(bit, shape))
    return _to_arithmetic(prot, out)


def _to_arithmetic(prot, bits) -> PrivateTensor:
    """Additive shares of a bit given as XOR shares (0/1 int64 per server), with a daBit."""
    s = prot.dealer.triple(TripleSpec("dabit", tuple(bits[0].shape)))
    s0, s1 = prot.server0, prot.server1
    masked = []
    for server, bit, sbit in ((s0, bits[0], s.a0), (s1, bits[1], s.a1)):
        with tf.device(server.device):
            masked.append(tf.cast(tf.bitwise.bitwise_xor(bit, sbit), tf.uint8))
    t_on = _open(prot, masked, "xor_bit")
    out = []
    for i, (server, share) in enumerate(((s0, s.c0), (s1, s.c1))):
        with tf.device(server.device):
            t = tf.cast(t_on[i], tf.int64)
            value = share * (1 - 2 * t)
            out.append(value + t if i == 0 else value)
    return PrivateTensor(prot, *out)


def out_of_range_count(prot, z: PrivateTensor) -> tuple[tf.Tensor, tf.Tensor]:
    """How many elements of ``z`` lie outside ``±2**int_bits``, opened to both servers (checked mode).

    Two sign bits per element (of ``z + B`` and ``z - B``, ``B`` the encoded bound), summed, then the sum is
    opened: the servers learn the count of out-of-range elements and nothing else."""
    bound = np.int64(1) << np.int64(prot.fixedpoint.int_bits + prot.fixedpoint.frac_bits)
    with tf.device(prot.server0.device):
        shifted0 = tf.stack([z.share0 + bound, z.share0 - bound])
    with tf.device(prot.server1.device):
        shifted1 = tf.stack([z.share1, z.share1])
    signs = msb(prot, PrivateTensor(prot, shifted0, shifted1))
    # below: sign(z + B) = 1; above or at: sign(z - B) = 0.
    counts = []
    for i, server in enumerate((prot.server0, prot.server1)):
        with tf.device(server.device):
            share = signs.shares[i]
            below, not_above = tf.reduce_sum(share[0]), tf.reduce_sum(share[1])
            size = tf.cast(tf.size(share[1]), tf.int64)
            counts.append(below - not_above + size if i == 0 else below - not_above)
    return _open(prot, counts, "open_range_count")
