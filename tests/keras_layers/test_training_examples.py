"""The private training examples run end to end (short settings) and print what they promise; their
arguments are checked before TensorFlow is imported."""

import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def _run(script, *arguments, timeout=900):
    return subprocess.run([sys.executable, str(EXAMPLES / script), *arguments], capture_output=True, text=True,
                          timeout=timeout, cwd=EXAMPLES.parent)


def _accuracies(stdout):
    found = re.search(r"test accuracy: private ([\d.]+)%\s+plaintext ([\d.]+)%", stdout)
    assert found, stdout[-2000:]
    return float(found.group(1)), float(found.group(2))


@pytest.mark.slow
def test_two_data_owners_train_a_logistic_regression_as_good_as_the_plaintext_one():
    result = _run("private_logistic_regression.py", "--epochs", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    private, plain = _accuracies(result.stdout)
    assert private > 90.0 and abs(private - plain) <= 2.0, result.stdout[-2000:]
    assert "alice" in result.stdout and "bob" in result.stdout and "Epoch 3/3" in result.stdout


@pytest.mark.slow
def test_network_a_trains_on_shares_beside_its_plaintext_twin():
    result = _run("private_training_mnist.py", "--epochs", "1", "--train-limit", "1024", "--batch-size", "128")
    assert result.returncode == 0, result.stderr[-3000:]
    private, plain = _accuracies(result.stdout)
    assert private > 60.0 and abs(private - plain) <= 5.0, result.stdout[-2000:]
    assert re.search(r"time per step: [\d.]+ ms", result.stdout) and "bytes per step" in result.stdout


@pytest.mark.parametrize("script, arguments, message", [
    ("private_logistic_regression.py", ["--epochs", "0"], "argument --epochs: expected a positive integer"),
    ("private_logistic_regression.py", ["--learning-rate", "-1"], "argument --learning-rate: expected a positive number"),
    ("private_training_mnist.py", ["--batch-size", "x"], "argument --batch-size: expected a positive integer"),
    ("private_training_mnist.py", ["--data-dir", "/nonexistent"], "argument --data-dir: expected an existing directory"),
])
def test_bad_arguments_fail_before_tensorflow_starts(script, arguments, message):
    result = _run(script, *arguments, timeout=60)
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""
