"""Differential privacy for any Keras 3 model: DP-SGD, accounting, sampling, membership inference.

Uses no protocol code. See :func:`make_private`; a DP model answers ``privacy_spent(delta)`` for the steps it
trained (:mod:`tfe_lite.privacy.ledger`); :func:`compute_epsilon` plans a run before it happens.
"""

from tfe_lite.privacy.accounting import compute_epsilon, compute_noise_multiplier, dp_sgd_event, privacy_statement
from tfe_lite.privacy.attacks import (
    AttackResult, lira_attack, loss_threshold_attack, loss_threshold_attack_on_model,
)
from tfe_lite.privacy.callbacks import PrivacyBudgetCallback
from tfe_lite.privacy.ledger import PrivacyLedger
from tfe_lite.privacy.model import AdaptiveClipping, DPConfig, DPModel, make_private
from tfe_lite.privacy.noise import ChaCha20Noise, GeneratorNoise, SecureNoise
from tfe_lite.privacy.sampling import poisson_batches

__all__ = [
    "AdaptiveClipping", "AttackResult", "ChaCha20Noise", "DPConfig", "DPModel", "GeneratorNoise",
    "PrivacyBudgetCallback", "PrivacyLedger", "SecureNoise", "compute_epsilon", "compute_noise_multiplier",
    "dp_sgd_event",
    "lira_attack", "loss_threshold_attack", "loss_threshold_attack_on_model", "make_private",
    "poisson_batches", "privacy_statement",
]
