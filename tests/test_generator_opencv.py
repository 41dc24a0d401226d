"""Every committed deploy net loads in OpenCV's Caffe importer and classifies to (1, K).

OpenCV sizes each layer from its own reading of the prototxt and checks the weight
blobs against it, so this also checks the blob shapes of runner/shapes.py. A CNDS
deploy net is its CNN twin under another name, so weights are loaded once per pair.
"""
from pathlib import Path

import cv2
import numpy as np
import pytest

from generator.architectures import build, catalogue
from generator.summary import shape_table
from runner.proto import array_to_blob, caffe_pb2, read_net

ROOT = Path(__file__).resolve().parent.parent
NETS = {c.name: build(c) for c in catalogue()}


def _deploy(name) -> Path:
    return ROOT / "models" / name / "deploy.prototxt"


def _weights(deploy: caffe_pb2.NetParameter) -> bytes:
    """A caffemodel with every learnable blob at the shape our shape rules give it."""
    pattern = np.random.default_rng(0).standard_normal(4099).astype(np.float32) * 0.01
    model = caffe_pb2.NetParameter(name=deploy.name)
    for row in shape_table(deploy, "TEST"):
        if row.blobs:
            layer = model.layer.add(name=row.name, type=row.type)
            layer.blobs.extend(array_to_blob(np.resize(pattern, shape)) for shape in row.blobs)
    return model.SerializeToString()


@pytest.mark.parametrize("name", sorted(NETS))
def test_deploy_prototxt_loads_in_opencv(name):
    net = cv2.dnn.readNetFromCaffe(str(_deploy(name)))
    deploy = read_net(_deploy(name))
    assert list(net.getLayerNames()) == [lp.name for lp in deploy.layer[1:]]  # Input is implicit


@pytest.mark.parametrize("name", sorted(n for n in NETS if "cnds" in n))
def test_cnds_deploy_is_its_cnn_twin(name):
    twin = name.replace("cnds", "cnn")
    assert _deploy(name).read_text().replace(name, twin) == _deploy(twin).read_text()


@pytest.mark.parametrize("name", sorted(n for n in NETS if "cnn" in n))
def test_deploy_with_weights_outputs_one_row_of_k(name):
    weights = np.frombuffer(_weights(read_net(_deploy(name))), np.uint8)
    net = cv2.dnn.readNetFromCaffe(np.frombuffer(_deploy(name).read_bytes(), np.uint8), weights)
    ds = NETS[name].dataset
    image = np.random.default_rng(1).standard_normal((1, ds.channels, ds.crop, ds.crop)).astype(np.float32)
    net.setInput(image)
    prob = net.forward("prob")
    assert prob.shape == (1, ds.num_classes)
    assert np.isfinite(prob).all() and prob.sum() == pytest.approx(1.0, abs=1e-4)
