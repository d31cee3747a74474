"""``secure(model, ...)``: a built Keras model (Sequential or functional) as a :class:`PrivateModel`.

Steps:

1. Check the protocol and the roles (``model_owner`` and ``client`` are players of the protocol's config,
   neither a server nor the producer, and not the same player).
2. Read the model's graph (a Sequential through the functional graph Keras builds for it).
3. Validate: every layer or operation without a private version, and every setting of a supported layer that
   has none (an activation, dilation, ``data_format``...), is listed in one
   :class:`~tfe_lite.errors.UnsupportedLayerError` before anything is shared.
4. Optimize (``optimize=True``, exact): fold each BatchNormalization into the Dense or Conv2D without
   activation before it; apply a ReLU that feeds a max pooling after the pooling instead (max commutes
   with a non-decreasing function, and the ReLU then compares a quarter as many elements).
5. Make each private layer, build it, and share its weights once from the model owner's device into share
   variables on the servers.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
# Reading a model's graph needs Keras's functional internals (nodes by depth, each node's operation and
# tensors); there is no public API for it. Everything that touches them is in ``_read_graph``.
from keras.src.models.functional import Functional
from keras.src.ops import numpy as keras_numpy

from tfe_lite.errors import ConfigError, PlayerError, UnsupportedLayerError
from tfe_lite.players import CRYPTO_PRODUCER, SERVER0, SERVER1
from tfe_lite.protocols import Pond

from .activation import PrivateActivation, PrivateReLU, PrivateSoftmax, activation_name
from .conv2d import PrivateConv2D
from .dense import PrivateDense
from .dropout import PrivateDropout
from .merging import PrivateAdd, PrivateAverage, PrivateConcatenate, PrivateMultiply, PrivateSubtract
from .model import PrivateModel, Step
from .normalization import PrivateBatchNormalization, PrivateRescaling, fold, foldable
from .pooling import (PrivateAveragePooling2D, PrivateGlobalAveragePooling2D, PrivateGlobalMaxPooling2D,
                      PrivateMaxPooling2D)
from .reshaping import PrivateFlatten, PrivateReshape, PrivateZeroPadding2D

L = keras.layers
#: Keras layer (and operation) classes and their private versions; exact classes only (a subclass may
#: compute something else).
PRIVATE_VERSIONS = {
    L.Dense: PrivateDense, L.Conv2D: PrivateConv2D,
    L.MaxPooling2D: PrivateMaxPooling2D, L.AveragePooling2D: PrivateAveragePooling2D,
    L.GlobalAveragePooling2D: PrivateGlobalAveragePooling2D, L.GlobalMaxPooling2D: PrivateGlobalMaxPooling2D,
    L.Flatten: PrivateFlatten, L.Reshape: PrivateReshape, L.ZeroPadding2D: PrivateZeroPadding2D,
    L.Activation: PrivateActivation, L.ReLU: PrivateReLU, L.LeakyReLU: PrivateReLU, L.Softmax: PrivateSoftmax,
    L.BatchNormalization: PrivateBatchNormalization, L.Rescaling: PrivateRescaling,
    L.Dropout: PrivateDropout, L.SpatialDropout1D: PrivateDropout, L.SpatialDropout2D: PrivateDropout,
    L.SpatialDropout3D: PrivateDropout,
    L.Add: PrivateAdd, L.Subtract: PrivateSubtract, L.Average: PrivateAverage, L.Multiply: PrivateMultiply,
    L.Concatenate: PrivateConcatenate,
    # ``a + b``, ``a - b``, ``a * b`` on Keras tensors of a functional model
    keras_numpy.Add: PrivateAdd, keras_numpy.Subtract: PrivateSubtract, keras_numpy.Multiply: PrivateMultiply,
}
_AFFINE = (L.Dense, L.Conv2D)
_RELUS = (L.ReLU, L.LeakyReLU)


@dataclasses.dataclass
class _Node:
    """One call of a Keras layer or operation in the model's graph (tensors as integer keys)."""

    op: object
    inputs: list[int]
    as_list: bool
    outputs: list[int]
    input_shapes: list[tuple]
    problems: list[str] = dataclasses.field(default_factory=list)
    fold: object = None          # a BatchNormalization folded into this affine layer
    linear: bool = False         # this affine layer's ReLU moved after the max pooling that follows
    private_layer: object = None  # a private layer made by the optimization, not from ``op``


