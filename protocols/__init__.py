"""Secure computation protocols, installed as ``tfe_lite.protocols``."""

from tfe_lite.tracing import leave_unconverted

leave_unconverted()  # AutoGraph calls this code as it is inside a user's tf.function (see tfe_lite.tracing)

from .pond import OnlineDealer, Pond, PrecomputedDealer, PrivateTensor, PublicTensor, TripleSource

__all__ = ["OnlineDealer", "Pond", "PrecomputedDealer", "PrivateTensor", "PublicTensor", "TripleSource"]
