"""Splitting a dataset among workers, and the client data that :class:`FedAvg` trains on.

:func:`federate` sends each worker its part of ``(x, y)`` and returns ``{worker name: (x_ptr, y_ptr)}``:
evenly, or by a partition given as index arrays (any sizes, so non-IID splits such as
:func:`label_shards` are allowed). :func:`resolve_client_data` turns what ``FedAvg.fit`` receives (pointers,
arrays or ``tf.data`` datasets, keyed by worker name) into tensors on each client's device, checking
everything before the first round.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfe_lite.devices import eager_serialized
from tfe_lite.errors import ConfigError, PlayerError, ShapeError
from tfe_lite.players import Config, Player

from .errors import LocationError
from .pointers import Pointer
from .workers import VirtualWorker


def _invalid(name: str, expected: str, value: Any) -> str:
    return f"Received an invalid value for `{name}`, expected {expected}. Received: {name}={value!r}"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _rows(arrays: Sequence[np.ndarray]) -> int:
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ShapeError(f"The arrays of `data` must have the same number of rows. Received lengths {[len(a) for a in arrays]}")
    return lengths.pop()


def _check_partition(partition: Sequence[Any], rows: int, names: list[str]) -> list[np.ndarray]:
    problems, parts, seen = [], [], np.zeros(rows, bool)
    if len(partition) != len(names):
        raise ConfigError(f"`partition` must give one index array per worker ({len(names)} workers). "
                          f"Received {len(partition)} index arrays.")
    for name, indices in zip(names, partition):
        indices = np.asarray(indices)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer) or indices.size == 0:
            problems.append(f"`partition` for {name!r} must be a non-empty 1-D array of integer row indices. "
                            f"Received shape {indices.shape}, dtype {indices.dtype}")
            continue
        if indices.min() < 0 or indices.max() >= rows:
            problems.append(f"`partition` for {name!r} has indices outside [0, {rows}): min {indices.min()}, max {indices.max()}")
            continue
        if seen[indices].any() or len(np.unique(indices)) != len(indices):
            problems.append(f"`partition` for {name!r} repeats rows already given to a worker (each row has one owner)")
        seen[indices] = True
        parts.append(indices)
    if problems:
        raise ConfigError("\n".join(problems))
    return parts


def federate(data: Any, workers: Sequence[VirtualWorker], partition: Sequence[Any] | Mapping[str, Any] | None = None,
             *, shuffle: bool = False, seed: int | None = None) -> dict[str, tuple[Pointer, ...]]:
    """Split ``data`` (an array or a tuple of arrays with equal row counts) among ``workers``.

    Args:
        data: ``x`` or ``(x, y, ...)``, numpy arrays or tensors; rows are examples.
        workers: the :class:`VirtualWorker` s receiving the parts.
        partition: ``None`` for contiguous parts of nearly equal size (after shuffling when ``shuffle``), or
            one array of row indices per worker (a list in the order of ``workers``, or a mapping from worker
            name); parts may differ in size and label mix but must not overlap.
        shuffle: shuffle rows before an even split, with ``seed`` (public shuffling, not a secret).

    Returns:
        ``{worker name: (pointer to its x, pointer to its y, ...)}``; each part lives on its worker.
    """
    workers = list(workers)
    if not workers or not all(isinstance(w, VirtualWorker) for w in workers):
        raise ConfigError(_invalid("workers", "a non-empty sequence of VirtualWorker", workers))
    names = [w.name for w in workers]
    if len(set(names)) != len(names):
        raise ConfigError(_invalid("workers", "distinct workers", names))
    arrays = list(data) if isinstance(data, (tuple, list)) else [data]
    arrays = [np.asarray(a) for a in arrays]
    rows = _rows(arrays)
    if partition is None:
        if rows < len(workers):
            raise ConfigError(f"Cannot split {rows} rows among {len(workers)} workers: every worker needs at least one row.")
        order = np.random.default_rng(seed).permutation(rows) if shuffle else np.arange(rows)
        parts = np.array_split(order, len(workers))
    else:
        if isinstance(partition, Mapping):
            unknown = sorted(set(partition) - set(names))
            missing = [n for n in names if n not in partition]
            if unknown or missing:
                raise ConfigError(f"`partition` keys must be the worker names {names}. Unknown: {unknown}; missing: {missing}")
            partition = [partition[n] for n in names]
        parts = _check_partition(list(partition), rows, names)
    return {w.name: tuple(w.send(a[part]) for a in arrays) for w, part in zip(workers, parts)}


def label_shards(labels: Any, num_clients: int, shards_per_client: int = 2, *, seed: int = 0) -> list[np.ndarray]:
    """A non-IID partition (McMahan et al. 2017): rows sorted by label, cut into ``num_clients *
    shards_per_client`` shards, each client given ``shards_per_client`` shards at random.

    With 2 shards per client most clients see only one or two labels. Returns one index array per client.
    """
    labels = np.asarray(labels).reshape(-1)
    problems = []
    if not _is_int(num_clients) or num_clients < 1:
        problems.append(_invalid("num_clients", "a positive integer", num_clients))
    if not _is_int(shards_per_client) or shards_per_client < 1:
        problems.append(_invalid("shards_per_client", "a positive integer", shards_per_client))
    if not problems and num_clients * shards_per_client > len(labels):
        problems.append(f"Cannot cut {len(labels)} rows into {num_clients} x {shards_per_client} non-empty shards.")
    if problems:
        raise ConfigError("\n".join(problems))
    rng = np.random.default_rng(seed)
    by_label = np.argsort(labels, kind="stable")
    shards = np.array_split(by_label, num_clients * shards_per_client)
    order = rng.permutation(len(shards))
    return [np.sort(np.concatenate([shards[s] for s in order[c::num_clients]])) for c in range(num_clients)]


@dataclasses.dataclass(frozen=True)
class ClientData:
    """One client's training data, as tensors on the client's device."""

    player: Player
    x: tf.Tensor = dataclasses.field(repr=False)
    y: tf.Tensor = dataclasses.field(repr=False)

    @property
    def name(self) -> str:
        return self.player.name

    @property
    def num_examples(self) -> int:
        return int(self.x.shape[0])


def _normalized(t: tf.Tensor) -> tf.Tensor:
    if t.dtype.is_floating and t.dtype != tf.float32:
        return tf.cast(t, tf.float32)
    if t.dtype.is_integer and t.dtype != tf.int64:
        return tf.cast(t, tf.int64)
    return t


@eager_serialized
def _materialize(name: str, value: Any, config: Config, player: Player) -> tuple[tf.Tensor, tf.Tensor]:
    """``(x, y)`` of one client on its device; raises ConfigError/LocationError for what is wrong."""
    if isinstance(value, tf.data.Dataset):
        spec = value.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise ConfigError(f"The dataset of {name!r} must yield (x, y) batches, like a dataset given to Keras fit. "
                              f"Received element_spec={spec}")
        with tf.device(player.device):
            batches = list(value)
            if not batches:
                return tf.zeros((0,) + tuple(spec[0].shape[1:])), tf.zeros((0,) + tuple(spec[1].shape[1:]))
            x = tf.concat([b[0] for b in batches], 0)
            y = tf.concat([b[1] for b in batches], 0)
        return x, y
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ConfigError(f"The data of {name!r} must be (x, y) (arrays, tensors or pointers) or a tf.data.Dataset. "
                          f"Received: {type(value).__name__}")
    worker, out = None, []
    for part, what in zip(value, ("x", "y")):
        if isinstance(part, Pointer):
            if part.location.name != name or part.location.config is not config:
                raise LocationError(
                    f"The {what} given for client {name!r} points to an object on {part.location.name!r}; a client "
                    "trains only on data it holds."
                )
            out.append(part._value())
        else:
            worker = worker or VirtualWorker(name, config)
            out.append(worker.place(part, f"client_data[{name!r}][{what}]"))
    return tuple(out)


def resolve_client_data(client_data: Any, config: Config, *, reserved: Sequence[str] = ()) -> list[ClientData]:
    """Every client's ``(x, y)`` on its device, or one error listing every problem found.

    ``reserved`` players (the protocol's servers and the aggregator) cannot be clients.
    """
    if not isinstance(client_data, Mapping) or not client_data:
        raise ConfigError(_invalid("client_data", "a non-empty mapping from worker names to (x, y) or datasets",
                                   type(client_data).__name__))
    problems, clients = [], []
    known = config.player_names
    for name, value in client_data.items():
        if name not in known:
            problems.append(f"Unknown client {name!r}: client_data keys must be players of the config, which has {list(known)}.")
            continue
        if name in reserved:
            problems.append(f"{name!r} cannot be a client: it takes part in aggregation (reserved players: {list(reserved)}).")
            continue
        player = config.get_player(name)
        try:
            x, y = _materialize(name, value, config, player)
        except (ConfigError, LocationError, PlayerError) as error:
            problems.append(str(error))
            continue
        x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
        if x.shape.rank is None or x.shape.rank == 0 or y.shape.rank is None or y.shape.rank == 0:
            problems.append(f"The data of {name!r} must have a leading examples dimension. "
                            f"Received x.shape={x.shape}, y.shape={y.shape}")
            continue
        if x.shape[0] != y.shape[0]:
            problems.append(f"The data of {name!r} has {x.shape[0]} inputs but {y.shape[0]} labels.")
            continue
        if x.shape[0] == 0:
            problems.append(f"The data of {name!r} is empty: every client needs at least one example.")
            continue
        with tf.device(player.device):
            clients.append(ClientData(player, _normalized(x), _normalized(y)))
    if problems:
        raise ConfigError("Invalid `client_data`:\n" + "\n".join(problems))
    first = clients[0]
    for c in clients[1:]:
        if (c.x.shape[1:], c.y.shape[1:], c.x.dtype, c.y.dtype) != (first.x.shape[1:], first.y.shape[1:], first.x.dtype, first.y.dtype):
            problems.append(
                f"Client {c.name!r} has examples of shape x{c.x.shape[1:]} {c.x.dtype.name}, y{c.y.shape[1:]} {c.y.dtype.name}; "
                f"{first.name!r} has x{first.x.shape[1:]} {first.x.dtype.name}, y{first.y.shape[1:]} {first.y.dtype.name}."
            )
    if problems:
        raise ShapeError("Clients must hold examples of one shape and dtype:\n" + "\n".join(problems))
    return clients
