"""Privacy accounting for DP-SGD with ``dp_accounting`` (RDP and PLD accountants).

A DP-SGD run is described by the number of training examples ``n``, the (expected) batch size ``B``, the
noise multiplier ``sigma`` and its length (``epochs`` or ``steps``). The guarantee is example-level
``(epsilon, delta)``-DP under add-or-remove-one adjacency and covers every intermediate model, not only
the final one. An epoch is ``ceil(n / B)`` steps, as Keras ``fit`` (and :func:`poisson_batches`) take them.

A model made by :func:`tfe_lite.privacy.make_private` accounts for itself: ``dp_model.privacy_spent(delta)``
composes the steps it actually trained with the sampling they actually used (:mod:`tfe_lite.privacy.ledger`).
The functions here plan a run before it happens. Two data orders are supported, and analysed differently:

``sampling="shuffle"`` (the default)
    The data are cut into disjoint fixed-size batches, each example once per epoch: what Keras ``fit`` does
    with arrays (shuffled or not). ``dp_accounting`` has no accountant for shuffled batches and none is known
    that is both tight and proven. We therefore report the bound that *is* proven: within one epoch the
    batches are disjoint, so one epoch costs at most one Gaussian mechanism with noise multiplier
    ``sigma`` (no amplification by sampling), and ``ceil(epochs)`` epochs compose. With ``steps``, the
    number of epochs is ``ceil(steps / ceil(n / B))``. This is much larger than the Poisson number; the
    common practice of quoting the Poisson number for shuffled data is an assumption, not a bound, and
    shuffling can be measurably less private than that number claims (Chua et al., "How Private are DP-SGD
    Implementations?", ICML 2024). :func:`privacy_statement` prints both so the difference is visible.

``sampling="poisson"`` (only when asked for)
    Every step includes each example independently with probability ``q = B / n`` (the pipeline of
    :func:`tfe_lite.privacy.sampling.poisson_batches`, with ``make_private(expected_batch_size=B)``). One
    step is a ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))``; a run is that event self-composed
    ``steps`` times. This is the analysis of Abadi et al. (2016) and a proven bound *for Poisson-sampled
    batches* only.

``microbatching=True`` says that microbatches held more than one example: a microbatch's clipped mean
gradient then changes by up to twice the clip norm when one example is added or removed, so the
accounting halves the noise multiplier (as TF Privacy's ``compute_dp_sgd_privacy_statement`` does).
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from typing import Callable

import dp_accounting

from tfe_lite.errors import ConfigError
from tfe_lite.privacy._validation import invalid as _invalid
from tfe_lite.privacy._validation import is_int as _is_int
from tfe_lite.privacy._validation import is_real as _is_real
from tfe_lite.privacy._validation import raise_if as _raise_if

SAMPLINGS = ("poisson", "shuffle")
#: The sampling assumed unless another is asked for: the bound for Keras ``fit`` on arrays.
DEFAULT_SAMPLING = "shuffle"
ACCOUNTANTS = ("rdp", "pld")

# Relative gap between the lower and upper end of the noise-multiplier bracket at which the
# calibration stops; the returned noise multiplier is then at most this much above the optimum.
_CALIBRATION_RTOL = 1e-4


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Schedule:
    """A validated DP-SGD schedule; ``steps`` is always set, ``epochs`` only when given."""

    num_examples: int
    batch_size: float
    noise_multiplier: float
    steps: int
    epochs: float | None
    sampling: str
    microbatching: bool

    @property
    def sampling_probability(self) -> float:
        return self.batch_size / self.num_examples

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    @property
    def participations(self) -> int:
        """Shuffling: the most batches (epochs) one example can be part of."""
        if self.epochs is not None:
            return math.ceil(self.epochs)
        return math.ceil(self.steps / self.steps_per_epoch)

    @property
    def effective_noise_multiplier(self) -> float:
        return self.noise_multiplier / 2 if self.microbatching else self.noise_multiplier

    def with_noise(self, noise_multiplier: float) -> _Schedule:
        return dataclasses.replace(self, noise_multiplier=float(noise_multiplier))


def _check_schedule(
    problems: list[str], *, num_examples, batch_size, epochs, steps, sampling, microbatching
) -> None:
    if not (_is_int(num_examples) and num_examples > 0):
        problems.append(_invalid("num_examples", "a positive integer", num_examples))
    if not (_is_real(batch_size) and batch_size > 0):
        problems.append(_invalid("batch_size", "a positive number", batch_size))
    elif _is_int(num_examples) and num_examples > 0 and batch_size > num_examples:
        problems.append(
            f"Received an invalid value for `batch_size`, expected at most num_examples={num_examples}. "
            f"Received: batch_size={batch_size!r}"
        )
    if (epochs is None) == (steps is None):
        problems.append(
            "Expected exactly one of `epochs` and `steps` to be given. "
            f"Received: epochs={epochs!r}, steps={steps!r}"
        )
    elif epochs is not None and not (_is_real(epochs) and epochs > 0):
        problems.append(_invalid("epochs", "a positive number", epochs))
    elif steps is not None and not (_is_int(steps) and steps > 0):
        problems.append(_invalid("steps", "a positive integer", steps))
    if sampling not in SAMPLINGS:
        problems.append(_invalid("sampling", f"one of {SAMPLINGS}", sampling))
    if not isinstance(microbatching, bool):
        problems.append(_invalid("microbatching", "a bool", microbatching))


def _check_noise(problems: list[str], noise_multiplier) -> None:
    if not (_is_real(noise_multiplier) and noise_multiplier >= 0):
        problems.append(_invalid("noise_multiplier", "a non-negative float", noise_multiplier))


def _check_delta(problems: list[str], delta) -> None:
    if not (_is_real(delta) and 0 < delta < 1):
        problems.append(_invalid("delta", "a float in (0, 1)", delta))


def _check_accountant(problems: list[str], accountant) -> None:
    if accountant not in ACCOUNTANTS:
        problems.append(_invalid("accountant", f"one of {ACCOUNTANTS}", accountant))


def _make_schedule(*, num_examples, batch_size, noise_multiplier, epochs, steps, sampling, microbatching):
    if steps is None:
        # Keras's ceil(n / B) steps per epoch; the small guard keeps e.g. 2.9 epochs of 125 steps at 363
        # despite float rounding.
        steps = max(1, math.ceil(epochs * math.ceil(num_examples / batch_size) - 1e-9))
    return _Schedule(
        num_examples=int(num_examples),
        batch_size=float(batch_size),
        noise_multiplier=float(noise_multiplier),
        steps=int(steps),
        epochs=None if epochs is None else float(epochs),
        sampling=sampling,
        microbatching=microbatching,
    )


# ----------------------------------------------------------------------------------------------------
# Events and accountants
# ----------------------------------------------------------------------------------------------------


def _event(schedule: _Schedule) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(schedule.effective_noise_multiplier)
    if schedule.sampling == "poisson":
        step = dp_accounting.PoissonSampledDpEvent(schedule.sampling_probability, gaussian)
        return dp_accounting.SelfComposedDpEvent(step, schedule.steps)
    return dp_accounting.SelfComposedDpEvent(gaussian, schedule.participations)


def _new_accountant(accountant: str) -> dp_accounting.PrivacyAccountant:
    if accountant == "rdp":
        return dp_accounting.rdp.RdpAccountant()
    return dp_accounting.pld.PLDAccountant()


def _epsilon(schedule: _Schedule, delta: float, accountant: str) -> float:
    if schedule.noise_multiplier == 0:
        return math.inf
    return float(_new_accountant(accountant).compose(_event(schedule)).get_epsilon(delta))


def dp_sgd_event(
    *,
    num_examples: int,
    batch_size: float,
    noise_multiplier: float,
    epochs: float | None = None,
    steps: int | None = None,
    sampling: str = DEFAULT_SAMPLING,
    microbatching: bool = False,
) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event that :func:`compute_epsilon` accounts for (see the module docstring)."""
    problems: list[str] = []
    _check_schedule(problems, num_examples=num_examples, batch_size=batch_size, epochs=epochs, steps=steps,
                    sampling=sampling, microbatching=microbatching)
    _check_noise(problems, noise_multiplier)
    _raise_if(problems)
    return _event(_make_schedule(num_examples=num_examples, batch_size=batch_size,
                                 noise_multiplier=noise_multiplier, epochs=epochs, steps=steps,
                                 sampling=sampling, microbatching=microbatching))


