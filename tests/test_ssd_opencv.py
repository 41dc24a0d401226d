"""SSD nets against OpenCV's Caffe importer: an SSD300-shaped deploy net (VGG-16 base at a
sixteenth of the width, six heads with Normalize, Permute, PriorBox, DetectionOutput) with
random weights written by our .caffemodel writer; plus the forks' pooling ceil_mode and
ReLU6, which OpenCV reads as well."""
import cv2
import numpy as np
import pytest
import torch
from test_oracle_opencv import randomize

from runner import Net

CLASSES = 21
# (source blob, min_size, max_size, aspect ratios, step, priors per cell), as SSD300's heads
HEADS = [("conv4_3_norm", 30, 60, [2], 8, 4), ("fc7", 60, 111, [2, 3], 16, 6),
         ("conv6_2", 111, 162, [2, 3], 32, 6), ("conv7_2", 162, 213, [2, 3], 64, 6),
         ("conv8_2", 213, 264, [2], 100, 4), ("conv9_2", 264, 315, [2], 300, 4)]


def _conv(name, bottom, out, kernel=3, pad=1, stride=1, dilation=1, relu=True):
    text = (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            f"convolution_param {{ num_output: {out} kernel_size: {kernel} pad: {pad} stride: {stride} "
            f"dilation: {dilation} }} }}\n")
    if relu:
        text += f'layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}" top: "{name}" }}\n'
    return text


def _pool(name, bottom, kernel=2, stride=2, pad=0):
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
            f"pooling_param {{ pool: MAX kernel_size: {kernel} stride: {stride} pad: {pad} }} }}\n")


def ssd300_deploy(width: int = 4, batch: int = 2) -> str:
    """SSD300's deploy.prototxt (VGG_VOC0712_SSD_300x300) with every base width divided."""
    w = lambda n: max(n // 64 * width, 4)  # noqa: E731
    text = (f'name: "ssd300_small"\nlayer {{ name: "input" type: "Input" top: "data" '
            f"input_param {{ shape {{ dim: {batch} dim: 3 dim: 300 dim: 300 }} }} }}\n")
    bottom = "data"
    for stage, (convs, out) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], 1):
        for i in range(1, convs + 1):
            text += _conv(f"conv{stage}_{i}", bottom, w(out))
            bottom = f"conv{stage}_{i}"
        text += _pool(f"pool{stage}", bottom, *((3, 1, 1) if stage == 5 else ()))
        bottom = f"pool{stage}"
    text += _conv("fc6", "pool5", w(1024), pad=6, dilation=6) + _conv("fc7", "fc6", w(1024), kernel=1, pad=0)
    bottom = "fc7"
    for stage, (mid, out, stride, pad) in enumerate([(256, 512, 2, 1), (128, 256, 2, 1),
                                                     (128, 256, 1, 0), (128, 256, 1, 0)], 6):
        text += _conv(f"conv{stage}_1", bottom, w(mid), kernel=1, pad=0)
        text += _conv(f"conv{stage}_2", f"conv{stage}_1", w(out), pad=pad, stride=stride)
        bottom = f"conv{stage}_2"
    text += ('layer { name: "conv4_3_norm" type: "Normalize" bottom: "conv4_3" top: "conv4_3_norm" '
             'norm_param { across_spatial: false channel_shared: false '
             'scale_filler { type: "constant" value: 20 } } }\n')
    locs, confs, priors = [], [], []
    for source, min_size, max_size, ratios, step, per_cell in HEADS:
        for kind, channels, names in (("loc", per_cell * 4, locs), ("conf", per_cell * CLASSES, confs)):
            head = f"{source}_mbox_{kind}"
            text += _conv(head, source, channels, relu=False)
            text += (f'layer {{ name: "{head}_perm" type: "Permute" bottom: "{head}" top: "{head}_perm" '
                     "permute_param { order: 0 order: 2 order: 3 order: 1 } }\n"
                     f'layer {{ name: "{head}_flat" type: "Flatten" bottom: "{head}_perm" '
                     f'top: "{head}_flat" flatten_param {{ axis: 1 }} }}\n')
            names.append(f"{head}_flat")
        text += (f'layer {{ name: "{source}_mbox_priorbox" type: "PriorBox" bottom: "{source}" bottom: "data" '
                 f'top: "{source}_mbox_priorbox" prior_box_param {{ min_size: {min_size} max_size: {max_size} '
                 + " ".join(f"aspect_ratio: {r}" for r in ratios)
                 + " flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 "
                 f"step: {step} offset: 0.5 }} }}\n")
        priors.append(f"{source}_mbox_priorbox")
    for name, parts, axis in (("mbox_loc", locs, 1), ("mbox_conf", confs, 1), ("mbox_priorbox", priors, 2)):
        text += (f'layer {{ name: "{name}" type: "Concat" '
                 + " ".join(f'bottom: "{p}"' for p in parts)
                 + f' top: "{name}" concat_param {{ axis: {axis} }} }}\n')
    text += f"""layer {{ name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape"
  reshape_param {{ shape {{ dim: 0 dim: -1 dim: {CLASSES} }} }} }}
layer {{ name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax"
  softmax_param {{ axis: 2 }} }}
layer {{ name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" top: "mbox_conf_flatten"
  flatten_param {{ axis: 1 }} }}
layer {{ name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" bottom: "mbox_conf_flatten"
  bottom: "mbox_priorbox" top: "detection_out"
  include {{ phase: TEST }}
  detection_output_param {{ num_classes: {CLASSES} share_location: true background_label_id: 0
    nms_param {{ nms_threshold: 0.45 top_k: 400 }} code_type: CENTER_SIZE keep_top_k: 200
    confidence_threshold: 0.01 }} }}
"""
    return text


