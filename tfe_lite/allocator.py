"""Keep freed memory in the process: glibc malloc settings for a runtime that frees megabytes per op.

A private computation allocates and frees tensors of megabytes at every op: masks, shares, and between
processes each received message (gRPC's buffers, then the tensor it is decoded into). glibc's malloc
returns the top of an arena to the kernel once more than its trim threshold is free there (128 KiB by
default, raised to twice the largest chunk it has seen mapped and freed, up to 64 MiB), so the next
allocation page-faults those megabytes in again: for each 4 KiB page a fault, a zeroed page and a memory
cgroup charge. In a `tfe-lite serve` process receiving an 8 MiB message, the kernel's page-fault path took
more CPU time than the copies themselves (``perf`` on this project's machines).

:func:`keep_freed_memory` sets a trim threshold of 1 GiB and a mmap threshold of 32 MiB (glibc's
``mallopt``), so freed memory stays with the process for the next tensor and chunks below 32 MiB come from
the heap instead of a fresh mapping of their own. The price: a process keeps what it freed (at most its
peak use, per arena, up to 1 GiB above what it uses) instead of handing it back.

It is applied where tfe_lite sets up players (a :class:`~tfe_lite.LocalConfig`, a
:meth:`~tfe_lite.RemoteConfig.connect`, ``tfe-lite serve``), not on import. A setting the user made
through glibc's own variables (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``) is left as it is;
``TFE_LITE_MALLOC=system`` leaves malloc alone. On a C library other than glibc nothing is changed, and
:func:`keep_freed_memory` says so.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading

from tfe_lite.errors import ConfigError

#: ``mallopt`` parameter -> (glibc's number for it, the value set, glibc's environment variable for it).
SETTINGS = {
    "trim threshold": (-1, 1 << 30, "MALLOC_TRIM_THRESHOLD_"),  # M_TRIM_THRESHOLD
    "mmap threshold": (-3, 32 << 20, "MALLOC_MMAP_THRESHOLD_"),  # M_MMAP_THRESHOLD (glibc's maximum)
}
#: ``TFE_LITE_MALLOC``: ``tuned`` (the default) or ``system``.
ENV = "TFE_LITE_MALLOC"

_lock = threading.Lock()
_outcome: str | None = None


def _size(n: int) -> str:
    return f"{n >> 30} GiB" if n >= 1 << 30 else f"{n >> 20} MiB"


def keep_freed_memory() -> str:
    """Apply :data:`SETTINGS` to this process's malloc once; return what malloc now does, for a log line.

    Raises ConfigError for a ``TFE_LITE_MALLOC`` other than ``tuned`` or ``system``.
    """
    global _outcome
    with _lock:
        if _outcome is not None:
            return _outcome
        choice = os.environ.get(ENV, "tuned")
        if choice not in ("tuned", "system"):
            raise ConfigError(f"Received an invalid value for the environment variable `{ENV}`, expected "
                             f"'tuned' or 'system'. Received: {choice!r}")
        if choice == "system":
            _outcome = f"system malloc ({ENV}=system)"
        elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            _outcome = f"system malloc (not glibc: {platform.system()} {platform.libc_ver()[0] or 'libc'})"
        else:
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            parts = []
            for name, (param, value, variable) in SETTINGS.items():
                if variable in os.environ:
                    parts.append(f"{name} from {variable}")
                elif mallopt(param, value) == 1:
                    parts.append(f"{name} {_size(value)}")
                else:  # glibc refused the value: malloc keeps its own setting, and the log says so
                    parts.append(f"{name} unchanged (mallopt refused {value})")
            _outcome = "glibc malloc keeps freed memory: " + ", ".join(parts)
        return _outcome