def compute_epsilon(
    *,
    num_examples: int,
    batch_size: float,
    noise_multiplier: float,
    delta: float,
    epochs: float | None = None,
    steps: int | None = None,
    sampling: str = DEFAULT_SAMPLING,
    accountant: str = "rdp",
    microbatching: bool = False,
) -> float:
    """Example-level epsilon of a DP-SGD run at ``delta`` (add-or-remove-one adjacency).

    Args:
        num_examples: Training examples ``n``.
        batch_size: Batch size; the *expected* batch size ``q * n`` for Poisson sampling.
        noise_multiplier: Noise standard deviation over the clip norm. ``0`` gives ``inf``.
        delta: Target delta, in (0, 1); usually below ``1 / num_examples``.
        epochs: Passes over the data (may be fractional), ``ceil(num_examples / batch_size)`` steps each.
            Exactly one of ``epochs`` and ``steps``.
        steps: Optimizer steps taken.
        sampling: ``"shuffle"`` (default: disjoint fixed-size batches, as ``fit`` on arrays) or ``"poisson"``
            (batches from :func:`poisson_batches`); see the module docstring for what each assumes.
        accountant: ``"rdp"`` (Renyi DP, fast, looser) or ``"pld"`` (privacy loss distributions with
            pessimistic discretization, tighter, slower).
        microbatching: Whether microbatches held more than one example (doubles the sensitivity).

    Returns:
        Epsilon, ``math.inf`` when there is no noise.

    Raises:
        ConfigError: listing every invalid argument, before any computation.
    """
    problems: list[str] = []
    _check_schedule(problems, num_examples=num_examples, batch_size=batch_size, epochs=epochs, steps=steps,
                    sampling=sampling, microbatching=microbatching)
    _check_noise(problems, noise_multiplier)
    _check_delta(problems, delta)
    _check_accountant(problems, accountant)
    _raise_if(problems)
    schedule = _make_schedule(num_examples=num_examples, batch_size=batch_size,
                              noise_multiplier=noise_multiplier, epochs=epochs, steps=steps,
                              sampling=sampling, microbatching=microbatching)
    return _epsilon(schedule, float(delta), accountant)


