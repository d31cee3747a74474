"""A Keras callback that tracks the privacy spent by DP-SGD and stops training at a budget."""

from __future__ import annotations

import math

import keras

from tfe_lite.errors import ConfigError, PrivacyBudgetExceededError
from tfe_lite.privacy import accounting


class PrivacyBudgetCallback(keras.callbacks.Callback):
    """Logs the epsilon spent so far as ``logs["epsilon"]`` and stops before a budget is exceeded.

    The callback counts the optimizer steps ``fit`` actually took (across several ``fit`` calls with the
    same callback, since they all spend the same data's budget) and, at the end of every epoch, writes
    ``compute_epsilon(steps=...)`` into the epoch logs, where the progress bar and ``History`` show it.

    With ``max_epsilon``, the callback works out once (at the start of training) the largest number of
    steps whose epsilon stays within the budget, and sets ``model.stop_training`` after the last batch
    that fits: the run ends mid-epoch if need be, and never exceeds ``max_epsilon``. With
    ``steps_per_execution = k`` it stops when the next ``k`` steps would not fit.

    Args:
        num_examples: Training examples.
        batch_size: The (expected, for Poisson sampling) batch size.
        noise_multiplier: The noise multiplier the DP optimizer uses.
        delta: Target delta in (0, 1).
        sampling: ``"poisson"`` or ``"shuffle"``: the data order ``fit`` is given (see
            :mod:`tfe_lite.privacy.accounting` for what each assumes).
        accountant: ``"rdp"`` or ``"pld"``.
        max_epsilon: The budget, or None to only log.
        microbatching: Whether microbatches held more than one example.
        verbose: 1 prints a line when the budget stops training.

    Attributes:
        steps: Optimizer steps counted so far.
        epsilon: Epsilon after those steps (0 before training).
        max_steps: Steps the budget allows (None without ``max_epsilon``, until training starts).
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: float,
        noise_multiplier: float,
        delta: float,
        *,
        sampling: str = "poisson",
        accountant: str = "rdp",
        max_epsilon: float | None = None,
        microbatching: bool = False,
        verbose: int = 1,
    ):
        super().__init__()
        problems: list[str] = []
        accounting._check_schedule(problems, num_examples=num_examples, batch_size=batch_size, epochs=None,
                                   steps=1, sampling=sampling, microbatching=microbatching)
        accounting._check_noise(problems, noise_multiplier)
        accounting._check_delta(problems, delta)
        accounting._check_accountant(problems, accountant)
        if max_epsilon is not None and not (accounting._is_real(max_epsilon) and max_epsilon > 0):
            problems.append(accounting._invalid("max_epsilon", "a positive float or None", max_epsilon))
        accounting._raise_if(problems)
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.sampling = sampling
        self.accountant = accountant
        self.max_epsilon = max_epsilon
        self.microbatching = microbatching
        self.verbose = verbose
        self.steps = 0
        self.epsilon = 0.0
        self.max_steps: int | None = None
        self._epoch_start = 0

    def epsilon_after(self, steps: int) -> float:
        """Epsilon after ``steps`` optimizer steps of this schedule."""
        if steps == 0:
            return 0.0
        return accounting.compute_epsilon(
            num_examples=self.num_examples, batch_size=self.batch_size,
            noise_multiplier=self.noise_multiplier, delta=self.delta, steps=int(steps),
            sampling=self.sampling, accountant=self.accountant, microbatching=self.microbatching,
        )

    def _budget_steps(self) -> int:
        """The largest step count whose epsilon is at most ``max_epsilon`` (epsilon grows with steps)."""
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

    def on_train_begin(self, logs=None):
        if self.max_epsilon is None:
            return
        if self.max_steps is None:
            self.max_steps = self._budget_steps()
        if self.max_steps == 0:
            raise ConfigError(
                f"Received an invalid value for `max_epsilon`, expected at least the epsilon of one step "
                f"({self.epsilon_after(1):.4g}). Received: max_epsilon={self.max_epsilon!r}"
            )
        if self._budget_reached():
            raise PrivacyBudgetExceededError(
                f"The privacy budget max_epsilon={self.max_epsilon} is spent: {self.steps} steps taken "
                f"(epsilon={self.epsilon:.4g}), at most {self.max_steps} allowed."
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.steps

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the index, within the epoch, of the last step of the execution that just ran.
        self.steps = self._epoch_start + int(batch) + 1
        if self._budget_reached():
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.epsilon = self.epsilon_after(self.steps)
        if logs is not None:
            logs["epsilon"] = self.epsilon
        if self._budget_reached() and self.verbose:
            print(
                f"PrivacyBudgetCallback: stopping after {self.steps} steps at epsilon={self.epsilon:.4g} "
                f"(max_epsilon={self.max_epsilon}, delta={self.delta:g}, {self.accountant.upper()}, "
                f"{self.sampling} sampling)."
            )

    def remaining_epsilon(self) -> float:
        """``max_epsilon`` minus the epsilon spent so far (``inf`` without a budget)."""
        if self.max_epsilon is None:
            return math.inf
        return self.max_epsilon - self.epsilon
