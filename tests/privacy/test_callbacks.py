"""PrivacyBudgetCallback: the model's own epsilon in the logs, stopping at the budget, contradictions refused."""

import dp_accounting
import keras
import numpy as np
import pytest

from tfe_lite.errors import ConfigError, PrivacyBudgetExceededError
from tfe_lite.privacy.callbacks import PrivacyBudgetCallback
from tfe_lite.privacy.model import make_private
from tfe_lite.privacy.sampling import poisson_batches

N, B, SIGMA, DELTA, STEPS = 300, 30, 1.0, 1e-5, 10


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, 4)).astype(np.float32), rng.integers(0, 3, N)


def _model(steps_per_execution=1, noise_multiplier=SIGMA):
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = make_private(inner, l2_norm_clip=1.0, noise_multiplier=noise_multiplier, expected_batch_size=B,
                         seed=0)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution)
    return model


def _direct(*events, accountant="rdp"):
    """dp_accounting's epsilon of the events composed, computed here without tfe_lite."""
    acc = dp_accounting.rdp.RdpAccountant() if accountant == "rdp" else dp_accounting.pld.PLDAccountant()
    return acc.compose(dp_accounting.ComposedDpEvent(list(events))).get_epsilon(DELTA)


def _poisson(steps, sigma=SIGMA):
    step = dp_accounting.PoissonSampledDpEvent(B / N, dp_accounting.GaussianDpEvent(sigma))
    return dp_accounting.SelfComposedDpEvent(step, steps)


def _passes(count, sigma=SIGMA):
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), count)


def _batches(x, y):
    return poisson_batches(x, y, expected_batch_size=B, steps=STEPS, seed=0)


def test_logs_the_models_epsilon_growing_with_epochs(capsys):
    x, y = _data()
    callback = PrivacyBudgetCallback(DELTA)
    model = _model()
    history = model.fit(_batches(x, y), epochs=3, verbose=2, callbacks=[callback], shuffle=False)
    logged = history.history["epsilon"]
    assert logged == [pytest.approx(_direct(_poisson(STEPS * k)), rel=1e-9) for k in (1, 2, 3)]
    assert logged[0] < logged[1] < logged[2]
    assert callback.steps == model.steps_taken == 3 * STEPS and callback.epsilon == logged[-1]
    assert model.privacy_spent(DELTA) == pytest.approx(logged[-1], rel=1e-12)
    assert "epsilon:" in capsys.readouterr().out  # the progress bar prints it


def test_stops_at_the_budget_mid_epoch():
    x, y = _data()
    budget = (_direct(_poisson(25)) + _direct(_poisson(26))) / 2  # 25 steps fit, 26 do not
    callback = PrivacyBudgetCallback(DELTA, max_epsilon=budget, verbose=0)
    model = _model()
    history = model.fit(_batches(x, y), epochs=10, verbose=0, callbacks=[callback], shuffle=False)
    assert callback.max_steps == 25 and callback.steps == 25 and model.steps_taken == 25
    assert len(history.history["epsilon"]) == 3  # stopped in the third epoch
    assert history.history["epsilon"][-1] == pytest.approx(_direct(_poisson(25))) and callback.epsilon <= budget
    assert callback.remaining_epsilon() >= 0
    # The budget is spent: another fit with the same callback refuses to take a step.
    with pytest.raises(PrivacyBudgetExceededError, match="25 steps taken"):
        model.fit(_batches(x, y), epochs=1, verbose=0, callbacks=[callback], shuffle=False)
    assert model.steps_taken == 25


