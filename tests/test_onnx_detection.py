"""The ONNX forms of the detection layers checked by ONNX Runtime against ours (themselves
checked against OpenCV and the forks' code). DetectionOutput: SSD300 end to end, and one
layer fed crafted blobs under each code type, separate locations per class, another
background label or none, no top_k or keep_top_k, keep_top_k cutting each image, several
images, and nothing kept at all. Proposal: small and VGG-sized maps, with and without the
pre-NMS cut, and py-faster-rcnn's Python layer. PSROIPooling: crafted regions. Faster R-CNN
and R-FCN test nets exported whole. The RPN maps here have no ReLU: its dead cells would
tie scores, which the two sort in different orders."""

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from test_onnx_export import random_inputs, run_onnx
from test_oracle_opencv import randomize
from test_ssd_opencv import ssd300_deploy

from runner import Net
from runner.onnx_export import OnnxExportError, build_model
from runner.proto import caffe_pb2

PRIORS, CLASSES = 60, 4


def _assert_same_rows(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    rows, got = ours.reshape(-1, 7), theirs.reshape(-1, 7)
    np.testing.assert_array_equal(got[:, :2], rows[:, :2])   # image and label, in order
    np.testing.assert_allclose(got[:, 2:], rows[:, 2:], rtol=0, atol=1e-5)


def test_ssd300_detections_match_onnxruntime(tmp_path):
    prototxt = tmp_path / "ssd.prototxt"
    prototxt.write_text(ssd300_deploy())
    net = Net(prototxt, phase="TEST")
    gen = torch.Generator().manual_seed(0)
    randomize(net, gen)
    model = build_model(net)
    assert "NonMaxSuppression" in {n.op_type for n in model.graph.node}
    inputs = random_inputs(net, gen, batch=2)   # the batch axis stays free
    with torch.no_grad():
        ours = net(inputs)["detection_out"].numpy()
    assert ours.shape == (1, 1, 400, 7)   # keep_top_k 200 per image
    _assert_same_rows(ours, run_onnx(model, inputs)["detection_out"])


def _layer_net(param: str, images: int = 1, loc_classes: int = 1) -> Net:
    text = f"""
layer {{ name: "data" type: "Input" top: "loc" top: "conf" top: "prior"
  input_param {{ shape {{ dim: {images} dim: {PRIORS * loc_classes * 4} }} shape {{ dim: {images} dim: {PRIORS * CLASSES} }}
                shape {{ dim: 1 dim: 2 dim: {PRIORS * 4} }} }} }}
layer {{ name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det"
  detection_output_param {{ num_classes: {CLASSES} {param} }} }}
"""
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TEST")


def _blobs(images: int, loc_classes: int, seed: int) -> dict:
    """Priors of positive size in the unit square, small offsets, softmax scores."""
    rng = np.random.default_rng(seed)
    corner = rng.random((PRIORS, 2)) * 0.8
    size = rng.random((PRIORS, 2)) * 0.3 + 0.05
    priors = np.concatenate([corner, corner + size], 1)
    variances = np.tile([0.1, 0.1, 0.2, 0.2], (PRIORS, 1))
    logits = rng.normal(size=(images, PRIORS, CLASSES)) * 2
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return {"loc": torch.tensor(rng.normal(size=(images, PRIORS * loc_classes * 4)), dtype=torch.float32),
            "conf": torch.tensor(conf.reshape(images, -1), dtype=torch.float32),
            "prior": torch.tensor(np.stack([priors, variances]).reshape(1, 2, -1), dtype=torch.float32)}


CASES = {
    "center_size": ("share_location: true background_label_id: 0 code_type: CENTER_SIZE "
                    "nms_param { nms_threshold: 0.3 top_k: 20 } keep_top_k: 15 confidence_threshold: 0.1", 1, 1),
    "corner, 3 images": ("background_label_id: 0 code_type: CORNER nms_param { nms_threshold: 0.5 top_k: 30 } "
                         "keep_top_k: 8 confidence_threshold: 0.05", 3, 1),
    "corner_size, encoded variance": ("background_label_id: 0 code_type: CORNER_SIZE variance_encoded_in_target: true "
                                      "nms_param { nms_threshold: 0.45 } keep_top_k: -1", 2, 1),
    "locations per class, background 2": ("share_location: false background_label_id: 2 code_type: CENTER_SIZE "
                                          "nms_param { nms_threshold: 0.4 top_k: 10 } keep_top_k: 12", 2, CLASSES),
    "no background, overlap 0": ("share_location: false background_label_id: -1 code_type: CENTER_SIZE "
                                 "nms_param { nms_threshold: 0 top_k: 25 } confidence_threshold: 0.2", 1, CLASSES),
}


@pytest.mark.parametrize("case", CASES)
def test_detection_output_matches_onnxruntime(case):
    param, images, loc_classes = CASES[case]
    net = _layer_net(param, images, loc_classes)
    inputs = _blobs(images, loc_classes, seed=len(case))
    with torch.no_grad():
        ours = net(inputs)["det"].numpy()
    rows = ours.reshape(-1, 7)
    assert len(rows) > images and (rows[:, 1] >= 0).all()   # real detections
    _assert_same_rows(ours, run_onnx(build_model(net), inputs)["det"])


def test_keep_top_k_cuts_each_image():
    net = _layer_net("background_label_id: 0 nms_param { nms_threshold: 0.7 } keep_top_k: 5", 3)
    inputs = _blobs(3, 1, seed=11)
    theirs = run_onnx(build_model(net), inputs)["det"].reshape(-1, 7)
    assert np.bincount(theirs[:, 0].astype(int)).tolist() == [5, 5, 5]
    with torch.no_grad():
        _assert_same_rows(net(inputs)["det"].numpy(), theirs.reshape(1, 1, -1, 7))


def test_nothing_kept_gives_a_row_of_minus_ones_per_image():
    net = _layer_net("background_label_id: 0 nms_param { nms_threshold: 0.45 } confidence_threshold: 0.999", 2)
    inputs = _blobs(2, 1, seed=12)
    theirs = run_onnx(build_model(net), inputs)["det"]
    np.testing.assert_array_equal(theirs, [[[[0] + [-1] * 6, [1] + [-1] * 6]]])
    with torch.no_grad():
        np.testing.assert_array_equal(net(inputs)["det"].numpy(), theirs)


def test_adaptive_nms_is_refused():
    net = _layer_net("background_label_id: 0 nms_param { nms_threshold: 0.45 eta: 0.9 }")
    with pytest.raises(OnnxExportError, match=r"layer 'det' \(DetectionOutput\): adaptive NMS"):
        build_model(net)


def _rpn_text(height: int, width: int, post: int, pre: int = 6000, python: bool = False) -> str:
    inputs = (f'layer {{ name: "in" type: "Input" top: "cls" top: "bbox" top: "im_info" input_param {{ '
              f'shape {{ dim: 1 dim: 18 dim: {height} dim: {width} }} shape {{ dim: 1 dim: 36 dim: {height} '
              f'dim: {width} }} shape {{ dim: 1 dim: 3 }} }} }}\n')
    if python:   # py-faster-rcnn's layer, which runs as Proposal without its module
        return inputs + ('layer { name: "proposal" type: "Python" bottom: "cls" bottom: "bbox" bottom: "im_info" '
                         'top: "rois" python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" '
                         "param_str: \"'feat_stride': 16\" } }\n")
    return inputs + (f'layer {{ name: "proposal" type: "Proposal" bottom: "cls" bottom: "bbox" bottom: "im_info" '
                     f'top: "rois" top: "scores" proposal_param {{ feat_stride: 16 base_size: 16 min_size: 16 '
                     f'ratio: 0.5 ratio: 1 ratio: 2 scale: 8 scale: 16 scale: 32 pre_nms_topn: {pre} '
                     f'post_nms_topn: {post} nms_thresh: 0.7 }} }}\n')


@pytest.mark.parametrize("height, width, post, pre, python", [
    (5, 6, 30, 6000, False),      # fewer boxes than pre_nms_topn
    (38, 50, 300, 6000, False),   # a VGG-16 map of a 600 x 800 image: 17,100 anchors
    (20, 25, 100, 0, False),      # no pre-NMS cut
    (24, 32, 300, 6000, True),    # py-faster-rcnn's Python layer
])
def test_proposals_match_onnxruntime(height, width, post, pre, python):
    net = Net(text_format.Parse(_rpn_text(height, width, post, pre, python), caffe_pb2.NetParameter()),
              phase="TEST")
    rng = np.random.default_rng(height)
    inputs = {"cls": torch.tensor(rng.random((1, 18, height, width)), dtype=torch.float32),
              "bbox": torch.tensor(rng.normal(size=(1, 36, height, width)) * 0.2, dtype=torch.float32),
              "im_info": torch.tensor([[16.0 * height - 5, 16.0 * width - 3, 1.2]])}
    model = build_model(net)
    with torch.no_grad():
        ours = net(inputs)
    theirs = run_onnx(model, inputs)
    assert 10 < len(ours["rois"]) <= post
    for name in theirs:
        assert theirs[name].shape == ours[name].shape, name
        np.testing.assert_allclose(theirs[name], ours[name].numpy(), rtol=0, atol=1e-3, err_msg=name)


RPN = """
layer { name: "input" type: "Input" top: "data" top: "im_info"
  input_param { shape { dim: 1 dim: 3 dim: 320 dim: 480 } shape { dim: 1 dim: 3 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 8 kernel_size: 16 stride: 16 } }
layer { name: "rpn_cls_score" type: "Convolution" bottom: "conv" top: "rpn_cls_score"
  convolution_param { num_output: 18 kernel_size: 1 } }
layer { name: "rpn_bbox_pred" type: "Convolution" bottom: "conv" top: "rpn_bbox_pred"
  convolution_param { num_output: 36 kernel_size: 1 } }
layer { name: "rpn_cls_score_reshape" type: "Reshape" bottom: "rpn_cls_score" top: "rpn_cls_score_reshape"
  reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 0 } } }
layer { name: "rpn_cls_prob" type: "Softmax" bottom: "rpn_cls_score_reshape" top: "rpn_cls_prob" }
layer { name: "rpn_cls_prob_reshape" type: "Reshape" bottom: "rpn_cls_prob" top: "rpn_cls_prob_reshape"
  reshape_param { shape { dim: 0 dim: 18 dim: -1 dim: 0 } } }
layer { name: "proposal" type: "Python" bottom: "rpn_cls_prob_reshape" bottom: "rpn_bbox_pred" bottom: "im_info"
  top: "rois" python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "'feat_stride': 16" } }
"""

FASTER_RCNN = RPN + """
layer { name: "roi_pool" type: "ROIPooling" bottom: "conv" bottom: "rois" top: "pool"
  roi_pooling_param { pooled_w: 3 pooled_h: 3 spatial_scale: 0.0625 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 16 } }
layer { name: "cls_score" type: "InnerProduct" bottom: "fc" top: "cls_score" inner_product_param { num_output: 4 } }
layer { name: "cls_prob" type: "Softmax" bottom: "cls_score" top: "cls_prob" }
layer { name: "bbox_pred" type: "InnerProduct" bottom: "fc" top: "bbox_pred" inner_product_param { num_output: 16 } }
"""


def _assert_exports_whole(text: str, op: str, seed: int) -> None:
    """The net (random weights) exported whole and run by ONNX Runtime, then checked layer by
    layer: each of our layers fed ONNX Runtime's values of its bottoms gives its tops (a
    whole-net comparison would let rounding-sized differences in the RPN flip NMS decisions);
    more than ten proposals, and `op` in the graph."""
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TEST")
    gen = torch.Generator().manual_seed(seed)
    randomize(net, gen)
    steps = net.layer_steps()
    final = {top: i for i, (_, _, tops) in enumerate(steps) for top in tops}
    model = build_model(net, outputs=list(final))
    assert {"NonMaxSuppression", op} <= {n.op_type for n in model.graph.node}
    inputs = {"data": torch.randn(1, 3, 320, 480, generator=gen), "im_info": torch.tensor([[320.0, 480.0, 1.0]])}
    theirs = run_onnx(model, inputs)
    assert len(theirs["rois"]) > 10
    current = dict(inputs)
    for i, (layer, bottoms, tops) in enumerate(steps):
        with torch.no_grad():
            ours = layer(*(current[name] for name in bottoms))
        for name, value in zip(tops, ours):
            if final[name] != i:   # an in-place blob's earlier version
                current[name] = value
                continue
            expected = value.numpy()
            assert theirs[name].shape == expected.shape, name
            assert np.abs(theirs[name] - expected).max() <= 1e-4 * np.abs(expected).max(), name
            current[name] = torch.from_numpy(theirs[name])


def test_a_faster_rcnn_test_net_exports_whole():
    """RPN, py-faster-rcnn's proposal layer, ROIPooling and the two heads in one graph."""
    _assert_exports_whole(FASTER_RCNN, "MaxRoiPool", 7)


def test_psroi_pooling_matches_onnxruntime():
    """Regions on two images, partly or wholly outside the map, a point, half-pixel corners
    (C's rounding), bins of different sizes and empty ones."""
    text = """
layer { name: "in" type: "Input" top: "maps" top: "rois"
  input_param { shape { dim: 2 dim: 18 dim: 12 dim: 16 } shape { dim: 9 dim: 5 } } }
layer { name: "ps" type: "PSROIPooling" bottom: "maps" bottom: "rois" top: "ps"
  psroi_pooling_param { spatial_scale: 0.25 output_dim: 2 group_size: 3 } }
"""
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TEST")
    rois = torch.tensor([[0, 0, 0, 20, 30], [1, 4, 8, 50, 40], [0, 10, 10, 10, 10], [1, -8, -8, 70, 70],
                         [0, 30, 20, 33, 25], [1, 2.5, 3.5, 13.5, 9.5], [0, 60, 60, 90, 90],
                         [1, -1.5, 0, 1.5, 47], [0, 0, 0, 63, 47]], dtype=torch.float32)
    inputs = {"maps": torch.randn(2, 18, 12, 16), "rois": rois}
    with torch.no_grad():
        ours = net(inputs)["ps"].numpy()
    assert (ours[6] == 0).all() and (ours != 0).any()   # the region past the map: empty bins
    theirs = run_onnx(build_model(net), inputs)["ps"]
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5)


