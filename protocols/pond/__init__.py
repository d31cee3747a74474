"""The Pond three-party protocol (two share-holding servers and a crypto producer)."""

from .comm import CommunicationLog, Transfer
from .dealer import OnlineDealer, PrecomputedDealer, Triple, TripleSource, TripleSpec
from .protocol import Pond
from .tensors import PondTensor, PrivateTensor, PublicTensor

__all__ = [
    "CommunicationLog", "OnlineDealer", "Pond", "PondTensor", "PrecomputedDealer", "PrivateTensor",
    "PublicTensor", "Transfer", "Triple", "TripleSource", "TripleSpec",
]
