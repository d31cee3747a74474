"""Secure computation protocols, installed as ``tfe_lite.protocols``."""

from .pond import OnlineDealer, Pond, PrecomputedDealer, PrivateTensor, PublicTensor, TripleSource

__all__ = ["OnlineDealer", "Pond", "PrecomputedDealer", "PrivateTensor", "PublicTensor", "TripleSource"]
