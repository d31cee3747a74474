"""examples/private_inference_mnist.py: --help and bad arguments answer before TensorFlow is imported; a
small run converts, predicts privately and meets the agreement target."""

import pathlib
import re
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "examples" / "private_inference_mnist.py"


def _run(*arguments, timeout=60):
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=timeout,
                          cwd=SCRIPT.parents[1])


def test_help_runs_nothing():
    result = _run("--help")
    assert result.returncode == 0 and result.stdout.startswith("usage:") and "--batch-size" in result.stdout
    assert result.stderr == ""  # TensorFlow was never imported


@pytest.mark.parametrize("arguments, message", [
    (["--epochs", "0"], "argument --epochs: expected a positive integer, received '0'"),
    (["--batch-size", "-4"], "argument --batch-size: expected a positive integer, received '-4'"),
    (["--test-limit", "x"], "argument --test-limit: expected a positive integer, received 'x'"),
    (["--data-dir", "/nonexistent"], "argument --data-dir: expected an existing directory"),
    (["--seed", "-1"], "argument --seed: expected a non-negative integer"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_arguments_fail_at_once(arguments, message):
    result = _run(*arguments)
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""


@pytest.mark.slow
def test_a_small_run_agrees_with_the_plaintext_model():
    result = _run("--epochs", "1", "--train-limit", "1000", "--test-limit", "100", "--batch-size", "50", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    agreement = float(re.search(r"argmax agreement with the plaintext model: ([\d.]+)%", result.stdout).group(1))
    assert agreement >= 99.0, result.stdout
    for expected in ("plaintext accuracy:", "private accuracy:", "time per image after the first batch:", "bytes per image:"):
        assert expected in result.stdout
