"""A Keras callback that shows the privacy a DP model has spent and stops its training at a budget."""

from __future__ import annotations

import math
from typing import Any

import keras

from tfe_lite.errors import ConfigError, PrivacyBudgetExceededError
from tfe_lite.privacy import accounting
from tfe_lite.privacy._validation import invalid, is_real, raise_if


class PrivacyBudgetCallback(keras.callbacks.Callback):
    """Logs the model's epsilon as ``logs["epsilon"]`` every epoch and stops before a budget is exceeded.

    The callback asks the model: a :class:`tfe_lite.privacy.DPModel` records every step it trains and how
    its batches were drawn (:mod:`tfe_lite.privacy.ledger`), across ``fit`` calls and save/load, so the
    epsilon shown is ``model.privacy_spent(delta, accountant)``: the steps and sampling that ran, with the
    model's noise multiplier.

    With ``max_epsilon``, the callback works out at the start of every ``fit`` the most steps of this fit
    whose epsilon, composed with everything the model trained before, stays within the budget, and sets
    ``model.stop_training`` after the last batch that fits: the run ends mid-epoch if need be and never
    exceeds ``max_epsilon``. With ``steps_per_execution = k`` it stops when the next ``k`` steps would not
    fit. A ``fit`` on a model whose budget is already spent is refused.

    Args:
        delta: Target delta in (0, 1).
        max_epsilon: The budget, or None to only log.
        accountant: ``"rdp"`` or ``"pld"``.
        verbose: 1 prints a line when the budget stops training.
        num_examples, batch_size, noise_multiplier, sampling, microbatching: optional; what the caller
            believes the training uses. Each one given is checked against the model and its ``fit`` data
            when training starts, and a mismatch is an error (the callback never accounts with its own
            copy of them).

    Attributes:
        steps: Steps the model has trained in all, as of the last batch.
        epsilon: Epsilon after those steps, as of the last epoch end (0 before training).
        max_steps: The step count (in all) the budget allows in the running fit (None without
            ``max_epsilon``, until training starts).
    """

    def __init__(
        self,
        delta: float,
        *,
        max_epsilon: float | None = None,
        accountant: str = "rdp",
        verbose: int = 1,
        num_examples: int | None = None,
        batch_size: float | None = None,
        noise_multiplier: float | None = None,
        sampling: str | None = None,
        microbatching: bool | None = None,
    ):
        super().__init__()
        problems: list[str] = []
        accounting._check_delta(problems, delta)
        if problems and is_real(delta) and delta >= 1:
            problems[-1] += (
                " (PrivacyBudgetCallback reads num_examples, batch_size and noise_multiplier from the model; "
                "its first argument is delta)"
            )
        accounting._check_accountant(problems, accountant)
        if max_epsilon is not None and not (is_real(max_epsilon) and max_epsilon > 0):
            problems.append(invalid("max_epsilon", "a positive float or None", max_epsilon))
        if sampling is not None and sampling not in ("poisson", "shuffle", "arbitrary"):
            problems.append(invalid("sampling", "'poisson', 'shuffle', 'arbitrary' or None", sampling))
        raise_if(problems)
        self.delta = delta
        self.max_epsilon = max_epsilon
        self.accountant = accountant
        self.verbose = verbose
        self._expected = {
            "num_examples": num_examples,
            "batch_size": batch_size,
            "noise_multiplier": noise_multiplier,
            "sampling": sampling,
            "microbatching": microbatching,
        }
        self.steps = 0
        self.epsilon = 0.0
        self.max_steps: int | None = None
        self._fit_start = 0

    # ------------------------------------------------------------------------------------------------
    # What the model says

    def _dp_model(self) -> Any:
        model = self.model
        if not hasattr(model, "projected_ledger") or not hasattr(model, "running_sampling"):
            raise ConfigError(
                "PrivacyBudgetCallback reads the privacy ledger of a DP model: use it with the model "
                f"returned by tfe_lite.privacy.make_private. Received: model={model!r}"
            )
        return model

    def _check_against(self, model: Any) -> None:
        """Refuses parameters given to the callback that contradict the model or its ``fit`` data."""
        sampling = model.running_sampling
        config = model.dp_config
        actual = {
            "num_examples": sampling.num_examples,
            "batch_size": sampling.batch_size,
            "noise_multiplier": config.noise_multiplier,
            "sampling": sampling.kind,
            "microbatching": config.num_microbatches is not None,
        }
        wrong = [
            f"{name}={expected!r} but the model trains with {name}={actual[name]!r}"
            for name, expected in self._expected.items()
            if expected is not None and expected != actual[name]
        ]
        if wrong:
            raise ConfigError(
                "PrivacyBudgetCallback was given parameters that contradict the model it accounts for: "
                + "; ".join(wrong)
                + ". The callback reads them from the model; leave them out or make them agree."
            )

    def epsilon_after(self, fit_steps: int) -> float:
        """Epsilon once the running ``fit`` has taken ``fit_steps`` steps (after what the model trained
        before)."""
        return self._dp_model().projected_ledger(int(fit_steps)).epsilon(self.delta, self.accountant)

    def _budget_steps(self) -> int:
        """The most steps of this fit whose epsilon is at most ``max_epsilon`` (epsilon grows with steps)."""
        if self.epsilon_after(0) > self.max_epsilon:
            return -1
        high = 1
        while self.epsilon_after(high) <= self.max_epsilon:
            high *= 2
            if high > 2**40:
                return high  # a budget this generous never binds
        low = high // 2  # epsilon_after(low) <= max_epsilon < epsilon_after(high)
        while high - low > 1:
            middle = (low + high) // 2
            if self.epsilon_after(middle) <= self.max_epsilon:
                low = middle
            else:
                high = middle
        return low

    def _steps_per_execution(self) -> int:
        return int(getattr(self.model, "steps_per_execution", 1) or 1)

    def _budget_reached(self) -> bool:
        """Whether the next execution of ``steps_per_execution`` steps would exceed the budget."""
        return self.max_steps is not None and self.steps + self._steps_per_execution() > self.max_steps

    # ------------------------------------------------------------------------------------------------
    # Keras hooks

    def on_train_begin(self, logs=None):
        model = self._dp_model()
        if model.running_sampling is None:
            raise ConfigError("PrivacyBudgetCallback works inside the DP model's own fit.")
        self._check_against(model)
        self._fit_start = self.steps = model.steps_taken
        self.epsilon = self.epsilon_after(0)
        self.max_steps = None
        if self.max_epsilon is None:
            return
        allowed = self._budget_steps()
        if self._fit_start == 0 and allowed < 1:
            raise ConfigError(
                f"Received an invalid value for `max_epsilon`, expected at least the epsilon of one step "
                f"({self.epsilon_after(1):.4g}). Received: max_epsilon={self.max_epsilon!r}"
            )
        self.max_steps = self._fit_start + max(allowed, 0)
        if self._budget_reached():
            raise PrivacyBudgetExceededError(
                f"The privacy budget max_epsilon={self.max_epsilon} is spent: {self.steps} steps taken "
                f"(epsilon={self.epsilon:.4g}); another step of this fit would exceed it."
            )

    def on_train_batch_end(self, batch, logs=None):
        self.steps = self.model.steps_taken
        if self._budget_reached():
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.steps = self.model.steps_taken
        self.epsilon = self.epsilon_after(self.steps - self._fit_start)
        if logs is not None:
            logs["epsilon"] = self.epsilon
        if self._budget_reached() and self.verbose:
            print(
                f"PrivacyBudgetCallback: stopping after {self.steps} steps at epsilon={self.epsilon:.4g} "
                f"(max_epsilon={self.max_epsilon}, delta={self.delta:g}, {self.accountant.upper()}, "
                f"{self.model.running_sampling.kind} sampling in this fit)."
            )

    def remaining_epsilon(self) -> float:
        """``max_epsilon`` minus the epsilon spent so far (``inf`` without a budget)."""
        if self.max_epsilon is None:
            return math.inf
        return self.max_epsilon - self.epsilon
