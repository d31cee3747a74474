"""The exception hierarchy of tfe_lite.

Every error raised on purpose by the library derives from :class:`TfeLiteError`. Subclasses also derive
from the built-in exception a caller would expect (``ValueError`` for bad arguments, ``RuntimeError`` for a
runtime that cannot serve), so ``except ValueError`` keeps working.
"""


class TfeLiteError(Exception):
    """Base class of every error raised on purpose by tfe_lite."""


class ConfigError(TfeLiteError, ValueError):
    """An invalid configuration value (fixed-point settings, player names, protocol options)."""


class PlayerError(ConfigError):
    """A player name that the configuration does not know, or a player used in the wrong role."""


class EncodingError(TfeLiteError, ValueError):
    """A value that cannot be encoded in the fixed-point ring: NaN, Inf or out of range."""


class ShapeError(TfeLiteError, ValueError):
    """Operands whose shapes do not fit the operation."""


class ProtocolError(TfeLiteError, ValueError):
    """Misuse of a protocol: mixing tensors of two protocol instances, unsupported operand kinds."""


class TripleExhaustedError(TfeLiteError, RuntimeError):
    """A precomputed (offline) dealer ran out of triples for a requested shape."""


class UnsupportedLayerError(TfeLiteError, ValueError):
    """A Keras layer (or layers) that has no private or DP counterpart."""


class RuntimeConfigError(TfeLiteError, RuntimeError):
    """The TensorFlow runtime cannot be configured as asked (for example, devices after initialization)."""


class PartyUnavailableError(TfeLiteError, RuntimeError):
    """A player (party) that should take part in a computation cannot be reached."""


class PrivacyBudgetExceededError(TfeLiteError, RuntimeError):
    """Training was asked to continue although its differential-privacy budget is already spent."""