def split_noise_multiplier(total: float, other: float) -> float:
    """The noise multiplier ``z_1`` that, with a second Gaussian mechanism of multiplier ``other`` on the
    same records, costs what one Gaussian mechanism with multiplier ``total`` costs:
    ``z_1 = (total^-2 - other^-2)^-1/2``.

    Gaussian mechanisms on the same records compose into one whose sensitivity-over-std is the root sum of
    squares of theirs (its privacy loss distribution is exactly that of the combined mechanism), so
    ``total^-2 = z_1^-2 + other^-2``. Adaptive clipping uses this to give the clipped count its share
    (Andrew et al. 2021, "Differentially private learning with adaptive clipping", sec. 3.1).

    Raises:
        ConfigError: unless ``0 < total < other``.
    """
    if not (_is_real(total) and _is_real(other) and 0 < total < other):
        raise ConfigError(
            f"Received invalid noise multipliers, expected 0 < total < other. Received: total={total!r}, "
            f"other={other!r}"
        )
    return float((total**-2 - other**-2) ** -0.5)


def _bracket(
    epsilon_of: Callable[[float], float], target: float, start: float
) -> tuple[float | None, float]:
    """Noise multipliers ``(low, high)`` with ``epsilon(low) > target >= epsilon(high)``.

    Moves geometrically from ``start`` so that the (expensive, for PLD) accountant is only asked about
    noise multipliers near the answer; tiny ones make PLD discretizations huge. ``low`` is None when even
    a noise multiplier of 1e-3 meets the target.
    """
    high = start
    while epsilon_of(high) > target:
        high *= 2
        if high > 1e6:
            raise ConfigError(
                f"No noise multiplier up to 1e6 reaches target_epsilon={target!r}; the target is too small "
                "for this schedule and delta."
            )
    low = high / 1.25
    while epsilon_of(low) <= target:
        high, low = low, low / 1.25
        if low < 1e-3:
            return None, high
    return low, high


