"""Per-record gradients, norms and clipped sums against a one-record-at-a-time float64 oracle."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfe_lite.errors import UnsupportedLayerError
from tfe_lite.privacy import clipping as clipping_module
from tfe_lite.privacy.clipping import (
    GhostClipper,
    VectorizedClipper,
    check_layers,
    ghost_blockers,
    make_clipper,
)

# float64 models: the oracle and the clippers differ only by summation order.
RTOL = 1e-9
ATOL = 1e-12


def _mse(y, y_pred, sample_weight):
    values = keras.losses.MeanSquaredError().call(y, y_pred)
    if sample_weight is not None:
        values = values * tf.cast(sample_weight, values.dtype)
    return values


def _reference(model, x, y, microbatches=None):
    """Flattened gradient of each record's mean loss, one record at a time: ``[records, parameters]``."""
    batch = x.shape[0]
    records = batch if microbatches is None else microbatches
    size = 1 if microbatches is None else batch // microbatches
    rows = []
    for r in range(records):
        xr, yr = x[r * size : (r + 1) * size], y[r * size : (r + 1) * size]
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(_mse(yr, model(xr, training=True), None))
        grads = tape.gradient(loss, model.trainable_variables)
        rows.append(np.concatenate([np.ravel(tf.convert_to_tensor(g)) for g in grads]))
    return np.array(rows).reshape(records, -1)


def _assert_sum(result, factors, expected):
    flat = np.concatenate([np.ravel(g) for g in result.weighted_sum(factors)])
    np.testing.assert_allclose(flat, expected, rtol=RTOL, atol=ATOL)


def _flat(grads):
    return np.concatenate([np.reshape(g, (g.shape[0], -1)) for g in grads], axis=1)


def _dense_2d():
    return keras.Sequential(
        [
            keras.Input((5,), dtype="float64"),
            keras.layers.Dense(7, activation="tanh", dtype="float64"),
            keras.layers.Dense(3, dtype="float64"),
        ]
    )


def _dense_3d(rows, features, units):
    inputs = keras.Input((rows, features), dtype="float64")
    h = keras.layers.Dense(units, activation="relu", dtype="float64")(inputs)
    h = keras.layers.Flatten(dtype="float64")(h)
    return keras.Model(inputs, keras.layers.Dense(3, dtype="float64")(h))


def _conv(padding, strides, dilation, kernel_size=3):
    return keras.Sequential(
        [
            keras.Input((7, 7, 2), dtype="float64"),
            keras.layers.Conv2D(
                3, kernel_size, strides=strides, padding=padding, dilation_rate=dilation, activation="tanh",
                dtype="float64",
            ),
            keras.layers.Conv2D(2, 2, padding="valid", dtype="float64"),
            keras.layers.Flatten(dtype="float64"),
            keras.layers.Dense(3, dtype="float64"),
        ]
    )


def _embedding(length):
    inputs = keras.Input((length,), dtype="int32")
    h = keras.layers.Embedding(6, 4, dtype="float64")(inputs)
    h = keras.layers.Flatten(dtype="float64")(h)
    return keras.Model(inputs, keras.layers.Dense(3, dtype="float64")(h))


MODELS = {
    "dense_2d": (_dense_2d, (5,)),
    "dense_3d_direct": (lambda: _dense_3d(5, 4, 3), (5, 4)),
    "dense_3d_gram": (lambda: _dense_3d(2, 8, 8), (2, 8)),
    "conv_same_s1": (lambda: _conv("same", 1, 1), (7, 7, 2)),
    "conv_valid_s2": (lambda: _conv("valid", 2, 1), (7, 7, 2)),
    "conv_same_s2": (lambda: _conv("same", 2, 1), (7, 7, 2)),
    "conv_same_s21_k23": (lambda: _conv("same", (2, 1), 1, kernel_size=(2, 3)), (7, 7, 2)),
    "conv_valid_dilated": (lambda: _conv("valid", 1, 2), (7, 7, 2)),
    "embedding_seq": (lambda: _embedding(6), "ids6"),
    "embedding_single": (lambda: _embedding(1), "ids1"),
}


