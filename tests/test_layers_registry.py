"""The layer registry: every Caffe type we implement is registered with a shape rule, the
listing covers BVLC Caffe's types, and types we do not implement fail with the layer's name,
its type, where the type comes from (BVLC, a known fork, or neither) and the supported list."""
import pytest

from runner.layers.base import UnsupportedLayerError, layer_class, layer_type_list, supported_types
from runner.layers.known_types import BVLC_TYPES, FORK_TYPES, provenance
from layer_helpers import layer_from_text
from runner.proto import caffe_pb2
from runner.shapes import known_types

IMPLEMENTED = {
    "AbsVal", "Accuracy", "ArgMax", "BNLL", "BatchNorm", "Bias", "Clip", "Concat", "ContrastiveLoss",
    "Convolution", "Crop", "Deconvolution", "Dropout", "ELU", "Eltwise", "Embed", "EuclideanLoss", "Exp",
    "Flatten", "HingeLoss", "InfogainLoss", "InnerProduct", "LRN", "Log", "MVN", "MultinomialLogisticLoss",
    "PReLU", "Pooling", "Power", "Python", "ReLU", "Reduction", "Reshape", "SPP", "Scale", "Sigmoid",
    "SigmoidCrossEntropyLoss", "Silence", "Slice", "Softmax", "SoftmaxWithLoss", "Split", "Swish", "TanH",
    "Threshold", "Tile", "BatchReindex", "Filter", "HDF5Output", "Im2col", "LSTM", "LSTMUnit",
    "Parameter", "RNN",
} | {"DetectionEvaluate", "DetectionOutput", "MultiBoxLoss", "Normalize", "Permute", "PriorBox",  # SSD fork types
     "ReLU6",                                                          # OpenCV's ReLU6
     "ShuffleChannel", "Interp", "ROIPooling",                         # ShuffleNet, DeepLab, Fast R-CNN
     "ConvolutionDepthwise", "DepthwiseConvolution", "Axpy",           # MobileNet forks, SENet
     "Upsample", "PSROIPooling", "SmoothL1Loss", "Proposal",           # YOLOv3/SegNet, R-FCN, Faster R-CNN
     "Reorg", "BN", "SegAccuracy",                                     # YOLO v2, SegNet, DeepLab
     "CtcLoss", "ContinuationIndicator", "LabelsequenceAccuracy",      # CRNN's warp-ctc ports
     "CTCLoss", "CTCGreedyDecoder", "Reverse",                         # ChWick's ctc branch
     "MultiStageMeanfield",                                            # CRF-RNN
     "DenseCRF", "MatWrite", "MatRead",                                # DeepLab v2's test layers
     "Correlation", "Correlation1D", "Resample", "FlowWarp", "ChannelNorm",  # FlowNet 2.0
     "Accum", "DataAugmentation", "NegReLU", "L1Loss"}


def test_registry_holds_every_implemented_type_with_a_shape_rule():
    assert set(supported_types()) == IMPLEMENTED
    assert IMPLEMENTED - {"Python"} <= set(known_types())  # a Python layer's code gives its shapes


def test_listing_holds_every_bvlc_caffe_type():
    assert len(BVLC_TYPES) == 61
    listed = set(layer_type_list())
    assert BVLC_TYPES <= listed, sorted(BVLC_TYPES - listed)
    assert {"Data", "ImageData", "HDF5Data", "WindowData", "Input", "DummyData"} <= listed


@pytest.mark.parametrize("kind, origin", [
    ("Recurrent", "neither a BVLC Caffe type nor a type of a Caffe fork we know"),
    ("GRU", "neither a BVLC Caffe type nor a type of a Caffe fork we know"),
    ("Region", r"a type of the Caffe fork YOLO v2 Caffe ports, not of BVLC Caffe"),
    ("FlowAugmentation", r"a type of the Caffe fork NVIDIA flownet2 Caffe, not of BVLC Caffe"),
    ("WarpCTCLoss", r"a type of the Caffe fork ChWick/caffe's ctc branch, not of BVLC Caffe"),
])
def test_unsupported_types_fail_clearly(kind, origin):
    with pytest.raises(UnsupportedLayerError,
                       match=f"layer 'odd' has type '{kind}', which is {origin}.*supported types: .*Convolution.*HDF5Data"):
        layer_from_text(f'name: "odd" type: "{kind}"', [(1, 2)])


def test_a_missing_bvlc_type_is_named_as_one():
    assert provenance("MemoryData") == "a BVLC Caffe type that is not supported here"


def test_fork_table_names_no_bvlc_type():
    assert not BVLC_TYPES & set(FORK_TYPES)


def test_exactly_the_loss_types_are_flagged_as_losses():
    for kind in IMPLEMENTED:
        cls = layer_class(caffe_pb2.LayerParameter(name="x", type=kind))
        assert cls.is_loss == kind.endswith("Loss"), kind
