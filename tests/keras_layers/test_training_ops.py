"""Losses and optimizers on shares (keras_layers/losses.py, optimizers.py, scaling.py) against TensorFlow and
Keras in float64, within bounds derived from the fixed-point resolution and the approximations' stated
bounds; bad inputs refused by name; examples/encrypted_xor.py learns XOR in both modes."""

import math
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfe_lite.errors import ConfigError, ProtocolError, ShapeError
from tfe_lite.keras_layers import losses, optimizers, scaling

CLIENT, OWNER = "client", "model-owner"  # the players of conftest.py's config

U = 2.0**-16  # resolution of the default preset
SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "examples" / "encrypted_xor.py"


def _reveal(x):
    return x.reveal(to=CLIENT).numpy()


def _tf_gradient(loss, y, z):
    z = tf.constant(z, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(z)
        value = loss(tf.constant(y, tf.float64), z)
    return value.numpy(), tape.gradient(value, z).numpy()


# ------------------------------------------------------------------------------------------- scaling
@pytest.mark.parametrize("c", [1e-3, 0.01, 1 / 3, 1 / 100, 2.0**-20, 0.75, 3.5])
def test_scale_is_accurate_where_a_plain_product_is_not(prot, c):
    x = np.linspace(-50, 50, 41)
    shared = prot.share(x, owner=CLIENT)
    for constant in (c, tf.constant(c, tf.float64)):
        err = np.abs(_reveal(scaling.scale(prot, shared, constant)) - x * c)
        assert (err <= scaling.error_bound(prot, x * c) + U / 2 * c).all(), (c, err.max())  # + the input's encoding
    if c == 1e-3:  # the reason for scale(): 1e-3 encodes 0.7% too large
        assert np.abs(_reveal(prot.mul(shared, c)) - x * c).max() > 5 * scaling.error_bound(prot, 50 * c)


# -------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("shape", [(1, 2), (8, 5), (3, 4, 3)])
@pytest.mark.parametrize("private_labels", [True, False])
def test_softmax_cross_entropy_gradient_against_tensorflow(prot, shape, private_labels):
    rng = np.random.default_rng(sum(shape))
    z = rng.uniform(-8, 8, shape)
    y = np.eye(shape[-1])[rng.integers(0, shape[-1], shape[:-1])]
    labels = prot.share(y, owner=CLIENT) if private_labels else y
    for reduction, samples in (("sum_over_batch_size", int(np.prod(shape[:-1]))), ("sum", 1)):
        ours = _reveal(losses.softmax_cross_entropy_gradient(prot, prot.share(z, owner=CLIENT), labels, reduction=reduction))
        _, theirs = _tf_gradient(keras.losses.CategoricalCrossentropy(from_logits=True, reduction=reduction), y, z)
        # softmax's bound and the logits' encoding (softmax is 1-Lipschitz in the max norm), over D; the scaling
        bound = (2.0**-12 + U / 2) / samples + U * np.abs(theirs) + 3 * U
        assert (np.abs(ours - theirs) <= bound).all(), (reduction, np.abs(ours - theirs).max())


@pytest.mark.parametrize("shape", [(6, 1), (4, 3), (2, 2, 2)])
def test_sigmoid_cross_entropy_gradient_against_tensorflow(prot, shape):
    rng = np.random.default_rng(len(shape) + shape[-1])
    z = rng.uniform(-10, 10, shape)
    y = rng.integers(0, 2, shape).astype(np.float64)
    y.flat[0] = 0.3  # soft labels are binary cross-entropy labels too
    for reduction in losses.REDUCTIONS:
        d = losses.divisor(shape, reduction)
        ours = _reveal(losses.sigmoid_cross_entropy_gradient(prot, prot.share(z, owner=CLIENT), prot.share(y, owner=CLIENT),
                                                             reduction=reduction))
        _, theirs = _tf_gradient(keras.losses.BinaryCrossentropy(from_logits=True, reduction=reduction), y, z)
        bound = (2.0**-13 + U / 8) / d + U * np.abs(theirs) + 3 * U  # sigmoid' <= 1/4 on the encoding error u/2
        assert (np.abs(ours - theirs) <= bound).all(), (reduction, np.abs(ours - theirs).max())


@pytest.mark.parametrize("shape", [(4, 1), (5, 3), (1,)])
def test_mean_squared_error_and_gradient_against_tensorflow(prot, shape):
    rng = np.random.default_rng(shape[0])
    p, y = rng.uniform(-3, 3, shape), rng.uniform(-3, 3, shape)
    shared_p = prot.share(p, owner=CLIENT)
    for reduction in losses.REDUCTIONS:
        d = losses.divisor(shape, reduction)
        value, theirs = _tf_gradient(keras.losses.MeanSquaredError(reduction=reduction), y, p)
        ours = _reveal(losses.mean_squared_error_gradient(prot, shared_p, prot.share(y, owner=CLIENT), reduction=reduction))
        # p - y is exact on the encodings (each within u/2): 2 u / d, then the scaling
        assert (np.abs(ours - theirs) <= 2 * U / d + U * np.abs(theirs) + 3 * U).all(), reduction
        loss = float(_reveal(losses.mean_squared_error(prot, shared_p, y, reduction=reduction)))
        n = p.size  # a square per element (truncation u, encodings 2 |p - y| u), their sum over d, the scaling
        bound = (n * U + 2 * U * np.abs(p - y).sum()) / d + U * value + 3 * U
        assert abs(loss - value) <= bound, (reduction, loss, value)


def test_labels_of_the_wrong_shape_or_range_are_refused_by_name(prot):
    z = prot.share(np.zeros((4, 3)), owner=CLIENT)
    with pytest.raises(losses.LabelError, match=r"invalid shape for `labels`.*\(4, 3\).*labels.shape=\(4, 1\)"):
        losses.softmax_cross_entropy_gradient(prot, z, prot.share(np.zeros((4, 1)), owner=CLIENT))
    with pytest.raises(losses.LabelError, match=r"one-hot rows summing to 1.*integer class labels.*sums to 2.0"):
        losses.softmax_cross_entropy_gradient(prot, z, np.ones((4, 3)) * [1, 1, 0])
    with pytest.raises(losses.LabelError, match=r"labels\[\(1, 2\)\]=1.5"):
        losses.sigmoid_cross_entropy_gradient(prot, z, np.array([[0, 1, 0], [1, 0, 1.5], [0] * 3, [0] * 3]))
    with pytest.raises(losses.LabelError, match=r"labels\[\(0, 0\)\]=-1.0"):
        losses.sigmoid_cross_entropy_gradient(prot, z, -np.ones((4, 3)))
    with pytest.raises(losses.LabelError, match="non-finite value nan at index"):
        losses.mean_squared_error(prot, z, np.full((4, 3), np.nan))
    with pytest.raises(ConfigError, match="`reduction`.*reduction='mean'"):
        losses.mean_squared_error_gradient(prot, z, np.zeros((4, 3)), reduction="mean")
    with pytest.raises(ProtocolError, match="`logits`, expected a private tensor"):
        losses.softmax_cross_entropy_gradient(prot, np.zeros((4, 3)), np.eye(3)[[0, 1, 2, 0]])
    assert isinstance(losses.LabelError("x"), ValueError)


# ---------------------------------------------------------------------------------------- optimizers
def _private_steps(prot, optimizer, w0, gradients, traced=False):
    w = optimizers.PrivateVariable(prot, value=prot.share(w0, owner=OWNER), name="w")
    if not traced:
        for g in gradients:
            optimizer.apply([prot.share(g, owner=CLIENT)], [w])
        return _reveal(w.read())
    optimizer.build([w])
    step = tf.function(lambda g: optimizer.apply([prot.share(g, owner=CLIENT)], [w]), autograph=False)
    for g in gradients:
        step(tf.constant(g))
    # The step runs on the servers, the producer and the host (the public step count and rate); the client
    # only masks its gradient; the model owner and the others take no part.
    devices = {op.device for op in step.get_concrete_function(tf.constant(gradients[0])).graph.get_operations()}
    players = {p.name: tf.DeviceSpec.from_string(p.device).to_string() for p in prot.config.players}
    allowed = {players[n] for n in ("server0", "server1", "crypto-producer")}
    assert {d for d in devices if d} - allowed == {tf.DeviceSpec.from_string(players[CLIENT]).to_string()}
    return _reveal(w.read())


def _keras_steps(optimizer, w0, gradients):
    variable = keras.Variable(w0, dtype="float64")
    for g in gradients:
        optimizer.apply([tf.constant(g)], [variable])
    return variable.numpy()


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_steps_equal_keras_sgd(prot, momentum, nesterov):
    rng = np.random.default_rng(7)
    w0 = rng.normal(size=(3, 4))
    gradients = [rng.uniform(-1, 1, (3, 4)) for _ in range(2)]
    lr = 0.05
    ours = _private_steps(prot, optimizers.PrivateSGD(prot, lr, momentum, nesterov), w0, gradients)
    theirs = _keras_steps(keras.optimizers.SGD(lr, momentum=momentum, nesterov=nesterov), w0, gradients)
    # per step: lr * g by scale() (u |lr g| + 3 u, g encoded within u/2), one product with momentum (u |v| + u)
    # and Nesterov's second (another u |v| + u); velocity errors are carried by momentum (<= 1) into later steps
    per_step = U * lr + 3 * U + lr * U / 2 + 2 * (U * 0.2 + U)
    bound = U / 2 + per_step * sum((1 + momentum) ** k for k in range(1, len(gradients) + 1))
    assert np.abs(ours - theirs).max() <= bound, (np.abs(ours - theirs).max(), bound)
    assert np.abs(theirs - w0).max() > 100 * bound  # the steps moved the weights well beyond the tolerance


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_sgd_follows_a_keras_learning_rate_schedule(prot, traced):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    rng = np.random.default_rng(8)
    w0, gradients = rng.normal(size=(5,)), [rng.uniform(-1, 1, 5) for _ in range(3)]
    private = optimizers.from_keras(keras.optimizers.SGD(schedule), prot)
    ours = _private_steps(prot, private, w0, gradients, traced=traced)
    theirs = _keras_steps(keras.optimizers.SGD(schedule), w0, gradients)
    assert int(private.iterations.numpy()) == 3
    assert np.abs(ours - theirs).max() <= U / 2 + 3 * (0.1 * U + 3 * U + 0.1 * U / 2)
    # with the first rate throughout the result differs far beyond that: the schedule was followed
    assert np.abs(_keras_steps(keras.optimizers.SGD(0.1), w0, gradients) - theirs).max() > 0.01


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_adam_steps_equal_keras_adam(prot, traced):
    rng = np.random.default_rng(9)
    w0 = rng.normal(size=(4, 3))
    # |g| in [0.5, 1]: v_hat >= 0.25 keeps delta's share of the deviation below 2**-11
    gradients = [rng.choice([-1, 1], (4, 3)) * rng.uniform(0.5, 1, (4, 3)) for _ in range(2)]
    lr, b1, b2 = 0.01, 0.9, 0.999
    private = optimizers.from_keras(keras.optimizers.Adam(lr), prot)
    ours = _private_steps(prot, private, w0, gradients, traced=traced)
    theirs = _keras_steps(keras.optimizers.Adam(lr), w0, gradients)
    m = v = 0.0
    bound = U / 2
    for t, g in enumerate(gradients, start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        r = 1 / np.sqrt(v_hat + private.delta)
        dv = U * v_hat + 5 * U + U * np.abs(g)  # the square's truncation and encoding, the scaling
        dr = 2.0**-12 * r + 2.0**-14 + 0.5 * dv * r**3 + np.abs(r - 1 / np.sqrt(v_hat))  # rsqrt's bound, delta
        dm = U * np.abs(m_hat) + 3 * U + U * t  # the scaling, the moment's products
        bound = bound + lr * (np.abs(m_hat) * dr + dm * r + U) * (1 + U) + 3 * U
    err = np.abs(ours - theirs)
    assert (err <= bound).all(), (err.max(), bound.max())
    assert np.abs(theirs - w0).min() > 10 * bound.max()


def test_private_variables_hold_one_share_on_each_server(prot):
    w = optimizers.PrivateVariable(prot, value=prot.share(np.ones(3), owner=OWNER), name="w")
    assert w.share0.device.endswith(prot.server0.device.split("/")[-1])
    assert w.share1.device.endswith(prot.server1.device.split("/")[-1])
    slots = optimizers.PrivateAdam(prot, 0.01)
    slots.build([w])
    assert {v.name for v in slots._slots[id(w)].values()} == {"w_momentum", "w_velocity"}


def test_optimizer_settings_that_overflow_or_have_no_private_version_are_refused(prot):
    with pytest.raises(ConfigError, match=r"learning_rate \* gradient_bound = 5000 \* 1 = 5000 overflows the fixed-point range ±4096"):
        optimizers.PrivateSGD(prot, 5000.0)
    with pytest.raises(ConfigError, match=r"learning_rate \* gradient_bound = 100 \* 50 .*overflows"):
        optimizers.PrivateSGD(prot, 100.0, gradient_bound=50.0)
    with pytest.raises(ConfigError, match="velocity can reach .* momentum=0.999"):
        optimizers.PrivateSGD(prot, 10.0, momentum=0.999)
    with pytest.raises(ConfigError, match="below the fixed-point resolution .*learning_rate=1e-06"):
        optimizers.PrivateSGD(prot, 1e-6)
    with pytest.raises(ConfigError, match="overflows"):  # a schedule is checked where it starts
        optimizers.PrivateSGD(prot, keras.optimizers.schedules.ExponentialDecay(9000.0, 10, 0.5))
    with pytest.raises(ConfigError, match="`beta_2`: Adam's unnormalized moment can reach 9000"):
        optimizers.PrivateAdam(prot, 0.01, gradient_bound=3.0)
    with pytest.raises(ConfigError, match="`momentum`, expected a non-negative number below 1. Received: momentum=1.0"):
        optimizers.PrivateSGD(prot, 0.1, momentum=1.0)
    with pytest.raises(ConfigError, match="`learning_rate`, expected a positive number. Received: learning_rate=-0.1"):
        optimizers.PrivateSGD(prot, -0.1)
    with pytest.raises(optimizers.UnsupportedOptimizerError, match="RMSprop has no private version"):
        optimizers.from_keras(keras.optimizers.RMSprop(0.01), prot)
    with pytest.raises(optimizers.UnsupportedOptimizerError, match="weight_decay=0.01, clipnorm=1.0"):
        optimizers.from_keras(keras.optimizers.SGD(0.01, weight_decay=0.01, clipnorm=1.0), prot)
    with pytest.raises(optimizers.UnsupportedOptimizerError, match="amsgrad=True"):
        optimizers.from_keras(keras.optimizers.Adam(0.01, amsgrad=True), prot)
    sgd = optimizers.PrivateSGD(prot, 0.1)
    w = optimizers.PrivateVariable(prot, (2, 2))
    with pytest.raises(ShapeError, match=r"`gradients\[0\]`, expected \(2, 2\).*Received: \(2,\)"):
        sgd.apply([prot.share(np.ones(2), owner=CLIENT)], [w])
    with pytest.raises(ShapeError, match="1 gradients for 2 variables"):
        sgd.apply([prot.share(np.ones((2, 2)), owner=CLIENT)], [w, w])


def test_a_schedule_leaving_the_range_fails_in_the_traced_step(prot):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=1e-3)  # 1e-4 at step 1
    sgd = optimizers.PrivateSGD(prot, schedule, gradient_bound=0.1)
    w = optimizers.PrivateVariable(prot, (2,))
    g = prot.share(np.ones(2) * 0.1, owner=CLIENT)
    sgd.build([w])
    step = tf.function(lambda: sgd.apply([g], [w]), autograph=False)
    step()
    with pytest.raises(tf.errors.InvalidArgumentError, match="scheduled learning_rate leaves the fixed-point range"):
        step()


# ---------------------------------------------------------------------------------------------- XOR
def _run_xor(*arguments, timeout=120):
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=timeout,
                          cwd=SCRIPT.parents[1])


