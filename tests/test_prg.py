"""ChaCha20 generator: RFC 8439 test vectors, native == pure TensorFlow, freshness, uniformity, placement.

The expected keystreams are RFC 8439's published hex (sections 2.3.2, 2.4.2 and appendix A.1). The native
library is built by ``make``; when it is missing the native cases fail unless TFE_LITE_NATIVE_OPS=0.
"""

import os
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.eager import context  # run metadata: where ops actually ran

from tfe_lite import ops, prg
from tfe_lite.errors import ConfigError, ShapeError

FORCED_TF = os.environ.get(ops.ENV_VAR) == "0"  # as tests/conftest.py NATIVE_FORCED_OFF
RFC_KEY = np.frombuffer(bytes(range(32)), dtype="<i8").astype(np.int64)  # key 00:01:02:...:1f

# RFC 8439 2.3.2: key 00..1f, nonce 00:00:00:09:00:00:00:4a:00:00:00:00, block counter 1.
RFC_232_BLOCK = bytes.fromhex(
    "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
    "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
)
# RFC 8439 A.1 test vectors 1 and 2: all-zero key and nonce, block counters 0 and 1.
RFC_A1_BLOCKS_0_1 = bytes.fromhex(
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
    "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed"
    "29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f"
)
# RFC 8439 2.4.2: key 00..1f, nonce 00:00:00:00:00:00:00:4a:00:00:00:00, initial counter 1.
RFC_242_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
    b"sunscreen would be it."
)
RFC_242_CIPHERTEXT = bytes.fromhex(
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
    "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
    "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
    "5af90bbf74a35be6b40b8eedf2785e42874d"
)
RFC_NONCE_4A = 0x4A000000  # nonce word 1 = 0x4a000000 (bytes 00 00 00 4a) is the low word of the stream


def as_bytes(values) -> bytes:
    return np.asarray(values).astype("<i8").tobytes()


def graph_devices(concrete_function) -> set[str]:
    """Devices of the ChaCha20 ops in a traced function: the native op, or the call of the pure-TF path's
    function (whose ops TensorFlow places on the device of the call)."""
    types = ("ChaCha20Keystream", "PartitionedCall", "StatefulPartitionedCall")
    return {op.device for op in concrete_function.graph.get_operations() if op.type in types}


def executed_devices(fn, op_types) -> dict:
    """Calls fn() and returns {device: count} of the ops of `op_types` that ran (from TensorFlow's run
    metadata, which also covers the bodies of inlined functions), plus "result": fn()'s value."""
    ctx = context.context()
    ctx.export_run_metadata()  # drop what an earlier test may have left
    ctx.enable_run_metadata()
    try:
        result = fn()
        metadata = ctx.export_run_metadata()
    finally:
        ctx.disable_run_metadata()
    nodes = [node for graph in metadata.partition_graphs for node in graph.node if node.op in op_types]
    return {**Counter(node.device for node in nodes), "result": result}


def test_rfc8439_block_function(backend):
    block = prg._keystream(RFC_KEY, tf.constant([8], tf.int64), tf.constant(RFC_NONCE_4A, tf.int64),
                           0x09000000_00000001)  # counter 1, nonce word 0 = 0x09000000
    assert as_bytes(block) == RFC_232_BLOCK


def test_rfc8439_zero_key_keystream(backend):
    assert as_bytes(prg.expand_seed(np.zeros(4, np.int64), (16,))) == RFC_A1_BLOCKS_0_1


def test_rfc8439_encryption_keystream(backend):
    keystream = as_bytes(prg.expand_seed(RFC_KEY, (3 * 8,), stream=RFC_NONCE_4A))[64:]  # from block 1
    ciphertext = bytes(p ^ k for p, k in zip(RFC_242_PLAINTEXT, keystream))
    assert ciphertext == RFC_242_CIPHERTEXT


@pytest.mark.parametrize("shape", [(), (0,), (1,), (7,), (8,), (9,), (3, 0, 2), (127,), (129,), (5, 7, 11), (257, 129)])
def test_backends_agree(both_backends, shape):
    seed = np.array([1, -2, 2**62 + 3, -(2**63)], np.int64)
    native, pure = both_backends(lambda: prg.expand_seed(seed, shape, stream=2**64 - 1))
    assert native.shape == pure.shape == shape and native.dtype == np.int64
    np.testing.assert_array_equal(native, pure)


