"""Step time of DP-SGD (vectorized and ghost clipping) against the same model's non-private step.

Models: a small MNIST-shaped CNN (Conv2D(16,3)-Conv2D(32,3)-Flatten-Dense(10)) and an MLP
(784-256-256-10), batch 256, SGD, sparse categorical cross-entropy. Each variant's compiled Keras train
function is timed on the same fixed batch; the variants run interleaved, round after round, so that load
changes on the machine hit all of them alike, and the median over rounds is reported with its ratio to the
non-private step. "noise draw only" times drawing one step's Gaussian noise for all parameters, a cost every
DP-SGD step pays on top of clipping.

Usage: python benchmarks/dp_sgd.py [--rounds 7] [--steps 5] [--batch 256] [--jit] [--models cnn,mlp] [--materialized]
       [--profile]

Models: ``cnn``, ``opacus_cnn`` (the network of Opacus's MNIST example: 8x8 and 4x4 kernels, max pooling
between the convolutions), ``cifar_cnn`` (32x32x3, 3x3 kernels, two pooling stages, 0.48M parameters),
``mlp``, and ``attention`` (only with ``--models``).

``--profile`` prints, for each model ghost clipping handles, where its DP-SGD step spends the time beyond
the non-private step, per layer: the record norms (and how they are formed), the clipped sum (from kept
per-record gradients, or by the layer's weight-gradient op), with the forward and backward pass to the
layers' outputs and the noise draw; each part is its own compiled function on the step's tensors, timed
interleaved with the whole steps.

``--materialized`` adds "dp-vec-dense", the vectorized path with outer-product factoring turned off
(``VectorizedClipper(factor_outer_products=False)``): what it costs to materialize every per-example gradient.
``--models attention`` adds a small text classifier (Embedding, MultiHeadAttention, LayerNormalization) that
only the vectorized path handles: ghost clipping has no rule for attention, so that row is left out.
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from tfe_lite.privacy.clipping import VectorizedClipper, ghost, ghost_blockers
from tfe_lite.privacy.model import make_private
from tfe_lite.privacy.noise import GeneratorNoise


def cnn() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ],
        name="cnn",
    )


def opacus_cnn() -> keras.Model:
    """The network of Opacus's MNIST example: larger kernels, and pooling between the convolutions."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 8, strides=2, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2, strides=1),
            keras.layers.Conv2D(32, 4, strides=2, padding="valid", activation="relu"),
            keras.layers.MaxPooling2D(2, strides=1),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="opacus_cnn",
    )


def cifar_cnn() -> keras.Model:
    """A CIFAR-10-shaped CNN: 32x32x3 inputs, 3x3 kernels, two pooling stages, 0.48M parameters."""
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="cifar_cnn",
    )


def mlp() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="mlp",
    )


def attention() -> keras.Model:
    """A small text classifier that only the vectorized path handles (no ghost rule for attention)."""
    tokens = keras.Input((32,), dtype="int32")
    h = keras.layers.Embedding(2000, 64)(tokens)
    h = keras.layers.MultiHeadAttention(4, 16)(h, h)
    h = keras.layers.LayerNormalization()(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(tokens, keras.layers.Dense(10)(h), name="attention")


def _compiled(model: keras.Model, jit: bool) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    model.make_train_function()
    return model


def _variants(build, jit: bool, materialized: bool) -> dict[str, keras.Model]:
    variants = {"non-private": _compiled(build(), jit)}
    for clipping in ("vectorized", "ghost"):
        if clipping == "ghost" and ghost_blockers(build()):
            continue
        private = make_private(build(), l2_norm_clip=1.0, noise_multiplier=1.0, clipping=clipping, seed=0)
        variants[f"dp-{clipping}"] = _compiled(private, jit)
    if materialized:
        # The vectorized path with every dense per-example gradient materialized (no outer-product factors).
        private = make_private(build(), l2_norm_clip=1.0, noise_multiplier=1.0, clipping="vectorized", seed=0)
        private.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit,
        )
        clipper = private._clipper
        private._clipper = VectorizedClipper(
            clipper._model, clipper._variables, clipper._loss_fn, factor_outer_products=False
        )
        private.make_train_function()
        variants["dp-vec-dense"] = private
    return variants


