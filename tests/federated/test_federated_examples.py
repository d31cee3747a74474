"""The federated examples: --help and bad arguments answer before any work; small runs go to the end."""

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = ["virtual_workers.py", "federated_two_schools.py", "federated_many_clients.py"]


def _run(script, *arguments, timeout=300):
    return subprocess.run([sys.executable, str(EXAMPLES / script), *arguments], capture_output=True, text=True,
                          timeout=timeout, cwd=EXAMPLES.parent)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_runs_nothing(script):
    result = _run(script, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:") and "--seed" in result.stdout
    assert result.stderr == ""  # TensorFlow was never imported


BAD = [
    ("federated_two_schools.py", ["--rounds", "0"], "argument --rounds: expected a positive integer, received '0'"),
    ("federated_two_schools.py", ["--noise", "-1"], "argument --noise: expected a non-negative number"),
    ("federated_two_schools.py", ["--clip", "0"], "argument --clip: expected a positive number"),
    ("federated_two_schools.py", ["--limit", "10"], "argument --limit: expected at least 2 x --batch-size = 64"),
    ("federated_two_schools.py", ["--data-dir", "/nonexistent"], "argument --data-dir: expected an existing directory"),
    ("federated_many_clients.py", ["--clients-per-round", "20", "--clients", "10"], "expected at most --clients=10"),
    ("federated_many_clients.py", ["--replicas", "-1"], "argument --replicas: expected a non-negative integer"),
    ("federated_many_clients.py", ["--clients", "5000"], "argument --clients: expected at most 2000"),
    ("virtual_workers.py", ["--seed", "x"], "argument --seed: expected a non-negative integer, received 'x'"),
]


@pytest.mark.parametrize("script, arguments, message", BAD, ids=[f"{s} {' '.join(a)}" for s, a, _ in BAD])
def test_bad_arguments_fail_before_any_work(script, arguments, message):
    result = _run(script, *arguments)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert result.stdout == ""


@pytest.mark.slow
def test_virtual_workers_walk_through():
    result = _run("virtual_workers.py")
    assert result.returncode == 0, result.stderr[-3000:]
    for part in ("LocationError", "ObjectNotFoundError", "[2. 3. 4.]", "labels [1 1 1 1 1 1]"):
        assert part in result.stdout, part


@pytest.mark.slow
def test_two_schools_with_secure_aggregation_and_dp():
    result = _run("federated_two_schools.py", "--limit", "256", "--rounds", "2", "--local-epochs", "1",
                  "--secure-aggregation", "--dp")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Round 2/2" in out and "val_accuracy" in out and "epsilon" in out and "centralized test accuracy" in out
    assert "no party saw an individual update" in out  # the privacy statement, with secure aggregation


@pytest.mark.slow
def test_many_clients_in_waves():
    result = _run("federated_many_clients.py", "--clients", "8", "--clients-per-round", "4", "--replicas", "2",
                  "--rounds", "2", "--secure-aggregation")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 clients" in result.stdout and "Round 2/2" in result.stdout and "Test accuracy after 2 rounds" in result.stdout
