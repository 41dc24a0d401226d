"""Regressions for nets, labels, weights and command lines that Caffe refuses or that used to
fail deep inside torch: each is one error naming the layer, blob, record or flag."""
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fuzz_targets import QUIET, make_seeds
from runner import Net
from runner.data.datum import DataError, image_to_datum
from runner.data.lmdb_store import write_lmdb
from runner.graph import LayerMemoryError, NetBuildError
from runner.layers.common import LabelError
from runner.proto import array_to_blob, caffe_pb2, parse_net_text, write_binary
from runner.shapes import ShapeError
from runner.solver import Solver, load_solver_param
from runner.solver.errors import SolverDiverged
from runner.weights import WeightsError

REPO = Path(__file__).resolve().parents[1]
INPUT = 'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 8 dim: 8 } } }\n'
LABELED = INPUT.replace('top: "data"', 'top: "data" top: "label"').replace(
    "input_param { shape { dim: 2 dim: 1 dim: 8 dim: 8 } }",
    "input_param { shape { dim: 2 dim: 1 dim: 8 dim: 8 } shape { dim: 2 } }")
CLASSIFIER = LABELED + '''
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
'''


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seeds")
    make_seeds(folder)
    return folder


def net(text: str, phase="TEST") -> Net:
    return Net(parse_net_text(text, "t.prototxt"), phase=phase)


# ---- labels ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [10.0, -1.0, float("nan")])
def test_label_out_of_range_names_the_layer(bad):
    model = net(CLASSIFIER)
    with pytest.raises(LabelError, match=r"layer 'loss': label .* is outside \[0, 10\)"):
        model({"data": torch.zeros(2, 1, 8, 8), "label": torch.tensor([1.0, bad])})


def test_ignored_and_in_range_labels_pass():
    model = net(CLASSIFIER.replace('layer { name: "acc"', 'layer { name: "acc" '
                                   'accuracy_param { ignore_label: 255 }'))
    blobs = model({"data": torch.zeros(2, 1, 8, 8), "label": torch.tensor([9.0, 255.0])})
    assert torch.isfinite(blobs["loss"])


def test_lmdb_label_out_of_range_names_the_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = np.zeros((4, 4), np.uint8)
    write_lmdb("db", [(f"{i:08d}_x", image_to_datum(image, i * 5).SerializeToString())
                      for i in range(3)])
    model = net('''
layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "db" batch_size: 3 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }''', "TRAIN")
    with pytest.raises(DataError, match=r"key '00000002_x': label 10 is outside \[0, 10\), "
                                        r"the classes of layer 'loss'"):
        next(iter(model.sources[0]))
    model.sources[0].close()


# ---- bottom/top counts and sizes ---------------------------------------------------------

@pytest.mark.parametrize("layer, expected", [
    ('type: "ReLU" bottom: "data" bottom: "data" top: "r"', "takes exactly 1 bottom blob"),
    ('type: "Eltwise" bottom: "data" top: "r"', "takes at least 2 bottom blob"),
    ('type: "Accuracy" bottom: "data" bottom: "data" top: "a" top: "b" top: "c"',
     "takes 1 to 2 top blob"),
    ('type: "Convolution" bottom: "data" bottom: "data" top: "c" '
     'convolution_param { num_output: 1 kernel_size: 1 }', "one top per bottom"),
    ('type: "Silence" bottom: "data" top: "s"', "takes exactly 0 top blob"),
])
def test_blob_counts_are_checked_at_build(layer, expected):
    with pytest.raises(NetBuildError, match=f"layer 'x' .*{expected}"):
        net(INPUT + f'layer {{ name: "x" {layer} }}')


@pytest.mark.parametrize("layer, expected", [
    ('type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 kernel_size: 3 '
     'pad: 2147483647 }', "layer 'x' (Convolution): top 0: .* more than Caffe's limit"),
    ('type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 3 stride: 2147483647 }',
     "layer 'x' (Pooling): stride 2147483647 .* beyond Caffe's int arithmetic"),
    # one window (pad 1 clips the second), so no window arithmetic overflows; torch's kernel did
    ('type: "Pooling" bottom: "data" top: "p" top: "m" pooling_param { kernel_size: 3 stride: 2147483648 pad: 1 }',
     "layer 'x' (Pooling): stride 2147483648 is beyond Caffe's int"),
    ('type: "InnerProduct" bottom: "data" top: "i" inner_product_param { num_output: 268435456 }',
     "layer 'x' (InnerProduct): blob 0: shape .* more than Caffe's limit"),
])
def test_huge_sizes_name_the_layer(layer, expected):
    with pytest.raises((ShapeError, NetBuildError), match=expected.replace("(", r"\(").replace(")", r"\)")):
        net(INPUT + f'layer {{ name: "x" {layer} }}')


