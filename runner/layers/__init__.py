"""Caffe layer types as torch modules; importing this package fills the type registry."""
from runner.layers import (affine, crfrnn, ctc, ctc_chwick, deeplab_crf, detection,  # noqa: F401
                           detection_evaluate, flownet, forks, hdf5_output, indexing, losses,
                           metrics, multibox_loss, neuron, normalization, plumbing, python_layer,
                           recurrent, softmax, vision)
from runner.layers.base import (Layer, UnsupportedLayerError, layer_class,  # noqa: F401
                                layer_type_list, register, supported_types)
