"""Eager Pond operations as cached traced functions (protocols/pond/eager.py): the same values as the eager
path against a float64 oracle, fresh randomness on every execution, the same traffic counted, the same
errors, and the eager path wherever a trace would change behaviour."""

import numpy as np
import pytest
import tensorflow as tf

import tfe_lite
from tfe_lite.protocols import Pond, PrecomputedDealer
from tfe_lite.protocols.pond import TripleSpec
from tfe_lite.protocols.pond.eager import EagerFunctions

# One product and its truncation: a few units of 2**-16 (see Pond's docstring).
TOL = 4 * 2.0**-16


def _functions(prot, op=None):
    """How many operations (named ``op``, when given) the protocol holds as cached traces."""
    return sum(1 for key in prot._eager_functions._functions if op is None or key[0] == op)


def _canonical(device: str) -> tuple:
    spec = tf.DeviceSpec.from_string(device)
    return spec.device_type, spec.device_index


@pytest.fixture
def fresh(config):
    """A protocol that traces a signature on its second call (by default after eight eager calls of 0.1 s in
    all)."""
    prot = Pond(config, seed=77)
    prot._eager_functions = EagerFunctions(trace_after=0.0, calls=1)
    return prot


def test_cheap_or_one_off_calls_stay_eager(config):
    prot = Pond(config, seed=78)  # the default budget: eight eager calls of 0.1 s in all per signature
    x = prot.share(np.ones(3), "alice")
    for n in range(1, 6):
        y = prot.share(np.ones(n), "bob")  # one-off shapes
        x = x + 1.0  # a cheap call, five times
    assert _functions(prot) == 0
    slow = Pond(config, seed=79)
    slow._eager_functions = EagerFunctions(trace_after=3600.0, calls=1)
    for _ in range(5):
        slow.share(np.ones(3), "alice")
    assert _functions(slow) == 0
    np.testing.assert_allclose(x.reveal(to="alice").numpy(), np.full(3, 6.0), atol=TOL)
    np.testing.assert_allclose(y.reveal(to="alice").numpy(), np.ones(5), atol=TOL)
    counted = Pond(config, seed=80)
    counted._eager_functions = EagerFunctions(trace_after=0.0)  # the default count: eight eager calls
    for call in range(1, 11):
        counted.share(np.ones(3), "alice")
        assert _functions(counted) == (1 if call > 8 else 0)


def test_first_call_eager_then_traced_and_reused(config, fresh):
    rng = np.random.default_rng(0)
    devices = {name: _canonical(config.get_player(name).device) for name in ("server0", "server1", "alice")}
    for i in range(4):
        x, y = rng.normal(size=(3, 4)), rng.normal(size=(4, 2))
        a, b = fresh.share(x, "alice"), fresh.share(y, "bob")
        z = a @ b
        revealed = z.reveal(to="alice")
        np.testing.assert_allclose(revealed.numpy(), x @ y, atol=4 * TOL)
        # Results stay where the eager path puts them (a function call would return them on the caller's).
        for t in (a, b, z):
            assert (_canonical(t.share0.device), _canonical(t.share1.device)) == (devices["server0"], devices["server1"])
        assert _canonical(revealed.device) == devices["alice"]
        # share (alice), share (bob), matmul, reveal: nothing traced on the first call, all from the second.
        assert _functions(fresh) == (0 if i == 0 else 4)
    for fn in fresh._eager_functions._functions.values():
        assert fn._function.experimental_get_tracing_count() == 1


def test_python_arguments_are_part_of_the_key(fresh):
    x = fresh.share(np.array([1.0, -2.0, 3.0]), "alice")
    for k in (0.5, 0.25, 0.5, 0.25, 2, 2.0, 2, 2.0):
        np.testing.assert_allclose((x * k).reveal(to="bob").numpy(), np.array([1.0, -2.0, 3.0]) * k, atol=TOL)
    assert _functions(fresh, "mul") == 4  # 0.5, 0.25, int 2 (exact scaling) and float 2.0
    small = np.array([[1.0], [2.0]])  # a small numpy operand: a constant of the trace, keyed by its bytes
    m = fresh.share(np.ones((2, 3)), "alice")
    for factor in (small, small * 3, small, small * 3):
        np.testing.assert_allclose((m * factor).reveal(to="bob").numpy(), np.ones((2, 3)) * factor, atol=TOL)
    assert _functions(fresh, "mul") == 6


def test_private_and_public_operands_of_one_shape_are_different_signatures(fresh):
    x, y = np.array([1.5, -2.0]), np.array([3.0, 0.5])
    private, public = fresh.share(y, "bob"), fresh.public(y)
    a = fresh.share(x, "alice")
    for _ in range(3):
        for b in (private, public):
            np.testing.assert_allclose((a * b).reveal(to="alice").numpy(), x * y, atol=TOL)
            np.testing.assert_allclose((b * a).reveal(to="alice").numpy(), x * y, atol=TOL)
    assert _functions(fresh, "mul") == 3  # private x private (either order), private x public, public x private


