"""The producer-assisted comparison (protocols/pond/assisted.py): exactness is tested with the dealt one in
test_comparison.py and test_bit_planes.py (``compare_prot``); here its native kernels against their
TensorFlow twins, what each player receives, the choice of ``comparison="auto"`` and bad settings."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import tfe_lite
from tfe_lite import prg
from tfe_lite.protocols import Pond, PrecomputedDealer
from tfe_lite.protocols.pond import assisted, comparison

from test_pond_security import _assert_uniform

P = assisted.P


def _words(shape, stream):
    return prg.expand_seed(tf.constant([5, 6, 7, 8], tf.int64), shape, stream=stream)


@pytest.mark.parametrize("bits", [1, 2, 29, 63])
def test_native_kernels_equal_their_tensorflow_twins(both_backends, bits):
    n = 700
    length = bits + 1
    r, m = _words([n], 1), _words([n], 2)
    q_raw, words = _words([n, bits], 3), _words([n, length + 1], 4)
    native, twin = both_backends(lambda: assisted.bit_shares(r, q_raw))
    np.testing.assert_array_equal(native, twin)
    assert native.dtype == np.uint8 and native.max() < P
    q1 = tf.constant(native.astype(np.int64))
    for party, q, raw in ((0, q_raw, True), (1, q1, False)):
        native, twin = both_backends(lambda: assisted.masked_tests(m, q, words, party=party, raw_q=raw))
        np.testing.assert_array_equal(native, twin)
        assert native.shape == (n, length) and native.max() < P
    d0 = tf.constant(np.random.default_rng(0).integers(0, P, (n, length)).astype(np.uint8))
    d1 = tf.constant(((P - d0.numpy().astype(np.int64)) % P).astype(np.uint8))  # every sum is 0 mod P
    d1 = tf.tensor_scatter_nd_update(d1, [[0, k] for k in range(length)], (d1[0] + 1) % P)  # row 0: no zero
    native, twin = both_backends(lambda: assisted.any_zero(d0, d1))
    np.testing.assert_array_equal(native, twin)
    np.testing.assert_array_equal(native, np.r_[0, np.ones(n - 1, np.int64)])


def test_below_is_the_high_part_of_the_product():
    words = np.array([0, 1, -1, 2**63 - 1, -2**63, 12345678901234567, -98765432123456789], np.int64)
    for bound in (2, 30, P, P * (P - 1)):
        expected = [(int(w) % 2**64) * bound >> 64 for w in words]
        np.testing.assert_array_equal(assisted.below(tf.constant(words), bound).numpy(), expected)


def _spy_all(prot, monkeypatch):
    """Every message as its receiver gets it: ``{receiver: [(kind, numpy value), ...]}`` (eager runs)."""
    views = {}
    send = prot.channel.send

    def spy(tensor, src, dst, what):
        out = send(tensor, src, dst, what)
        views.setdefault(dst.name, []).append((what, out.numpy()))
        return out

    monkeypatch.setattr(prot.channel, "send", spy)
    return views


def _chi2_uniform(values, low, high):
    counts = np.bincount(np.asarray(values).ravel() - low, minlength=high - low)
    assert counts.size == high - low, (counts.size, low, high)
    return stats.chisquare(counts).pvalue


@pytest.mark.parametrize("value, bounded", [(0.0, True), (-1.0, True), (2000.0, True), (0.0, False), (-7.5, False)])
def test_what_the_producer_receives_is_independent_of_the_input(config, monkeypatch, value, bounded):
    """The producer's view of a comparison of a constant input: d0 uniform mod P; d = d0 + d1 has a zero in
    a uniform half of the rows (beta' is a fair coin whatever x), never two, at a uniform position, and its
    other values are uniform over 1 .. P - 1. None of these depend on the input."""
    prot = Pond(config, comparison="assisted")  # keys from the OS, as in production
    views = _spy_all(prot, monkeypatch)
    n = 6000
    x = prot.share(np.full(n, value), "alice")
    k = prot.fixedpoint.int_bits + prot.fixedpoint.frac_bits + 1 if bounded else None
    bit = comparison.msb(prot, x, magnitude_bits=k)
    assert ((bit.share0 + bit.share1).numpy() == int(value < 0)).all()
    received = views["crypto-producer"]
    assert [what for what, _ in received] == ["assisted_test", "assisted_test"]
    (_, d0), (_, d1) = received
    length = (k or 63) + 1
    assert d0.shape == d1.shape == (n, length) and d0.dtype == np.uint8
    assert _chi2_uniform(d0, 0, P) > 1e-4 and _chi2_uniform(d1, 0, P) > 1e-4
    d = (d0.astype(np.int64) + d1) % P
    zeros = (d == 0).sum(axis=1)
    assert zeros.max() <= 1
    hits = zeros.sum()
    assert abs(hits - n / 2) < 6 * np.sqrt(n / 4), hits
    assert _chi2_uniform(np.argmax(d[zeros == 1] == 0, axis=1), 0, length) > 1e-4
    assert _chi2_uniform(d[d != 0], 1, P) > 1e-4


@pytest.mark.parametrize("factor", ["other", "x itself"])
def test_what_the_servers_receive_is_uniform(config, monkeypatch, factor):
    """The openings (masked by r and u; u = -r for a product with x itself, whose opening is m alone),
    server1's shares of r's bits mod P and its answer shares."""
    prot = Pond(config, comparison="assisted")
    views = _spy_all(prot, monkeypatch)
    n = 20000
    x, f = prot.share(np.full(n, -0.5), "alice"), prot.share(np.full(n, 3.0), "alice")
    if factor == "x itself":
        f = x
    k = prot.fixedpoint.int_bits + prot.fixedpoint.frac_bits + 1
    views.clear()
    comparison.msb(prot, x, magnitude_bits=k, times=f)
    opened = n if f is x else 2 * n
    kinds = {server: [what for what, _ in views[server]] for server in ("server0", "server1")}
    assert kinds == {"server0": ["assisted_seed", "assisted_mask"],
                     "server1": ["assisted_bits", "assisted_mask", "assisted_answer"]}
    for server in ("server0", "server1"):
        for what, value in views[server]:
            if what == "assisted_mask":  # m (and e) (server1's also ends with server0's seed)
                assert value.size == opened + (4 if server == "server1" else 0)
                _assert_uniform(value[:opened])
            elif what == "assisted_answer":  # y1 and z1
                _assert_uniform(value)
            elif what == "assisted_bits":  # server1's seed, then its shares of r's bits mod P, 8 per word
                q1 = value[4:].view(np.uint8)[:n * k]
                assert q1.max() < P and _chi2_uniform(q1, 0, P) > 1e-4


def test_masks_are_fresh_on_every_execution(config, monkeypatch):
    prot = Pond(config, comparison="assisted", seed=9)
    views = _spy_all(prot, monkeypatch)
    x = prot.share(np.linspace(-2, 2, 500), "alice")
    for _ in range(2):
        comparison.msb(prot, x, magnitude_bits=29)
    tests = [value for what, value in views["crypto-producer"]]
    masks = [value for what, value in views["server1"] if what == "assisted_mask"]
    assert len(tests) == 4 and len(masks) == 2
    assert (tests[0] != tests[2]).mean() > 0.9 and (masks[0] != masks[1]).all()


def test_auto_takes_the_assisted_protocol_for_small_comparisons_between_processes(config):
    """``comparison="auto"``: assisted only where a round is a network message (a multi-host config, with the
    online producer) and only up to the size limit; dealt in local mode (tests/runtime checks a real cluster)."""
    from types import SimpleNamespace

    limit = comparison.ASSISTED_MAX_ELEMENTS
    remote = SimpleNamespace(comparison="auto", producer_online=True, config=SimpleNamespace(remote=True))
    assert comparison.protocol_for(remote, 1) == comparison.protocol_for(remote, limit) == "assisted"
    assert comparison.protocol_for(remote, limit + 1) == "dealt"
    assert comparison.protocol_for(SimpleNamespace(**{**vars(remote), "producer_online": False}), 10) == "dealt"
    local = Pond(config, seed=1)
    assert local.comparison == "auto" and local.producer_online
    assert comparison.protocol_for(local, 10) == "dealt"
    assert not Pond(config, seed=1, dealer=PrecomputedDealer()).producer_online
    assert comparison.protocol_for(Pond(config, seed=1, comparison="dealt"), 10) == "dealt"
    assert comparison.protocol_for(Pond(config, seed=1, comparison="assisted"), limit + 1) == "assisted"
    # A traced relu with each pinned protocol: exact; only the assisted one sends the producer anything.
    values = np.linspace(-3, 3, 1000)
    for name in ("dealt", "assisted"):
        prot = Pond(config, seed=2, comparison=name)
        with prot.count_communication() as log:
            out = prot.relu(prot.share(values, "alice")).reveal(to="alice").numpy()
        np.testing.assert_allclose(out, np.maximum(values, 0), atol=2.0 ** -16)
        assert (("server0", "crypto-producer") in log.by_link()) == (name == "assisted")


def test_bad_comparison_settings_are_refused(config):
    with pytest.raises(tfe_lite.ConfigError, match=r"comparison='fast'"):
        Pond(config, comparison="fast")
    with pytest.raises(tfe_lite.ConfigError, match=r"comparison='assisted' needs the crypto producer online.*PrecomputedDealer"):
        Pond(config, comparison="assisted", dealer="precomputed")


def test_stated_bytes_per_link(config):
    prot = Pond(config, seed=3, comparison="assisted")
    n, k = 1000, 29
    x, f = prot.share(np.ones(n), "alice"), prot.share(np.ones(n), "alice")
    for times in (None, f, x):  # x: the product with x itself opens nothing beside the mask
        with prot.count_communication() as log:
            comparison.msb(prot, x, magnitude_bits=k, times=times)
        stated = assisted.server_bytes(n, k, product=times is not None, self_product=times is x)
        links = log.by_link()
        assert links[("server0", "server1")] == stated["server0->server1"]
        assert links[("server1", "server0")] == stated["server0->server1"] - 32
        assert links[("server0", "crypto-producer")] == links[("server1", "crypto-producer")] == stated["server->producer"]
        assert links[("crypto-producer", "server1")] == stated["producer->server1"]
        assert links[("crypto-producer", "server0")] == stated["producer->server0"]
