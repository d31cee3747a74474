"""The validated settings of DP-SGD: :class:`DPConfig` (what :func:`tfe_lite.privacy.make_private` takes) and
:class:`AdaptiveClipping` (the options of a clip that follows a quantile of the record norms).

Both are frozen dataclasses that check every field when built and report every invalid one at once. The
config derives what the mechanism needs from them: the noise multipliers of the gradient sum and of
adaptive clipping's count, the per-step DP event, and the tensorflow-privacy query that adds the noise.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import dp_accounting

from tfe_lite.errors import ConfigError
from tfe_lite.privacy import _tf_privacy, accounting
from tfe_lite.privacy._validation import invalid as _invalid
from tfe_lite.privacy._validation import is_int as _is_int
from tfe_lite.privacy._validation import is_real as _is_real
from tfe_lite.privacy.clipping import CLIPPING_METHODS
from tfe_lite.privacy.noise import make_noise_source


@dataclasses.dataclass(frozen=True)
class AdaptiveClipping:
    """Options of adaptive clipping (tensorflow-privacy's ``QuantileAdaptiveClipSumQuery``).

    The clip moves towards the ``target_unclipped_quantile`` of record norms, estimated from a count of
    unclipped records noised with std ``clipped_count_stddev`` (default ``expected_num_records / 20``, the
    recommendation of Andrew et al. 2021). That count is a second Gaussian mechanism on the same records,
    with sensitivity 0.5, so noise multiplier ``z_count = 2 clipped_count_stddev``. The ``noise_multiplier``
    given to :func:`make_private` is the total: the gradient sum gets ``z_sum = (z^-2 - z_count^-2)^-1/2``,
    and the two mechanisms together cost exactly what one Gaussian mechanism with multiplier ``z`` costs
    (Andrew et al. 2021, sec. 3.1), so ``compute_epsilon(noise_multiplier=z, ...)`` accounts for both. This
    needs ``z_count > z``.

    Attributes:
        target_unclipped_quantile: fraction of records that should stay unclipped, in [0, 1].
        learning_rate: adaptation rate; with geometric updates the clip changes by at most ``exp(rate)``.
        clipped_count_stddev: noise std of the unclipped count; ``None`` for ``expected_num_records / 20``.
        expected_num_records: expected records per global batch; ``None`` to use ``expected_batch_size``.
        geometric_update: multiplicative (recommended) rather than additive updates.
    """

    target_unclipped_quantile: float = 0.5
    learning_rate: float = 0.2
    clipped_count_stddev: float | None = None
    expected_num_records: float | None = None
    geometric_update: bool = True

    def __post_init__(self) -> None:
        problems = []
        q = self.target_unclipped_quantile
        if not _is_real(q) or not 0 <= q <= 1:
            problems.append(_invalid("target_unclipped_quantile", "a float in [0, 1]", q))
        if not _is_real(self.learning_rate) or self.learning_rate < 0:
            problems.append(_invalid("learning_rate", "a non-negative float", self.learning_rate))
        stddev = self.clipped_count_stddev
        if stddev is not None and (not _is_real(stddev) or stddev < 0):
            problems.append(_invalid("clipped_count_stddev", "a non-negative float or None", stddev))
        records = self.expected_num_records
        if records is not None and (not _is_real(records) or records <= 0):
            problems.append(_invalid("expected_num_records", "a positive number or None", records))
        if not isinstance(self.geometric_update, bool):
            problems.append(_invalid("geometric_update", "a bool", self.geometric_update))
        if problems:
            raise ConfigError("\n".join(problems))


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """The validated DP-SGD settings of a :class:`DPModel` (see :func:`make_private` for their meaning)."""

    l2_norm_clip: float
    noise_multiplier: float
    num_microbatches: int | None = None
    clipping: str = "auto"
    adaptive_clipping: AdaptiveClipping | None = None
    secure_noise: bool = False
    seed: int | None = None
    expected_batch_size: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not _is_real(self.l2_norm_clip) or self.l2_norm_clip <= 0:
            problems.append(_invalid("l2_norm_clip", "a positive float", self.l2_norm_clip))
        if not _is_real(self.noise_multiplier) or self.noise_multiplier < 0:
            problems.append(_invalid("noise_multiplier", "a non-negative float", self.noise_multiplier))
        m = self.num_microbatches
        if m is not None and (not _is_int(m) or m < 1):
            problems.append(_invalid("num_microbatches", "a positive integer or None", m))
        if self.clipping not in CLIPPING_METHODS:
            problems.append(_invalid("clipping", f"one of {CLIPPING_METHODS}", self.clipping))
        adaptive = self.adaptive_clipping
        if adaptive is not None and not isinstance(adaptive, AdaptiveClipping):
            problems.append(_invalid("adaptive_clipping", "None or an AdaptiveClipping", adaptive))
        if not isinstance(self.secure_noise, bool):
            problems.append(_invalid("secure_noise", "a bool", self.secure_noise))
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            problems.append(_invalid("seed", "a non-negative integer or None", self.seed))
        if self.secure_noise is True and self.seed is not None:
            problems.append(
                _invalid("seed", "None with secure_noise=True (secure noise cannot be seeded)", self.seed)
            )
        size = self.expected_batch_size
        if size is not None and (not _is_int(size) or size < 1):
            problems.append(_invalid("expected_batch_size", "a positive integer or None", size))
        elif size is not None and m is not None:
            problems.append(
                _invalid(
                    "expected_batch_size", "None when num_microbatches is set (Poisson batches vary)", size
                )
            )
        if (
            isinstance(adaptive, AdaptiveClipping)
            and adaptive.expected_num_records is None
            and size is None
        ):
            problems.append(
                _invalid(
                    "adaptive_clipping",
                    "expected_num_records, or expected_batch_size given to make_private",
                    adaptive,
                )
            )
        elif (
            isinstance(adaptive, AdaptiveClipping)
            and _is_real(self.noise_multiplier)
            and self.noise_multiplier > 0
            and self.count_noise_multiplier <= self.noise_multiplier
        ):
            problems.append(
                _invalid(
                    "clipped_count_stddev",
                    f"more than noise_multiplier / 2 = {self.noise_multiplier / 2:g} (the noised count alone "
                    "would cost more privacy than noise_multiplier allows for both; default: "
                    "expected_num_records / 20)",
                    self.count_stddev,
                )
            )
        if problems:
            raise ConfigError("\n".join(problems))

    @property
    def expected_num_records(self) -> float | None:
        """Adaptive clipping's expected records per global batch (``None`` for a fixed clip)."""
        adaptive = self.adaptive_clipping
        return None if adaptive is None else adaptive.expected_num_records or self.expected_batch_size

    @property
    def count_stddev(self) -> float | None:
        """Adaptive clipping's noise std on the unclipped count (``None`` for a fixed clip)."""
        adaptive = self.adaptive_clipping
        if adaptive is None:
            return None
        if adaptive.clipped_count_stddev is not None:
            return adaptive.clipped_count_stddev
        return self.expected_num_records / 20

    @property
    def count_noise_multiplier(self) -> float | None:
        """Adaptive clipping's count mechanism: ``2 clipped_count_stddev`` (sensitivity 0.5)."""
        stddev = self.count_stddev
        return None if stddev is None else 2.0 * stddev

    @property
    def sum_noise_multiplier(self) -> float:
        """The gradient sum's noise multiplier: ``noise_multiplier``, less the share adaptive clipping's
        count takes (see :class:`AdaptiveClipping`)."""
        count = self.count_noise_multiplier
        if count is None or self.noise_multiplier == 0:
            return float(self.noise_multiplier)
        return accounting.split_noise_multiplier(self.noise_multiplier, count)

    def to_dict(self) -> dict[str, Any]:
        config = dataclasses.asdict(self)
        return config

    def dp_event(self) -> dp_accounting.DpEvent:
        """The privacy event of one step before batch sampling, as tensorflow-privacy's query reports it.

        A Gaussian mechanism with ``noise_multiplier``. With adaptive clipping, the gradient sum's mechanism
        (``sum_noise_multiplier``) composed with the noised unclipped count's (sensitivity 0.5, hence
        multiplier ``2 clipped_count_stddev``); together they cost what ``GaussianDpEvent(noise_multiplier)``
        costs. An accountant wraps it in the sampling event (Poisson or fixed-size) and composes it over
        steps.
        """
        gradient = dp_accounting.GaussianDpEvent(self.sum_noise_multiplier)
        if self.adaptive_clipping is None:
            return gradient
        count = dp_accounting.GaussianDpEvent(self.count_noise_multiplier)
        return dp_accounting.ComposedDpEvent([gradient, count])

    def make_query(self) -> _tf_privacy.DPQuery:
        """tensorflow-privacy's sum query for these settings, its noise from a new noise source (created
        where it is called: inside ``strategy.scope()`` under ``tf.distribute``)."""
        adaptive = self.adaptive_clipping
        noise = make_noise_source(secure=self.secure_noise, seed=self.seed, shared=adaptive is not None)
        if adaptive is None:
            return _tf_privacy.gaussian_sum_query(self.l2_norm_clip, self.noise_multiplier, noise)
        return _tf_privacy.adaptive_clip_sum_query(
            self.l2_norm_clip,
            self.sum_noise_multiplier,
            target_unclipped_quantile=adaptive.target_unclipped_quantile,
            learning_rate=adaptive.learning_rate,
            clipped_count_stddev=self.count_stddev,
            expected_num_records=self.expected_num_records,
            geometric_update=adaptive.geometric_update,
            noise=noise,
        )

    @classmethod
    def from_arguments(cls, adaptive_clipping: Any = None, **kwargs: Any) -> DPConfig:
        """Builds the config, accepting ``adaptive_clipping`` as None, True, a dict or AdaptiveClipping."""
        if adaptive_clipping is True:
            adaptive_clipping = AdaptiveClipping()
        elif adaptive_clipping is False:
            adaptive_clipping = None
        elif isinstance(adaptive_clipping, dict):
            unknown = set(adaptive_clipping) - {f.name for f in dataclasses.fields(AdaptiveClipping)}
            if unknown:
                raise ConfigError(
                    _invalid("adaptive_clipping", "AdaptiveClipping options only", adaptive_clipping)
                    + f" (unknown options: {sorted(unknown)})"
                )
            adaptive_clipping = AdaptiveClipping(**adaptive_clipping)
        return cls(adaptive_clipping=adaptive_clipping, **kwargs)