@dataclasses.dataclass
class _Graph:
    name: str
    nodes: list[_Node]
    inputs: list[int]
    outputs: list[int]
    input_shapes: list[tuple]
    output_shapes: list[tuple]
    nested_inputs: bool
    nested_outputs: bool
    problems: list[str]


def secure(model: keras.Model, *, protocol: Pond, model_owner: str = "model-owner", client: str = "client",
           optimize: bool = True) -> PrivateModel:
    """Turn a built Keras model into a :class:`PrivateModel` computing on secret shares.

    Args:
        model: a built ``keras.Sequential`` or functional ``keras.Model`` (branches with ``Add``,
            ``Concatenate``... allowed). Its weights are read once and shared from ``model_owner``'s device.
        protocol: the :class:`~tfe_lite.protocols.Pond` instance to compute with.
        model_owner: the player who owns the weights.
        client: the player who owns the inputs and receives the outputs.
        optimize: fold BatchNormalization into the preceding Dense/Conv2D and apply ReLU after max pooling
            (both exact); False maps the Keras layers one to one.

    Raises:
        UnsupportedLayerError: listing every layer, operation or setting that has no private version.
        PlayerError: unknown or misused role names. ConfigError: a model that is not built, or not a model.
    """
    _check_roles(protocol, model_owner, client)
    if not isinstance(optimize, bool):
        raise ConfigError(f"Received an invalid value for `optimize`, expected True or False. Received: optimize={optimize!r}")
    graph = _read_graph(model)
    problems = graph.problems + [p for node in graph.nodes for p in node.problems]
    if problems:
        error = UnsupportedLayerError(
            f"Model {graph.name!r} cannot be made private: {len(problems)} unsupported layer(s) or setting(s):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
        error.problems = problems
        raise error
    nodes = _optimize(graph) if optimize else graph.nodes
    steps = _make_steps(nodes, protocol, model_owner)
    private = PrivateModel(
        protocol=protocol, client=client, model_owner=model_owner, steps=steps, inputs=graph.inputs,
        outputs=graph.outputs, input_shapes=graph.input_shapes, output_shapes=graph.output_shapes,
        nested_inputs=graph.nested_inputs, nested_outputs=graph.nested_outputs, name=f"private_{graph.name}",
        dtype=model.dtype_policy,
    )
    # The architecture, for reveal_model (fresh weights, not the model owner's): kept out of Keras's tracking.
    object.__setattr__(private, "_keras_twin", keras.models.clone_model(model))
    return private


def _check_roles(protocol, model_owner, client) -> None:
    if not isinstance(protocol, Pond):
        raise ConfigError(f"Received an invalid value for `protocol`, expected a tfe_lite Pond protocol. Received: protocol={protocol!r}")
    known = list(protocol.config.player_names)
    for argument, name in (("model_owner", model_owner), ("client", client)):
        if not isinstance(name, str) or name not in known:
            raise PlayerError(f"Received an unknown player for `{argument}`: {argument}={name!r}. The protocol's "
                              f"configuration knows {known}; add the role with LocalConfig([..., {name!r}]).")
        if name in (SERVER0, SERVER1, CRYPTO_PRODUCER):
            raise PlayerError(f"Received a protocol player for `{argument}`: {argument}={name!r}. The servers and the "
                              "producer must never hold a plaintext input or weight; use a player of its own.")
    if model_owner == client:
        raise PlayerError(f"`model_owner` and `client` are the same player ({client!r}): private inference keeps the "
                          "weights from the client and the inputs from the model owner; they must be two players.")


def _describe(op) -> str:
    return f"layer {op.name!r} ({type(op).__name__})" if isinstance(op, L.Layer) else f"operation {type(op).__name__}"


def _read_graph(model) -> _Graph:
    if not isinstance(model, keras.Model):
        raise ConfigError(f"Received an invalid value for `model`, expected a keras.Model. Received: model={model!r}")
    if not model.built:
        raise ConfigError(f"Received an invalid value for `model`: model {model.name!r} is not built. Build it first "
                          "(call it on a batch, model.build(input_shape), or start it with keras.Input).")
    functional = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if not isinstance(functional, Functional):
        raise UnsupportedLayerError(
            f"Model {model.name!r} ({type(model).__name__}) cannot be made private: secure() converts Sequential and "
            "functional models, whose graph it can read; a subclassed model's call() it cannot."
        )
    keys: dict[int, int] = {}

    def key(tensor) -> int:
        return keys.setdefault(id(tensor), len(keys))

    problems, input_shapes = [], []
    for tensor in functional.inputs:
        key(tensor)
        shape = tuple(tensor.shape[1:])
        input_shapes.append(shape)
        if any(d is None for d in shape):
            problems.append(f"input {tensor.name!r} of shape {tuple(tensor.shape)}: every dimension but the batch must be known")
    nodes = []
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for node in functional._nodes_by_depth[depth]:
            if node.is_input:
                continue
            args = node.arguments.args if node.arguments is not None else ()
            # a merge layer takes one list; an operation (``a + b``) its tensors as arguments: both get a list
            as_list = (len(args) == 1 and isinstance(args[0], (list, tuple))) or not isinstance(node.operation, L.Layer)
            item = _Node(node.operation, [key(t) for t in node.input_tensors], as_list, [key(t) for t in node.outputs],
                         [tuple(t.shape) for t in node.input_tensors])
            item.problems = _node_problems(item, args, node.arguments.kwargs if node.arguments is not None else {})
            nodes.append(item)
    outputs = [key(t) for t in functional.outputs]
    for what, struct in (("inputs", functional._inputs_struct), ("outputs", functional._outputs_struct)):
        if isinstance(struct, dict):
            problems.append(f"model {what} given as a dict have no private version (use a list)")
    return _Graph(model.name, nodes, [keys[id(t)] for t in functional.inputs], outputs, input_shapes,
                  [tuple(t.shape[1:]) for t in functional.outputs], isinstance(functional._inputs_struct, (list, tuple, dict)),
                  isinstance(functional._outputs_struct, (list, tuple, dict)), problems)


def _node_problems(node: _Node, args, kwargs) -> list[str]:
    op, what = node.op, _describe(node.op)
    if isinstance(op, keras.Model):
        return [f"{what}: a nested model has no private version; build the model from its layers in one functional graph"]
    cls = PRIVATE_VERSIONS.get(type(op))
    if cls is None:
        return [f"{what}: has no private version"]
    problems = []
    if len(node.outputs) != 1:
        problems.append(f"{what}: a call with {len(node.outputs)} outputs has no private version")
    if any(isinstance(v, keras.KerasTensor) for v in keras.tree.flatten(kwargs)):
        problems.append(f"{what}: tensor keyword arguments ({', '.join(kwargs)}) have no private version")
    if isinstance(op, L.Layer):
        if not node.as_list and len(node.inputs) != 1:
            problems.append(f"{what}: a call with {len(node.inputs)} tensor arguments has no private version")
    elif len(args) != 2 or len(node.inputs) != 2:
        problems.append(f"{what}: only an operation between two tensors has a private version (not with a constant)")
    return problems + [f"{what}: {p}" for p in (cls.unsupported(op) if isinstance(op, L.Layer) else [])]


def _consumers(nodes: list[_Node]) -> dict[int, list[_Node]]:
    readers: dict[int, list[_Node]] = {}
    for node in nodes:
        for k in node.inputs:
            readers.setdefault(k, []).append(node)
    return readers


def _optimize(graph: _Graph) -> list[_Node]:
    """Fold BatchNormalization, then move ReLUs after max pooling (see the module docstring)."""
    nodes = list(graph.nodes)
    uses: dict[int, int] = {}
    for node in nodes:
        uses[id(node.op)] = uses.get(id(node.op), 0) + 1
    producer = {node.outputs[0]: node for node in nodes}

    def single_reader(k, readers) -> bool:
        return k not in graph.outputs and len(readers.get(k, [])) == 1

    def once(node) -> bool:
        return uses[id(node.op)] == 1

    readers = _consumers(nodes)
    for node in list(nodes):
        source = producer.get(node.inputs[0]) if node.inputs else None
        if (isinstance(node.op, L.BatchNormalization) and source is not None and isinstance(source.op, _AFFINE)
                and source.fold is None and activation_name(source.op.activation) == "linear" and once(source)
                and once(node) and single_reader(node.inputs[0], readers) and foldable(node.op, len(node.input_shapes[0]))):
            source.fold = node.op
            _rename(nodes, node.outputs[0], source.outputs[0], graph.outputs)
            nodes.remove(node)
            producer[source.outputs[0]] = source
    readers = _consumers(nodes)
    for pool in [n for n in nodes if isinstance(n.op, L.MaxPooling2D) and once(n)]:
        source = producer.get(pool.inputs[0])
        if source is None or not once(source) or not single_reader(pool.inputs[0], readers):
            continue
        if isinstance(source.op, _RELUS) or (isinstance(source.op, L.Activation) and activation_name(source.op.activation) == "relu"):
            # x -> relu -> pool -> out   becomes   x -> pool -> relu -> out
            pool.inputs, source.inputs = list(source.inputs), [source.outputs[0]]
            source.outputs, pool.outputs = list(pool.outputs), [source.outputs[0]]
            source.input_shapes = [_pooled_shape(pool)]
            nodes.remove(source)
            nodes.insert(nodes.index(pool) + 1, source)
            producer[pool.outputs[0]], producer[source.outputs[0]] = pool, source
        elif isinstance(source.op, _AFFINE) and activation_name(source.op.activation) == "relu":
            # affine(relu) -> pool -> out   becomes   affine -> pool -> relu -> out
            source.linear = True
            hidden = max([k for n in nodes for k in n.inputs + n.outputs] + graph.inputs) + 1
            relu = _Node(None, [hidden], False, list(pool.outputs), [_pooled_shape(pool)],
                         private_layer=("relu", f"{source.op.name}_relu"))
            pool.outputs = [hidden]
            nodes.insert(nodes.index(pool) + 1, relu)
            producer[hidden], producer[relu.outputs[0]] = pool, relu
    return nodes


def _pooled_shape(pool: _Node) -> tuple:
    return tuple(pool.op.compute_output_shape(pool.input_shapes[0]))


def _rename(nodes: list[_Node], old: int, new: int, outputs: list[int]) -> None:
    for node in nodes:
        node.inputs = [new if k == old else k for k in node.inputs]
    outputs[:] = [new if k == old else k for k in outputs]


def _make_steps(nodes: list[_Node], protocol: Pond, owner: str) -> list[Step]:
    made: dict[int, object] = {}
    steps = []
    for node in nodes:
        if node.op is None:  # a ReLU split off an affine layer by the optimization
            layer = PrivateActivation(node.private_layer[0], protocol=protocol, name=node.private_layer[1])
            layer.build(node.input_shapes[0])
        elif id(node.op) in made:  # a layer called more than once: one private layer, one set of shares
            layer = made[id(node.op)]
        else:
            layer = _make_layer(node, protocol, owner)
            made[id(node.op)] = layer
        steps.append(Step(layer, tuple(node.inputs), node.as_list, node.outputs[0]))
    return steps


def _make_layer(node: _Node, protocol: Pond, owner: str):
    overrides = {}
    if node.fold is not None:
        overrides["use_bias"] = True
    if node.linear:
        overrides["activation"] = "linear"
    shape = list(node.input_shapes) if node.as_list else node.input_shapes[0]
    return private_layer(node.op, shape, protocol=protocol, model_owner=owner, fold_with=node.fold, overrides=overrides)


def private_layer(layer, input_shape, *, protocol: Pond, model_owner: str, fold_with=None, overrides=None):
    """The private version of one Keras layer (or operation), built for ``input_shape`` (a list of shapes for
    a merge layer), its weights shared from ``model_owner``'s device.

    ``fold_with``: a BatchNormalization to fold into this Dense or Conv2D; ``overrides``: config entries to
    replace (as the optimizations of :func:`secure` do). The layer must be supported (see
    :data:`PRIVATE_VERSIONS`); settings are not validated here, :func:`secure` does that for a whole model.
    """
    cls = PRIVATE_VERSIONS.get(type(layer))
    if cls is None:
        raise UnsupportedLayerError(f"{_describe(layer)}: has no private version")
    if isinstance(layer, L.Layer):
        private = cls.from_keras(layer, protocol)
    else:  # a Keras operation (``a + b``): no settings
        private = cls(protocol=protocol, name=layer.name)
    if overrides:
        private = cls.from_config({**private.get_config(), **overrides})
        private.bind(protocol)
    private.build(input_shape)
    weights = cls.keras_weights(layer) if hasattr(cls, "keras_weights") else []
    if fold_with is not None:
        weights = fold(weights, fold_with)
    if weights:
        private.share_weights([np.asarray(w, np.float64) for w in weights], owner=model_owner)
    private.folded = fold_with is not None
    private.private_trainable = bool(getattr(layer, "trainable", True))
    return private