def _data(shape, batch, seed=0):
    rng = np.random.default_rng(seed)
    if isinstance(shape, str):  # token ids, with repeats inside an example
        x = rng.integers(0, 6, size=(batch, int(shape[3:]))).astype("int32")
    else:
        x = rng.normal(size=(batch, *shape))
    y = rng.normal(size=(batch, 3))
    return tf.constant(x), tf.constant(y)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_per_example_gradients_match_one_at_a_time(name):
    build, shape = MODELS[name]
    model = build()
    x, y = _data(shape, batch=5)
    expected = _reference(model, x.numpy(), y.numpy())
    factors = tf.constant(np.random.default_rng(1).uniform(0.1, 1.0, size=5))
    expected_sum = factors.numpy() @ expected
    variables = model.trainable_variables

    vectorized = VectorizedClipper(model, variables, _mse)
    grads, losses, _ = vectorized.per_record_gradients(x, y)
    np.testing.assert_allclose(_flat(grads), expected, rtol=RTOL, atol=ATOL)
    result = vectorized(x, y)
    np.testing.assert_allclose(result.norms, np.linalg.norm(expected, axis=1), rtol=RTOL)
    _assert_sum(result, factors, expected_sum)

    ghost = GhostClipper(model, variables, _mse)
    result = ghost(x, y)
    np.testing.assert_allclose(result.norms, np.linalg.norm(expected, axis=1), rtol=RTOL)
    np.testing.assert_allclose(result.y_pred, model(x), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(result.losses, _mse(y, model(x), None), rtol=RTOL)
    _assert_sum(result, factors, expected_sum)


@pytest.mark.parametrize("method", ["vectorized", "ghost"])
@pytest.mark.parametrize("name", ["dense_2d", "conv_same_s2", "embedding_seq"])
def test_microbatch_gradients_match_one_at_a_time(name, method):
    build, shape = MODELS[name]
    model = build()
    x, y = _data(shape, batch=6)
    expected = _reference(model, x.numpy(), y.numpy(), microbatches=3)
    clipper = make_clipper(model, model.trainable_variables, _mse, method=method, num_microbatches=3)
    result = clipper(x, y)
    np.testing.assert_allclose(result.norms, np.linalg.norm(expected, axis=1), rtol=RTOL)
    factors = tf.constant([0.5, 1.0, 0.25], dtype=tf.float64)
    np.testing.assert_allclose(
        np.concatenate([np.ravel(g) for g in result.weighted_sum(factors)]),
        factors.numpy() @ expected,
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("method", ["vectorized", "ghost"])
@pytest.mark.parametrize("batch", [0, 1])
def test_edge_batch_sizes(method, batch):
    model = _conv("same", 2, 1)
    x, y = _data((7, 7, 2), batch=batch)
    clipper = make_clipper(model, model.trainable_variables, _mse, method=method)
    result = clipper(x, y)
    assert result.norms.shape == (batch,)
    sums = result.weighted_sum(tf.ones([batch], tf.float64))
    assert [s.shape for s in sums] == [v.shape for v in model.trainable_variables]
    if batch == 0:
        assert all(float(tf.reduce_max(tf.abs(s))) == 0.0 for s in sums)
    else:
        expected = _reference(model, x.numpy(), y.numpy())
        np.testing.assert_allclose(result.norms, np.linalg.norm(expected, axis=1), rtol=RTOL)


def test_sample_weights_scale_each_example():
    model = _dense_2d()
    x, y = _data((5,), batch=4)
    weights = tf.constant([1.0, 0.0, 2.0, 0.5], tf.float64)
    expected = _reference(model, x.numpy(), y.numpy()) * weights.numpy()[:, None]
    for method in ("vectorized", "ghost"):
        result = make_clipper(model, model.trainable_variables, _mse, method=method)(x, y, weights)
        np.testing.assert_allclose(result.norms, np.linalg.norm(expected, axis=1), rtol=RTOL, atol=ATOL)


def test_auto_uses_ghost_only_when_every_layer_allows_it():
    model = _dense_2d()
    assert isinstance(make_clipper(model, model.trainable_variables, _mse), GhostClipper)
    inputs = keras.Input((5,))
    h = keras.layers.LayerNormalization(name="norm")(keras.layers.Dense(4)(inputs))
    mixed = keras.Model(inputs, keras.layers.Dense(3)(h))
    assert ghost_blockers(mixed) == ["LayerNormalization 'norm': no ghost-norm rule for this layer type"]
    assert isinstance(make_clipper(mixed, mixed.trainable_variables, _mse), VectorizedClipper)
    with pytest.raises(UnsupportedLayerError, match="LayerNormalization 'norm'"):
        make_clipper(mixed, mixed.trainable_variables, _mse, method="ghost")


def test_shared_layer_is_not_ghost_clipped():
    inputs = keras.Input((3,))
    shared = keras.layers.Dense(3, name="shared")
    model = keras.Model(inputs, shared(shared(inputs)))
    assert isinstance(make_clipper(model, model.trainable_variables, _mse), VectorizedClipper)
    with pytest.raises(UnsupportedLayerError, match="Dense 'shared': called 2 times"):
        GhostClipper(model, model.trainable_variables, _mse)


def test_layers_without_per_example_gradients_are_all_listed():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4, activity_regularizer="l2", name="act_reg"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(name="bn2"),
        ]
    )
    with pytest.raises(UnsupportedLayerError) as error:
        check_layers(model)
    message = str(error.value)
    for name in ("'act_reg'", "'bn1'", "'bn2'"):
        assert name in message
    model.get_layer("bn1").trainable = False
    model.get_layer("bn2").trainable = False
    model.get_layer("act_reg").activity_regularizer = None
    check_layers(model)  # frozen BatchNormalization runs in inference mode: per-example


