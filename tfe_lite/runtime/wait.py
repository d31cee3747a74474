"""Waiting for players: bounded, and naming the players that could not be reached.

Players may start in any order. Before the driver hands TensorFlow its cluster, it asks every player's
server for its status (``tensorflow.WorkerService/GetStatus``, the call TensorFlow's own handshake
starts with) until all answer, for at most ``timeout`` seconds; TensorFlow's handshake with a player
that is not up would otherwise block without a bound. The answer carries the *incarnation* of the
player's device, a random number drawn when its process starts, so a player restarted since the driver
connected is told apart from one that kept running. (The gRPC client is ``grpcio``, which TensorFlow
itself requires.)
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Mapping

import grpc

from tfe_lite.errors import PartyUnavailableError

#: Seconds between two rounds of probes of the players not reached yet.
INTERVAL = 0.2
_GET_STATUS = "/tensorflow.WorkerService/GetStatus"
#: How a probe's reason starts when the port accepted the connection but the server did not answer in time.
NO_ANSWER = "no answer within"


def _incarnations(response: bytes) -> tuple[int, ...]:
    """The devices' incarnations in a GetStatusResponse (``repeated DeviceAttributes device_attributes = 1``)."""
    from tensorflow.core.framework.device_attributes_pb2 import DeviceAttributes

    found, i = [], 0
    while i < len(response):
        tag, i = _varint(response, i)
        size, i = _varint(response, i)
        if tag == (1 << 3 | 2):
            found.append(DeviceAttributes.FromString(response[i:i + size]).incarnation)
        i += size
    return tuple(found)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def probe(address: str, timeout: float) -> tuple[tuple[int, ...] | None, str | None]:
    """``(incarnations, None)`` when a TensorFlow server answers at ``address`` within ``timeout`` seconds,
    else ``(None, why not)``."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(_GET_STATUS)
        try:
            incarnations = _incarnations(call(b"", timeout=max(timeout, 0.01), wait_for_ready=False))
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                detail = error.details() or ""
                return None, "connection refused: nothing listens there" if "refused" in detail.lower() else f"unavailable: {detail}"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return None, f"{NO_ANSWER} {timeout:.1f} s"
            return None, f"not a TensorFlow server ({code.name}: {error.details()})"
        except Exception as error:  # noqa: BLE001 - a garbled answer: not a TensorFlow server
            return None, f"not a TensorFlow server ({type(error).__name__})"
    if not incarnations:
        return None, "a TensorFlow server without devices"
    return incarnations, None


def probe_all(addresses: Mapping[str, str], timeout: float) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """``({player: incarnations}, {player: reason})``: who answered, and why the others did not."""
    if not addresses:
        return {}, {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(addresses))) as pool:
        answers = dict(zip(addresses, pool.map(lambda a: probe(a, timeout), addresses.values())))
    alive = {name: inc for name, (inc, _) in answers.items() if inc is not None}
    return alive, {name: reason for name, (_, reason) in answers.items() if reason is not None}


def describe(addresses: Mapping[str, str], reasons: Mapping[str, str]) -> str:
    """``'server1' at 127.0.0.1:4441 (connection refused), ...`` for the players in ``reasons``."""
    return ", ".join(f"{name!r} at {addresses[name]} ({reason})" for name, reason in reasons.items())


def wait_for_players(addresses: Mapping[str, str], timeout: float, *, source: str = "the cluster") -> dict[str, tuple[int, ...]]:
    """Every player's incarnations once all answer; PartyUnavailableError after ``timeout`` seconds.

    The error names every player still unreachable, with its address and the last reason seen.
    """
    deadline = time.monotonic() + timeout
    pending, alive = dict(addresses), {}
    while True:
        remaining = deadline - time.monotonic()
        answered, reasons = probe_all(pending, min(1.0, max(remaining, 0.05)))
        alive.update(answered)
        pending = {name: pending[name] for name in reasons}
        if not pending:
            return alive
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PartyUnavailableError(
                f"Could not reach {len(pending)} of {len(addresses)} players of {source} within {timeout:g} s: "
                f"{describe(pending, reasons)}. Start each with `tfe-lite serve --config CLUSTER.json --player "
                "NAME` (in any order), or raise the timeout."
            )
        time.sleep(min(INTERVAL, remaining))
