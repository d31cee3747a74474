"""Exact comparisons on Pond: the sign bit of a shared value, with the crypto producer's help.

``msb(x)`` computes a sharing of the most significant bit of ``x`` (an additively shared element of
Z/2^64), that is ``[x < 0]`` for the signed reading, exactly: no failure probability for any input.

The binary part runs on *bit planes* (:func:`tfe_lite.ring.bit_slice`): plane ``j`` holds bit ``j`` of 64
elements per int64 word, so one word operation serves 64 elements and a circuit over bit positions is a
circuit over rows of planes. ``n`` elements make ``W = ceil(n / 64)`` words per plane. The borrow runs on
``K`` bit positions: ``K = 63`` for any ring element, or ``K`` = ``magnitude_bits`` when the caller
guarantees ``|x| < 2**K`` (see :func:`msb`; ``K = int_bits + frac_bits + 1 = 29`` for comparisons of
encodable values and their differences with the default preset).

Steps (the producer's correlated randomness comes through the dealer, online or precomputed):

1. Mask (1 round, 16n bytes). The producer deals an *edaBit*: additive shares of a uniform ``r`` and XOR
   shares of its ``K + 1`` low bit planes. Each server sends ``x_i + r_i`` (server0 also adds ``2**K`` in
   the bounded case): both learn ``m = x (+ 2**K) + r``, uniform whatever ``x``, and slice its planes.
2. Borrow. ``x (+ 2**K) = m - r``, so its bit ``K`` is ``m_K xor r_K xor [m' < r']`` with ``m'``, ``r'``
   the ``K`` low bits (full ring: ``K = 63`` and bit 63 is the sign; bounded: the sign is ``1 xor`` bit
   ``K``). Per position ``g = r & ~m`` ("r is larger here") and ``p = ~(r xor m)`` ("equal here") are XOR
   shares computed locally, since ``m`` is public.
3. Carry tree (``ceil(log2 K)`` rounds). Adjacent groups of positions ``(lo, hi)`` combine to
   ``(g_hi xor (p_hi & g_lo), p_hi & p_lo)``; an odd top group passes on unopposed, and the group holding
   position 0 never needs its ``p``, so the last level ANDs ``g`` only. What remains is ``[r' > m']``.
   Each AND of XOR-shared words uses a binary Beaver triple: open ``e = x xor a``, ``d = y xor b``
   (uniform); ``z = c xor (e & b) xor (d & a) xor (e & d)``. Both ANDs of a pair share ``x = p_hi``, opened
   once: a level of ``h > 1`` pairs opens ``3h`` plane rows, the last one 2. ``K = 29``: 14, 7, 4, 2, 1
   pairs, 83 rows; ``K = 63``: 31, 16, 8, 4, 2, 1 pairs, 185 rows.
4. To arithmetic (1 round, one plane). The answer plane ``b`` (XOR-shared) is opened masked by a *daBit*
   plane ``s`` (XOR shares of a uniform plane and additive shares of each of its bits): ``t = b xor s`` is
   uniform; then ``b = t + s - 2 t s`` per element, locally.

A product with the bit (``msb(x, times=f)``: relu, the tournaments of max pooling) is fused in: the daBit
comes with a uniform additive mask ``u`` and additive shares of ``s * u`` (kind ``dabit_mul``), ``e = f - u``
is opened in the first round beside the mask (16 bytes per element, uniform), and
``b f = t f + (1 - 2t) (e s + s u)`` is local: no extra round, and half a Beaver product's traffic. When the
factor is ``x`` itself (``times is x``: relu, the tournaments, whose factor is the compared difference) the
mask serves both: the producer deals one ``edabit_dabit`` (the edaBit ``r`` and a daBit with ``s * r``), the
servers take ``u = -r``, so ``e = x + r = m - 2**K`` (``m`` in the full ring) is known from the mask's
opening and ``s u = -s r``: the product costs no byte between the servers.

Cost between the servers: ``16 n + 16 W (rows + 1)`` bytes (:func:`server_bytes`; ``16 n`` more with a
product by another factor), ``2 + ceil(log2 K)``
rounds of one message each way (what a round opens is packed: :meth:`~.comm.Channel.send_many`); the
dealer's part is dealt at once, one message to each server. Per element (``n`` a multiple of 64): ``16 + 16 * 84 / 64 = 37`` bytes in 7 rounds for
``K = 29``; ``16 + 16 * 186 / 64 = 62.5`` bytes in 8 rounds for the full ring (checked mode). The producer
sends each server one 32-byte seed for all of it, and the parts the seeds cannot give (half of each
tensor's elements to each server, see :mod:`.dealer`): ``8 (K + 1) W`` bytes (edaBit planes), ``8 W`` per AND
output row (``2h`` rows at a level of ``h > 1`` pairs, 1 at the last) and ``8 n`` (the daBit's additive
bits; ``16 n`` with a product): 18.6 bytes per element for ``K = 29`` (26.6 with a product, by ``x`` itself
or another factor), about half on each link.

Semi-honest security, one corrupted player of three: a server sees only its shares, ``m`` (uniform, since
``r`` is uniform and unknown to it), the opened ``e, d`` of each AND (uniform, masked by fresh triple words
it does not know), ``t`` (uniform, masked by the daBit plane) and, with a product by another factor,
``e = f - u`` (uniform, masked by ``u``; a product by ``x`` opens nothing more than ``m``); the lanes past the last element in a
plane's last word are masked alike. The producer receives nothing.

:mod:`.assisted` computes the same in 3 rounds with the producer online (``Pond(comparison=...)``,
:func:`protocol_for`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfe_lite import ring

from tfe_lite.errors import ProtocolError, ShapeError

from . import assisted
from .beaver import open_masked, open_together
from .dealer import Triple, TripleSpec
from .tensors import PrivateTensor


def _and(prot, x: tuple, y: tuple, t) -> tuple:
    """XOR shares of ``x & y`` for XOR-shared int64 words (one round, with the binary triple ``t`` dealt for
    it by :func:`carry_tree_specs`); ``x`` may have fewer dimensions than ``y`` (it broadcasts, and is
    opened once for all of ``y``'s rows). ``e`` and ``d`` travel in one message each way."""
    spec = and_spec(tuple(x[0].shape), tuple(y[0].shape))
    if tuple(t.a0.shape) != spec.shape_a or tuple(t.b0.shape) != spec.shape_b:
        raise ProtocolError(f"an AND triple of shapes {t.a0.shape}, {t.b0.shape} was dealt for {spec}")
    s0, s1 = prot.server0, prot.server1
    band, bxor = tf.bitwise.bitwise_and, tf.bitwise.bitwise_xor
    with tf.device(s0.device):
        e0, d0 = bxor(x[0], t.a0), bxor(y[0], t.b0)
    with tf.device(s1.device):
        e1, d1 = bxor(x[1], t.a1), bxor(y[1], t.b1)
    (e, d), (e_1, d_1) = open_together(prot, [e0, d0], [e1, d1], "xor_and", bxor)
    with tf.device(s0.device):
        z0 = bxor(bxor(t.c0, band(e, bxor(t.b0, d))), band(d, t.a0))  # c0 ^ e&b0 ^ d&a0 ^ e&d
    with tf.device(s1.device):
        z1 = bxor(t.c1, bxor(band(e_1, t.b1), band(d_1, t.a1)))
    return z0, z1


def and_spec(shape_x: tuple, shape_y: tuple) -> TripleSpec:
    return TripleSpec("and", tuple(shape_x), tuple(shape_y))


def carry_tree_specs(bits: int, words: int) -> list[TripleSpec]:
    """The AND triples of the carry tree over ``bits`` positions of ``words``-word planes, level by level:
    ``p_hi`` of ``h`` pairs against ``g_lo`` and ``p_lo`` stacked (``g_lo`` alone at the last level)."""
    return [and_spec((h, words), (2, h, words) if h > 1 else (1, words)) for h in and_levels(bits)]


def and_levels(bits: int) -> list[int]:
    """Pairs combined at each AND level of the carry tree over ``bits`` bit positions."""
    levels, rows = [], bits
    while rows > 1:
        levels.append(rows // 2)
        rows = rows // 2 + rows % 2
    return levels


def opened_plane_words(bits: int) -> int:
    """Words per 64 elements that each server sends in the AND levels and the daBit opening."""
    return sum(3 * h if h > 1 else 2 for h in and_levels(bits)) + 1


def bounded_bits(magnitude_bits: int | None) -> tuple[int, bool]:
    """(bit positions of the borrow comparison, whether the bounded version serves) for ``magnitude_bits``."""
    if magnitude_bits is not None and magnitude_bits <= 62:
        return int(magnitude_bits), True
    return 63, False


def server_bytes(n: int, magnitude_bits: int | None = None, product: bool = False, self_product: bool = False) -> int:
    """Bytes each server sends to the other for :func:`msb` of ``n`` elements (the same both ways), with a
    fused product (``times``) or without; a product with ``x`` itself (``self_product``: relu, the
    tournaments) opens nothing more than the mask."""
    bits, _ = bounded_bits(magnitude_bits)
    extra = product and not self_product
    return 8 * n * (2 if extra else 1) + 8 * ring.plane_words(n) * opened_plane_words(bits)


#: ``comparison="auto"`` on a multi-host config: the largest comparison (in elements) that takes the assisted
#: protocol. Up to it the four rounds saved (each a network message on the critical path: 0.14 ms on loopback,
#: about the RTT across hosts) outweigh the assisted protocol's extra work, about 0.1 us per element; above it
#: the dealt protocol's bit planes win.
ASSISTED_MAX_ELEMENTS = 16384


def protocol_for(prot, n: int) -> str:
    """``"assisted"`` or ``"dealt"``: the protocol a comparison of ``n`` elements runs with on ``prot``.

    ``comparison="auto"``: assisted on a multi-host config (``config.remote``, where a round is a network
    message) with the online dealer, for up to :data:`ASSISTED_MAX_ELEMENTS` elements; otherwise dealt (in
    local mode a round costs microseconds, and the dealt protocol computes less)."""
    if prot.comparison != "auto":
        return prot.comparison
    remote = getattr(prot.config, "remote", False)
    return "assisted" if remote and prot.producer_online and n <= ASSISTED_MAX_ELEMENTS else "dealt"


def msb(prot, x: PrivateTensor, magnitude_bits: int | None = None, times: PrivateTensor | None = None):
    """Additive shares of the raw bit ``[x < 0]`` (0 or 1, not fixed-point encoded), exactly.

    With ``magnitude_bits = K`` (``K <= 62``) the caller guarantees ``|x| < 2**K`` (true for in-range values
    and their differences): then ``x + 2**K`` is non-negative below ``2**(K+1)``, its bit ``K`` is the
    answer, and the borrow comparison runs on ``K`` bit positions (``ceil(log2 K)`` AND rounds). Without it
    every ring element is handled (63 positions; checked mode).

    With ``times`` (a private tensor of ``x``'s shape) returns ``(bit, bit * times)``, the product exact and
    in no extra round (see :func:`_to_arithmetic`)."""
    shape = tuple(x.shape)
    s0, s1 = prot.server0, prot.server1
    band, bxor, bnot = tf.bitwise.bitwise_and, tf.bitwise.bitwise_xor, tf.bitwise.invert
    bits, bounded = bounded_bits(magnitude_bits)
    if times is not None and tuple(times.shape) != shape:
        raise ShapeError(f"msb: `times` must have the shape of `x` {list(shape)}. Received: times.shape={list(times.shape)}")
    n = int(np.prod(shape, dtype=np.int64))
    if n and protocol_for(prot, n) == "assisted":  # the producer takes part online: 3 rounds (see .assisted)
        return assisted.msb(prot, x, bits, bounded, times)
    # All of the comparison's correlated randomness at once (an online dealer sends it in one message to
    # each server): the edaBit, the daBit (with a product: its mask and s * u) and the AND triples.
    offset = np.int64(1) << np.int64(bits) if bounded else np.int64(0)
    tree = carry_tree_specs(bits, ring.plane_words(n))
    self_product = times is x  # relu, tournaments: u = -r, so e = times - u = m - offset is opened already
    if self_product:
        spec = TripleSpec("edabit_dabit", shape, shape, bits=bits + 1)
        both, *and_triples = prot.dealer.triples([spec, *tree])
        parts = []
        for server, c in ((s0, both.c0), (s1, both.c1)):
            with tf.device(server.device):
                parts.append(spec.c_parts(c))
        r = Triple(both.b0, None, parts[0][0], both.b1, None, parts[1][0])
        dabit = Triple(both.a0, None, parts[0][1], both.a1, None, parts[1][1])
    else:
        dabit_spec = TripleSpec("dabit", shape) if times is None else TripleSpec("dabit_mul", shape, shape)
        r, dabit, *and_triples = prot.dealer.triples([TripleSpec("edabit", shape, bits=bits + 1), dabit_spec, *tree])
    with tf.device(s0.device):
        parts0 = [x.share0 + r.a0 + offset]
    with tf.device(s1.device):
        parts1 = [x.share1 + r.a1]
    if times is not None and not self_product:  # e = times - u goes with the mask, in one message each way
        with tf.device(s0.device):
            parts0.append(times.share0 - dabit.b0)
        with tf.device(s1.device):
            parts1.append(times.share1 - dabit.b1)
    opened0, opened1 = open_together(prot, parts0, parts1, "open_mask")
    m_on = (opened0[0], opened1[0])
    e_on = None
    if self_product:
        e_on = []
        for server, m in ((s0, m_on[0]), (s1, m_on[1])):
            with tf.device(server.device):
                e_on.append(m - offset)
    elif times is not None:
        e_on = (opened0[1], opened1[1])
    g, p, top = [], [], []
    for i, (server, planes) in enumerate(((s0, r.c0), (s1, r.c1))):
        with tf.device(server.device):
            m = ring.bit_slice(m_on[i], bits + 1)  # public: both servers slice their copy
            not_m, r_low = bnot(m[:bits]), planes[:bits]
            g.append(band(r_low, not_m))  # r & ~m: "r is larger at this position"
            p.append(bxor(r_low, not_m) if i == 0 else r_low)  # ~(r ^ m): "equal at this position"
            answer = bxor(planes[bits], m[bits]) if i == 0 else planes[bits]  # m_K ^ r_K (^ borrow below)
            top.append(bnot(answer) if i == 0 and bounded else answer)  # bounded: msb = 1 ^ bit K
    rows = bits
    while rows > 1:
        h = rows // 2
        # Pair (2j, 2j + 1) -> (g_hi ^ (p_hi & g_lo), p_hi & p_lo); the lowest pair's p is never read, so
        # the last level (one pair) ANDs g only. p_hi is opened once for both rows.
        lhs, rhs, g_hi = [], [], []
        for i, server in enumerate((s0, s1)):
            with tf.device(server.device):
                (g_lo, g_high), (p_lo, p_hi) = ring.deinterleave(g[i], 0, h), ring.deinterleave(p[i], 0, h)
                lhs.append(p_hi)
                rhs.append(g_lo if h == 1 else tf.stack([g_lo, p_lo]))
                g_hi.append(g_high)
        products = _and(prot, tuple(lhs), tuple(rhs), and_triples.pop(0))
        for i, server in enumerate((s0, s1)):
            with tf.device(server.device):
                carried = bxor(g_hi[i], products[i] if h == 1 else products[i][0])
                pass_on = products[i][1] if h > 1 else lhs[i]  # (h == 1: the lowest pair's p, never read)
                g[i] = tf.concat([carried, g[i][2 * h:]], axis=0)
                p[i] = tf.concat([pass_on, p[i][2 * h:]], axis=0)
        rows = h + rows % 2
    bit = []
    for i, server in enumerate((s0, s1)):
        with tf.device(server.device):
            bit.append(bxor(g[i][0], top[i]))
    return _to_arithmetic(prot, bit, shape, dabit, times, e_on, negated_mask=self_product)


def _to_arithmetic(prot, plane, shape: tuple, s, times=None, e_on=None, negated_mask=False):
    """Additive shares (0/1 int64 of ``shape``) of the bits ``b`` of one XOR-shared bit plane, with the daBit
    plane ``s``: open ``t = b xor s``; ``b = t + s - 2 t s``. With ``times = f`` (and ``e = f - u`` opened
    for the daBit's mask ``u``) also ``b f = t f + (1 - 2t) s f`` with ``s f = e s + s u``, all local; with
    ``negated_mask`` the daBit holds ``s r`` for ``u = -r``, so ``s u = -s r``."""
    n = int(np.prod(shape, dtype=np.int64))
    s0, s1 = prot.server0, prot.server1
    masked = []
    for server, word, sbit in ((s0, plane[0], s.a0), (s1, plane[1], s.a1)):
        with tf.device(server.device):
            masked.append(tf.bitwise.bitwise_xor(word, sbit))
    t_on = open_masked(prot, *masked, "xor_bit", join=tf.bitwise.bitwise_xor)
    bits, products = [], []
    for i, (server, share) in enumerate(((s0, s.c0), (s1, s.c1))):
        with tf.device(server.device):
            t = tf.reshape(ring.bit_unslice(t_on[i], n), shape)
            flip = 1 - 2 * t
            s_bit = share if times is None else share[0]
            value = s_bit * flip
            bits.append(value + t if i == 0 else value)
            if times is not None:
                e_s = e_on[i] * share[0]
                s_f = e_s - share[1] if negated_mask else e_s + share[1]
                products.append(t * times.shares[i] + flip * s_f)
    bit = PrivateTensor(prot, *bits)
    return bit if times is None else (bit, PrivateTensor(prot, *products))


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
    return open_masked(prot, *counts, "open_range_count")