@tf.custom_gradient
def _double_in_python(x):
    y = tf.ensure_shape(tf.numpy_function(lambda v: v * 2, [x], x.dtype, stateful=False), x.shape)
    return y, lambda dy: 2 * dy


class _PythonOp(keras.layers.Layer):
    """A differentiable layer whose forward op (EagerPyFunc) has no vectorization rule."""

    def call(self, x):
        return _double_in_python(x)

    def compute_output_shape(self, input_shape):
        return input_shape


def test_unvectorizable_layer_is_named():
    inputs = keras.Input((3,))
    h = _PythonOp(name="python_op")(keras.layers.Dense(3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    clipper = make_clipper(model, model.trainable_variables, _mse, method="vectorized")
    x, y = tf.ones([2, 3]), tf.ones([2, 2])
    with pytest.raises(UnsupportedLayerError, match="python_op"):
        clipper(x, y)


def _check_against_reference(model, clipper, x, y):
    expected = _reference(model, x.numpy(), y.numpy())
    result = clipper(x, y)
    np.testing.assert_allclose(result.norms, np.linalg.norm(expected, axis=1), rtol=RTOL)
    factors = tf.constant(np.linspace(0.2, 1.0, x.shape[0]))
    _assert_sum(result, factors, factors.numpy() @ expected)


@pytest.mark.parametrize("method", ["vectorized", "ghost"])
@pytest.mark.parametrize("name", ["conv_same_s2", "conv_valid_dilated", "conv_same_s21_k23"])
def test_conv_per_record_kernel_gradients_on_both_backends(backend, name, method):
    build, shape = MODELS[name]
    model = build()
    x, y = _data(shape, batch=4)
    _check_against_reference(model, make_clipper(model, model.trainable_variables, _mse, method=method), x, y)


def test_ghost_reuses_per_record_conv_gradients_within_the_memory_budget(monkeypatch):
    from tfe_lite.privacy import clipping

    model = _conv("same", 1, 1)
    x, y = _data((7, 7, 2), batch=4)
    ghost = GhostClipper(model, model.trainable_variables, _mse)
    y_pred, zs, acts = ghost._tap_model(x)
    conv = ghost._taps[0][0]
    kept = clipping._layer_records(conv, acts[0], tf.ones_like(zs[0]), None)
    assert set(kept.grads) == {id(conv.kernel), id(conv.bias)}
    monkeypatch.setattr(clipping, "MATERIALIZE_BYTES", 0)  # over budget: norms only, second backward pass
    assert clipping._layer_records(conv, acts[0], tf.ones_like(zs[0]), None).grads is None
    _check_against_reference(model, GhostClipper(model, model.trainable_variables, _mse), x, y)


def test_vectorized_conv_kernel_gradients_need_no_while_loop(backend):
    from tensorflow.python.ops.parallel_for import pfor

    tf_converter = pfor._pfor_converter_registry["Conv2DBackpropFilter"]
    model = _conv("same", 1, 1)
    clipper = VectorizedClipper(model, model.trainable_variables, _mse)
    x, y = _data((7, 7, 2), batch=3)
    graph = tf.function(clipper.per_record_gradients).get_concrete_function(x, y).graph
    op_types = {op.type for op in graph.get_operations()}
    # The native op, or (pure TF) its twin's batched matmuls; TensorFlow's own rule would add a While loop.
    assert ("PerRecordConv2DKernelGrad" in op_types) == (backend == "native")
    assert not op_types & {"While", "StatelessWhile"}
    # TensorFlow's own converter is back in place once the trace is done.
    assert pfor._pfor_converter_registry["Conv2DBackpropFilter"] is tf_converter


def _graph_parts(clipper, x, y):
    """``clipper``'s norms and clipped sums traced once with an unknown batch size, as Keras traces them."""
    signature = [tf.TensorSpec([None, *x.shape[1:]], x.dtype), tf.TensorSpec([None, *y.shape[1:]], y.dtype)]

    @tf.function(input_signature=signature)
    def run(x, y):
        result = clipper(x, y)
        factors = tf.linspace(tf.constant(0.2, tf.float64), 1.0, tf.shape(result.norms)[0])
        return result.norms, result.weighted_sum(factors)

    return run


@pytest.mark.parametrize("batch", [0, 1, 4])
@pytest.mark.parametrize("name", ["dense_2d", "dense_3d_direct", "dense_3d_gram", "embedding_seq", "conv_same_s2"])
def test_vectorized_with_unknown_batch_size_matches_one_at_a_time(name, batch):
    build, shape = MODELS[name]
    model = build()
    x, y = _data(shape, batch=batch)
    norms, sums = _graph_parts(VectorizedClipper(model, model.trainable_variables, _mse), x, y)(x, y)
    assert norms.shape == (batch,)
    flat_sum = np.concatenate([np.ravel(s) for s in sums])
    if batch == 0:
        assert flat_sum.size == sum(v.numpy().size for v in model.trainable_variables)
        assert not flat_sum.any()
        return
    expected = _reference(model, x.numpy(), y.numpy())
    np.testing.assert_allclose(norms, np.linalg.norm(expected, axis=1), rtol=RTOL)
    np.testing.assert_allclose(flat_sum, np.linspace(0.2, 1.0, batch) @ expected, rtol=RTOL, atol=ATOL)


def test_vectorized_dense_and_embedding_gradients_are_never_materialized():
    inputs = keras.Input((6,), dtype="int32")
    h = keras.layers.Flatten(dtype="float64")(keras.layers.Embedding(50, 4, dtype="float64")(inputs))
    h = keras.layers.Dense(16, activation="tanh", dtype="float64")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, dtype="float64")(h))
    x, y = _data("ids6", batch=5)
    clipper = VectorizedClipper(model, model.trainable_variables, _mse)
    run = _graph_parts(clipper, x, y)
    graph = run.get_concrete_function().graph
    kernels = {tuple(v.shape) for v in model.trainable_variables if len(v.shape) == 2}
    stacked = [
        op for op in graph.get_operations()
        if op.type == "BatchMatMulV2" and tuple(op.outputs[0].shape[1:]) in kernels
    ]
    assert len(stacked) == 2  # pfor stacks both Dense kernels' per-record gradients ...
    assert all(not op.outputs[0].consumers() for op in stacked)  # ... which nothing reads: pruned
    # One segment sum: the clipped sum's, into the [50, 4] table (not each record's table).
    segment_sums = [tuple(op.outputs[0].shape) for op in graph.get_operations() if op.type == "UnsortedSegmentSum"]
    assert segment_sums == [(50, 4)]
    assert [type(p).__name__ for p in clipper._eager_parts(x, y)[0]] == [
        "_SparseRows", "_OuterProducts", "EagerTensor", "_OuterProducts", "EagerTensor"
    ]
    norms, sums = run(x, y)
    # The same numbers with every per-record gradient materialized, and one record at a time.
    dense = VectorizedClipper(model, model.trainable_variables, _mse, factor_outer_products=False)
    dense_norms, dense_sums = _graph_parts(dense, x, y)(x, y)
    np.testing.assert_allclose(norms, dense_norms, rtol=RTOL)
    for s, d in zip(sums, dense_sums):
        np.testing.assert_allclose(s, d, rtol=RTOL, atol=ATOL)
    expected = _reference(model, x.numpy(), y.numpy())
    np.testing.assert_allclose(norms, np.linalg.norm(expected, axis=1), rtol=RTOL)


