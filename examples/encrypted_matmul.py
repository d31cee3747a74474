"""A short tour of the Pond API: sharing, arithmetic, layers of a tiny network, tf.function, dealers.

Run: python examples/encrypted_matmul.py
"""

import numpy as np
import tensorflow as tf

import tfe_lite
from tfe_lite.protocols import Pond, PrecomputedDealer

config = tfe_lite.LocalConfig(["data-owner", "model-owner"])
prot = Pond(config)  # fixed point: 16 fractional bits, values within ±2^16
rng = np.random.default_rng(42)

# 1. Inputs: each owner secret-shares its own data; public values are known to both servers.
images = rng.uniform(0, 1, size=(4, 8, 8, 1))
filters = rng.normal(0, 0.3, size=(3, 3, 1, 2))
dense = rng.normal(0, 0.3, size=(32, 3))
x = prot.share(images, owner="data-owner")
k = prot.share(filters, owner="model-owner")
w = prot.share(dense, owner="model-owner")
bias = prot.public(np.full(3, 0.1))

# 2. A private forward pass: conv2d, square activation, average pooling, dense layer.
h = prot.conv2d(x, k, strides=1, padding="SAME")
h = h.square()
h = prot.avg_pool2d(h, pool_size=2)            # (4, 4, 4, 2)
h = h.reshape([4, -1])[:, :32]                  # slicing and reshaping are local
logits = h @ w + bias
private = logits.reveal(to="data-owner").numpy()

plain = tf.nn.avg_pool2d(tf.square(tf.nn.conv2d(images, filters, 1, "SAME")), 2, 2, "VALID")
plain = (tf.reshape(plain, [4, -1])[:, :32] @ dense + 0.1).numpy()
print("private logits:\n", private)
print("max |private - plaintext| =", np.abs(private - plain).max())

# 3. The same inside tf.function: traced once, fresh randomness on every call.
@tf.function
def predict(batch):
    z = prot.share(batch, owner="data-owner") @ w
    return z.reveal(to="data-owner")


batch = tf.constant(rng.normal(size=(5, 32)))
print("traced prediction error:", np.abs(predict(batch).numpy() - batch.numpy() @ dense).max())

# 4. Communication: bytes between players for one private 64x64 matmul.
a, b = prot.share(rng.normal(size=(64, 64)), "data-owner"), prot.share(rng.normal(size=(64, 64)), "model-owner")
with prot.count_communication() as log:
    a @ b
print(log.summary())

# 5. An offline phase: triples made ahead of time by the crypto producer, consumed online.
dealer = PrecomputedDealer()
offline = Pond(config, dealer=dealer)
w2 = offline.share(dense, owner="model-owner")
made = dealer.precompute_for(lambda v: (offline.share(v, "data-owner") @ w2).reveal(to="data-owner"), batch, runs=3)
print("precomputed:", {str(spec): n for spec, n in made.items()})
print("offline-dealer prediction error:",
      np.abs((offline.share(batch, "data-owner") @ w2).reveal(to="data-owner").numpy() - batch.numpy() @ dense).max())
