"""--channels-last on the CPU trains in the memory format that measured faster for the net
(runner/solver/layout.py), says so in the log, and leaves the net's state untouched."""
import copy

import pytest
import torch

from runner.solver import SolverOptions, layout
from solver_helpers import classifier_net, make_lmdb, make_solver

BN_NET = '''
layer { name: "data" type: "Data" top: "data" top: "label"
  data_param { source: "%s" batch_size: 4 backend: LMDB } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


@pytest.fixture(scope="module")
def train_db(tmp_path_factory):
    return make_lmdb(tmp_path_factory.mktemp("layout") / "train_lmdb", 16)


def test_timing_both_formats_leaves_the_net_as_it_was(train_db, tmp_path):
    solver = make_solver(BN_NET % train_db, tmp_path / "s", max_iter=1)
    net = solver.net
    state = {k: v.clone() for k, v in net.state_dict().items()}
    medians = layout.training_pass_seconds(net, torch.device("cpu"), rounds=1)
    assert layout.choose(medians) in layout.FORMATS and set(medians) == set(layout.FORMATS)
    assert all(seconds > 0 for seconds in medians.values())
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} changed (BatchNorm statistics included)"
        assert value.is_contiguous(), f"{key} left in another memory format"
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("faster", ["NCHW", "channels_last"])
def test_channels_last_flag_trains_in_the_faster_format(train_db, tmp_path, monkeypatch, faster):
    medians = {"channels_last": 0.02, "NCHW": 0.03} if faster == "channels_last" else \
        {"channels_last": 0.03, "NCHW": 0.02}
    monkeypatch.setattr(layout, "training_pass_seconds", lambda net, device, mix=None: medians)
    solver = make_solver(classifier_net(train_db, batch=4), tmp_path / "s",
                         SolverOptions(progress=False, channels_last=True), max_iter=2, display=1)
    solver.solve()
    conv = solver.net.layers["conv1"].blobs[0]
    fmt = layout.FORMATS[faster]   # strides, not is_contiguous: 1 input channel fits both
    assert conv.stride() == torch.empty(conv.shape, memory_format=fmt).stride()
    assert solver.train_batches.channels_last == (faster == "channels_last")
    log = (tmp_path / "s.log").read_text()
    assert (f"--channels-last: a training pass took channels_last {medians['channels_last'] * 1e3:.1f} ms, "
            f"NCHW {medians['NCHW'] * 1e3:.1f} ms on this CPU; training in {faster}") in log


def test_without_the_flag_nothing_is_timed(train_db, tmp_path, monkeypatch):
    def fail(*args):
        raise AssertionError("timed without --channels-last")
    monkeypatch.setattr(layout, "training_pass_seconds", fail)
    solver = make_solver(classifier_net(train_db, batch=4), tmp_path / "s", max_iter=1)
    assert solver.net.layers["conv1"].blobs[0].is_contiguous()


@pytest.mark.parametrize("channels_last,nchw,chosen", [
    (0.94, 1.0, "channels_last"), (0.97, 1.0, "NCHW"), (1.2, 1.0, "NCHW")])
def test_channels_last_must_win_by_the_margin(channels_last, nchw, chosen):
    assert layout.choose({"channels_last": channels_last, "NCHW": nchw}) == chosen


def test_a_net_that_cannot_be_timed_trains_in_channels_last_as_asked(train_db, tmp_path, monkeypatch):
    def fails(net, batch):
        raise RuntimeError("index 0 is out of bounds")
    monkeypatch.setattr(layout, "time_training_pass", fails)
    solver = make_solver(classifier_net(train_db, batch=4), tmp_path / "s",
                         SolverOptions(progress=False, channels_last=True), max_iter=1)
    assert solver.channels_last and solver.train_batches.channels_last
    assert ("--channels-last: a training pass on synthetic inputs failed (index 0 is out of "
            "bounds); training in channels_last as asked") in (tmp_path / "s.log").read_text()


TWO_CONV_NET = '''
layer { name: "data" type: "Data" top: "data" top: "label"
  data_param { source: "%s" batch_size: 4 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv2" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''
MIX = {"conv1": "channels_last", "conv2": "NCHW"}


def test_each_convolution_is_timed_alone_in_both_formats(train_db, tmp_path):
    solver = make_solver(TWO_CONV_NET % train_db, tmp_path / "s", max_iter=1)
    convs = layout.conv_layers(solver.net)
    assert {name: (shape, grad) for name, (_, shape, grad) in convs.items()} == {
        "conv1": ((4, 1, 8, 8), False), "conv2": ((4, 8, 4, 4), True)}
    seconds = layout.conv_seconds(solver.net, torch.device("cpu"), rounds=1)
    assert set(seconds) == {"conv1", "conv2"}
    assert all(set(s) == set(layout.FORMATS) and min(s.values()) > 0 for s in seconds.values())
    assert all(p.is_contiguous() and p.grad is None for p in solver.net.parameters())
    assert all(layer.memory_format is None for layer, _, _ in convs.values())


def test_a_mix_of_formats_computes_what_nchw_does(train_db, tmp_path):
    solver = make_solver(TWO_CONV_NET % train_db, tmp_path / "s", max_iter=1)
    net = solver.net
    mixed = copy.deepcopy(net, memo={id(s): s for s in net.sources})
    layout.apply_conv_formats(mixed, MIX)
    assert mixed.layers["conv1"].blobs[0].is_contiguous(memory_format=torch.channels_last)
    assert mixed.layers["conv2"].blobs[0].is_contiguous()
    batch = {"data": torch.randn(4, 1, 8, 8), "label": torch.tensor([0.0, 1, 2, 1])}
    seen = {}
    mixed.layers["conv2"].register_forward_hook(lambda m, args, out: seen.update(conv2_top=out[0]))
    for model in (net, mixed):
        model.zero_grad(set_to_none=True)
        model.objective(model(batch)).backward()
    assert seen["conv2_top"].is_contiguous() and not seen["conv2_top"].is_contiguous(
        memory_format=torch.channels_last)
    for (name, a, _, _), (_, b, _, _) in zip(net.learnable_params(), mixed.learnable_params()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6), name


def test_the_mix_is_a_candidate_only_when_it_mixes(train_db, tmp_path):
    solver = make_solver(TWO_CONV_NET % train_db, tmp_path / "s", max_iter=1)
    cpu = torch.device("cpu")
    assert set(layout.training_pass_seconds(solver.net, cpu, rounds=1, mix=MIX)) == {
        "NCHW", "channels_last", layout.PER_LAYER}
    same = dict.fromkeys(MIX, "NCHW")
    assert set(layout.training_pass_seconds(solver.net, cpu, rounds=1, mix=same)) == set(layout.FORMATS)
    assert all(layer.memory_format is None for layer, _, _ in layout.conv_layers(solver.net).values())


@pytest.mark.parametrize("seconds,chosen", [
    ({"channels_last": 0.96, "NCHW": 1.0, layout.PER_LAYER: 0.90}, layout.PER_LAYER),
    ({"channels_last": 0.90, "NCHW": 1.0, layout.PER_LAYER: 0.93}, "channels_last"),
    ({"channels_last": 0.97, "NCHW": 1.0, layout.PER_LAYER: 0.96}, "NCHW")])
def test_the_fastest_candidate_must_beat_nchw_by_the_margin(seconds, chosen):
    assert layout.choose(seconds) == chosen


def test_the_solver_trains_each_convolution_in_its_chosen_format(train_db, tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "conv_seconds", lambda net, device: {
        "conv1": {"channels_last": 0.01, "NCHW": 0.02}, "conv2": {"channels_last": 0.02, "NCHW": 0.01}})
    timed = {}

    def whole_net(net, device, mix=None):
        timed["mix"] = mix
        return {"channels_last": 0.03, "NCHW": 0.03, layout.PER_LAYER: 0.02}
    monkeypatch.setattr(layout, "training_pass_seconds", whole_net)
    solver = make_solver(TWO_CONV_NET % train_db, tmp_path / "s",
                         SolverOptions(progress=False, channels_last=True), max_iter=2, display=1)
    solver.solve()
    assert timed["mix"] == MIX
    conv1, conv2 = solver.net.layers["conv1"], solver.net.layers["conv2"]
    assert conv1.memory_format == torch.channels_last and conv2.memory_format == torch.contiguous_format
    assert conv1.blobs[0].is_contiguous(memory_format=torch.channels_last) and conv2.blobs[0].is_contiguous()
    assert not solver.channels_last and not solver.train_batches.channels_last
    log = (tmp_path / "s.log").read_text()
    assert "training in per-layer formats" in log
    assert "--channels-last: convolutions in channels_last: conv1; in NCHW: conv2" in log