@pytest.mark.parametrize("name", ["dense_2d", "dense_3d_gram", "embedding_seq", "conv_same_s2"])
def test_vectorized_under_xla_keeps_the_structure_and_matches_one_at_a_time(name):
    """Under jit_compile tf.vectorized_map would hide its ops in a nested function; the clipper's own pfor
    call keeps them in the graph, so Dense kernels stay factored there too."""
    build, shape = MODELS[name]
    model = build()
    x, y = _data(shape, batch=4)
    clipper = VectorizedClipper(model, model.trainable_variables, _mse)
    kinds = []

    @tf.function(jit_compile=True)
    def run(x, y):
        parts, _, _, _ = clipper._parts(x, y)
        kinds.extend(type(p).__name__ for p in parts)
        result = clipper(x, y)
        return result.norms, result.weighted_sum(tf.constant([0.2, 0.4, 0.6, 1.0], tf.float64))

    norms, sums = run(x, y)
    dense_kernels = [
        kind for kind, v in zip(kinds, model.trainable_variables) if len(v.shape) == 2 and "kernel" in v.path
    ]
    assert dense_kernels and set(dense_kernels) == {"_OuterProducts"}
    expected = _reference(model, x.numpy(), y.numpy())
    np.testing.assert_allclose(norms, np.linalg.norm(expected, axis=1), rtol=RTOL)
    flat_sum = np.concatenate([np.ravel(s) for s in sums])
    np.testing.assert_allclose(flat_sum, np.array([0.2, 0.4, 0.6, 1.0]) @ expected, rtol=RTOL, atol=ATOL)