@pytest.mark.parametrize("mode", [[], ["--protocol-relu"]], ids=["reservoir", "protocol-relu"])
def test_encrypted_xor_learns_xor(mode):
    result = _run_xor(*mode)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"step +(\d+)  loss ([\d.]+)  \(plaintext ([\d.]+)\)", result.stdout)
    assert [int(r[0]) for r in rows] == [0, 50, 100, 150, 200], result.stdout
    private, plain = np.array([float(r[1]) for r in rows]), np.array([float(r[2]) for r in rows])
    assert private[0] == pytest.approx(2.0, abs=1e-4)  # zero weights: the four squared targets
    assert (np.diff(private) < 0).all() and private[-1] < 1e-3, result.stdout
    assert np.abs(private - plain).max() < 1e-3, result.stdout  # follows its float64 twin
    assert "predictions: [0, 1, 1, 0]" in result.stdout


def test_encrypted_xor_arguments_fail_at_once():
    help_ = _run_xor("--help")
    assert help_.returncode == 0 and help_.stdout.startswith("usage:") and "--protocol-relu" in help_.stdout
    assert help_.stderr == ""  # TensorFlow was never imported
    for arguments, message in [(["--steps", "0"], "argument --steps: expected a positive integer, received '0'"),
                               (["--learning-rate", "2"], "argument --learning-rate: expected a number below 1"),
                               (["--learning-rate", "x"], "argument --learning-rate: expected a positive number"),
                               (["--reduction", "max"], "argument --reduction: invalid choice: 'max'")]:
        result = _run_xor(*arguments)
        assert result.returncode == 2 and message in result.stderr and result.stdout == "", (arguments, result.stderr)
