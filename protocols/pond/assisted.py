"""The sign bit with the crypto producer taking part online: 3 rounds instead of 7.

:func:`msb` computes what :func:`.comparison.msb` computes (additive shares of ``[x < 0]``, exactly, and
optionally its product with a private tensor), for when rounds cost more than computation: between
processes and hosts a round costs a network message on the critical path, and this protocol has three
(one between the servers, one from each server to the producer, one from the producer to server1), where
the dealt protocol of :mod:`.comparison` has seven. It is the private comparison of SecureNN (Wagh, Gupta
and Chandran, 2019) with Pond's roles: the producer, which knows the servers' mask, learns a bit hidden by a
coin the servers share, and hands it back as fresh shares.

Notation: ``n`` elements, ``K`` bit positions (``K = int_bits + frac_bits + 1`` for values and their
differences, 63 for any ring element), ``L = K + 1`` tested positions, ``P = 67`` (a prime above every value
a test position takes, ``K + 2 <= 65``). Values mod ``P`` travel as bytes.

0. Dealing (the producer, in one message to each server, before the data is there). Fresh seeds ``s0``,
   ``s1``; ``r = r0 + r1`` with ``r_i`` expanded from ``s_i``; the ``K`` low bits of ``r`` shared mod ``P``:
   ``q0`` expanded from ``s0``, ``q1 = bits(r) - q0`` sent to server1 (``K`` bytes per element); with a
   product, a mask ``u = u0 + u1`` from the seeds. Server0 gets ``s0`` (32 bytes), server1 ``s1`` and ``q1``.
1. Mask (servers, one round). Each sends ``x_i + r_i`` (server0 also ``+ 2**K`` in the bounded case) and,
   with a product, ``f_i - u_i``; server0 adds a fresh seed ``sigma`` of its own (32 bytes), which the
   producer never sees. Both learn ``m = x (+ 2**K) + r`` (uniform) and ``e = f - u`` (uniform), and draw
   from ``sigma``: a coin ``beta`` per element, multipliers ``s`` uniform in ``1 .. P - 1`` and masks ``t``
   uniform mod ``P`` per position, and a rotation ``o`` uniform in ``0 .. L - 1`` per element (see
   :func:`masked_tests` for how they come from ``sigma``'s keystream).
2. Test (servers -> producer, one round, ``L`` bytes per element from each). With ``m_k``, ``r_k`` the bits
   below ``K`` (server ``i`` holds ``r_k`` as its share ``q_i`` mod ``P``) and ``w_k = m_k xor r_k``
   (``m_k + (1 - 2 m_k) r_k``, linear in the shares), per position ``k < K``:
   ``c_k = 1 + (1 - 2 beta) (m_k - r_k) + sum_{j > k} w_j`` and ``c_K = (1 - beta) + beta sum_j w_j``. For
   ``beta = 0`` some ``c_k`` is zero iff ``r' > m'`` (``'`` the ``K`` low bits: at the highest position
   where they differ, ``r`` has the 1); for ``beta = 1`` iff ``m' > r'`` or (``c_K``) ``m' = r'``. No other
   ``c_k`` is zero, and every ``c_k`` lies in ``0 .. K + 1``, so mod ``P`` too. Server ``i`` sends
   ``d_i = rotate_o(s c^(i) +- t)`` mod ``P`` (``+ t`` from server0, ``- t`` from server1).
3. Answer (producer -> server1, one round). ``d = d0 + d1 = rotate_o(s c)``; the producer sets
   ``beta' = [some d_k = 0] = beta xor [r' > m']`` and deals fresh additive shares of ``y = beta' xor r_K``
   (``y0`` from ``s0``, ``y1 = y - y0`` sent), with a product also of ``y u`` (``z0`` from ``s0``,
   ``z1 = y u - z0``). Bit ``K`` of ``m - r`` is ``m_K xor r_K xor [m' < r']``, so the sign bit is
   ``b = c xor y`` with the public ``c = m_K xor beta`` (``xor 1`` in the bounded case, where the sign is
   ``1 xor`` bit ``K``): each server sets ``b_i = [i = 0] c + (1 - 2c) y_i`` and, with a product,
   ``(b f)_i = c f_i + (1 - 2c) (e y_i + z_i)`` (``b f = c f + (1 - 2c) y f`` and ``y f = e y + y u``).

With ``times`` the very ``x`` compared (relu, the tournaments) the mask serves the product too: ``u = -r``,
so ``e = m - 2**K`` (``m`` in the full ring) needs no opening of its own, and the producer's ``z1 = y u - z0``
is ``-y r - z0``.

Cost: 3 rounds on the critical path (the dealing in step 0 depends on no data and overlaps earlier work).
Between the servers ``8 n`` bytes each way (``16 n`` with a product by another factor), plus server0's 32-byte seed; each
server sends the producer ``L n`` bytes; the producer sends server1 ``K n`` bytes (rounded up to 8) of bits
and ``8 n`` (``16 n``) of answer shares, and each server a 32-byte seed. For ``K = 29``: 8 bytes per element
between the servers, 30 to the producer from each, 37 (45) from the producer. Computation is heavier
than the dealt protocol's (``L`` positions per element mod ``P`` instead of bit planes; keystream words
per element: ``L + 1`` on each server for ``sigma``'s draws, ``K`` more on server0 and the producer for
``q0``), so it pays where a round costs more than that work: :func:`.comparison.protocol_for` says when
``comparison="auto"`` takes it. The mod-``P`` steps run in native kernels (``tfe_lite/ops/compare_ops.cc``)
when built, else in TensorFlow ops that give the same values.

Semi-honest security, one corrupted player of three:

* A server receives ``m`` and ``e`` (uniform: masked by ``r`` and ``u``, which it does not know), ``q1`` and
  ``y1``, ``z1`` (server1: uniform, masked by the parts ``q0``, ``y0``, ``z0`` of server0's seed) and server0's
  seed ``sigma`` (server1: its own randomness, independent of every value).
* The producer receives ``d0`` and ``d1``. ``d0`` is uniform (masked by ``t``), so its view is ``d``: if
  ``beta' = 1`` exactly one zero at a uniform position (the rotation ``o``) and the other ``L - 1`` values
  uniform in ``1 .. P - 1`` (``s`` times a nonzero ``c_k``, ``P`` prime), else ``L`` such values. What
  ``d`` depends on is ``beta'``, a uniform bit whatever ``x`` and ``r`` (``beta`` is), so the view is
  independent of ``x``.

Values mod ``P`` come from 64-bit keystream words as ``floor(w * b / 2**64)`` (:func:`below`, ``b = P`` for
``q0``, ``b = P (P - 1)`` for a multiplier and a mask together, ``b = 2 L`` for the coin and the rotation):
each draw is within ``b / 2**64 < 2.4e-16`` of uniform in statistical distance.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfe_lite import ops, prg

from .tensors import PrivateTensor

#: The modulus of the tested positions: a prime above ``K + 2`` for every ``K <= 63``.
P = 67
_LOW32 = np.int64(0xFFFFFFFF)
# Expansion streams of the producer's seeds (s0: r0, q0, u0, y0, z0; s1: r1, u1) and of server0's sigma.
_R, _Q, _U, _Y, _Z = 0, 1, 2, 3, 4
_SIGMA = 0  # sigma's one stream: per element a coin-and-rotation word, then L multiplier-and-mask words


def below(words: tf.Tensor, bound: int) -> tf.Tensor:
    """``floor(w * bound / 2**64)`` for int64 ``words`` read as unsigned (``bound < 2**31``): in
    ``0 .. bound - 1``, within ``bound / 2**64`` of uniform for uniform words; no division."""
    hi = tf.bitwise.bitwise_and(tf.bitwise.right_shift(words, np.int64(32)), _LOW32)
    lo = tf.bitwise.bitwise_and(words, _LOW32)
    b = np.int64(bound)
    return tf.bitwise.right_shift(hi * b + tf.bitwise.right_shift(lo * b, np.int64(32)), np.int64(32))


def _bits(v: tf.Tensor, count: int) -> tf.Tensor:
    """``[n, count]``: the ``count`` low bits of each element of ``v`` (``[n]``), 0 or 1."""
    return tf.bitwise.bitwise_and(tf.bitwise.right_shift(v[:, None], tf.range(count, dtype=tf.int64)), np.int64(1))


def _bit(v: tf.Tensor, k: int) -> tf.Tensor:
    return tf.bitwise.bitwise_and(tf.bitwise.right_shift(v, np.int64(k)), np.int64(1))


def _coin(words: tf.Tensor, length: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The coin ``beta`` and the rotation of each element, from its first word of ``sigma``'s keystream:
    ``v = below(w, 2 L)`` gives ``v & 1`` and ``v >> 1``, jointly uniform."""
    coin = below(words[:, 0], 2 * length)
    return tf.bitwise.bitwise_and(coin, np.int64(1)), tf.bitwise.right_shift(coin, np.int64(1))