def test_vectorized_float32_sequence_model_is_stable_and_matches_one_at_a_time():
    """Dense layers on sequences (here inside MultiHeadAttention) multiply ``[records, 1, T, d]`` by a shared
    kernel under pfor. TensorFlow's rule makes that a broadcasting BatchMatMulV2, which oneDNN computes
    wrongly in float32 (different values each run, heap corruption); the clipper's rule uses a 2-D matmul."""
    inputs = keras.Input((5, 4))
    h = keras.layers.MultiHeadAttention(2, 4)(inputs, inputs)
    h = keras.layers.Dense(6, activation="tanh")(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(h)))
    x, y = (tf.cast(t, tf.float32) for t in _data((5, 4), batch=16))
    clipper = VectorizedClipper(model, model.trainable_variables, _mse)
    run = tf.function(lambda x, y: clipper(x, y).norms)
    graph = run.get_concrete_function(x, y).graph
    broadcast = [
        op.name for op in graph.get_operations()
        if op.type.startswith("BatchMatMul") and op.inputs[0].shape.rank >= 4 and op.inputs[1].shape.rank == 2
    ]
    assert not broadcast
    expected = np.linalg.norm(_reference(model, x.numpy(), y.numpy()), axis=1)
    for _ in range(20):
        np.testing.assert_allclose(run(x, y), expected, rtol=2e-5)


def _vectorized_only(*layers, shape):
    return keras.Sequential(
        [keras.Input(shape, dtype="float64"), *layers, keras.layers.Flatten(dtype="float64"),
         keras.layers.Dense(3, dtype="float64")]
    )


def _attention():
    inputs = keras.Input((4, 3), dtype="float64")
    h = keras.layers.MultiHeadAttention(2, 3, dtype="float64")(inputs, inputs)
    return keras.Model(inputs, keras.layers.Dense(3, dtype="float64")(keras.layers.Flatten(dtype="float64")(h)))


# Models that only the vectorized path handles (ghost clipping has no rule for these layers).
VECTORIZED_ONLY = {
    "layer_norm": (lambda: _vectorized_only(
        keras.layers.Dense(4, dtype="float64"), keras.layers.LayerNormalization(dtype="float64"), shape=(5,)), (5,)),
    "group_norm": (lambda: _vectorized_only(
        keras.layers.Conv2D(4, 3, dtype="float64"), keras.layers.GroupNormalization(2, dtype="float64"),
        shape=(5, 5, 2)), (5, 5, 2)),
    "depthwise": (lambda: _vectorized_only(
        keras.layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, activation="tanh",
                                     dtype="float64"), shape=(7, 7, 2)), (7, 7, 2)),
    "separable": (lambda: _vectorized_only(
        keras.layers.SeparableConv2D(3, 3, dtype="float64"), shape=(6, 6, 2)), (6, 6, 2)),
    "conv1d": (lambda: _vectorized_only(keras.layers.Conv1D(3, 2, dtype="float64"), shape=(6, 2)), (6, 2)),
    "gru": (lambda: _vectorized_only(keras.layers.GRU(3, dtype="float64"), shape=(4, 2)), (4, 2)),
    "simple_rnn": (lambda: _vectorized_only(
        keras.layers.SimpleRNN(3, return_sequences=True, dtype="float64"), shape=(4, 2)), (4, 2)),
    "attention": (_attention, (4, 3)),
    "lstm": (lambda: _vectorized_only(keras.layers.LSTM(3, dtype="float64"), shape=(4, 2)), (4, 2)),
}


