"""Keras private layers and one-line conversion, installed as ``tfe_lite.keras_layers``.

``secure(model, protocol=prot, model_owner="model-owner", client="client")`` turns a built Keras model into a
:class:`PrivateModel` whose ``predict``, ``evaluate`` and ``fit`` run on secret shares. The private layers are Keras
layers computing on Pond tensors; each calls protocol ops only.
"""

from .activation import ACTIVATIONS, PrivateActivation, PrivateReLU, PrivateSoftmax
from .base import PrivateLayer
from .conv2d import PrivateConv2D
from .convert import PRIVATE_VERSIONS, private_layer, secure
from .dense import PrivateDense
from .dropout import PrivateDropout
from .merging import PrivateAdd, PrivateAverage, PrivateConcatenate, PrivateMultiply, PrivateSubtract
from .model import PrivateModel
from .normalization import PrivateBatchNormalization, PrivateRescaling
from .pooling import (PrivateAveragePooling2D, PrivateGlobalAveragePooling2D, PrivateGlobalMaxPooling2D,
                      PrivateMaxPooling2D)
from .reshaping import PrivateFlatten, PrivateReshape, PrivateZeroPadding2D
from .results import ShareCheckpoint

__all__ = [
    "ACTIVATIONS", "PRIVATE_VERSIONS", "PrivateActivation", "PrivateAdd", "PrivateAverage", "PrivateAveragePooling2D",
    "PrivateBatchNormalization", "PrivateConcatenate", "PrivateConv2D", "PrivateDense", "PrivateDropout",
    "PrivateFlatten", "PrivateGlobalAveragePooling2D", "PrivateGlobalMaxPooling2D", "PrivateLayer",
    "PrivateMaxPooling2D", "PrivateModel", "PrivateMultiply", "PrivateReLU", "PrivateRescaling", "PrivateReshape",
    "PrivateSoftmax", "PrivateSubtract", "PrivateZeroPadding2D", "ShareCheckpoint", "private_layer", "secure",
]