def test_huge_input_dim_names_the_layer():
    with pytest.raises(NetBuildError, match=r"layer 'in' \(Input\): top 0: shape \[1, 2147483648\]"):
        net('layer { name: "in" type: "Input" top: "d" input_param { shape { dim: 1 dim: 2147483648 } } }')


def test_more_than_32_axes_names_the_layer():
    """Caffe's kMaxBlobAxes; torch would take up to 64."""
    dims = "dim: 1 " * 33
    with pytest.raises(NetBuildError, match=r"layer 'in' \(Input\): top 0: shape has 33 axes, "
                                            r"more than Caffe's limit of 32"):
        net(f'layer {{ name: "in" type: "Input" top: "d" input_param {{ shape {{ {dims} }} }} }}')
    net(f'layer {{ name: "in" type: "Input" top: "d" input_param {{ shape {{ {"dim: 1 " * 32} }} }} }}')


def test_allocation_failure_in_forward_names_the_layer(monkeypatch):
    model = net(INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')

    def no_memory(*args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 1 bytes.")
    monkeypatch.setattr(model.layers["r"], "forward", no_memory)
    with pytest.raises(LayerMemoryError, match="layer 'r' \\(ReLU\\): forward does not fit in memory"):
        model({"data": torch.zeros(2, 1, 8, 8)})


# ---- non-finite weights and divergence ----------------------------------------------------

def test_nan_weights_are_refused_naming_the_blob_unless_allowed(seed_dir, tmp_path, caplog):
    param = caffe_pb2.NetParameter.FromString((seed_dir / "deploy.caffemodel").read_bytes())
    ip = next(lp for lp in param.layer if lp.name == "ip")
    values = np.array(ip.blobs[1].data, np.float32)
    values[0] = np.nan
    ip.blobs[1].CopyFrom(array_to_blob(values))
    write_binary(param, tmp_path / "nan.caffemodel")
    deploy = seed_dir / "deploy.prototxt"
    with pytest.raises(WeightsError, match="layer 'ip' blob 1: 1 of its 3 values are NaN"):
        Net(deploy, weights=tmp_path / "nan.caffemodel")
    with caplog.at_level(logging.WARNING, logger="runner.weights"):
        Net(deploy, weights=tmp_path / "nan.caffemodel", allow_nonfinite=True)
    assert "layer 'ip' blob 1: 1 of its 3 values are NaN or inf" in caplog.text


def test_divergence_names_the_last_snapshot_whose_forward_was_finite(seed_dir, tmp_path,
                                                                     monkeypatch):
    shutil.copytree(seed_dir, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    param = load_solver_param("solver.prototxt")
    param.max_iter, param.test_interval = 4, 0
    param.ClearField("test_iter")
    param.snapshot_prefix = "out/s"
    solver = Solver(param, QUIET)
    forward_backward = solver.train_step.forward_backward

    def nan_from_iteration_2(batches):
        loss, blobs = forward_backward(batches)
        return (float("nan") if solver.iter >= 2 else loss), blobs
    monkeypatch.setattr(solver.train_step, "forward_backward", nan_from_iteration_2)
    with pytest.raises(SolverDiverged, match="Iteration 2: .*Last good snapshot .*: "
                                             "out/s_iter_1.solverstate"):
        solver.solve()
    assert Path("out/s_iter_2.solverstate").exists()   # written, but its forward was NaN


# ---- command lines ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["test", "--model", "m.prototxt", "--weights", "w", "--iterations", "0"], "must be >= 1"),
    (["test", "--model", "m.prototxt", "--weights", "w", "--iterations", "-5"], "must be >= 1"),
    (["time", "--model", "m.prototxt", "--iterations", "0"], "must be >= 1"),
    (["solver.prototxt", "--iterations", "-5"], "must be >= 0"),
])
def test_iteration_counts_are_checked(args, expected):
    done = subprocess.run([sys.executable, "runner/solve.py", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and expected in done.stderr, done.stderr
