"""Binary compatibility with an independent Caffe reader: OpenCV's dnn importer loads
.caffemodel files written with our schema (current and V1 layout, shape.dim and legacy
4D dims) and computes what numpy computes from the same weights."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from runner.proto import (array_to_blob, blob_to_array, caffe_pb2, parse_net_text, read_caffemodel,
                          read_net, to_text, write_binary)

DEPLOY = """
name: "tiny"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc2" type: "InnerProduct" bottom: "conv1" top: "fc2" inner_product_param { num_output: 5 } }
"""


def _weights(rng):
    return {"conv1": [rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)],
            "fc2": [rng.standard_normal((5, 4 * 6 * 6)), rng.standard_normal(5)]}


def _numpy_forward(x, w):
    conv_w, conv_b = w["conv1"]
    padded = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    conv = np.empty((4, 6, 6))
    for i in range(6):
        for j in range(6):
            conv[:, i, j] = np.tensordot(conv_w, padded[:, i:i + 3, j:j + 3], axes=3) + conv_b
    fc_w, fc_b = w["fc2"]
    return fc_w @ np.maximum(conv, 0).ravel() + fc_b


def _legacy_blob(array):
    """A BlobProto with num/channels/height/width (vectors and matrices as 1x1xHxW)."""
    dims = (1,) * (4 - array.ndim) + array.shape
    blob = caffe_pb2.BlobProto(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
    blob.data.extend(array.astype(np.float32).ravel().tolist())
    return blob


def _v2_model(w):
    net = caffe_pb2.NetParameter(name="tiny")
    for name, kind in (("conv1", "Convolution"), ("fc2", "InnerProduct")):
        net.layer.add(name=name, type=kind, blobs=[array_to_blob(a) for a in w[name]])
    return net


def _v1_model(w):
    net = caffe_pb2.NetParameter(name="tiny")
    V1 = caffe_pb2.V1LayerParameter
    for name, kind in (("conv1", V1.CONVOLUTION), ("fc2", V1.INNER_PRODUCT)):
        net.layers.add(name=name, type=kind, blobs=[_legacy_blob(a) for a in w[name]])
    return net


@pytest.mark.parametrize("make_model", [_v2_model, _v1_model], ids=["layer", "v1_layers"])
def test_opencv_runs_our_caffemodel(tmp_path, make_model):
    rng = np.random.default_rng(0)
    w = _weights(rng)
    prototxt, model = tmp_path / "deploy.prototxt", tmp_path / "w.caffemodel"
    prototxt.write_text(DEPLOY)
    write_binary(make_model(w), model)

    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(model))
    cv_net.setInput(x)
    expected = _numpy_forward(x.astype(np.float64), w)
    np.testing.assert_allclose(cv_net.forward("fc2").ravel(), expected, rtol=1e-4, atol=1e-4)

    # Our reader sees the same numbers (V1 upgraded to `layer`; legacy dims kept 4D).
    ours = read_caffemodel(model)
    assert [layer.name for layer in ours.layer] == ["conv1", "fc2"]
    for layer in ours.layer:
        for blob, array in zip(layer.blobs, w[layer.name]):
            np.testing.assert_array_equal(blob_to_array(blob).ravel(), array.astype(np.float32).ravel())


def test_opencv_parses_our_upgraded_text():
    """The text we write for an upgraded V1 net is valid for OpenCV's own Caffe schema."""
    net = read_net(Path(__file__).parent / "data" / "proto" / "googlenet_deploy_v1.prototxt")
    cv_net = cv2.dnn.readNetFromCaffe(bytearray(to_text(net).encode()))
    assert "inception_3a/output" in cv_net.getLayerNames()
    assert parse_net_text(to_text(net)) == net
