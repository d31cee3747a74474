"""Privacy accounting against dp_accounting composed by hand and against TF Privacy's statement."""

import math
import re

import dp_accounting
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfe_lite.errors import ConfigError
from tfe_lite.privacy import accounting
from tfe_lite.privacy.accounting import compute_epsilon, compute_noise_multiplier, privacy_statement

N, B, SIGMA, DELTA = 60000, 256, 1.1, 1e-5


def _direct(event, accountant, delta=DELTA):
    acc = dp_accounting.rdp.RdpAccountant() if accountant == "rdp" else dp_accounting.pld.PLDAccountant()
    return acc.compose(event).get_epsilon(delta)


def _tf_privacy_lib():
    """TF Privacy's analysis library, imported the one way that works on TF 2.21."""
    from tfe_lite.privacy._tf_privacy import _import

    return _import("tensorflow_privacy.privacy.analysis.compute_dp_sgd_privacy_lib")


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_poisson_equals_dp_accounting_composed_directly(accountant):
    steps = 2000
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(B / N, dp_accounting.GaussianDpEvent(SIGMA)), steps
    )
    got = compute_epsilon(num_examples=N, batch_size=B, noise_multiplier=SIGMA, delta=DELTA, steps=steps,
                          sampling="poisson", accountant=accountant)
    assert got == pytest.approx(_direct(event, accountant), rel=1e-12)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_shuffle_is_the_unamplified_composition_over_epochs(accountant):
    # 2.5 epochs: an example is in at most 3 batches; each batch is one Gaussian mechanism.
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(SIGMA), 3)
    got = compute_epsilon(num_examples=N, batch_size=B, noise_multiplier=SIGMA, delta=DELTA, epochs=2.5,
                          sampling="shuffle", accountant=accountant)
    assert got == pytest.approx(_direct(event, accountant), rel=1e-12)
    by_steps = compute_epsilon(num_examples=N, batch_size=B, noise_multiplier=SIGMA, delta=DELTA,
                               steps=2 * math.ceil(N / B) + 1, sampling="shuffle", accountant=accountant)
    assert by_steps == got
    poisson = compute_epsilon(num_examples=N, batch_size=B, noise_multiplier=SIGMA, delta=DELTA, epochs=2.5,
                              sampling="poisson", accountant=accountant)
    assert poisson < got


def test_default_is_the_bound_for_fit_on_arrays():
    # Issue 9: fit(x, y, batch_size=256, epochs=5) on 60,000 arrays, then compute_epsilon with its defaults.
    kwargs = dict(num_examples=N, batch_size=B, noise_multiplier=SIGMA, delta=DELTA, epochs=5)
    shuffled = _direct(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(SIGMA), 5), "rdp")
    assert compute_epsilon(**kwargs) == pytest.approx(shuffled, rel=1e-12)
    assert compute_epsilon(**kwargs) == pytest.approx(10.94, abs=5e-3)
    assert compute_epsilon(sampling="poisson", **kwargs) < 1  # only when asked for
    assert "Shuffled" in privacy_statement(**kwargs) and "Poisson row is NOT a bound" in privacy_statement(**kwargs)
    schedule = {k: v for k, v in kwargs.items() if k != "noise_multiplier"}
    assert compute_noise_multiplier(target_epsilon=3.0, **schedule) == compute_noise_multiplier(
        target_epsilon=3.0, sampling="shuffle", **schedule)


def test_epochs_become_steps_like_keras():
    # 3 epochs of 4000 examples in batches of 32 is 375 steps, despite 3 / (32 / 4000) = 375.00000000000006.
    kwargs = dict(num_examples=4000, batch_size=32, noise_multiplier=1.0, delta=1e-5, sampling="poisson")
    assert compute_epsilon(epochs=3, **kwargs) == compute_epsilon(steps=375, **kwargs)
    assert compute_epsilon(epochs=2.9, **kwargs) == compute_epsilon(steps=363, **kwargs)
    # Keras takes ceil(60000 / 256) = 235 steps per epoch: 5 epochs are 1175 steps (not 5 * 60000 / 256).
    kwargs = dict(num_examples=60000, batch_size=256, noise_multiplier=1.1, delta=1e-5, sampling="poisson")
    assert compute_epsilon(epochs=5, **kwargs) == compute_epsilon(steps=1175, **kwargs)
    assert "5 epochs (1175 steps)" in privacy_statement(epochs=5, **kwargs)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize("microbatching", [False, True])