@pytest.fixture(scope="module")
def ssd_run(tmp_path_factory):
    """Our net and OpenCV's on the same random weights and images: (net, ours, theirs)."""
    tmp = tmp_path_factory.mktemp("ssd")
    prototxt = tmp / "deploy.prototxt"
    prototxt.write_text(ssd300_deploy())
    net = Net(prototxt, phase="TEST")
    gen = torch.Generator().manual_seed(0)
    randomize(net, gen)
    with torch.no_grad():  # SSD's conv4_3 scale starts at 20
        scale = net.layers["conv4_3_norm"].blobs[0]
        scale.copy_(torch.rand(scale.shape, generator=gen) * 20 + 10)
    net.save_caffemodel(tmp / "random.caffemodel")
    x = torch.randn(2, 3, 300, 300, generator=gen)
    with torch.no_grad():
        ours = net({"data": x})
    oracle = cv2.dnn.readNetFromCaffe(str(prototxt), str(tmp / "random.caffemodel"))
    oracle.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    oracle.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    oracle.enableFusion(False)
    oracle.setInput(x.numpy(), "data")
    names = ["conv4_3_norm", "mbox_loc", "mbox_conf_flatten", "mbox_priorbox", "detection_out"]
    theirs = dict(zip(names, oracle.forward(names)))
    return net, ours, theirs


def test_ssd300_shapes_are_ssd300s(ssd_run):
    net, ours, _ = ssd_run
    assert [net.blob_shapes[s][2] for s, *_ in HEADS] == [38, 19, 10, 5, 3, 1]
    assert ours["mbox_priorbox"].shape == (1, 2, 8732 * 4)
    assert ours["mbox_loc"].shape == (2, 8732 * 4) and ours["mbox_conf_flatten"].shape == (2, 8732 * CLASSES)


@pytest.mark.parametrize("blob", ["conv4_3_norm", "mbox_loc", "mbox_conf_flatten"])
def test_ssd300_features_match_opencv(ssd_run, blob):
    _, ours, theirs = ssd_run
    got, expected = ours[blob].numpy(), theirs[blob].reshape(ours[blob].shape)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_ssd300_prior_boxes_match_opencv(ssd_run):
    _, ours, theirs = ssd_run
    np.testing.assert_allclose(ours["mbox_priorbox"].numpy(), theirs["mbox_priorbox"], rtol=0, atol=1e-6)


def in_caffe_order(detections: np.ndarray) -> np.ndarray:
    """Rows (image, label, score, box) by image, then label, then descending score: the
    fork's order. OpenCV writes each image's rows by descending score instead."""
    rows = detections.reshape(-1, 7)
    return rows[np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))]


