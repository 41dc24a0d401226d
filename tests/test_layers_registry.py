"""The layer registry: every Caffe type we implement is registered with a shape rule, and
types we do not implement fail with the layer's name, its type and the supported list."""
import pytest

from runner.layers.base import UnsupportedLayerError, layer_class, supported_types
from layer_helpers import layer_from_text
from runner.proto import caffe_pb2
from runner.shapes import known_types

IMPLEMENTED = {
    "AbsVal", "Accuracy", "ArgMax", "BNLL", "BatchNorm", "Bias", "Clip", "Concat", "ContrastiveLoss",
    "Convolution", "Crop", "Deconvolution", "Dropout", "ELU", "Eltwise", "Embed", "EuclideanLoss", "Exp",
    "Flatten", "HingeLoss", "InfogainLoss", "InnerProduct", "LRN", "Log", "MVN", "MultinomialLogisticLoss",
    "PReLU", "Pooling", "Power", "Python", "ReLU", "Reduction", "Reshape", "SPP", "Scale", "Sigmoid",
    "SigmoidCrossEntropyLoss", "Silence", "Slice", "Softmax", "SoftmaxWithLoss", "Split", "Swish", "TanH",
    "Threshold", "Tile",
} | {"DetectionOutput", "Normalize", "Permute", "PriorBox", "ReLU6"}  # SSD fork types, OpenCV's ReLU6


def test_registry_holds_every_implemented_type_with_a_shape_rule():
    assert set(supported_types()) == IMPLEMENTED
    assert IMPLEMENTED - {"Python"} <= set(known_types())  # a Python layer's code gives its shapes


@pytest.mark.parametrize("kind", ["WindowData", "HDF5Data", "LSTM", "RNN", "Recurrent"])
def test_unsupported_types_fail_clearly(kind):
    with pytest.raises(UnsupportedLayerError, match=f"layer 'odd' has type '{kind}'.*supported types: .*Convolution"):
        layer_from_text(f'name: "odd" type: "{kind}"', [(1, 2)])


def test_exactly_the_loss_types_are_flagged_as_losses():
    for kind in IMPLEMENTED:
        cls = layer_class(caffe_pb2.LayerParameter(name="x", type=kind))
        assert cls.is_loss == kind.endswith("Loss"), kind
