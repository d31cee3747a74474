"""Private ``Dropout`` (and ``SpatialDropout1D/2D/3D``): the identity at inference, as in Keras.

In training the servers draw a fresh keep-mask per step (``prot.dropout_mask``, public to the two servers: it
depends on no data) and scale by ``1 / (1 - rate)`` like Keras; at inference nothing is dropped and nothing is
computed or sent.
"""

from __future__ import annotations

from tfe_lite.errors import ConfigError

from .base import PrivateLayer, register, saved


@register
class PrivateDropout(PrivateLayer):
    """``keras.layers.Dropout`` at inference: returns its input.

    Args:
        rate: the fraction dropped in training, in ``[0, 1)``.
        spatial: drop whole channels (``SpatialDropout1D/2D/3D``) instead of elements.
    """

    def __init__(self, rate: float, spatial: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.spatial = bool(spatial)  # SpatialDropout: whole channels (one mask entry per sample and channel)
        if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 <= rate < 1):
            raise ConfigError(f"Received an invalid value for `rate`, expected a number in [0, 1). Received: rate={rate!r}")
        self.rate = float(rate)

    def forward(self, inputs, *, save=False):
        """Identity at inference; in training (``save``) the input times a fresh public keep-mask drawn by
        the servers (``prot.dropout_mask``: it depends on nothing private)."""
        if not save or not self.rate:
            return inputs, saved(save)
        shape = list(inputs.shape)
        if self.spatial:
            shape = [shape[0]] + [1] * (len(shape) - 2) + [shape[-1]]
        mask = inputs.protocol.dropout_mask(shape, self.rate)
        return inputs * mask, {"mask": mask}

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        return (grad * kept["mask"] if "mask" in kept else grad), {}

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "spatial": self.spatial}

    @staticmethod
    def keras_arguments(layer) -> dict:
        return {"rate": float(layer.rate), "spatial": type(layer).__name__.startswith("SpatialDropout")}