RFCN = RPN + """
layer { name: "rfcn_cls" type: "Convolution" bottom: "conv" top: "rfcn_cls" convolution_param { num_output: 36 kernel_size: 1 } }
layer { name: "rfcn_bbox" type: "Convolution" bottom: "conv" top: "rfcn_bbox" convolution_param { num_output: 72 kernel_size: 1 } }
layer { name: "psroipooled_cls_rois" type: "PSROIPooling" bottom: "rfcn_cls" bottom: "rois" top: "psroipooled_cls_rois"
  psroi_pooling_param { spatial_scale: 0.0625 output_dim: 4 group_size: 3 } }
layer { name: "ave_cls_score_rois" type: "Pooling" bottom: "psroipooled_cls_rois" top: "cls_score"
  pooling_param { pool: AVE kernel_size: 3 stride: 3 } }
layer { name: "psroipooled_loc_rois" type: "PSROIPooling" bottom: "rfcn_bbox" bottom: "rois" top: "psroipooled_loc_rois"
  psroi_pooling_param { spatial_scale: 0.0625 output_dim: 8 group_size: 3 } }
layer { name: "ave_bbox_pred_rois" type: "Pooling" bottom: "psroipooled_loc_rois" top: "bbox_pred"
  pooling_param { pool: AVE kernel_size: 3 stride: 3 } }
layer { name: "cls_prob" type: "Softmax" bottom: "cls_score" top: "cls_prob" }
"""


def test_an_rfcn_test_net_exports_whole():
    """RPN, py-faster-rcnn's proposal layer, position-sensitive pooling and voting."""
    _assert_exports_whole(RFCN, "Einsum", 8)