def _pack_bytes(v: tf.Tensor) -> tf.Tensor:
    """uint8 values (any shape) as int64 words, 8 bytes per word (the tail padded with zeros)."""
    flat = tf.reshape(v, [-1])
    pad = -int(flat.shape[0]) % 8
    flat = tf.concat([flat, tf.zeros([pad], tf.uint8)], axis=0)
    return tf.reshape(tf.bitcast(tf.reshape(flat, [-1, 8]), tf.int64), [-1])


def _unpack_bytes(words: tf.Tensor, shape: tuple) -> tf.Tensor:
    """The uint8 values of ``shape`` that :func:`_pack_bytes` packed into ``words``."""
    size = int(np.prod(shape, dtype=np.int64))
    return tf.reshape(tf.reshape(tf.bitcast(words, tf.uint8), [-1])[:size], shape)


def bit_shares(r: tf.Tensor, q0_words: tf.Tensor) -> tf.Tensor:
    """The producer's step 0: ``(bit k of r - below(q0_words[:, k], P)) mod P`` (uint8 ``[n, K]``), server1's
    shares of ``r``'s ``K`` low bits (native ``CompareBitShares`` when built, else the same in TensorFlow)."""
    lib = ops.library()
    if lib is not None:
        return lib.compare_bit_shares(r, q0_words)
    q1 = _bits(r, int(q0_words.shape[1])) - below(q0_words, P)
    return tf.cast(tf.where(q1 < 0, q1 + P, q1), tf.uint8)