def compute_noise_multiplier(
    *,
    target_epsilon: float,
    num_examples: int,
    batch_size: float,
    delta: float,
    epochs: float | None = None,
    steps: int | None = None,
    sampling: str = DEFAULT_SAMPLING,
    accountant: str = "rdp",
    microbatching: bool = False,
) -> float:
    """The smallest noise multiplier (within 0.01%) whose epsilon is at most ``target_epsilon``.

    The search is ``dp_accounting.mechanism_calibration.calibrate_dp_mechanism`` on an explicit bracket;
    its contract guarantees ``compute_epsilon(noise_multiplier=result, ...) <= target_epsilon``. For the
    PLD accountant the bracket is seeded with the RDP answer (RDP epsilons are upper bounds of the PLD
    ones in practice), which keeps every PLD evaluation cheap.

    Arguments are those of :func:`compute_epsilon`, with ``target_epsilon`` (positive) instead of the
    noise multiplier.

    Raises:
        ConfigError: listing every invalid argument; or when no noise multiplier up to 1e6 is enough.
    """
    problems: list[str] = []
    if not (_is_real(target_epsilon) and target_epsilon > 0):
        problems.append(_invalid("target_epsilon", "a positive float", target_epsilon))
    _check_schedule(problems, num_examples=num_examples, batch_size=batch_size, epochs=epochs, steps=steps,
                    sampling=sampling, microbatching=microbatching)
    _check_delta(problems, delta)
    _check_accountant(problems, accountant)
    _raise_if(problems)
    schedule = _make_schedule(num_examples=num_examples, batch_size=batch_size, noise_multiplier=1.0,
                              epochs=epochs, steps=steps, sampling=sampling, microbatching=microbatching)
    target, delta = float(target_epsilon), float(delta)

    def epsilon_of(sigma: float, kind: str = accountant) -> float:
        return _epsilon(schedule.with_noise(sigma), delta, kind)

    start = 1.0
    if accountant == "pld":
        start = _bracket(lambda s: epsilon_of(s, "rdp"), target, 1.0)[1]
    low, high = _bracket(epsilon_of, target, start)
    if low is None:
        return high
    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: _new_accountant(accountant),
            lambda sigma: _event(schedule.with_noise(sigma)),
            target,
            delta,
            bracket_interval=dp_accounting.ExplicitBracketInterval(low, high),
            tol=_CALIBRATION_RTOL * high,
        )
    )


# ----------------------------------------------------------------------------------------------------
# Statement
# ----------------------------------------------------------------------------------------------------


def _format_epsilon(value: float) -> str:
    return f"{value:12.3f}" if math.isfinite(value) else f"{'inf':>12}"


