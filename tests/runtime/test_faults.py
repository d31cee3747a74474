"""Faults: a player missing at start, killed mid-run, restarted, or stopped (SIGSTOP: hung, not dead): a
clear error naming the player within the driver's timeout or hang timeout (no hang), and the next
computation after a restart (or SIGCONT) succeeds."""

import json
import os
import signal
import time

import numpy as np
import pytest

import scenarios

# Time bounds measured on a machine the cluster has to itself: `make test` runs this after the parallel suite.
pytestmark = [pytest.mark.slow, pytest.mark.serial]

TIMEOUT = 5.0  # the driver's RemoteConfig timeout
HANG_TIMEOUT = 4.0  # and its hang_timeout (watchdog)
SLACK = 10.0  # Python start-up of the driver is not in it; a loaded 2-core machine


def address(processes, player):
    return json.loads(processes.cluster.read_text())["players"][player]


def test_missing_killed_and_restarted_players_are_named_and_the_run_after_their_start_succeeds(processes):
    # Missing at start: named with its address within the timeout; once it runs, the next run succeeds.
    processes.serve("server0", "server1", "crypto-producer")
    driver = processes.driver("faults", timeout=TIMEOUT, hang_timeout=HANG_TIMEOUT)
    missing = driver.result()
    assert missing["ok"] is False and missing["error"] == "PartyUnavailableError"
    assert TIMEOUT <= missing["seconds"] < TIMEOUT + SLACK
    assert f"Could not reach 1 of 4 players of {processes.cluster} within {TIMEOUT:g} s: 'alice' at " \
           f"{address(processes, 'alice')} (connection refused" in missing["message"]
    processes.serve("alice")
    driver.send("go")
    started = driver.result()
    assert started["ok"] is True, str(started)
    first = np.asarray(started["value"])
    v = scenarios.inputs()
    assert np.abs(first - v["x"] @ v["w"]).max() < 1e-3
    driver.send("stale")  # a variable made before the driver connected: named as such, not a raw TF error
    stale = driver.result()
    assert stale["ok"] is False and stale["error"] == "RuntimeConfigError"
    assert "made before this process connected" in stale["message"] and "/job:localhost" in stale["message"]

    # Killed while computations run.
    driver.send("loop")
    driver.expect("RESULT ", 60)  # {"looping": true}: computations are running
    time.sleep(0.5)
    processes.players["server1"].kill()
    killed = time.monotonic()
    lost = driver.result(timeout=TIMEOUT + SLACK)
    assert time.monotonic() - killed < TIMEOUT + SLACK
    assert lost["ok"] is False and lost["error"] == "PartyUnavailableError" and lost["runs"] >= 1
    # usually "(connection refused"; a process still dying under load may not have closed its port yet
    assert f"unreachable: 'server1' at {address(processes, 'server1')} (" in lost["message"], lost["message"]
    assert "tfe-lite serve --config" in lost["message"]

    time.sleep(HANG_TIMEOUT + 2)  # dead longer than the hang timeout: still reported as dead, not as hung
    driver.send("go")  # still down: named again, within the timeout
    again = driver.result(timeout=TIMEOUT + SLACK)
    assert again["ok"] is False and f"'server1' at {address(processes, 'server1')} (connection refused" in again["message"]
    assert "hung" not in again["message"]
    assert again["seconds"] < TIMEOUT + SLACK

    processes.serve("server1")
    driver.send("go")
    back = driver.result()
    assert back["ok"] is True, str(back)
    np.testing.assert_array_equal(np.asarray(back["value"]), first)  # same seeds, same shares, same result

    # Restarted between two computations: up again, but without the driver's context and its keys.
    processes.players["crypto-producer"].kill()
    processes.serve("crypto-producer")
    driver.send("go")
    restarted = driver.result(timeout=TIMEOUT + SLACK)
    assert restarted["ok"] is False and restarted["error"] == "PartyUnavailableError"
    assert f"restarted since the driver connected (its context, keys and shares are gone): 'crypto-producer' at " \
           f"{address(processes, 'crypto-producer')}" in restarted["message"]
    driver.send("go")
    back = driver.result()
    assert back["ok"] is True, str(back)
    np.testing.assert_array_equal(np.asarray(back["value"]), first)

    # Stopped (SIGSTOP) while computations run: its port still accepts connections and TCP still acknowledges,
    # so only the watchdog's unanswered status probes reveal it; the driver cuts its connections to every player
    # (a healthy player's call may be the one waiting, for a share from the stopped one).
    driver.send("loop")
    driver.expect("RESULT ", 60)
    time.sleep(0.5)
    stopped_pid = processes.players["server0"].popen.pid
    os.kill(stopped_pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        hung = driver.result(timeout=HANG_TIMEOUT + SLACK)
        waited = time.monotonic() - stopped
    finally:
        os.kill(stopped_pid, signal.SIGCONT)
    assert HANG_TIMEOUT <= waited < HANG_TIMEOUT + SLACK
    assert hung["ok"] is False and hung["error"] == "PartyUnavailableError" and hung["runs"] >= 1
    assert f"unreachable: 'server0' at {address(processes, 'server0')} (hung: no answer for " in hung["message"]
    assert "a stopped or frozen process; the driver cut its connections to the cluster" in hung["message"]
    driver.send("go")  # resumed: the next computation reconnects and gives the same result
    back = driver.result()
    assert back["ok"] is True, str(back)
    np.testing.assert_array_equal(np.asarray(back["value"]), first)
