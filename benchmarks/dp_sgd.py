"""Step time of DP-SGD (vectorized and ghost clipping) against the same model's non-private step.

Models: a small MNIST-shaped CNN (Conv2D(16,3)-Conv2D(32,3)-Flatten-Dense(10)) and an MLP
(784-256-256-10), batch 256, SGD, sparse categorical cross-entropy. Each variant's compiled Keras train
function is timed on the same fixed batch; the variants run interleaved, round after round, so that load
changes on the machine hit all of them alike, and the median over rounds is reported with its ratio to the
non-private step. "noise draw only" times drawing one step's Gaussian noise for all parameters, a cost every
DP-SGD step pays on top of clipping.

Usage: python benchmarks/dp_sgd.py [--rounds 7] [--steps 5] [--batch 256] [--jit] [--models cnn,mlp] [--materialized]

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

from tfe_lite.privacy.clipping import VectorizedClipper, ghost_blockers
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--jit", action="store_true", help="jit_compile=True for every variant")
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument(
        "--materialized",
        action="store_true",
        help="add dp-vec-dense: the vectorized path with every dense per-example gradient materialized",
    )
    args = parser.parse_args()
    builders = {"cnn": cnn, "mlp": mlp, "attention": attention}
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, devices: "
          f"{[d.name for d in tf.config.list_physical_devices()]}")
    for name in args.models.split(","):
        benchmark(name, builders[name], args.batch, args.rounds, args.steps, args.jit, args.materialized)


if __name__ == "__main__":
    main()
