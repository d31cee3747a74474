"""Errors of the federated package; each derives from :class:`tfe_lite.errors.TfeLiteError`.

Bad arguments keep raising the core's :class:`~tfe_lite.errors.ConfigError`, :class:`~tfe_lite.errors.ShapeError`
and :class:`~tfe_lite.errors.EncodingError`; these add what only pointers and placement can get wrong.
"""

from tfe_lite.errors import TfeLiteError


class LocationError(TfeLiteError, ValueError):
    """An operation that mixes values held by two different workers (or a value held elsewhere)."""


class ObjectNotFoundError(TfeLiteError, LookupError):
    """A pointer whose object is no longer on its worker (retrieved with ``get``, moved, or cleared)."""


class PlacementError(TfeLiteError, RuntimeError):
    """A client's private value found on a device other than its client's: refused rather than sent on."""
