"""Argument checks shared by the privacy modules: messages that name the argument, expected and received
values (Keras's style), collected so that every problem is reported at once."""

from __future__ import annotations

import math
import numbers
from typing import Any

from tfe_lite.errors import ConfigError


def is_real(value: Any) -> bool:
    """A finite real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def is_int(value: Any) -> bool:
    """An integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def invalid(name: str, expected: str, value: Any) -> str:
    return f"Received an invalid value for `{name}`, expected {expected}. Received: {name}={value!r}"


def raise_if(problems: list[str]) -> None:
    """Raises one :class:`ConfigError` listing every problem, if there is any."""
    if problems:
        raise ConfigError("\n".join(problems))