def test_ssd300_detection_output_on_opencvs_inputs_equals_opencvs(ssd_run):
    """The same loc/conf/prior blobs through both DetectionOutput layers: the same boxes
    kept after NMS and keep_top_k (200 per image), with the same scores and corners."""
    net, _, theirs = ssd_run
    layer = net.layers["detection_out"]
    (top,) = layer(*(torch.from_numpy(theirs[b]) for b in ("mbox_loc", "mbox_conf_flatten", "mbox_priorbox")))
    assert top.shape == theirs["detection_out"].shape == (1, 1, 2 * 200, 7)
    got, expected = top.numpy().reshape(-1, 7), in_caffe_order(theirs["detection_out"])
    np.testing.assert_array_equal(got, in_caffe_order(got))
    np.testing.assert_array_equal(got[:, :2], expected[:, :2])
    np.testing.assert_allclose(got[:, 2:], expected[:, 2:], rtol=0, atol=1e-6)


def test_ssd300_detections_match_opencv_end_to_end(ssd_run):
    _, ours, theirs = ssd_run
    got, expected = ours["detection_out"].numpy().reshape(-1, 7), in_caffe_order(theirs["detection_out"])
    assert len(got) == len(expected) == 2 * 200
    np.testing.assert_array_equal(got[:, :2], expected[:, :2])
    np.testing.assert_allclose(got[:, 2:], expected[:, 2:], rtol=0, atol=1e-4)


def _single_layer_vs_opencv(tmp_path, layer_name, layer_text, x, blobs=None):
    """Top 'y' of a one-layer net from us and from OpenCV; `blobs` (if given) become the
    layer's blobs, passed to OpenCV through a .caffemodel we write."""
    shape = " ".join(f"dim: {d}" for d in x.shape)
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(f'layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ {shape} }} }} }}\n'
                        + layer_text)
    net = Net(prototxt)
    weights = ""
    if blobs is not None:
        with torch.no_grad():
            for blob, value in zip(net.layers[layer_name].blobs, blobs):
                blob.copy_(value)
        weights = str(tmp_path / "net.caffemodel")
        net.save_caffemodel(weights)
    with torch.no_grad():
        ours = net({"x": x})["y"].numpy()
    oracle = cv2.dnn.readNetFromCaffe(str(prototxt), weights)
    oracle.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    oracle.setInput(x.numpy(), "x")
    return ours, oracle.forward(layer_name)


@pytest.mark.parametrize("across_spatial,channel_shared",
                         [("true", "true"), ("false", "true"), ("false", "false")])
def test_normalize_matches_opencv(tmp_path, across_spatial, channel_shared):
    """Both norms and both scale layouts (OpenCV refuses per-channel scales across space;
    tests/test_layers_ssd.py covers that case); the shared scale is a blob without axes,
    which OpenCV reads from our .caffemodel as Caffe writes it."""
    x = torch.randn(2, 5, 4, 3)
    scale = torch.tensor(7.0) if channel_shared == "true" else torch.arange(1.0, 6.0)
    layer = ('layer { name: "norm" type: "Normalize" bottom: "x" top: "y" norm_param { '
             f"across_spatial: {across_spatial} channel_shared: {channel_shared} }} }}")
    ours, theirs = _single_layer_vs_opencv(tmp_path, "norm", layer, x, [scale])
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ceil_mode,side", [("false", 3), ("true", 4)])
def test_pooling_ceil_mode_matches_opencv(tmp_path, ceil_mode, side):
    x = torch.randn(1, 2, 8, 8)
    ours, theirs = _single_layer_vs_opencv(
        tmp_path, "pool", 'layer { name: "pool" type: "Pooling" bottom: "x" top: "y" '
                  f"pooling_param {{ pool: MAX kernel_size: 3 stride: 2 ceil_mode: {ceil_mode} }} }}", x)
    assert ours.shape == theirs.shape == (1, 2, side, side)
    np.testing.assert_array_equal(ours, theirs)


def test_relu6_matches_opencv(tmp_path):
    x = torch.randn(2, 3, 4, 5) * 6
    ours, theirs = _single_layer_vs_opencv(
        tmp_path, "r6", 'layer { name: "r6" type: "ReLU6" bottom: "x" top: "y" }', x)
    assert ours.min() == 0 and ours.max() == 6
    np.testing.assert_array_equal(ours, theirs)