def _time_steps(model: keras.Model, batch: tuple, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        logs = model.train_function([batch])
    float(logs["loss"])  # wait for the last step
    return (time.perf_counter() - start) / steps


def _noise_draw(model: keras.Model, steps: int) -> float:
    """Time of drawing one step's Gaussian noise for every parameter (part of every DP-SGD step)."""
    source = GeneratorNoise(seed=0)
    draw = tf.function(lambda: source.normal(model.trainable_variables, 1.0))
    draw()
    start = time.perf_counter()
    for _ in range(steps):
        noise = draw()
    float(noise[0][(0,) * noise[0].shape.rank])
    return (time.perf_counter() - start) / steps


def benchmark(
    name: str, build, batch_size: int, rounds: int, steps: int, jit: bool, materialized: bool = False
) -> dict[str, float]:
    rng = np.random.default_rng(0)
    shape = build().input_shape[1:]
    if build().inputs[0].dtype.startswith("int"):
        x = tf.constant(rng.integers(0, 2000, size=(batch_size, *shape)).astype("int32"))
    else:
        x = tf.constant(rng.normal(size=(batch_size, *shape)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, size=batch_size).astype("int32"))
    variants = _variants(build, jit, materialized)
    for model in variants.values():  # trace and warm up
        _time_steps(model, (x, y), 2)
    times: dict[str, list[float]] = {v: [] for v in variants}
    times["noise draw only"] = []
    for _ in range(rounds):
        for variant, model in variants.items():
            times[variant].append(_time_steps(model, (x, y), steps))
        times["noise draw only"].append(_noise_draw(variants["non-private"], steps))
    medians = {v: statistics.median(t) for v, t in times.items()}
    base = medians["non-private"]
    parameters = sum(int(np.prod(v.shape)) for v in variants["non-private"].trainable_variables)
    print(
        f"\n{name}: {parameters} parameters, batch {batch_size}, jit_compile={jit}, "
        f"median of {rounds} interleaved rounds x {steps} steps"
    )
    for variant, median in medians.items():
        print(f"  {variant:<16} {median * 1e3:8.2f} ms/step   x{median / base:5.2f}")
    return medians


def _interleaved(parts: dict[str, tuple], rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per call of every ``label: (fn, args)``, timed round after round."""

    def once(fn, args):
        start = time.perf_counter()
        for _ in range(steps):
            out = fn(*args)
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)  # wait for it
        return (time.perf_counter() - start) / steps

    for fn, args in parts.values():  # trace and warm up
        once(fn, args)
    times: dict[str, list[float]] = {label: [] for label in parts}
    for _ in range(rounds):
        for label, (fn, args) in parts.items():
            times[label].append(once(fn, args))
    return {label: statistics.median(t) for label, t in times.items()}


def profile(name: str, build, batch_size: int, rounds: int, steps: int) -> None:
    """Per-layer breakdown of the ghost-clipping step (see the module docstring)."""
    if ghost_blockers(build()):
        print(f"\n{name}: no per-layer profile (ghost clipping does not handle it)")
        return
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch_size, *build().input_shape[1:])).astype("float32"))
    y = tf.constant(rng.integers(0, 10, size=batch_size).astype("int32"))
    plain = _compiled(build(), False)
    private = _compiled(make_private(build(), l2_norm_clip=1.0, noise_multiplier=1.0, clipping="ghost", seed=0), False)
    clipper = private._clipper

    @tf.function
    def forward_backward(x, y):
        with tf.GradientTape() as tape:
            y_pred, zs, acts = clipper._tap_model(x, training=True)
            total = tf.reduce_sum(clipper._loss_fn(y, y_pred, None))
        return tape.gradient(total, zs), acts

    parts = {
        "non-private step": (lambda: plain.train_function([(x, y)]), ()),
        "DP-SGD step (ghost)": (lambda: private.train_function([(x, y)]), ()),
        "forward + backward to the layers' outputs": (forward_backward, (x, y)),
    }
    grads_z, acts = forward_backward(x, y)
    factors = tf.constant(rng.uniform(size=batch_size).astype("float32"))
    for (layer, _, _), a, g in zip(clipper._taps, acts, grads_z):
        records = ghost._layer_records(layer, a, g, None)
        parts[f"{layer.name}: norms, {records.method}"] = (
            tf.function(lambda a, g, layer=layer: ghost._layer_records(layer, a, g, None).sq), (a, g)
        )
        if records.grads is not None:
            weighted = lambda f, a, g, layer=layer: [  # noqa: E731
                tf.tensordot(f, t, axes=1) for t in ghost._layer_records(layer, a, g, None).grads.values()
            ]
            parts[f"{layer.name}: norms and clipped sum from them"] = (tf.function(weighted), (factors, a, g))
            continue
        tap = ghost._TAPS[type(layer)](layer, name=f"profile_tap_{layer.name}")

        def weight_gradient(f, a, g, tap=tap, layer=layer):
            with tf.GradientTape() as tape:
                z = tap(a)
            scale = tf.reshape(f, [-1] + [1] * (g.shape.rank - 1))
            return tape.gradient(z, layer.trainable_weights, output_gradients=g * scale)

        parts[f"{layer.name}: clipped sum, weight-gradient op"] = (tf.function(weight_gradient), (factors, a, g))
    source = GeneratorNoise(seed=0)
    parts["noise draw"] = (tf.function(lambda: source.normal(private.trainable_variables, 1.0)), ())
    medians = _interleaved(parts, rounds, steps)
    base = medians["non-private step"]
    print(f"\n{name}, ghost clipping, batch {batch_size}: median of {rounds} interleaved rounds x {steps} calls")
    for label, median in medians.items():
        print(f"  {label:<58} {median * 1e3:8.2f} ms   x{median / base:5.2f} of the non-private step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--jit", action="store_true", help="jit_compile=True for every variant")
    parser.add_argument("--models", default="cnn,opacus_cnn,cifar_cnn,mlp")
    parser.add_argument(
        "--materialized",
        action="store_true",
        help="add dp-vec-dense: the vectorized path with every dense per-example gradient materialized",
    )
    parser.add_argument("--profile", action="store_true", help="per-layer breakdown of the ghost-clipping step")
    args = parser.parse_args()
    builders = {"cnn": cnn, "opacus_cnn": opacus_cnn, "cifar_cnn": cifar_cnn, "mlp": mlp, "attention": attention}
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, devices: "
          f"{[d.name for d in tf.config.list_physical_devices()]}")
    for name in args.models.split(","):
        if args.profile:
            profile(name, builders[name], args.batch, args.rounds, args.steps)
        else:
            benchmark(name, builders[name], args.batch, args.rounds, args.steps, args.jit, args.materialized)


if __name__ == "__main__":
    main()
