"""Layer types we know of but may not build: BVLC Caffe's own list, and the types of
well-known Caffe forks, so an unsupported type's error can say where it comes from."""
from __future__ import annotations

# Every type BVLC Caffe 1.0 registers (src/caffe/layers/*.cpp, layer_factory.cpp).
BVLC_TYPES = frozenset("""
AbsVal Accuracy ArgMax BNLL BatchNorm BatchReindex Bias Clip Concat ContrastiveLoss Convolution
Crop Data Deconvolution Dropout DummyData ELU Eltwise Embed EuclideanLoss Exp Filter Flatten
HDF5Data HDF5Output HingeLoss Im2col ImageData InfogainLoss InnerProduct Input LRN LSTM
LSTMUnit Log MVN MemoryData MultinomialLogisticLoss PReLU Parameter Pooling Power Python RNN
ReLU Reduction Reshape SPP Scale Sigmoid SigmoidCrossEntropyLoss Silence Slice Softmax
SoftmaxWithLoss Split Swish TanH Threshold Tile WindowData
""".split())

_SSD = "weiliu89/caffe (SSD)"
_FRCNN = "rbgirshick/caffe-fast-rcnn (Fast/Faster R-CNN)"
_SEGNET = "alexgkendall/caffe-segnet (SegNet)"
_DEEPLAB = "DeepLab's Caffe (deeplab-public)"
_CRNN = "the warp-ctc CRNN Caffe ports (BVLC's warpctc_captcha example)"
_CHWICK = "ChWick/caffe's ctc branch"
_FLOWNET = "NVIDIA flownet2 Caffe"

# Types of well-known forks: type -> the fork that defines it.
FORK_TYPES = {
    "Normalize": _SSD, "PriorBox": _SSD, "Permute": _SSD, "DetectionOutput": _SSD,
    "DetectionEvaluate": _SSD, "MultiBoxLoss": _SSD, "AnnotatedData": _SSD, "VideoData": _SSD,
    "SmoothL1Loss": f"{_FRCNN} and {_SSD}",
    "ROIPooling": _FRCNN,
    "PSROIPooling": "daijifeng001/caffe-rfcn (R-FCN)",
    "Proposal": "Intel's and OpenCV's Faster R-CNN Caffe variants (py-faster-rcnn uses a Python layer)",
    "Upsample": _SEGNET, "BN": _SEGNET, "DenseImageData": _SEGNET,
    "Interp": f"{_DEEPLAB} and PSPNet's Caffe", "ImageSegData": _DEEPLAB, "SegAccuracy": _DEEPLAB,
    "DenseCRF": _DEEPLAB, "MatWrite": _DEEPLAB, "MatRead": _DEEPLAB,
    "MultiStageMeanfield": "torrvision/crfasrnn (CRF-RNN)",
    "ReLU6": "MobileNet-v2 Caffe ports (OpenCV's importer accepts it)",
    "ConvolutionDepthwise": "MobileNet Caffe forks (depthwise convolution)",
    "DepthwiseConvolution": "MobileNet Caffe forks (depthwise convolution)",
    "ShuffleChannel": "ShuffleNet Caffe forks",
    "Axpy": "hujie-frank/SENet's Caffe",
    "Reorg": "YOLO v2 Caffe ports", "Region": "YOLO v2 Caffe ports",
    "CtcLoss": _CRNN, "ContinuationIndicator": _CRNN, "LabelsequenceAccuracy": _CRNN,
    "CTCLoss": _CHWICK, "WarpCTCLoss": _CHWICK, "CTCGreedyDecoder": _CHWICK, "Reverse": _CHWICK,
    **{t: _FLOWNET for t in (
        "Resample", "Correlation", "Correlation1D", "FlowWarp", "ChannelNorm", "Accum",
        "DataAugmentation", "FlowAugmentation", "GenerateAugmentationParameters",
        "BlackAugmentation", "L1Loss", "NegReLU", "Downsample", "LpqLoss")},
}


def provenance(type_name: str) -> str:
    """Where a layer type comes from, for an error about it."""
    if type_name in BVLC_TYPES:
        return "a BVLC Caffe type that is not supported here"
    fork = FORK_TYPES.get(type_name)
    if fork is not None:
        return f"a type of the Caffe fork {fork}, not of BVLC Caffe, and not supported here"
    return "neither a BVLC Caffe type nor a type of a Caffe fork we know (check its spelling)"
