"""caffe.set_mode_gpu(): nets and solvers on a CUDA device compute what they compute on the
CPU, and the numpy arrays stay on the host, synchronised as Caffe's SyncedMemory: writes
reach the device at the next pass, reads see the device's results.

Skipped where torch sees no CUDA device; they run on a GPU machine (README, "GPU")."""
import numpy as np
import pytest
import torch

import caffe
from test_pycaffe_net import NET, fill, numpy_pass

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device; run on a GPU machine")


@pytest.fixture
def gpu_mode():
    caffe.set_device(0)
    caffe.set_mode_gpu()
    yield
    caffe.set_mode_cpu()


def test_gpu_net_matches_numpy_through_host_arrays(tmp_path, gpu_mode):
    path = tmp_path / "net.prototxt"
    path.write_text(NET.format(force="force_backward: true"))
    net = caffe.Net(str(path), caffe.TRAIN)
    assert net.params["ip1"][0]._lookup().device.type == "cuda"
    x, t = fill(net, seed=6)
    net.params["ip2"][1].data[...] = 0.25      # a host write to a parameter
    net.forward()
    diffs = net.backward()
    ref = numpy_pass(net, x, t)
    assert float(net.blobs["loss"].data) == pytest.approx(ref["loss"], rel=1e-5)
    np.testing.assert_allclose(net.params["ip1"][0].diff, ref["w1"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(diffs["data"], ref["x"], rtol=1e-4, atol=1e-6)
    held = net.blobs["out"].data
    net.blobs["data"].data[...] = 0
    net.forward()
    (w1, b1), (w2, b2) = ([p.data for p in net.params[n]] for n in ("ip1", "ip2"))
    expected = np.broadcast_to(np.maximum(b1, 0) @ w2.T + b2, (2, 2))
    assert net.blobs["out"].data is held     # reading .data refreshes the same host array
    np.testing.assert_allclose(held, expected, rtol=1e-5, atol=1e-6)


def test_a_cpu_net_moves_when_the_mode_changes(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET.format(force=""))
    net = caffe.Net(str(path), caffe.TRAIN)
    fill(net, seed=7)
    cpu_loss = float(net.forward()["loss"])
    caffe.set_mode_gpu()
    try:
        gpu_loss = float(net.forward()["loss"])
        assert net.params["ip1"][0]._lookup().device.type == "cuda"
    finally:
        caffe.set_mode_cpu()
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-5)
    assert float(net.forward()["loss"]) == pytest.approx(cpu_loss, rel=1e-5)
