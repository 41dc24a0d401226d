"""The members _caffe.cpp binds and scripts use besides pycaffe.py's own: a Net's _blobs,
_blob_names, _inputs, _outputs, _blob_loss_weights, _top_ids/_bottom_ids, _set_input_arrays
and its per-layer callbacks; a Solver's add_callback and a settable param.base_lr;
init_log/log and has_nccl; a Blob's GPU pointers."""
from collections import OrderedDict

import numpy as np
import pytest
import torch

import caffe
from runner.solver.caffe_log import configure_glog

NET = '''
name: "members"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "sum" type: "Eltwise" bottom: "ip1" bottom: "ip2" top: "s" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" top: "loss"
  loss_weight: 2 }
'''


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    return caffe.Net(str(path), caffe.TRAIN)


def test_blob_and_layer_indices_as_caffe_numbers_them(net):
    names = ["data", "label", "ip1", "ip1_relu1_0_split_0", "ip1_relu1_0_split_1", "ip2", "s",
             "loss"]
    assert net._blob_names == names
    assert net._layer_names == ["data", "ip1", "relu1", "ip1_relu1_0_split", "ip2", "sum", "loss"]
    assert all(a is b for a, b in zip(net._blobs, net.blobs.values()))
    assert OrderedDict(zip(net._blob_names, net._blobs)) == net.blobs   # pycaffe.py's own blobs
    assert net._inputs == [0, 1] and net._outputs == [7]
    assert net._blob_loss_weights == [0, 0, 0, 0, 0, 0, 0, 2]
    assert [net._bottom_ids(i) for i in range(7)] == [[], [0], [2], [2], [3], [4, 5], [6, 1]]
    assert [net._top_ids(i) for i in range(7)] == [[0, 1], [2], [2], [3, 4], [5], [6], [7]]


def test_per_layer_callbacks_run_in_caffes_order(net):
    calls = []
    net.before_forward(lambda i: calls.append(("before_forward", i)))
    net.after_forward(lambda i: calls.append(("after_forward", i, float(net._blobs[net._top_ids(i)[0]].data.sum()))))
    net.before_backward(lambda i: calls.append(("before_backward", i)))
    net.after_backward(lambda i: calls.append(("after_backward", i)))
    net.blobs["data"].data[...] = np.arange(6).reshape(2, 3)
    net.blobs["label"].data[...] = [0, 1]
    net.forward()
    forward = [c for c in calls if "forward" in c[0]]
    assert [c[:2] for c in forward] == [(w, i) for i in range(7) for w in ("before_forward", "after_forward")]
    assert forward[-1][2] == pytest.approx(float(net.blobs["loss"].data))   # after the layer ran
    calls.clear()
    net.backward()
    # every layer, the Input layer (which needs no backward) included, from the top down
    assert calls == [(w, i) for i in reversed(range(7)) for w in ("before_backward", "after_backward")]
    calls.clear()
    net.forward(start="ip2", end="sum")
    assert [c[:2] for c in calls] == [("before_forward", 4), ("after_forward", 4),
                                      ("before_forward", 5), ("after_forward", 5)]


def test_set_input_arrays_checks_as_caffe_cpp(tmp_path):
    path = tmp_path / "memory.prototxt"
    path.write_text('''name: "m"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }''')
    net = caffe.Net(str(path), caffe.TEST)
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    with pytest.raises(ValueError, match="labels array"):
        net._set_input_arrays(data, np.zeros(4, np.float32))      # pycaffe.py reshapes, not this
    net._set_input_arrays(data, np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1))
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[:2])
    net.set_input_arrays(data, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="float32"):
        net._set_input_arrays(data.astype(np.float64), np.zeros((4, 1, 1, 1), np.float32))


def _solver(tmp_path, momentum=0.9):
    (tmp_path / "net.prototxt").write_text(NET.replace(
        'layer { name: "data" type: "Input" top: "data" top: "label"\n  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }',
        'layer { name: "data" type: "DummyData" top: "data" top: "label" dummy_data_param {\n'
        '  shape { dim: 2 dim: 3 } shape { dim: 2 } data_filler { type: "gaussian" } } }'))
    path = tmp_path / "solver.prototxt"
    path.write_text(f'net: "{tmp_path}/net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\n'
                    f'momentum: {momentum}\nmax_iter: 10\nsnapshot_prefix: "{tmp_path}/s"\n'
                    'random_seed: 3\ntest_interval: 2\ntest_iter: 1\ntest_net: "' + f'{tmp_path}/net.prototxt"\n')
    return caffe.SGDSolver(str(path))


def test_solver_callbacks_bracket_each_iterations_passes(tmp_path):
    solver = _solver(tmp_path)
    events = []
    weights = lambda: solver.net.params["ip2"][0].data.copy()  # noqa: E731

    def on_start():
        events.append(("start", solver.iter))
        events.append(weights())

    def on_ready():
        diff = solver.net.params["ip2"][0].diff
        events.append(("ready", solver.iter, bool(np.abs(diff).max() > 0)))
        np.testing.assert_array_equal(weights(), events[-2])   # not updated yet
    solver.add_callback(on_start, on_ready)
    solver.step(3)
    marks = [e for e in events if isinstance(e, tuple)]
    assert marks == [("start", 0), ("ready", 0, True), ("start", 1), ("ready", 1, True),
                     ("start", 2), ("ready", 2, True)]


def test_setting_param_base_lr_changes_the_rate(tmp_path):
    solver = _solver(tmp_path, momentum=0)
    solver.step(1)
    assert solver.lr == pytest.approx(0.1)
    solver.param.base_lr = 0.0
    assert solver.lr == 0.0
    before = solver.net.params["ip1"][0].data.copy()
    solver.step(1)
    np.testing.assert_array_equal(solver.net.params["ip1"][0].data, before)
    solver.param.base_lr = 0.05
    solver.step(1)
    assert np.abs(solver.net.params["ip1"][0].data - before).max() > 0


@pytest.fixture
def glog_restored():
    yield
    configure_glog(0, True)


def test_init_log_and_log_follow_glogs_flags(capsys, glog_restored):
    caffe.log("first line")
    assert "_caffe.cpp:68] first line" in capsys.readouterr().err
    caffe.init_log()            # glog initialised: INFO goes to its files, stderr keeps ERROR
    caffe.log("to the files")
    assert "to the files" not in capsys.readouterr().err
    caffe.init_log(0, True)
    caffe.log("to stderr")
    assert "to stderr" in capsys.readouterr().err
    caffe.init_log(2, True)
    caffe.log("below ERROR")
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="severity 4"):
        caffe.init_log(4)
    assert caffe.has_nccl() is False


def test_gpu_pointers(net):
    blob = net.blobs["data"]
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="the blob's data is on the CPU"):
            blob._gpu_data_ptr
        return
    caffe.set_mode_gpu()
    try:
        net.forward()
        assert net.blobs["ip1"]._gpu_data_ptr == net.blobs["ip1"].data_tensor().data_ptr()
        assert net.params["ip1"][0]._gpu_diff_ptr != 0
    finally:
        caffe.set_mode_cpu()