def masked_tests(m: tf.Tensor, q: tf.Tensor, words: tf.Tensor, party: int, raw_q: bool) -> tf.Tensor:
    """A server's step 2: its ``L`` masked, multiplied, rotated test values mod ``P`` (uint8 ``[n, L]``) from
    the opened ``m`` (``[n]``), its shares ``q`` of ``r``'s low bits (``[n, K]``: keystream words to reduce
    when ``raw_q``, else values mod ``P``) and the common seed's words (``[n, L + 1]``: ``v = below(w, 2 L)``
    of word 0 gives the coin ``v & 1`` and the rotation ``v >> 1``; ``v = below(w, P (P - 1))`` of word
    ``1 + k`` gives value ``k``'s multiplier ``1 + v mod (P - 1)`` and mask ``v div (P - 1)``). Native ``CompareTests`` when built, else TensorFlow ops."""
    lib = ops.library()
    if lib is not None:
        return lib.compare_tests(m, q, words, party=party, raw_q=raw_q)
    bits = int(q.shape[1])
    length = bits + 1
    if raw_q:
        q = below(q, P)
    first = party == 0
    beta, rotation = _coin(words, length)
    m_bits = _bits(m, bits)
    mine = m_bits if first else tf.zeros_like(m_bits)  # a public value joins server0's share
    w = mine + (1 - 2 * m_bits) * q
    above = tf.math.cumsum(w, axis=1, exclusive=True, reverse=True)
    c = (1 - 2 * beta)[:, None] * (mine - q) + above + (1 if first else 0)
    extra = beta * tf.reduce_sum(w, axis=1) + ((1 - beta) if first else 0)
    c = tf.concat([c, extra[:, None]], axis=1)
    pair = below(words[:, 1:], P * (P - 1))  # each value's multiplier and mask, jointly uniform
    s, t = 1 + tf.math.floormod(pair, np.int64(P - 1)), tf.math.floordiv(pair, np.int64(P - 1))
    d = tf.math.floormod(s * c + (t if first else -t), np.int64(P))
    # Rotation by o: entry k holds value (k + o) mod L.
    index = tf.range(length, dtype=tf.int64)[None, :] + rotation[:, None]
    index = tf.where(index >= length, index - length, index)
    return tf.cast(tf.gather(d, index, batch_dims=1), tf.uint8)


