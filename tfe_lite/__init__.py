"""tfe_lite: encrypted and private machine learning for TensorFlow and Keras.

Re-exports only; importing tfe_lite configures nothing and does not import TensorFlow: the names below
(and submodules such as ``tfe_lite.ops``) load on first use (PEP 562), so a command that only re-executes
itself, such as ``tfe-lite serve``, starts without TensorFlow. Protocols live in :mod:`tfe_lite.protocols`,
differential privacy in :mod:`tfe_lite.privacy`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: Exported name -> the module that defines it.
_EXPORTS = {
    **dict.fromkeys(("ConfigError", "EncodingError", "PlayerError", "ProtocolError", "ShapeError", "TfeLiteError",
                     "TripleExhaustedError"), "tfe_lite.errors"),
    **dict.fromkeys(("PRESETS", "FixedPointConfig", "decode", "encode"), "tfe_lite.fixedpoint"),
    **dict.fromkeys(("Config", "LocalConfig", "Player"), "tfe_lite.players"),
    "RemoteConfig": "tfe_lite.runtime.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from tfe_lite.errors import (
        ConfigError, EncodingError, PlayerError, ProtocolError, ShapeError, TfeLiteError, TripleExhaustedError,
    )
    from tfe_lite.fixedpoint import PRESETS, FixedPointConfig, decode, encode
    from tfe_lite.players import Config, LocalConfig, Player
    from tfe_lite.runtime.config import RemoteConfig