@pytest.mark.parametrize("first_block", [2**32 - 5, 2**63 - 5, -3])
def test_backends_agree_across_counter_carries(both_backends, first_block):
    """Block counters crossing 2^32 (carry into word 13) and 2^64 (wrap) in the middle of a 16-block group."""
    def stream():
        return prg._keystream(RFC_KEY, tf.constant([300], tf.int64), tf.constant(9, tf.int64), first_block)

    native, pure = both_backends(stream)
    np.testing.assert_array_equal(native, pure)
    if first_block == 2**32 - 5:
        assert as_bytes(native[40:48]) == as_bytes(
            prg._keystream(RFC_KEY, tf.constant([8], tf.int64), tf.constant(9, tf.int64), 2**32)
        )


def test_dynamic_shape(backend):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
    def expand(shape):
        return prg.expand_seed(RFC_KEY, shape, stream=3)

    for shape in ([5, 3], [0], [17]):
        np.testing.assert_array_equal(expand(tf.constant(shape)).numpy(), prg.expand_seed(RFC_KEY, shape, stream=3))


def test_derive_seed_is_block_2_63_and_separated_from_expansion(backend):
    counter = tf.constant(12345, tf.int64)
    derived = prg.derive_seed(RFC_KEY, counter).numpy()
    assert derived.shape == (4,) and derived.dtype == np.int64
    expected = prg._keystream(RFC_KEY, tf.constant([4], tf.int64), counter, prg.DERIVE_BLOCK)
    np.testing.assert_array_equal(derived, expected)
    assert not np.array_equal(derived, prg.expand_seed(RFC_KEY, (4,), stream=12345))


def test_expand_seed_from_a_later_block_is_that_part_of_the_stream(backend):
    whole = prg.expand_seed(RFC_KEY, [40], stream=5).numpy()
    np.testing.assert_array_equal(prg.expand_seed(RFC_KEY, [19], stream=5, first_block=2), whole[16:35])
    np.testing.assert_array_equal(prg.expand_seed(RFC_KEY, [2, 4], stream=5, first_block=4), whole[32:].reshape(2, 4))
    for first_block in (-1, 2**62, 1.0, True):
        with pytest.raises(ConfigError, match=rf"`first_block`.*Received: first_block={first_block!r}"):
            prg.expand_seed(RFC_KEY, [4], first_block=first_block)


def test_derive_seeds_are_the_keystream_from_block_2_63_in_seed_sized_words(backend):
    counter = tf.constant(-7, tf.int64)
    seeds = prg.derive_seeds(RFC_KEY, counter, 5).numpy()
    assert seeds.shape == (5, 4) and seeds.dtype == np.int64
    np.testing.assert_array_equal(seeds[0], prg.derive_seed(RFC_KEY, counter))  # the first is derive_seed's
    words = prg._keystream(RFC_KEY, tf.constant([20], tf.int64), counter, prg.DERIVE_BLOCK).numpy()
    np.testing.assert_array_equal(seeds.reshape(-1), words)  # blocks 2^63, 2^63 + 1, 2^63 + 2 (half of it)
    assert len({row.tobytes() for row in seeds}) == 5
    following = prg.derive_seeds(RFC_KEY, counter + 1, 5).numpy()  # the next counter value: new seeds
    assert not {row.tobytes() for row in seeds} & {row.tobytes() for row in following}
    for count in (0, -1, 2.0, True, 2**20 + 1):
        with pytest.raises(ConfigError, match=rf"`count`.*Received: count={count!r}"):
            prg.derive_seeds(RFC_KEY, counter, count)


def test_different_inputs_give_different_outputs(backend):
    seed = np.array([11, 22, 33, 44], np.int64)
    outputs = [
        prg.expand_seed(seed, (64,)),
        prg.expand_seed(seed, (64,), stream=1),
        prg.expand_seed(seed, (64,), stream=2**63),
        prg.expand_seed(seed + np.array([0, 0, 0, 1]), (64,)),
        prg.expand_seed(seed ^ np.array([np.iinfo(np.int64).min, 0, 0, 0]), (64,)),  # top key bit
    ]
    seeds = [prg.derive_seed(seed, tf.constant(c, tf.int64)) for c in (0, 1, -1)]
    flat = [np.asarray(x).tobytes() for x in outputs + seeds]
    assert len(set(flat)) == len(flat)
    np.testing.assert_array_equal(prg.expand_seed(seed, (64,)), outputs[0])  # and deterministic


def test_prefix_property(backend):
    """A shorter request is a prefix of a longer one (same key, stream): outputs come from blocks 0, 1, ..."""
    long = prg.expand_seed(RFC_KEY, (1000,), stream=5).numpy()
    np.testing.assert_array_equal(prg.expand_seed(RFC_KEY, (3, 7), stream=5).numpy().ravel(), long[:21])


