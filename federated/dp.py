"""Client-level differential privacy for FedAvg (DP-FedAvg, McMahan et al. 2018).

The guarantee is about clients, not examples: adding or removing *all* the data of one client changes the
distribution of every global model released (each round's, not only the last) by at most ``(epsilon,
delta)``. One round, with tensorflow-privacy's DPQuery objects:

1. Sampling: each client takes part independently with probability ``q = clients_per_round / N`` (Poisson
   sampling, what the accounting assumes; every client when ``clients_per_round`` is None, ``q = 1``).
2. The aggregator sends the query's sample params (the current clip ``C``) with the model.
3. Each client, on its own device, runs ``query.preprocess_record(params, update)``: its update clipped
   to L2 norm ``C`` (and, for adaptive clipping, whether it was unclipped, ``+-0.5``). Every client counts
   once (weight 1): sensitivity ``C``.
4. The records are summed, plainly or by secure aggregation, and the aggregator adds the noise once:
   ``query.get_noised_result`` adds ``N(0, (z C)^2)`` to every entry of the sum (``GaussianSumQuery``, or
   ``QuantileAdaptiveClipSumQuery``, which also noises the unclipped count and moves ``C`` towards the
   target quantile). The noised sum divided by the expected number of clients ``q N`` (fixed, so one
   client's presence changes it by at most ``C / (q N)``) is the round's update.
5. Accounting: the round is ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` composed into a
   ``dp_accounting`` accountant; epsilon is reported every round. For adaptive clipping the sum gets
   ``z_sum = (z^-2 - z_count^-2)^-1/2`` and the count ``z_count = 2 clipped_count_stddev``, which together
   cost one Gaussian mechanism of multiplier ``z`` (Andrew et al. 2021), the ``noise_multiplier`` given.

Who adds the noise with secure aggregation, and why it is sound: the aggregator, once per round, on its own
device, to the sum that secure aggregation reveals to it, before anything leaves that device. Everything
anyone else ever sees (each round's global model, the final model) is computed from the noised sum only,
so it is a post-processing of the Gaussian mechanism the accountant counts; each client clips on its own
device before sharing, so the sensitivity ``C`` holds whatever other clients send. The aggregator is trusted
as in central DP to add the noise and keep the unnoised sum to itself, but with secure aggregation it never
sees an individual update, and the Pond servers only see uniformly random shares. Against the aggregator
itself this gives no DP (it sees the unnoised sum); that would need noise added inside the protocol by
parties it does not control, which is not implemented. The per-round training loss is reported outside the
guarantee (as tensorflow-privacy and Opacus report theirs).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import numbers
import textwrap
from typing import Any

import dp_accounting
import tensorflow as tf

from tfe_lite.errors import ConfigError
from tfe_lite.players import Player
from tfe_lite.privacy import AdaptiveClipping, ChaCha20Noise, SecureNoise, _tf_privacy

ACCOUNTANTS = ("rdp", "pld")


def _invalid(name: str, expected: str, value: Any) -> str:
    return f"Received an invalid value for `{name}`, expected {expected}. Received: {name}={value!r}"


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class ClientDP:
    """Client-level DP settings of :class:`~tfe_lite.federated.FedAvg`.

    Args:
        l2_norm_clip: L2 bound of each client's update (the initial clip with adaptive clipping).
        noise_multiplier: noise std over the clip; for adaptive clipping the total of the sum's and the
            count's noise (see the module docstring).
        adaptive_clipping: ``None`` for a fixed clip, or a :class:`tfe_lite.privacy.AdaptiveClipping`
            (``expected_num_records`` defaults to the expected clients per round; ``clipped_count_stddev``
            to a twentieth of it).
        delta: the delta epsilon is reported at.
        secure_noise: draw the noise with :class:`tfe_lite.privacy.SecureNoise` (fresh ``os.urandom`` key per
            round) instead of :class:`~tfe_lite.privacy.ChaCha20Noise`.
        seed: fixes the noise (tests only; not with ``secure_noise``).
        accountant: ``"rdp"`` or ``"pld"`` (dp_accounting's accountants).
    """

    l2_norm_clip: float
    noise_multiplier: float
    adaptive_clipping: AdaptiveClipping | None = None
    delta: float = 1e-5
    secure_noise: bool = False
    seed: int | None = None
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        problems = []
        if not _real(self.l2_norm_clip) or self.l2_norm_clip <= 0:
            problems.append(_invalid("l2_norm_clip", "a positive float", self.l2_norm_clip))
        if not _real(self.noise_multiplier) or self.noise_multiplier < 0:
            problems.append(_invalid("noise_multiplier", "a non-negative float", self.noise_multiplier))
        if self.adaptive_clipping is not None and not isinstance(self.adaptive_clipping, AdaptiveClipping):
            problems.append(_invalid("adaptive_clipping", "None or a tfe_lite.privacy.AdaptiveClipping", self.adaptive_clipping))
        if not _real(self.delta) or not 0 < self.delta < 1:
            problems.append(_invalid("delta", "a float in (0, 1)", self.delta))
        if not isinstance(self.secure_noise, bool):
            problems.append(_invalid("secure_noise", "a bool", self.secure_noise))
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            problems.append(_invalid("seed", "a non-negative integer or None", self.seed))
        elif self.seed is not None and self.secure_noise is True:
            problems.append(_invalid("seed", "None with secure_noise=True (secure noise cannot be seeded)", self.seed))
        if self.accountant not in ACCOUNTANTS:
            problems.append(_invalid("accountant", f"one of {ACCOUNTANTS}", self.accountant))
        if problems:
            raise ConfigError("\n".join(problems))

    def count_stddev(self, expected_clients: float) -> float | None:
        adaptive = self.adaptive_clipping
        if adaptive is None:
            return None
        if adaptive.clipped_count_stddev is not None:
            return float(adaptive.clipped_count_stddev)
        return (adaptive.expected_num_records or expected_clients) / 20

    def check(self, expected_clients: float) -> None:
        """Problems that depend on the fit (the expected clients per round), raised before the first round."""
        stddev = self.count_stddev(expected_clients)
        if stddev is not None and self.noise_multiplier > 0 and 2 * stddev <= self.noise_multiplier:
            raise ConfigError(_invalid(
                "clipped_count_stddev",
                f"more than noise_multiplier / 2 = {self.noise_multiplier / 2:g}: the noised count alone would cost "
                f"more than noise_multiplier allows for both (default: expected clients per round / 20 = "
                f"{expected_clients / 20:g}; set AdaptiveClipping(clipped_count_stddev=...))",
                stddev,
            ))


def round_event(sampling_probability: float, noise_multiplier: float) -> dp_accounting.DpEvent:
    """One DP-FedAvg round: Gaussian mechanism of multiplier ``z`` on Poisson-sampled clients."""
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_probability >= 1:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(sampling_probability, gaussian)


def _combined_noise_multiplier(event: dp_accounting.DpEvent) -> float:
    """The one Gaussian multiplier that costs what ``event`` (Gaussians on the same records) costs."""
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return float(event.noise_multiplier)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        parts = [_combined_noise_multiplier(e) for e in event.events]
        if any(z == 0 for z in parts):
            return 0.0
        return float(sum(z**-2 for z in parts) ** -0.5)
    raise ConfigError(f"Unexpected DP event from the query: {event!r}")


class ClientDPMechanism:
    """The DP side of a FedAvg: the query and its state on the aggregator, and the accountant.

    One mechanism serves every ``fit`` with the same clients and sampling; a fit with others gets a new
    query but keeps composing into the same accountant (``previous``), so epsilon covers every round run.
    """

    def __init__(self, dp: ClientDP, *, num_clients: int, expected_clients: float, aggregator: Player,
                 template: list[tf.TensorSpec], previous: "ClientDPMechanism | None" = None):
        dp.check(expected_clients)
        self.dp = dp
        self.num_clients = num_clients
        self.expected_clients = float(expected_clients)
        self.sampling_probability = min(1.0, self.expected_clients / num_clients)
        self.aggregator = aggregator
        if previous is None:
            self._accountant = dp_accounting.rdp.RdpAccountant() if dp.accountant == "rdp" else dp_accounting.pld.PLDAccountant()
            self.samplings: collections.Counter = collections.Counter()  # rounds run per sampling probability
        else:
            self._accountant, self.samplings = previous._accountant, previous.samplings
        with tf.device(aggregator.device):
            noise = SecureNoise() if dp.secure_noise else ChaCha20Noise(dp.seed)
            stddev = dp.count_stddev(self.expected_clients)
            if stddev is None:
                self.query = _tf_privacy.gaussian_sum_query(dp.l2_norm_clip, dp.noise_multiplier, noise)
            else:
                z_count = 2 * stddev
                z_sum = 0.0 if dp.noise_multiplier == 0 else (dp.noise_multiplier**-2 - z_count**-2) ** -0.5
                adaptive = dp.adaptive_clipping
                self.query = _tf_privacy.adaptive_clip_sum_query(
                    dp.l2_norm_clip, z_sum, target_unclipped_quantile=adaptive.target_unclipped_quantile,
                    learning_rate=adaptive.learning_rate, clipped_count_stddev=stddev,
                    expected_num_records=adaptive.expected_num_records or self.expected_clients,
                    geometric_update=adaptive.geometric_update, noise=noise,
                )
            self.global_state = self.query.initial_global_state()
            self._template = self.query.initial_sample_state([tf.zeros(s.shape, s.dtype) for s in template])
        self.record_shapes = [t.shape for t in tf.nest.flatten(self._template)]

    @property
    def rounds(self) -> int:
        """Rounds accounted so far (by this mechanism and the ones it continues)."""
        return sum(self.samplings.values())

    @property
    def clip(self) -> float:
        """The current clip ``C`` (it moves with adaptive clipping)."""
        return float(_tf_privacy.clip_norm(self.query, self.query.derive_sample_params(self.global_state)))

    @property
    def adaptive(self) -> bool:
        return _tf_privacy.has_adaptive_state(self.query)

    def sample_params(self) -> Any:
        """This round's params (public: the clip), on the aggregator's device."""
        with tf.device(self.aggregator.device):
            return self.query.derive_sample_params(self.global_state)

    def preprocess(self, params: Any, update: list[tf.Tensor]) -> list[tf.Tensor]:
        """A client's record, flattened (its clipped update and, adaptively, its unclipped bit), computed
        where the caller's device scope says: the client's device."""
        return tf.nest.flatten(self.query.preprocess_record(params, update))

    def noised_update(self, record_sum: list[tf.Tensor]) -> list[tf.Tensor]:
        """Noise the summed records once (on the aggregator), advance the query's state, account the round,
        and return the round's update: the noised sum over the expected clients per round."""
        with tf.device(self.aggregator.device):
            sample_state = tf.nest.pack_sequence_as(
                self._template, [tf.cast(t, s.dtype) for t, s in zip(record_sum, tf.nest.flatten(self._template))])
            noised, self.global_state, event = self.query.get_noised_result(sample_state, self.global_state)
            update = [t / self.expected_clients for t in tf.nest.flatten(noised)]
        self.account(event)
        return update

    def account(self, event: dp_accounting.DpEvent) -> None:
        self._accountant.compose(round_event(self.sampling_probability, _combined_noise_multiplier(event)))
        self.samplings[self.sampling_probability] += 1

    def skip_round(self) -> None:
        """A round that revealed nothing is still counted (an upper bound; its output is data-independent)."""
        self.account(dp_accounting.GaussianDpEvent(self.dp.noise_multiplier))

    def epsilon(self) -> float:
        if self.rounds == 0:
            return 0.0
        if self.dp.noise_multiplier == 0:
            return math.inf
        return float(self._accountant.get_epsilon(self.dp.delta))

    def statement(self, *, secure: bool, aggregator: str) -> str:
        """The guarantee of the rounds run so far, in words."""
        eps = self.epsilon()
        if len(self.samplings) > 1:
            q = min(self.samplings)
            sampling = ("each client took part in a round independently with probability q (Poisson sampling): "
                        + ", ".join(f"{n} rounds with q = {p:.4g}" for p, n in sorted(self.samplings.items())))
        else:
            q = self.sampling_probability
            sampling = ("every client took part in every round" if q >= 1 else
                        f"each of the {self.num_clients} clients took part in a round independently with probability "
                        f"q = {q:.4g} (Poisson sampling, {self.expected_clients:g} expected clients per round)")
        clip = (f"clipped adaptively (initial clip {self.dp.l2_norm_clip:g}, now {self.clip:.4g}, target unclipped "
                f"quantile {self.dp.adaptive_clipping.target_unclipped_quantile:g})" if self.adaptive else
                f"clipped to L2 norm {self.dp.l2_norm_clip:g}")
        who = (f"The aggregator {aggregator!r} added the noise once per round to the sum that secure aggregation "
               "revealed to it; no party saw an individual update." if secure else
               f"The aggregator {aggregator!r} received every clipped update and added the noise once per round.")
        text = (
            f"Client-level differential privacy: after {self.rounds} rounds, in which {sampling}, each client's "
            f"update was {clip} and Gaussian noise with std {self.dp.noise_multiplier:g} x clip was added to the sum, "
            f"the sequence of global models is ({eps:.4g}, {self.dp.delta:g})-differentially private with respect "
            f"to adding or removing all the data of one client ({self.dp.accountant.upper()} accountant of "
            f"dp_accounting, {'one' if q >= 1 else 'a Poisson-sampled'} Gaussian mechanism per round). {who} The "
            "guarantee does not cover "
            "the reported training loss or the aggregator's own view of the unnoised sum."
        )
        return textwrap.fill(text, width=100)