def test_matches_tf_privacy_statement(accountant, microbatching):
    lib = _tf_privacy_lib()
    epochs = 15  # TF Privacy: 15 / (256 / 60000) = 3515.625 -> 3516 steps (Keras takes 235 x 15 = 3525)
    statement = lib.compute_dp_sgd_privacy_statement(
        number_of_examples=N, batch_size=B, num_epochs=epochs, noise_multiplier=SIGMA, delta=DELTA,
        used_microbatching=microbatching, accountant_type=lib.AccountantType[accountant.upper()],
    )
    once_per_epoch = float(re.search(r"once per epoch:\s+([0-9.]+)", statement).group(1))
    poisson = float(re.search(r"Poisson sampling \(\*\):\s+([0-9.]+)", statement).group(1))
    kwargs = dict(num_examples=N, batch_size=B, noise_multiplier=SIGMA, delta=DELTA,
                  accountant=accountant, microbatching=microbatching)
    # TF Privacy prints three decimals.
    assert compute_epsilon(sampling="poisson", steps=3516, **kwargs) == pytest.approx(poisson, abs=5e-4)
    assert compute_epsilon(sampling="shuffle", epochs=epochs, **kwargs) == pytest.approx(once_per_epoch, abs=5e-4)


def test_no_noise_is_no_privacy():
    kwargs = dict(num_examples=100, batch_size=10, delta=1e-5, steps=1)
    assert compute_epsilon(noise_multiplier=0, **kwargs) == math.inf


@settings(max_examples=15, deadline=None)
@given(
    sigma=st.floats(0.5, 4.0),
    steps=st.integers(1, 5000),
    batch_size=st.integers(1, 1000),
)
def test_epsilon_grows_with_steps_and_shrinks_with_noise(sigma, steps, batch_size):
    kwargs = dict(num_examples=1000, batch_size=batch_size, delta=1e-5, sampling="poisson")
    eps = compute_epsilon(noise_multiplier=sigma, steps=steps, **kwargs)
    assert 0 < eps < math.inf
    assert compute_epsilon(noise_multiplier=sigma, steps=steps + 100, **kwargs) >= eps
    assert compute_epsilon(noise_multiplier=sigma * 1.1, steps=steps, **kwargs) <= eps


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
@pytest.mark.parametrize("sampling", ["poisson", "shuffle"])
def test_noise_multiplier_is_the_inverse_rdp(target, sampling):
    kwargs = dict(num_examples=4000, batch_size=32, delta=1e-5, epochs=10, sampling=sampling)
    sigma = compute_noise_multiplier(target_epsilon=target, **kwargs)
    eps = compute_epsilon(noise_multiplier=sigma, **kwargs)
    assert eps <= target
    assert eps >= target * (1 - 1e-3)
    # The optimum: a little less noise overshoots the target.
    assert compute_epsilon(noise_multiplier=sigma * (1 - 1e-3), **kwargs) > target


def test_noise_multiplier_is_the_inverse_pld():
    kwargs = dict(num_examples=4000, batch_size=64, delta=1e-5, epochs=2, accountant="pld", sampling="poisson")
    sigma = compute_noise_multiplier(target_epsilon=2.0, **kwargs)
    eps = compute_epsilon(noise_multiplier=sigma, **kwargs)
    assert 2.0 * (1 - 1e-3) <= eps <= 2.0
    # PLD is tighter, so it needs less noise than RDP for the same target.
    assert sigma < compute_noise_multiplier(target_epsilon=2.0, **{**kwargs, "accountant": "rdp"})


def test_microbatching_doubles_sensitivity():
    kwargs = dict(num_examples=N, batch_size=B, delta=DELTA, steps=1000, sampling="poisson")
    assert compute_epsilon(noise_multiplier=2 * SIGMA, microbatching=True, **kwargs) == pytest.approx(
        compute_epsilon(noise_multiplier=SIGMA, **kwargs))
    sigma = compute_noise_multiplier(target_epsilon=2.0, microbatching=True, **kwargs)
    assert sigma == pytest.approx(2 * compute_noise_multiplier(target_epsilon=2.0, **kwargs), rel=1e-3)


