"""Caffe layer types as torch modules; importing this package fills the type registry."""
from runner.layers import (affine, detection, losses, metrics, neuron,  # noqa: F401
                           normalization, plumbing, python_layer, softmax, vision)
from runner.layers.base import (Layer, UnsupportedLayerError, layer_class, register,  # noqa: F401
                                supported_types)
