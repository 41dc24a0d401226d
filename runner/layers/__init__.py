"""Caffe layer types as torch modules; importing this package fills the type registry."""
from runner.layers import (affine, losses, metrics, neuron, normalization, python_layer,  # noqa: F401
                           plumbing, softmax, vision)
from runner.layers.base import (Layer, UnsupportedLayerError, build_layer, layer_class,  # noqa: F401
                                register, supported_types)
