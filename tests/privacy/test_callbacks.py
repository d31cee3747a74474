"""PrivacyBudgetCallback: epsilon in the logs from the steps actually taken, and stopping at the budget."""

import keras
import numpy as np
import pytest

from tfe_lite.errors import ConfigError, PrivacyBudgetExceededError
from tfe_lite.privacy.accounting import compute_epsilon
from tfe_lite.privacy.callbacks import PrivacyBudgetCallback
from tfe_lite.privacy.sampling import poisson_batches

N, B, SIGMA, DELTA, STEPS = 300, 30, 1.0, 1e-5, 10


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, 4)).astype(np.float32), rng.integers(0, 3, N)


def _model(steps_per_execution=1):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution)
    return model


def _epsilon(steps, **kwargs):
    return compute_epsilon(num_examples=N, batch_size=B, noise_multiplier=SIGMA, delta=DELTA, steps=steps,
                           **kwargs)


def test_logs_epsilon_growing_with_epochs(capsys):
    x, y = _data()
    callback = PrivacyBudgetCallback(N, B, SIGMA, DELTA)
    history = _model().fit(poisson_batches(x, y, expected_batch_size=B, steps=STEPS, seed=0), epochs=3,
                           verbose=2, callbacks=[callback], shuffle=False)
    logged = history.history["epsilon"]
    assert logged == [pytest.approx(_epsilon(STEPS * k)) for k in (1, 2, 3)]
    assert logged[0] < logged[1] < logged[2]
    assert callback.steps == 3 * STEPS and callback.epsilon == logged[-1]
    assert "epsilon:" in capsys.readouterr().out  # the progress bar prints it


def test_stops_at_the_budget_mid_epoch():
    x, y = _data()
    budget = (_epsilon(25) + _epsilon(26)) / 2  # 25 steps fit, 26 do not
    callback = PrivacyBudgetCallback(N, B, SIGMA, DELTA, max_epsilon=budget, verbose=0)
    model = _model()
    history = model.fit(poisson_batches(x, y, expected_batch_size=B, steps=STEPS, seed=0), epochs=10,
                        verbose=0, callbacks=[callback], shuffle=False)
    assert callback.max_steps == 25 and callback.steps == 25
    assert len(history.history["epsilon"]) == 3  # stopped in the third epoch
    assert history.history["epsilon"][-1] == pytest.approx(_epsilon(25)) and callback.epsilon <= budget
    assert callback.remaining_epsilon() >= 0
    # The budget is spent: another fit with the same callback refuses to take a step.
    with pytest.raises(PrivacyBudgetExceededError, match="25 steps taken"):
        model.fit(x, y, batch_size=B, epochs=1, verbose=0, callbacks=[callback])


def test_budget_with_steps_per_execution_never_overshoots():
    x, y = _data()
    budget = (_epsilon(25) + _epsilon(26)) / 2
    callback = PrivacyBudgetCallback(N, B, SIGMA, DELTA, max_epsilon=budget, verbose=0)
    _model(steps_per_execution=4).fit(poisson_batches(x, y, expected_batch_size=B, steps=STEPS, seed=0),
                                      epochs=10, verbose=0, callbacks=[callback], shuffle=False)
    assert callback.steps <= 25 and callback.epsilon <= budget


def test_shuffled_batches_are_accounted_per_epoch():
    x, y = _data()
    callback = PrivacyBudgetCallback(N, B, SIGMA, DELTA, sampling="shuffle", accountant="pld")
    history = _model().fit(x, y, batch_size=B, epochs=2, verbose=0, callbacks=[callback])
    assert history.history["epsilon"] == [pytest.approx(_epsilon(s, sampling="shuffle", accountant="pld"))
                                          for s in (10, 20)]


def test_budget_smaller_than_one_step():
    x, y = _data()
    callback = PrivacyBudgetCallback(N, B, SIGMA, DELTA, max_epsilon=_epsilon(1) / 2)
    with pytest.raises(ConfigError, match="expected at least the epsilon of one step"):
        _model().fit(x, y, batch_size=B, epochs=1, verbose=0, callbacks=[callback])


def test_invalid_arguments_all_reported():
    with pytest.raises(ConfigError) as info:
        PrivacyBudgetCallback(100, 200, -1.0, 1.5, max_epsilon=0)
    text = str(info.value)
    for name in ("batch_size", "noise_multiplier", "delta", "max_epsilon"):
        assert f"`{name}`" in text
