"""The examples check their arguments before any work: ``--help`` answers, bad values fail naming the argument."""

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _run(script, *arguments, timeout=120):
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=EXAMPLES.parent,
    )


@pytest.mark.parametrize("script", ["dp_sgd_mnist.py", "smpc_basics.py", "encrypted_matmul.py"])
def test_help_describes_the_example_and_runs_nothing(script):
    result = _run(script, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:") and "--seed" in result.stdout
    assert "== " not in result.stdout and "Epoch" not in result.stdout  # no part, section or epoch ran
    assert result.stderr == ""  # not even TensorFlow's start-up messages: it was never imported


BAD = [
    ("dp_sgd_mnist.py", ["--batch-size", "0"], "argument --batch-size: expected a positive integer, received '0'"),
    ("dp_sgd_mnist.py", ["--sweep", "a,b"], "argument --sweep: expected comma-separated non-negative numbers"),
    ("dp_sgd_mnist.py", ["--out", "/nonexistent/dir/p.png"], "argument --out: the directory '/nonexistent/dir'"),
    ("dp_sgd_mnist.py", ["--epochs", "-1"], "argument --epochs: expected a positive integer, received '-1'"),
    ("dp_sgd_mnist.py", ["--noise", "-0.5"], "argument --noise: expected a non-negative number"),
    ("dp_sgd_mnist.py", ["--noise", "nan"], "argument --noise: expected a non-negative number"),
    ("dp_sgd_mnist.py", ["--clip", "0"], "argument --clip: expected a positive number"),
    ("dp_sgd_mnist.py", ["--learning-rate", "x"], "argument --learning-rate: expected a positive number"),
    ("dp_sgd_mnist.py", ["--data-dir", "/nonexistent"], "argument --data-dir: expected an existing directory"),
    ("dp_sgd_mnist.py", ["--accountant", "gdp"], "argument --accountant: invalid choice: 'gdp'"),
    ("dp_sgd_mnist.py", ["--limit", "100", "--batch-size", "128"],
     "argument --batch-size: expected at most --limit=100"),
    ("smpc_basics.py", ["--seed", "-1"], "argument --seed: expected a non-negative integer, received '-1'"),
    ("smpc_basics.py", ["--part", "3"], "argument --part: invalid choice: '3'"),
    ("smpc_basics.py", ["--unknown"], "unrecognized arguments: --unknown"),
    ("encrypted_matmul.py", ["--runs", "0"], "argument --runs: expected a positive integer, received '0'"),
    ("encrypted_matmul.py", ["--size", "x"], "argument --size: expected a positive integer, received 'x'"),
    ("encrypted_matmul.py", ["--batch", "2.5"], "argument --batch: expected a positive integer, received '2.5'"),
]


@pytest.mark.parametrize("script, arguments, message", BAD, ids=[f"{s}{' '.join(a)}" for s, a, _ in BAD])
def test_bad_arguments_fail_before_any_work(script, arguments, message):
    result = _run(script, *arguments)
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert message in result.stderr
    assert result.stdout == ""  # nothing ran: no part, section or epoch was printed


@pytest.mark.slow
def test_dp_sgd_mnist_without_noise_runs_to_its_plot(tmp_path):
    # --noise 0 used to fail in matplotlib's log scale after training (epsilon is inf).
    out = tmp_path / "plot.png"
    result = _run("dp_sgd_mnist.py", "--limit", "200", "--epochs", "1", "--batch-size", "50", "--noise", "0",
                  "--sweep", "", "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epsilon inf" in result.stdout and "[2/2] DP-SGD" in result.stdout
    assert out.stat().st_size > 0