def test_dp_sgd_event_is_what_is_accounted():
    event = accounting.dp_sgd_event(num_examples=N, batch_size=B, noise_multiplier=SIGMA, steps=10,
                                    sampling="poisson")
    assert event == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(B / N, dp_accounting.GaussianDpEvent(SIGMA)), 10)
    # The default: 10 steps of 235 per epoch are within one epoch, one Gaussian mechanism.
    assert accounting.dp_sgd_event(num_examples=N, batch_size=B, noise_multiplier=SIGMA, steps=10) == \
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(SIGMA), 1)


@pytest.mark.parametrize("sampling", ["poisson", "shuffle"])
def test_statement_reports_both_accountants_and_assumptions(sampling):
    kwargs = dict(num_examples=4000, batch_size=32, noise_multiplier=1.1, delta=1e-5, epochs=10)
    text = privacy_statement(sampling=sampling, **kwargs)
    numbers = {
        (kind, acc): compute_epsilon(sampling=kind, accountant=acc, **kwargs)
        for kind in ("poisson", "shuffle") for acc in ("rdp", "pld")
    }
    for value in numbers.values():
        assert f"{value:.3f}" in text
    assert "add-or-remove-one" in text and "delta = 1e-05" in text and "every intermediate model" in text
    if sampling == "poisson":
        assert "the Poisson row is a proven upper bound" in text
    else:
        assert "Poisson row is NOT a bound" in text and "Chua et al." in text


BASE = dict(num_examples=1000, batch_size=10, noise_multiplier=1.0, delta=1e-5, epochs=1)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"delta": 1.5},
         "Received an invalid value for `delta`, expected a float in (0, 1). Received: delta=1.5"),
        ({"delta": 0.0}, "Received: delta=0.0"),
        ({"noise_multiplier": -0.5}, "expected a non-negative float. Received: noise_multiplier=-0.5"),
        ({"batch_size": 2000}, "expected at most num_examples=1000. Received: batch_size=2000"),
        ({"batch_size": 0}, "Received: batch_size=0"),
        ({"num_examples": 0}, "Received: num_examples=0"),
        ({"epochs": 0}, "expected a positive number. Received: epochs=0"),
        ({"epochs": -2.0}, "Received: epochs=-2.0"),
        ({"epochs": None, "steps": 0}, "expected a positive integer. Received: steps=0"),
        ({"steps": 10}, "Expected exactly one of `epochs` and `steps`"),
        ({"sampling": "shuffled"}, "Received: sampling='shuffled'"),
        ({"accountant": "gdp"}, "Received: accountant='gdp'"),
    ],
)
def test_invalid_arguments(override, message):
    with pytest.raises(ConfigError) as info:
        compute_epsilon(**{**BASE, **override})
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        compute_epsilon(num_examples=10, batch_size=20, noise_multiplier=-1, delta=1.5, epochs=0)
    text = str(info.value)
    for name in ("batch_size", "noise_multiplier", "delta", "epochs"):
        assert f"`{name}`" in text


def test_invalid_calibration_arguments():
    with pytest.raises(ConfigError, match=r"Received: target_epsilon=0"):
        compute_noise_multiplier(target_epsilon=0, num_examples=100, batch_size=10, delta=1e-5, epochs=1)
    with pytest.raises(ConfigError, match=r"Received: delta=2"):
        privacy_statement(num_examples=100, batch_size=10, noise_multiplier=1.0, delta=2, epochs=1)


def test_split_noise_multiplier_composes_back_to_the_total():
    part = accounting.split_noise_multiplier(1.1, 3.0)
    assert part > 1.1
    # Two Gaussian mechanisms on the same records cost (in RDP, exactly) one with the total multiplier.
    both = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(part), dp_accounting.GaussianDpEvent(3.0)])
    one = dp_accounting.GaussianDpEvent(1.1)
    a = dp_accounting.rdp.RdpAccountant().compose(dp_accounting.SelfComposedDpEvent(both, 20))
    b = dp_accounting.rdp.RdpAccountant().compose(dp_accounting.SelfComposedDpEvent(one, 20))
    assert a.get_epsilon(1e-5) == pytest.approx(b.get_epsilon(1e-5), rel=1e-12)
    for total, other in [(0.0, 1.0), (2.0, 2.0), (3.0, 1.0), (1.0, float("nan"))]:
        with pytest.raises(ConfigError, match=f"total={total!r}, other={other!r}"):
            accounting.split_noise_multiplier(total, other)
