"""Virtual workers and pointers, PySyft's walk-through in TensorFlow: send, compute remotely, get, move.

    python examples/virtual_workers.py [--seed S] [--help]

Every worker is a player of a ``tfe_lite.LocalConfig``: its own logical CPU device. ``worker.send(x)`` puts
``x`` there and hands back a pointer; operations on pointers run on the worker's device; mixing two workers'
objects is an error; ``get`` brings a value back (and deletes it on the worker); ``move`` sends it from
worker to worker; ``share`` secret-shares it with the Pond servers, so only shares leave the worker.
Runs in a few seconds.
"""

from __future__ import annotations

import argparse

from _cli import non_negative_int


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the data split")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    import numpy as np

    import tfe_lite
    from tfe_lite.federated import LocationError, ObjectNotFoundError, VirtualWorker, federate
    from tfe_lite.protocols import Pond

    config = tfe_lite.LocalConfig(["alice", "bob"])
    alice, bob = VirtualWorker("alice", config), VirtualWorker("bob", config)
    print("== Workers")
    print(f"  {alice}\n  {bob}")

    print("== send: the value goes to alice's device; we keep a pointer")
    x = alice.send(np.array([1.0, 2.0, 3.0]))
    y = alice.send(np.array([10.0, 20.0, 30.0]))
    print(f"  x = {x}")
    print(f"  alice holds objects {sorted(alice.objects)} on {alice.objects[x.id].device}")

    print("== compute on alice: the result stays on alice")
    z = x + y * 2.0
    squares = z.apply(lambda t: t * t)  # any TensorFlow function, run on alice's device
    print(f"  z = x + 2y -> {z}, held on {alice.objects[z.id].device}")

    print("== an operation across workers is refused")
    w = bob.send(np.array([1.0, 1.0, 1.0]))
    try:
        x + w
    except LocationError as error:
        print(f"  LocationError: {error}")

    print("== get: the value comes back and leaves alice")
    print(f"  z.get() = {z.get().numpy()}; alice now holds {sorted(alice.objects)}")
    try:
        z.get()
    except ObjectNotFoundError as error:
        print(f"  a second get: ObjectNotFoundError: {error}")

    print("== move: alice -> bob, then compute on bob")
    moved = squares.move(bob)
    print(f"  {moved}; alice holds {sorted(alice.objects)}, bob holds {sorted(bob.objects)}")
    print(f"  (moved + w).get() = {(moved + w).get().numpy()}")

    print("== share: secret-share alice's x with the Pond servers; only the sum is revealed, to bob")
    prot = Pond(config)
    total = x.share(prot) + w.share(prot)
    print(f"  x + w revealed to bob: {total.reveal(to='bob').numpy()}")

    print("== clear_objects")
    alice.clear_objects(), bob.clear_objects()
    print(f"  alice {dict(alice.objects)}, bob {dict(bob.objects)}")

    print("== federate: split a dataset between the workers (non-IID allowed)")
    rng = np.random.default_rng(args.seed)
    features, labels = rng.normal(size=(10, 3)), np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    parts = federate((features, labels), [alice, bob], partition=[np.arange(4), np.arange(4, 10)])
    for name, (px, py) in parts.items():
        print(f"  {name}: {px} labels {py.get().numpy()}")


if __name__ == "__main__":
    main(parse_arguments())
