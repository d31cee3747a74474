"""Faults: a player missing at start, killed mid-run, restarted: a clear error naming the player within
the driver's timeout (no hang), and the next computation after a restart succeeds."""

import json
import time

import numpy as np
import pytest

import scenarios
from conftest import READY_TIMEOUT

pytestmark = pytest.mark.slow

TIMEOUT = 5.0  # the driver's RemoteConfig timeout
SLACK = 10.0  # Python start-up of the driver is not in it; a loaded 2-core machine


def address(processes, player):
    return json.loads(processes.cluster.read_text())["players"][player]


def test_a_missing_player_is_named_within_the_timeout_then_starting_it_is_enough(processes):
    processes.serve("server0", "server1", "crypto-producer")
    driver = processes.driver("connect", timeout=TIMEOUT)
    report = driver.result()
    assert report["ok"] is False and report["error"] == "PartyUnavailableError"
    assert TIMEOUT <= report["seconds"] < TIMEOUT + SLACK
    assert f"Could not reach 1 of 4 players of {processes.cluster} within {TIMEOUT:g} s: 'alice' at " \
           f"{address(processes, 'alice')} (connection refused" in report["message"]
    # Players may start in any order: a driver started before alice connects once alice is up.
    late = processes.driver("connect", timeout=READY_TIMEOUT)
    processes.serve("alice")
    assert late.result()["ok"] is True


def test_a_player_killed_mid_run_or_restarted_is_named_and_the_run_after_its_restart_succeeds(processes):
    processes.serve("server0", "server1", "crypto-producer", "alice")
    driver = processes.driver("faults", timeout=TIMEOUT)
    first = np.asarray(driver.result()["value"])
    v = scenarios.inputs()
    assert np.abs(first - v["x"] @ v["w"]).max() < 1e-3

    # Killed while computations run.
    driver.send("loop")
    driver.expect("RESULT ", 60)  # {"looping": true}: computations are running
    time.sleep(0.5)
    processes.players["server1"].kill()
    killed = time.monotonic()
    lost = driver.result(timeout=TIMEOUT + SLACK)
    assert time.monotonic() - killed < TIMEOUT + SLACK
    assert lost["ok"] is False and lost["error"] == "PartyUnavailableError" and lost["runs"] >= 1
    assert f"unreachable: 'server1' at {address(processes, 'server1')} (connection refused" in lost["message"]
    assert "tfe-lite serve --config" in lost["message"]

    driver.send("go")  # still down: named again, within the timeout
    again = driver.result(timeout=TIMEOUT + SLACK)
    assert again["ok"] is False and f"'server1' at {address(processes, 'server1')}" in again["message"]
    assert again["seconds"] < TIMEOUT + SLACK

    processes.serve("server1")
    driver.send("go")
    back = driver.result()
    assert back["ok"] is True
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
    assert back["ok"] is True
    np.testing.assert_array_equal(np.asarray(back["value"]), first)
