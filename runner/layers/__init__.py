"""Caffe layer types as torch modules; importing this package fills the type registry."""
from runner.layers import (affine, losses, metrics, neuron, normalization,  # noqa: F401
                           plumbing, softmax, vision)
from runner.layers.base import (Layer, UnsupportedLayerError, layer_class, register,  # noqa: F401
                                supported_types)
