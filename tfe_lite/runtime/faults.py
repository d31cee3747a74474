"""TensorFlow's runtime errors about lost players, as :class:`~tfe_lite.errors.PartyUnavailableError`.

A player killed during a computation makes TensorFlow's gRPC calls fail with ``UNAVAILABLE`` (connection
refused or reset; the driver sets ``GRPC_FAIL_FAST=true`` so that no call waits for a player to come
back); a player restarted since the driver connected answers ``ABORTED`` (it no longer knows the driver's
context, and the keys, shares and triples it held in memory are gone; often TensorFlow only says "Socket
closed"). Either way the computation cannot go on: the error names the players concerned, found by asking
every player for its status (unreachable, or restarted: a new device incarnation) and from the addresses
and ``/job:`` names in TensorFlow's message, and says how to recover.
"""

from __future__ import annotations

import re
import time
from typing import Mapping

import tensorflow as tf

from tfe_lite.errors import PartyUnavailableError
from tfe_lite.runtime.cluster import job_name
from tfe_lite.runtime.wait import describe, probe_all

#: Errors that always mean a player was lost.
LOST = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError)
#: Errors that mean it when a player is then found unreachable.
MAYBE_LOST = (tf.errors.CancelledError, tf.errors.InternalError, tf.errors.UnknownError, tf.errors.NotFoundError)
#: Seconds each player gets to answer the probe made after a failure.
PROBE_TIMEOUT = 1.0
#: Seconds before a player that neither answered nor refused is probed once more.
RETRY_DELAY = 0.5

_JOB = re.compile(r"/job:([A-Za-z0-9_]+)")


def mentioned(message: str, addresses: Mapping[str, str]) -> list[str]:
    """The players whose address or TensorFlow job appears in ``message``, in cluster order."""
    jobs = set(_JOB.findall(message))
    return [name for name, address in addresses.items() if address in message or job_name(name) in jobs]


def _first_line(error: tf.errors.OpError) -> str:
    lines = [line.strip() for line in str(error.message).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def translate(error: Exception, addresses: Mapping[str, str], *, source: str,
              incarnations: Mapping[str, tuple[int, ...]] | None = None,
              hung: Mapping[str, float] | None = None) -> PartyUnavailableError | None:
    """A PartyUnavailableError for ``error`` when it means a player was lost, else None.

    ``addresses``: the served players; ``incarnations``: theirs when the driver connected, to tell a
    restarted player (new incarnation) from one that kept running; ``hung``: the players the watchdog found
    silent for its hang timeout, and for how long (it then cut the driver's connections to the cluster,
    :mod:`tfe_lite.runtime.watchdog`).
    """
    if not isinstance(error, LOST + MAYBE_LOST):
        return None
    alive, unreachable = probe_all(addresses, PROBE_TIMEOUT)
    unsure = {name: addresses[name] for name, why in unreachable.items() if not why.startswith("connection refused")}
    if unsure:  # a killed process may still hold its port for a moment: ask once more for a clearer reason
        time.sleep(RETRY_DELAY)
        again_alive, again = probe_all(unsure, PROBE_TIMEOUT)
        for name in unsure:
            if name in again_alive:
                alive[name] = again_alive.pop(name)
                unreachable.pop(name)
            else:
                unreachable[name] = again[name]
    for name, seconds in (hung or {}).items():
        # silent again, or its listen queue full ("failed to connect"); a refused connection means it died since
        if name in unreachable and not unreachable[name].startswith("connection refused"):
            unreachable[name] = (f"hung: no answer for {seconds:.0f} s, a stopped or frozen process; the driver "
                                 "cut its connections to the cluster")
    restarted = [name for name, inc in alive.items() if incarnations and name in incarnations and incarnations[name] != inc]
    named = [name for name in mentioned(str(error.message), addresses) if name not in unreachable and name not in restarted]
    if not isinstance(error, LOST) and not unreachable and not restarted:
        return None
    parts = []
    if unreachable:
        parts.append(f"unreachable: {describe(addresses, unreachable)}")
    if restarted:
        parts.append("restarted since the driver connected (its context, keys and shares are gone): "
                     + ", ".join(f"{name!r} at {addresses[name]}" for name in restarted))
    if named and not parts:
        parts.append("failed: " + ", ".join(f"{name!r} at {addresses[name]}" for name in named))
    if not parts:
        parts.append("a player of the cluster failed (TensorFlow did not say which; all answer now)")
    return PartyUnavailableError(
        f"The computation on {source} stopped: {'; '.join(parts)}. TensorFlow reported "
        f"{type(error).__name__}: {_first_line(error)}. Resume a hung player or restart a stopped one with `tfe-lite serve --config "
        "CLUSTER.json --player NAME`; a new protocol instance on this config then reconnects (values held only "
        "in the players' memory for this computation are lost; saved checkpoints are not touched)."
    )