def any_zero(d0: tf.Tensor, d1: tf.Tensor) -> tf.Tensor:
    """The producer's step 3: per row, 1 if some ``d0 + d1`` is 0 mod ``P``, else 0 (int64 ``[n]``)."""
    lib = ops.library()
    if lib is not None:
        return lib.compare_any_zero(d0, d1)
    d = tf.cast(d0, tf.int32) + tf.cast(d1, tf.int32)
    return tf.cast(tf.reduce_any(tf.logical_or(tf.equal(d, 0), tf.equal(d, P)), axis=1), tf.int64)


def server_bytes(n: int, magnitude_bits: int | None = None, product: bool = False,
                 self_product: bool = False) -> dict[str, int]:
    """Bytes of :func:`msb` on ``n`` elements per link: ``"server0->server1"`` (``server1->server0`` is 32
    less), ``"server->producer"`` (each server), ``"producer->server1"`` and ``"producer->server0"``; a
    product with ``x`` itself (``self_product``) opens nothing beside the mask."""
    from .comparison import bounded_bits

    bits, _ = bounded_bits(magnitude_bits)
    parts = 2 if product else 1
    return {
        "server0->server1": 8 * (2 if product and not self_product else 1) * n + 32,
        "server->producer": (bits + 1) * n,
        "producer->server1": 32 + 8 * (-(-bits * n // 8)) + 8 * parts * n,
        "producer->server0": 32,
    }


def msb(prot, x: PrivateTensor, bits: int, bounded: bool, times: PrivateTensor | None = None):
    """Shares of ``[x < 0]`` (and of ``[x < 0] * times``) by the steps of the module docstring; ``bits`` and
    ``bounded`` as :func:`.comparison.bounded_bits` gives them."""
    shape = tuple(x.shape)
    n = int(np.prod(shape, dtype=np.int64))
    s0, s1, producer = prot.server0, prot.server1, prot.producer
    send = prot.channel.send_many
    length = bits + 1
    product = times is not None
    self_product = times is x  # relu, tournaments: the mask u = -r, so e = times - u is m - offset

    # 0. Dealing: seeds to both servers, server1's shares of r's low bits mod P.
    with tf.device(producer.device):
        stream = prot.streams.stream(producer)
        seed0, seed1 = stream.next_seed(), stream.next_seed()
        r = prg.expand_seed(seed0, [n], stream=_R) + prg.expand_seed(seed1, [n], stream=_R)
        q1 = bit_shares(r, prg.expand_seed(seed0, [n, bits], stream=_Q))
        r_top = _bit(r, bits)
        if self_product:
            u = -r
        elif product:
            u = prg.expand_seed(seed0, [n], stream=_U) + prg.expand_seed(seed1, [n], stream=_U)
        dealt1 = [seed1, _pack_bytes(q1)]
    (seed0_at0,) = send([seed0], producer, s0, "assisted_seed")
    seed1_at1, q1_words = send(dealt1, producer, s1, "assisted_bits")

    # 1. Mask: m = x (+ 2^K) + r and e = times - u, opened; server0's sigma goes with its part.
    with tf.device(s0.device):
        sigma = prot.streams.stream(s0).next_seed()
        offset = np.int64(1) << np.int64(bits) if bounded else np.int64(0)
        parts0 = [tf.reshape(x.share0, [n]) + prg.expand_seed(seed0_at0, [n], stream=_R) + offset]
        if product and not self_product:
            parts0.append(tf.reshape(times.share0, [n]) - prg.expand_seed(seed0_at0, [n], stream=_U))
    with tf.device(s1.device):
        parts1 = [tf.reshape(x.share1, [n]) + prg.expand_seed(seed1_at1, [n], stream=_R)]
        if product and not self_product:
            parts1.append(tf.reshape(times.share1, [n]) - prg.expand_seed(seed1_at1, [n], stream=_U))
    at1 = send(parts0 + [sigma], s0, s1, "assisted_mask")
    at0 = send(parts1, s1, s0, "assisted_mask")
    opened, sigmas = [], (sigma, at1[-1])
    with tf.device(s0.device):
        opened.append([a + b for a, b in zip(parts0, at0)])
    with tf.device(s1.device):
        opened.append([a + b for a, b in zip(at1[:-1], parts1)])
    if self_product:  # e = times - u = x + r = m - offset
        for i, server in enumerate((s0, s1)):
            with tf.device(server.device):
                opened[i].append(opened[i][0] - offset)

    # 2. Test: each server's masked, rotated shares of the L tested values, to the producer.
    tests, publics = [], []
    for i, server in enumerate((s0, s1)):
        with tf.device(server.device):
            m = opened[i][0]
            words = prg.expand_seed(sigmas[i], [n, length + 1], stream=_SIGMA)
            if i == 0:
                q = prg.expand_seed(seed0_at0, [n, bits], stream=_Q)
            else:
                q = tf.cast(_unpack_bytes(q1_words, (n, bits)), tf.int64)
            tests.append(masked_tests(m, q, words, party=i, raw_q=i == 0))
            beta, _ = _coin(words, length)
            top = tf.bitwise.bitwise_xor(_bit(m, bits), beta)
            publics.append(1 - top if bounded else top)
    (d0,) = send([tests[0]], s0, producer, "assisted_test")
    (d1,) = send([tests[1]], s1, producer, "assisted_test")

    # 3. Answer: fresh shares of y = beta' xor r_K (and of y * u) to server1; server0 expands its parts.
    with tf.device(producer.device):
        y = tf.bitwise.bitwise_xor(any_zero(d0, d1), r_top)
        answer = [y - prg.expand_seed(seed0, [n], stream=_Y)]
        if product:
            answer.append(y * u - prg.expand_seed(seed0, [n], stream=_Z))
    answer = send(answer, producer, s1, "assisted_answer")
    bits_out, products = [], []
    for i, server in enumerate((s0, s1)):
        with tf.device(server.device):
            c = publics[i]
            flip = 1 - 2 * c
            y_i = prg.expand_seed(seed0_at0, [n], stream=_Y) if i == 0 else answer[0]
            bit = flip * y_i + (c if i == 0 else 0)
            bits_out.append(tf.reshape(bit, shape))
            if product:
                z_i = prg.expand_seed(seed0_at0, [n], stream=_Z) if i == 0 else answer[1]
                f_i = tf.reshape(times.shares[i], [n])
                products.append(tf.reshape(c * f_i + flip * (opened[i][1] * y_i + z_i), shape))
    bit = PrivateTensor(prot, *bits_out)
    return bit if not product else (bit, PrivateTensor(prot, *products))
