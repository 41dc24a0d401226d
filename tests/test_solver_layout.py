"""--channels-last on the CPU trains in the memory format that measured faster for the net
(runner/solver/layout.py), says so in the log, and leaves the net's state untouched."""
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
    monkeypatch.setattr(layout, "training_pass_seconds", lambda net, device: medians)
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
