"""Private ``Dropout`` (and ``SpatialDropout1D/2D/3D``): the identity at inference, as in Keras.

In training (issue 11) the servers will draw the dropout mask; at inference nothing is dropped and nothing is
computed or sent.
"""

from __future__ import annotations

from tfe_lite.errors import ConfigError

from .base import PrivateLayer, register, saved


@register
class PrivateDropout(PrivateLayer):
    """``keras.layers.Dropout`` at inference: returns its input.

    Args:
        rate: the fraction Keras drops in training, in ``[0, 1)`` (kept for the training rule).
    """

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 <= rate < 1):
            raise ConfigError(f"Received an invalid value for `rate`, expected a number in [0, 1). Received: rate={rate!r}")
        self.rate = float(rate)

    def forward(self, inputs, *, save=False):
        return inputs, saved(save)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}

    @staticmethod
    def keras_arguments(layer) -> dict:
        return {"rate": float(layer.rate)}