def test_every_execution_draws_fresh_masks_and_triples(fresh):
    values = np.array([0.5, 1.5, -2.0])
    shares = [fresh.share(values, "alice") for _ in range(5)]
    assert _functions(fresh) == 1
    masks = {s.share0.numpy().tobytes() for s in shares}
    assert len(masks) == 5
    for s in shares:  # each result kept its value when later calls reused the function's result slots
        np.testing.assert_allclose(s.reveal(to="alice").numpy(), values, atol=TOL)
    y = fresh.share(values, "bob")
    products = [shares[0] * y for _ in range(5)]
    assert len({p.share0.numpy().tobytes() for p in products}) == 5
    for p in products:
        np.testing.assert_allclose(p.reveal(to="alice").numpy(), values * values, atol=TOL)


def test_traffic_counted_like_the_eager_path(fresh):
    x, y = fresh.share(np.ones((8, 8)), "alice"), fresh.share(np.ones((8, 8)), "bob")
    counts = []
    for _ in range(3):  # eager, then traced, then the cached trace
        with fresh.count_communication() as log:
            (x @ y).reveal(to="alice")
        counts.append((log.by_link(), log.messages))
    assert _functions(fresh, "matmul") == _functions(fresh, "reveal") == 1
    assert counts[0] == counts[1] == counts[2]
    assert counts[0][0][("server0", "server1")] == 2 * 8 * 64  # both masked operands, 8 bytes an element


def test_bad_values_raise_the_eager_error_on_a_cached_signature(fresh):
    for _ in range(3):
        fresh.share(np.ones(3), "alice")
    assert _functions(fresh) == 1
    bound = fresh.fixedpoint.bound
    with pytest.raises(tfe_lite.EncodingError, match="outside the fixed-point range"):
        fresh.share(np.array([1.0, bound, 0.0]), "alice")
    with pytest.raises(tfe_lite.EncodingError, match="non-finite"):
        fresh.share(np.array([1.0, np.nan, 0.0]), "alice")
    with pytest.raises(tfe_lite.EncodingError, match="non-finite"):
        fresh.share(np.array([1.0, -np.inf, 0.0]), "alice")
    # The largest encodable magnitude still goes through the trace.
    edge = np.array([-(bound - 1.0), bound - 1.0, 0.0])
    np.testing.assert_allclose(fresh.share(edge, "alice").reveal(to="alice").numpy(), edge)


def test_tensor_operands_and_other_protocols_take_the_eager_path(config, fresh):
    x = fresh.share(np.ones(4), "alice")
    public = tf.constant([1.0, 2.0, 3.0, 4.0], tf.float64)  # a host tensor: its device is checked eagerly
    for _ in range(3):
        np.testing.assert_allclose((x + public).reveal(to="alice").numpy(), [2.0, 3.0, 4.0, 5.0], atol=TOL)
    assert _functions(fresh, "add") == 0
    other = Pond(config, seed=5).share(np.ones(4), "alice")
    for _ in range(2):
        with pytest.raises(tfe_lite.ProtocolError, match="another protocol instance"):
            x + other
    with tf.device(config.get_player("alice").device):
        owned = tf.constant([1.0, 1.0, 1.0, 1.0], tf.float64)
    for _ in range(2):
        with pytest.raises(tfe_lite.PlayerError, match="alice's device"):
            x * owned


def test_checked_protocol_and_precomputed_dealer_never_trace(config):
    checked = Pond(config, seed=3, checked=True)
    big = checked.share(np.array([3000.0]), "alice")
    for _ in range(3):
        with pytest.raises(tfe_lite.EncodingError, match="overflowed"):
            big * big
    assert _functions(checked) == 0

    dealer = PrecomputedDealer()
    offline = Pond(config, seed=4, dealer=dealer)
    x, y = offline.share(np.ones((2, 2)), "alice"), offline.share(np.ones((2, 2)), "bob")
    dealer.precompute(TripleSpec("matmul", (2, 2), (2, 2)), 3)
    for _ in range(3):
        np.testing.assert_allclose((x @ y).reveal(to="alice").numpy(), 2 * np.ones((2, 2)), atol=TOL)
    with pytest.raises(tfe_lite.TripleExhaustedError):
        x @ y
    assert _functions(offline) == 0


def test_non_linear_ops_and_tuples_through_the_cache(fresh):
    values = np.array([-1.5, 0.0, 2.25, -0.001])
    x = fresh.share(values, "alice")
    for _ in range(3):
        y, mask = fresh.relu(x, return_mask=True)
        np.testing.assert_allclose(y.reveal(to="alice").numpy(), np.maximum(values, 0), atol=TOL)
        np.testing.assert_array_equal(mask.reveal(to="alice").numpy(), (values >= 0).astype(float))
        np.testing.assert_allclose(x[1:3].reveal(to="alice").numpy(), values[1:3])
    assert _functions(fresh, "relu") == 1  # a tuple result
