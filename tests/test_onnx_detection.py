"""DetectionOutput's ONNX form checked by ONNX Runtime against our layer (itself checked
against OpenCV and the fork's code): SSD300 end to end, and one layer fed crafted blobs under
each code type, separate locations per class, another background label or none, no top_k or
keep_top_k, keep_top_k cutting each image, several images, and nothing kept at all."""
from pathlib import Path

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
