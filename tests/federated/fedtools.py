"""Data, models and oracles shared by the federated tests."""

import keras
import numpy as np
import tensorflow as tf

CLIENTS = ("alice", "bob", "carol", "dave")
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def toy_data(n: int, seed: int, features: int = 5, classes: int = 3):
    """A linearly separable classification task (float32 inputs, int64 labels)."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).normal(size=(features, classes))
    x = rng.normal(size=(n, features)).astype("float32")
    return x, np.argmax(x @ w, 1).astype("int64")


def toy_model(features: int = 5, classes: int = 3, hidden: int = 8, seed: int = 1, **dense_kwargs):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((features,)),
        keras.layers.Dense(hidden, activation="tanh", **dense_kwargs),
        keras.layers.Dense(classes),
    ])


def weights(model) -> list[np.ndarray]:
    return [np.array(v.numpy(), dtype=np.float64) for v in model.trainable_variables]


def keras_update(model_fn, start, x, y, *, learning_rate, epochs, batch_size, momentum=0.0):
    """Oracle: Keras's own fit (SGD, no shuffling) from ``start``; returns the update ``w_local - start``."""
    model = model_fn()
    model.set_weights([w.astype(np.float32) for w in start])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=momentum), loss=LOSS)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    return [w - s for w, s in zip(weights(model), start)]


def device_of(tensor) -> str:
    return tf.DeviceSpec.from_string(tensor.device).to_string()
