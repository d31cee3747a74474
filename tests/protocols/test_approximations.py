"""Every approximation within its stated bound (protocols/pond/approximations.py) on a dense grid of its range."""

import math

import numpy as np
import pytest
import tensorflow as tf

import tfe_lite
from tfe_lite.protocols import Pond


def _enc(prot, a):
    return np.round(a * prot.fixedpoint.scale) / prot.fixedpoint.scale


def _check(prot, name, x, fn, bound):
    out = getattr(prot, name)(prot.share(x, "alice")).reveal(to="alice").numpy()
    e = _enc(prot, x)
    err = np.abs(out - fn(e))
    worst = np.argmax(err / bound(e))
    assert np.all(err <= bound(e)), f"{name}: error {err[worst]:.3g} over the bound {bound(e)[worst]:.3g} at x={x[worst]!r}"


def _binades(n):
    return np.concatenate([np.geomspace(2**-12, 4095.9, n), np.linspace(0.25, 8.0, n // 2)])


CASES = {
    "exp": (lambda: np.linspace(-40, math.log(4096) - 1e-4, 6001), np.exp, lambda x: 2**-11 * np.exp(x) + 2**-14),
    "log": (lambda: _binades(4000), np.log, lambda x: np.full_like(x, 2**-12)),
    "reciprocal": (lambda: np.concatenate([_binades(3000), -_binades(2000)]), lambda x: 1 / x,
                   lambda x: 2**-12 / np.abs(x) + 2**-14),
    "rsqrt": (lambda: _binades(4000), lambda x: 1 / np.sqrt(x), lambda x: 2**-12 / np.sqrt(x) + 2**-14),
    "sigmoid": (lambda: np.concatenate([np.linspace(-4095, 4095, 2001), np.linspace(-20, 20, 4001)]),
                lambda x: 0.5 * (1 + np.tanh(x / 2)), lambda x: np.full_like(x, 2**-13)),
    "tanh": (lambda: np.concatenate([np.linspace(-2047, 2047, 2001), np.linspace(-10, 10, 4001)]), np.tanh,
             lambda x: np.full_like(x, 2**-12)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_within_the_stated_bound_on_a_dense_grid(prot, name):
    grid, fn, bound = CASES[name]
    _check(prot, name, grid(), fn, bound)


def test_softmax_within_its_bound_and_sums_to_one(prot):
    rng = np.random.default_rng(3)
    for logits in (rng.normal(scale=6, size=(64, 10)), np.array([[4000.0, -4000.0, 0.0], [1.0, 1.0, 1.0]])):
        e = _enc(prot, logits)
        ref = np.exp(e - e.max(-1, keepdims=True))
        ref /= ref.sum(-1, keepdims=True)
        out = prot.softmax(prot.share(logits, "alice")).reveal(to="alice").numpy()
        assert np.abs(out - ref).max() <= 2**-12
    cols = prot.softmax(prot.share(rng.normal(size=(5, 3)), "alice"), axis=0).reveal(to="alice").numpy()
    np.testing.assert_allclose(cols.sum(axis=0), 1.0, atol=3 * 2**-12)


def test_traced_and_other_presets(config):
    """Inside tf.function; with the 'precise' preset (f = 18) the same bounds hold (its u terms are smaller)."""
    prot = Pond(config, fixedpoint="precise", seed=4)
    x = np.linspace(-200, 200, 2001)
    sig = tf.function(lambda t: prot.sigmoid(prot.share(t, "alice")).reveal(to="alice"))
    assert np.abs(sig(tf.constant(x)).numpy() - 0.5 * (1 + np.tanh(_enc(prot, x) / 2))).max() <= 2**-13
    _check(prot, "reciprocal", np.geomspace(2**-8, 255.9, 2000), lambda v: 1 / v, lambda v: 2**-12 / v + 2**-14)


def test_public_inputs_are_refused_with_a_clear_error(prot):
    with pytest.raises(tfe_lite.ShapeError, match="exp expects a private tensor"):
        prot.exp(np.ones(3))
