"""Secure computation protocols, installed as ``tfe_lite.protocols``."""

from tfe_lite.tracing import leave_unconverted

# AutoGraph calls this code and tfe_lite.keras_layers' (which imports this package) as they are inside a
# user's tf.function (see tfe_lite.tracing).
leave_unconverted()

from .pond import OnlineDealer, Pond, PrecomputedDealer, PrivateTensor, PublicTensor, TripleSource

__all__ = ["OnlineDealer", "Pond", "PrecomputedDealer", "PrivateTensor", "PublicTensor", "TripleSource"]
