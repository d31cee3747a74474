"""Round progress (Keras's progress bar, counting clients) and the randomness of rounds.

:class:`RoundProgbar` is Keras's ``ProgbarLogger`` with rounds for epochs and clients for steps: ``verbose=1``
moves a bar as clients finish, ``verbose=2`` prints one line per round with its logs.

:class:`RoundRandomness` draws, per round, which clients take part and the public seeds that shuffle each
client's data. Client sampling decides the privacy amplification of DP-FedAvg, so without a ``seed`` it
reads ``os.urandom``; shuffling seeds come from a separate numpy stream.
"""

from __future__ import annotations

import os

import keras
import numpy as np
from keras.src.utils.progbar import Progbar


class RoundProgbar(keras.callbacks.ProgbarLogger):
    """Prints ``Round r/R`` and a bar over the round's clients; the loop sets :attr:`target` per round."""

    def on_epoch_begin(self, epoch, logs=None):
        self._reset_progbar()
        self._maybe_init_progbar()
        if self.verbose:
            print(f"Round {epoch + 1}/{self.epochs}")

    def _maybe_init_progbar(self):
        if self.progbar is None:
            self.progbar = Progbar(target=self.target, verbose=self.verbose, unit_name="client", stateless_metrics=set())

    def _finalize_progbar(self, logs):
        self.target = max(self.seen, 1) if self.target is None else self.target
        self.progbar.target = self.target
        self.progbar.update(self.target, list((logs or {}).items()), finalize=True)


class RoundRandomness:
    """Client sampling (``os.urandom`` unless ``seed``) and shuffling seeds (numpy, from ``seed``)."""

    def __init__(self, seed: int | None = None):
        self._sampling = None if seed is None else np.random.default_rng([seed, 1])
        self._shuffle = np.random.default_rng(None if seed is None else [seed, 2])

    def uniform(self, n: int) -> np.ndarray:
        """``n`` uniforms in [0, 1) with 53 random bits each."""
        if self._sampling is not None:
            return self._sampling.random(n)
        words = np.frombuffer(os.urandom(8 * n), dtype="<u8")
        return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def poisson(self, n: int, q: float) -> np.ndarray:
        """Indices of the members of a Poisson sample: each of ``n`` independently with probability ``q``."""
        return np.flatnonzero(self.uniform(n) < q)

    def choice(self, n: int, k: int) -> np.ndarray:
        """``k`` of ``n`` indices uniformly without replacement, in increasing order."""
        return np.sort(np.argsort(self.uniform(n))[:k])

    def shuffle_seeds(self, count: int) -> np.ndarray:
        return self._shuffle.integers(0, 2**62, size=(count, 2), dtype=np.int64)
