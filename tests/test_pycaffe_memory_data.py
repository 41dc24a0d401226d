"""MemoryData as Caffe's memory_data_layer.cpp: batches cut in place from the arrays that
set_input_arrays hands over, cycling through them, with Caffe's checks on those arrays."""
import numpy as np
import pytest
import torch

import caffe
from runner import Net

NET = """layer { name: "mem" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }"""


@pytest.fixture
def net_path(tmp_path):
    path = tmp_path / "mem.prototxt"
    path.write_text(NET)
    return str(path)


def arrays(n):
    data = np.arange(n * 6, dtype=np.float32).reshape(n, 1, 2, 3)
    return data, (np.arange(n) % 3).astype(np.float32)


def test_batches_cycle_through_the_arrays_in_place(net_path):
    net = caffe.Net(net_path, caffe.TRAIN)
    assert net.blobs["data"].shape == (2, 1, 2, 3) and net.blobs["label"].shape == (2,)
    data, labels = arrays(4)
    net.set_input_arrays(data, labels)
    seen = []
    for _ in range(3):
        net.forward()
        seen.append(net.blobs["label"].data.ravel().tolist())
    assert seen == [[0, 1], [2, 0], [0, 1]]          # wraps after n records
    assert net.blobs["label"].shape == (2, 1, 1, 1)   # Forward reshapes labels 4-d
    data[2:] = -1                                     # used in place, as Caffe's Reset
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, -1)
    net.set_input_arrays(*arrays(2))                  # a new Reset starts at record 0
    net.forward()
    assert net.blobs["label"].data.ravel().tolist() == [0, 1]


@pytest.mark.parametrize("data, labels, message", [
    (np.zeros((3, 1, 2, 3), np.float32), np.zeros(3, np.float32), "multiple of batch size 2"),
    (np.zeros((2, 2, 2, 3), np.float32), np.zeros(2, np.float32), "channels, height, width"),
    (np.zeros((2, 1, 2, 3), np.float64), np.zeros(2, np.float32), "float32"),
    (np.zeros((2, 3, 2, 1), np.float32).transpose(0, 3, 2, 1), np.zeros(2, np.float32), "C contiguous"),
    (np.zeros((2, 1, 2, 3), np.float32), np.zeros(4, np.float32), "same first dimension"),
])
def test_set_input_arrays_checks_as_caffe(net_path, data, labels, message):
    net = caffe.Net(net_path, caffe.TRAIN)
    with pytest.raises(ValueError, match=f"layer 'mem' \\(MemoryData\\).*{message}"):
        net.set_input_arrays(data, labels)


def test_forward_before_arrays_and_nets_without_memory_data(net_path, tmp_path):
    net = caffe.Net(net_path, caffe.TRAIN)
    with pytest.raises(ValueError, match="needs to be initialized by calling Reset"):
        net.forward()
    other = tmp_path / "input.prototxt"
    other.write_text('input: "data" input_shape { dim: 1 dim: 2 }')
    with pytest.raises(RuntimeError, match="first layer is a MemoryDataLayer"):
        caffe.Net(str(other), caffe.TEST).set_input_arrays(*arrays(2))


def test_runner_net_takes_batches_from_the_memory_source(net_path):
    net = Net(net_path, phase="TRAIN")
    data, labels = arrays(2)
    net.sources[0].reset(data, labels[:, None, None, None].copy())
    blobs = net(next(iter(net.sources[0])))
    torch.testing.assert_close(blobs["data"], torch.from_numpy(data))
    assert blobs["loss"].dim() == 0