@pytest.mark.parametrize("name", sorted(VECTORIZED_ONLY))
def test_vectorized_handles_layers_ghost_cannot(name):
    build, shape = VECTORIZED_ONLY[name]
    model = build()
    assert ghost_blockers(model)
    x, y = _data(shape, batch=4)
    _check_against_reference(model, make_clipper(model, model.trainable_variables, _mse), x, y)


@pytest.mark.parametrize("batch", [1, 3])
def test_vectorized_lstm_with_one_record(batch):
    """A single record is padded to two: with one pfor iteration, the TensorList ops of Keras's LSTM loop fail
    at run time ("Tried to append a tensor with incompatible shape to a list")."""
    build, shape = VECTORIZED_ONLY["lstm"]
    model = build()
    x, y = _data(shape, batch=batch)
    clipper = VectorizedClipper(model, model.trainable_variables, _mse)
    norms, sums = _graph_parts(clipper, x, y)(x, y)  # an unknown batch size, as Keras traces it
    expected = _reference(model, x.numpy(), y.numpy())
    np.testing.assert_allclose(norms, np.linalg.norm(expected, axis=1), rtol=RTOL)
    flat_sum = np.concatenate([np.ravel(s) for s in sums])
    np.testing.assert_allclose(flat_sum, np.linspace(0.2, 1.0, batch) @ expected, rtol=RTOL, atol=ATOL)
    result = clipper(x[:1], y[:1])  # a static batch of one
    np.testing.assert_allclose(result.norms, np.linalg.norm(expected[:1], axis=1), rtol=RTOL)


def test_run_time_vectorization_failure_names_the_layer():
    model = VECTORIZED_ONLY["lstm"][0]()
    lstm = model.layers[0].name
    error = tf.errors.InvalidArgumentError(
        None, None,
        "Graph execution error:\n\nDetected at node loop_body/sequential_3/" + lstm + "_1/while/TensorListPushBack_1"
        "/pfor/TensorListPushBack defined at (most recent call last):\n  File \"x.py\", line 1\n"
        "Tried to append a tensor with incompatible shape to a list.\n"
        "\t [[{{node loop_body/sequential_3/" + lstm + "_1/while/TensorListPushBack_1/pfor/TensorListPushBack}}]]",
    )
    failure = clipping_module.vectorization_failure(error, model)
    assert isinstance(failure, UnsupportedLayerError)
    assert f"in layer(s) ['{lstm}']" in str(failure)
    assert "(Tried to append a tensor with incompatible shape to a list.)" in str(failure)
    other = tf.errors.InvalidArgumentError(None, None, "Detected at node dense/MatMul: Incompatible shapes")
    assert clipping_module.vectorization_failure(other, model) is None
    assert clipping_module.vectorization_failure(ValueError("pfor"), model) is None


def test_vectorized_shared_dense_layer_stays_factored():
    """A layer called twice has the sum of two outer products as its per-record kernel gradient; its factors
    are stacked along the rows (ghost clipping refuses shared layers, so this is the path they take)."""
    inputs = keras.Input((5,), dtype="float64")
    shared = keras.layers.Dense(5, activation="tanh", dtype="float64")
    h = shared(shared(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, dtype="float64")(h))
    x, y = _data((5,), batch=4)
    clipper = make_clipper(model, model.trainable_variables, _mse)
    assert isinstance(clipper, VectorizedClipper)
    parts = clipper._eager_parts(x, y)[0]
    assert type(parts[0]).__name__ == "_OuterProducts" and parts[0].left.shape[1] == 2  # two calls, two rows
    _check_against_reference(model, clipper, x, y)


def test_grouped_convolution_is_refused_by_name():
    model = keras.Sequential(
        [keras.Input((6, 6, 4)), keras.layers.Conv2D(4, 3, groups=2, name="grouped"), keras.layers.Flatten(),
         keras.layers.Dense(3)]
    )
    for method in ("auto", "vectorized"):
        with pytest.raises(UnsupportedLayerError, match=r"Conv2D 'grouped': groups=2"):
            make_clipper(model, model.trainable_variables, _mse, method=method)