def test_bits_are_uniform(backend):
    """Each of the 64 bit positions over 2^16 outputs is 1 about half the time (6 binomial sigmas)."""
    count = 2**16
    values = prg.expand_seed(np.array([5, 6, 7, 8], np.int64), (count,), stream=77).numpy().view(np.uint64)
    ones = ((values[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).sum(axis=0)
    bound = 6 * np.sqrt(count * 0.25)
    assert np.all(np.abs(ones - count / 2) < bound), ones
    assert len(np.unique(values)) == count  # 2^16 draws from 2^64: a collision has chance ~2^-33


def test_tf_function_with_counter_variable_is_fresh_per_call(backend):
    with tf.device("/device:CPU:2"):
        key = tf.Variable(RFC_KEY, trainable=False)
        counter = tf.Variable(np.int64(0), trainable=False)

    @tf.function
    def draw():
        with tf.device("/device:CPU:2"):
            seed = prg.derive_seed(key, counter.assign_add(1))
            return seed, prg.expand_seed(seed, (4, 4), stream=1)

    (seed1, x1), (seed2, x2) = draw(), draw()
    assert not np.array_equal(seed1, seed2) and not np.array_equal(x1, x2)
    np.testing.assert_array_equal(seed2, prg.derive_seed(RFC_KEY, tf.constant(2, tf.int64)))
    np.testing.assert_array_equal(x2, prg.expand_seed(seed2, (4, 4), stream=1))
    devices = graph_devices(draw.get_concrete_function())
    assert devices and all(d.endswith("device:CPU:2") for d in devices), devices


def test_runs_on_a_player_device_without_soft_placement(backend):
    previous = tf.config.get_soft_device_placement()
    tf.config.set_soft_device_placement(False)
    try:
        with tf.device("/device:CPU:2"):
            eager = prg.expand_seed(RFC_KEY, (33,), stream=4)
            derived = prg.derive_seed(RFC_KEY, tf.constant(3, tf.int64))
        assert eager.device.endswith("device:CPU:2") and derived.device.endswith("device:CPU:2")

        with tf.device("/device:CPU:1"):  # run-time inputs, as in the protocol (constants would be folded)
            key, counter = tf.Variable(RFC_KEY), tf.Variable(np.int64(3))

        @tf.function
        def graph():
            with tf.device("/device:CPU:2"):
                return prg.expand_seed(prg.derive_seed(key, counter.read_value()), (33,))

        devices = graph_devices(graph.get_concrete_function())
        assert devices and all(d.endswith("device:CPU:2") for d in devices), devices
        executed = executed_devices(graph, ("ChaCha20Keystream",) if backend == "native" else ("BitwiseXor",))
        np.testing.assert_array_equal(executed.pop("result"), prg.expand_seed(derived, (33,)))
        assert executed and set(executed) == {"/job:localhost/replica:0/task:0/device:CPU:2"}, executed
    finally:
        tf.config.set_soft_device_placement(previous)


def test_rejects_bad_arguments():
    key = np.zeros(4, np.int64)
    with pytest.raises(ConfigError, match="`seed`.*Received: seed with dtype int32"):
        prg.expand_seed(key.astype(np.int32), (2,))
    with pytest.raises(ShapeError, match="`seed`.*Received: seed with shape"):
        prg.expand_seed(np.zeros(3, np.int64), (2,))
    with pytest.raises(ConfigError, match="`stream`.*Received: stream=-1"):
        prg.expand_seed(key, (2,), stream=-1)
    with pytest.raises(ConfigError, match="`stream`"):
        prg.expand_seed(key, (2,), stream=2**64)
    with pytest.raises(ShapeError, match="`shape`"):
        prg.expand_seed(key, (2, -1))
    with pytest.raises(ShapeError, match="`shape`"):
        prg.expand_seed(key, (None, 3))
    with pytest.raises(ConfigError, match="`counter`.*int64 scalar"):
        prg.derive_seed(key, tf.constant([1, 2], tf.int64))
    with pytest.raises(ConfigError, match="`key`"):
        prg.derive_seed(key.astype(np.float64), 1)


def test_xla_compiled_functions_use_the_pure_tensorflow_path():
    """The native ops have no XLA kernels: inside jit_compile, ops.library() is None and the twin serves."""
    seen = []

    @tf.function(jit_compile=True)
    def expand(counter):
        seen.append((ops.in_xla_context(), ops.library()))
        return prg.expand_seed(prg.derive_seed(RFC_KEY, counter), (40,), stream=3)

    counter = tf.constant(5, tf.int64)
    expected = prg.expand_seed(prg.derive_seed(RFC_KEY, counter), (40,), stream=3)
    np.testing.assert_array_equal(expand(counter).numpy(), expected.numpy())
    assert seen == [(True, None)]
    assert not ops.in_xla_context() and ops.available() == (not FORCED_TF)
