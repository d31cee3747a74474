"""Poisson-sampled batches: the input pipeline that the ``sampling="poisson"`` accounting assumes.

At every step each of the ``n`` examples is included independently with probability
``q = expected_batch_size / n``. Batch sizes are therefore random (Binomial(n, q), mean ``q * n``,
standard deviation ``sqrt(n q (1 - q))``), and an example may appear in several consecutive batches or in
none for a while. This is what :func:`tfe_lite.privacy.accounting.compute_epsilon` analyses with
``PoissonSampledDpEvent``; shuffled fixed-size batches are *not* covered by that analysis.

Empty batches are yielded, not skipped: a batch of shape ``(0, ...)`` still is a step of the mechanism
(a noise-only update), and skipping it would change the mechanism the accounting describes. The
probability of an empty batch is ``(1 - q) ** n``, about ``exp(-expected_batch_size)``: negligible for
expected batch sizes of 16 and more, but a DP training step must accept a zero-size batch (sum of no
clipped gradients plus noise, normalised by the *expected* batch size). Keras's built-in losses return 0
on an empty batch, so a non-private model simply makes no update there.

Randomness: the stream is named ``"data-sampling"``. Without a ``seed`` its key comes from
``os.urandom``; with one, the sequence of batches is repeatable (epoch after epoch differs, and a new
dataset built with the same seed repeats the same epochs). Per-step inclusion masks use TensorFlow's
stateless Philox generator keyed by that stream.

The dataset carries its sampling (:func:`sampling_of`), which a DP model's ``fit`` reads to account for the
steps it trains on it (:mod:`tfe_lite.privacy.ledger`); a dataset derived from it (``.map``, ``.repeat``,
...) is another dataset and does not.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

import numpy as np
import tensorflow as tf
from keras.src.trainers.data_adapters.array_data_adapter import can_convert_arrays

from tfe_lite.errors import ConfigError, ShapeError
from tfe_lite.privacy._validation import invalid as _invalid
from tfe_lite.privacy.ledger import Sampling

SEED_PURPOSE = "data-sampling"

#: The attribute of a :func:`poisson_batches` dataset that holds its :class:`~tfe_lite.privacy.ledger.Sampling`.
_SAMPLING_ATTRIBUTE = "_tfe_lite_sampling"


def _stream_seed(seed: int | None) -> int:
    """A 63-bit seed for the data-sampling stream, from ``os.urandom`` unless ``seed`` fixes it."""
    if seed is None:
        data = os.urandom(8)
    else:
        data = hashlib.sha256(f"tfe_lite/{seed}/{SEED_PURPOSE}".encode()).digest()[:8]
    return int.from_bytes(data, "little") & (2**63 - 1)


def _num_rows(structure) -> list[int]:
    return [int(np.shape(leaf)[0]) if np.ndim(leaf) > 0 else -1 for leaf in tf.nest.flatten(structure)]


def poisson_batches(
    x,
    y=None,
    sample_weight=None,
    *,
    expected_batch_size: float,
    steps: int | None = None,
    seed: int | None = None,
) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of ``steps`` Poisson-sampled batches, ready for ``model.fit``.

    Args:
        x: An array (or a nested structure of arrays, e.g. a dict of model inputs) with ``n`` rows.
        y: Optional targets with ``n`` rows.
        sample_weight: Optional per-example weights with ``n`` rows.
        expected_batch_size: ``q * n``; at most ``n``.
        steps: Batches per iteration of the dataset, i.e. per ``fit`` epoch. Defaults to
            ``ceil(n / expected_batch_size)``, one epoch in expectation.
        seed: Fixes the data-sampling stream (tests, reproducible runs); ``None`` draws it from the OS.

    Returns:
        A dataset of ``x`` batches, ``(x, y)`` or ``(x, y, sample_weight)`` tuples, with a variable batch
        dimension. Every iteration (every ``fit`` epoch) draws fresh batches. Its cardinality is ``steps``.

    Raises:
        ConfigError: listing every invalid argument.
        ShapeError: when ``x``, ``y`` and ``sample_weight`` do not all have the same number of rows.
    """
    data = tuple(part for part in (x, y, sample_weight) if part is not None)
    if y is None and sample_weight is not None:
        raise ConfigError("Received `sample_weight` without `y`; pass targets to weight them.")
    rows = _num_rows(data)
    if min(rows) < 0 or len(set(rows)) != 1:
        raise ShapeError(
            "Expected `x`, `y` and `sample_weight` to be arrays with the same number of rows. "
            f"Received row counts: {rows}"
        )
    n = rows[0]

    problems = []
    if n == 0:
        problems.append("Received empty data; expected at least one example.")
    bad_size = not (
        isinstance(expected_batch_size, (int, float, np.integer, np.floating))
        and not isinstance(expected_batch_size, bool)
        and math.isfinite(expected_batch_size)
        and expected_batch_size > 0
    )
    if bad_size:
        problems.append(_invalid("expected_batch_size", "a positive number", expected_batch_size))
    elif n and expected_batch_size > n:
        problems.append(_invalid("expected_batch_size", f"at most the number of examples {n}",
                                 expected_batch_size))
    if steps is not None and not (isinstance(steps, (int, np.integer)) and not isinstance(steps, bool)
                                  and steps > 0):
        problems.append(_invalid("steps", "a positive integer or None", steps))
    if seed is not None and not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
        problems.append(_invalid("seed", "an integer or None", seed))
    if problems:
        raise ConfigError("\n".join(problems))

    q = float(expected_batch_size) / n
    if steps is None:
        steps = math.ceil(n / float(expected_batch_size))
    tensors = tf.nest.map_structure(tf.convert_to_tensor, data)

    def select(step_seed: tf.Tensor):
        keep = tf.random.stateless_uniform([n], seed=step_seed, dtype=tf.float64) < q
        indices = tf.reshape(tf.where(keep), [-1])
        batch = tf.nest.map_structure(lambda tensor: tf.gather(tensor, indices), tensors)
        return batch[0] if len(batch) == 1 else batch

    # One pair of int64 seeds per step; `rerandomize_each_iteration` makes every epoch draw new batches
    # while a fixed seed still reproduces the whole sequence of epochs.
    step_seeds = (
        tf.data.Dataset.random(seed=_stream_seed(seed), rerandomize_each_iteration=True)
        .batch(2, drop_remainder=True)
        .take(int(steps))
    )
    dataset = step_seeds.map(select).prefetch(tf.data.AUTOTUNE)
    setattr(dataset, _SAMPLING_ATTRIBUTE, Sampling("poisson", n, float(expected_batch_size)))
    return dataset