def test_budget_counts_what_the_model_trained_before():
    # A first fit on arrays (one pass of 10 steps: one Gaussian mechanism), then Poisson batches with a
    # budget: the callback stops where the composition of both reaches it, as the model accounts for it.
    x, y = _data()
    model = _model()
    model.fit(x, y, batch_size=B, epochs=1, verbose=0)
    budget = (_direct(_passes(1), _poisson(12)) + _direct(_passes(1), _poisson(13))) / 2
    callback = PrivacyBudgetCallback(DELTA, max_epsilon=budget, verbose=0)
    model.fit(_batches(x, y), epochs=5, verbose=0, callbacks=[callback], shuffle=False)
    assert model.steps_taken == 10 + 12 and callback.max_steps == 22
    assert model.privacy_spent(DELTA) == pytest.approx(_direct(_passes(1), _poisson(12)), rel=1e-9)


def test_budget_with_steps_per_execution_never_overshoots():
    x, y = _data()
    budget = (_direct(_poisson(25)) + _direct(_poisson(26))) / 2
    callback = PrivacyBudgetCallback(DELTA, max_epsilon=budget, verbose=0)
    model = _model(steps_per_execution=4)
    model.fit(_batches(x, y), epochs=10, verbose=0, callbacks=[callback], shuffle=False)
    assert 21 <= model.steps_taken <= 25 and model.privacy_spent(DELTA) <= budget


def test_shuffled_batches_are_accounted_per_pass():
    x, y = _data()
    callback = PrivacyBudgetCallback(DELTA, accountant="pld")
    model = _model()
    history = model.fit(x, y, batch_size=B, epochs=2, verbose=0, callbacks=[callback])
    assert history.history["epsilon"] == [
        pytest.approx(_direct(_passes(k), accountant="pld"), rel=1e-9) for k in (1, 2)
    ]


def test_budget_smaller_than_one_step():
    x, y = _data()
    callback = PrivacyBudgetCallback(DELTA, max_epsilon=_direct(_poisson(1)) / 2)
    model = _model()
    with pytest.raises(ConfigError, match="expected at least the epsilon of one step"):
        model.fit(_batches(x, y), epochs=1, verbose=0, callbacks=[callback], shuffle=False)
    assert model.steps_taken == 0


@pytest.mark.parametrize(
    "given, message",
    [
        ({"noise_multiplier": 2.0}, "noise_multiplier=2.0 but the model trains with noise_multiplier=0.5"),
        ({"sampling": "poisson"}, "sampling='poisson' but the model trains with sampling='shuffle'"),
        ({"batch_size": 100, "num_examples": 2000}, "batch_size=100 but the model trains with batch_size=30.0"),
    ],
)
def test_parameters_contradicting_the_model_are_refused(given, message):
    # Issue 9: a callback built with noise_multiplier=2.0 logged the epsilon of 2.0 for a model noised at 0.5.
    x, y = _data()
    model = _model(noise_multiplier=0.5)
    callback = PrivacyBudgetCallback(DELTA, **given)
    with pytest.raises(ConfigError, match="contradict the model") as error:
        model.fit(x, y, batch_size=B, epochs=1, verbose=0, callbacks=[callback])
    assert message in str(error.value)
    assert model.steps_taken == 0
    # Parameters that agree are accepted, and the epsilon logged is the model's.
    agreeing = PrivacyBudgetCallback(DELTA, noise_multiplier=0.5, sampling="shuffle", batch_size=B,
                                     num_examples=N)
    history = model.fit(x, y, batch_size=B, epochs=1, verbose=0, callbacks=[agreeing])
    assert history.history["epsilon"][0] == pytest.approx(_direct(_passes(1, 0.5)), rel=1e-9)


def test_a_model_without_privacy_is_refused():
    x, y = _data()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ConfigError, match="make_private"):
        model.fit(x, y, batch_size=B, epochs=1, verbose=0, callbacks=[PrivacyBudgetCallback(DELTA)])


def test_invalid_arguments_all_reported():
    with pytest.raises(ConfigError) as info:
        PrivacyBudgetCallback(1.5, max_epsilon=0, accountant="gdp", sampling="shuffled")
    text = str(info.value)
    for name in ("delta", "max_epsilon", "accountant", "sampling"):
        assert f"`{name}`" in text
    assert "its first argument is delta" in text