def privacy_statement(
    *,
    num_examples: int,
    batch_size: float,
    noise_multiplier: float,
    delta: float,
    epochs: float | None = None,
    steps: int | None = None,
    sampling: str = DEFAULT_SAMPLING,
    microbatching: bool = False,
) -> str:
    """A plain-words report of the guarantee, with both accountants and both data-order analyses.

    ``sampling`` is the data order training really used; the statement says which row is a proven bound
    for it and which is shown for comparison only.
    """
    problems: list[str] = []
    _check_schedule(problems, num_examples=num_examples, batch_size=batch_size, epochs=epochs, steps=steps,
                    sampling=sampling, microbatching=microbatching)
    _check_noise(problems, noise_multiplier)
    _check_delta(problems, delta)
    _raise_if(problems)
    schedule = _make_schedule(num_examples=num_examples, batch_size=batch_size,
                              noise_multiplier=noise_multiplier, epochs=epochs, steps=steps,
                              sampling=sampling, microbatching=microbatching)
    poisson = dataclasses.replace(schedule, sampling="poisson")
    shuffle = dataclasses.replace(schedule, sampling="shuffle")
    eps = {
        (kind, acc): _epsilon(s, float(delta), acc)
        for kind, s in (("poisson", poisson), ("shuffle", shuffle))
        for acc in ACCOUNTANTS
    }

    def fill(text: str) -> str:
        return textwrap.fill(text, width=88)

    length = f"{schedule.steps} steps" if epochs is None else f"{epochs:g} epochs ({schedule.steps} steps)"
    doubled = " (sensitivity doubled: the accounting uses half the noise multiplier)" if microbatching else ""
    if sampling == "poisson":
        batch = f"expected batch size {batch_size:g} (sampling rate q = {schedule.sampling_probability:.4g})"
    else:
        batch = f"batch size {batch_size:g} ({schedule.steps_per_epoch} batches per epoch)"
    paragraphs = [
        fill(
            f"DP-SGD over {schedule.num_examples} examples with {batch}, noise multiplier "
            f"{noise_multiplier:g}, for {length}, "
            f"{'with' if microbatching else 'without'} microbatching{doubled}."
        ),
        fill(
            f"Example-level DP with add-or-remove-one adjacency at delta = {delta:g}. The guarantee protects "
            "the release of every intermediate model as well as the final one. It does not cover "
            "hyperparameter tuning on the same data, and it is not user-level: a person who contributed k "
            "examples is protected only through group privacy (roughly k times epsilon)."
        ),
        "\n".join([
            f"{'':44}{'RDP':>12}{'PLD':>12}",
            f"{'Poisson sampling, q per step:':44}"
            f"{_format_epsilon(eps['poisson', 'rdp'])}{_format_epsilon(eps['poisson', 'pld'])}",
            f"{'Shuffled, once per epoch ({} epochs):'.format(shuffle.participations):44}"
            f"{_format_epsilon(eps['shuffle', 'rdp'])}{_format_epsilon(eps['shuffle', 'pld'])}",
        ]),
    ]
    if sampling == "poisson":
        paragraphs.append(fill(
            "Training used Poisson sampling: every step included each example independently with "
            "probability q, so the Poisson row is a proven upper bound, provided the input pipeline really "
            "sampled that way (tfe_lite.privacy.sampling.poisson_batches), every step was taken even when "
            "its batch was empty, and the noisy gradient sum was normalised by the expected batch size, "
            "not the realised one. The shuffled row is shown for comparison."
        ))
    else:
        paragraphs.append(fill(
            "Training shuffled the data into fixed-size batches. The proven bound is the shuffled row: "
            "each example is in one batch per epoch, and no amplification by sampling is claimed. The "
            "Poisson row is NOT a bound for shuffled batches; quoting it is common practice but an "
            "assumption, and shuffling can be measurably less private than the Poisson analysis says "
            "(Chua et al., ICML 2024). Use Poisson sampling to make the Poisson row apply."
        ))
    paragraphs.append(fill(
        "RDP converts Renyi bounds to (epsilon, delta) and is looser; PLD composes discretized privacy loss "
        "distributions with pessimistic rounding and is the tighter of the two upper bounds."
    ))
    return "\n\n".join(paragraphs) + "\n"