def sampling_of(dataset: tf.data.Dataset) -> Sampling | None:
    """The sampling of a dataset made by :func:`poisson_batches` (``None`` for any other dataset)."""
    return getattr(dataset, _SAMPLING_ATTRIBUTE, None)


def batch_size_bounds(num_examples: int, expected_batch_size: float, *, num_stddevs: float = 4.0):
    """``(low, high)``: ``q * n`` plus or minus ``num_stddevs`` binomial standard deviations.

    A realised Poisson batch size falls outside with probability at most ``1 / num_stddevs**2``
    (Chebyshev), far less in practice (the binomial is close to normal).
    """
    q = expected_batch_size / num_examples
    spread = num_stddevs * math.sqrt(num_examples * q * (1 - q))
    return expected_batch_size - spread, expected_batch_size + spread


def fit_sampling(x: Any, y: Any, sample_weight: Any, batch_size: Any, validation_split: Any) -> Sampling:
    """How Keras ``fit`` will batch this data, for the accounting: Poisson for a :func:`poisson_batches`
    dataset, disjoint fixed-size batches (``"shuffle"``) for arrays, ``"arbitrary"`` for anything else."""
    if isinstance(x, tf.data.Dataset):
        return sampling_of(x) or Sampling("arbitrary")
    data = tuple(part for part in (x, y, sample_weight) if part is not None)
    if x is None or not can_convert_arrays(data):
        return Sampling("arbitrary")
    rows = _num_rows(data)
    if min(rows) < 0:
        return Sampling("arbitrary")
    split = float(validation_split or 0.0)
    examples = int(math.floor(rows[0] * (1.0 - split)))  # Keras's train_validation_split
    if examples < 1:
        return Sampling("arbitrary")
    size = 32 if batch_size is None else batch_size
    if not (isinstance(size, (int, np.integer)) and size > 0):
        return Sampling("arbitrary")  # Keras refuses it itself
    return Sampling("shuffle", examples, float(min(int(size), examples)))


def check_microbatches(num_microbatches: int | None, x: Any, batch_size: Any, validation_split: Any) -> None:
    """Checks before ``fit`` trains that ``num_microbatches`` divides every batch, where sizes are known."""
    m = num_microbatches
    if m is None or x is None:
        return
    if isinstance(x, tf.data.Dataset):
        sizes = {spec.shape[0] for spec in tf.nest.flatten(x.element_spec) if spec.shape.rank}
        sizes.discard(None)
        bad = sorted(s for s in sizes if s % m)
        if bad:
            raise ConfigError(
                _invalid("num_microbatches", "a divisor of every batch size", m)
                + f" with dataset batches of {bad[0]} examples"
            )
        return
    first = tf.nest.flatten(x)[0]
    if not hasattr(first, "shape") or not len(first.shape):
        return
    examples = int(first.shape[0] * (1.0 - validation_split)) if validation_split else int(first.shape[0])
    size = batch_size or 32
    last = examples % size
    if size % m or last % m:
        where = f"batch_size={size}" + (f" ({last} examples in the last batch)" if last else "")
        raise ConfigError(_invalid("num_microbatches", "a divisor of every batch size", m) + f" with {where}")
