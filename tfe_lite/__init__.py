"""tfe_lite: encrypted and private machine learning for TensorFlow and Keras.

Re-exports only; importing tfe_lite configures nothing. Protocols live in :mod:`tfe_lite.protocols`,
differential privacy in :mod:`tfe_lite.privacy`.
"""

from tfe_lite.errors import (
    ConfigError, EncodingError, PlayerError, ProtocolError, ShapeError, TfeLiteError, TripleExhaustedError,
)
from tfe_lite.fixedpoint import PRESETS, FixedPointConfig, decode, encode
from tfe_lite.players import Config, LocalConfig, Player
from tfe_lite.runtime import RemoteConfig

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "Config", "ConfigError", "EncodingError", "FixedPointConfig", "LocalConfig", "Player",
    "PlayerError", "ProtocolError", "RemoteConfig", "ShapeError", "TfeLiteError", "TripleExhaustedError", "decode", "encode",
]
