"""Flat float32 vectors: how model weights travel to clients and how updates travel back.

One tensor per message instead of one per weight: a client receives the global weights as one vector and
submits one vector (its update and loss), which keeps the number of copies and protocol calls per client at
one whatever the model's number of layers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf


def pack(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """One flat float32 vector from ``tensors``, built where the caller's device scope says."""
    return tf.concat([tf.reshape(tf.cast(t, tf.float32), [-1]) for t in tensors], 0)


def unpack(vector: tf.Tensor, shapes: Sequence[tf.TensorShape]) -> list[tf.Tensor]:
    """The tensors of ``shapes`` that :func:`pack` flattened into ``vector`` (same dtype as ``vector``)."""
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    return [tf.reshape(part, s) for part, s in zip(tf.split(vector, sizes), shapes)]
