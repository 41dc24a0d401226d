"""The SolverParameter as Solver::Init reads it: where train and test nets come from,
their NetStates (phase, train_state/test_state stages), the test nets sharing the
train net's blobs, and Caffe's checks as errors that name the field."""
import pytest
import torch

from runner.proto import parse_solver_text
from runner.solver import Solver, SolverOptions

NET = """
name: "staged"
layer { name: "data" type: "DummyData" top: "x" top: "t"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
    data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
layer { name: "extra" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "extra"
  include { stage: "more" } }
layer { name: "testonly" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "testonly"
  include { phase: TEST } }
"""


def solver(text, tmp_path, **kw):
    param = parse_solver_text(text + f'\nsnapshot_prefix: "{tmp_path}/s"\nbase_lr: 0.1\n'
                              'lr_policy: "fixed"\nmax_iter: 2\nrandom_seed: 1')
    return Solver(param, SolverOptions(progress=False, **kw))


def test_generic_net_gives_train_and_test_nets_with_stages(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    s = solver(f'net: "{tmp_path}/net.prototxt"\ntest_iter: 1\ntest_iter: 2\ntest_interval: 1\n'
               'train_state { stage: "more" }\ntest_state { }\ntest_state { stage: "more" }', tmp_path)
    # net outputs in Caffe's order: sorted by name (Net::Init's std::set)
    assert s.net.output_names == ["extra", "loss"]                # TRAIN + stage "more"
    assert [n.output_names for n in s.test_nets] == [["loss", "testonly"],
                                                      ["extra", "loss", "testonly"]]
    train_w = s.net.learnable_params()[0][1]
    for test_net in s.test_nets:                                   # ShareTrainedLayersWith
        assert test_net.layers["ip"].blobs[0] is train_w
    s.solve()
    log = (tmp_path / "s.log").read_text()
    assert "Testing net (#1)" in log and "Test net output #2: testonly" in log


def test_train_net_and_test_net_files(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    s = solver(f'train_net: "{tmp_path}/net.prototxt"\ntest_net: "{tmp_path}/net.prototxt"\n'
               'test_iter: 1\ntest_interval: 1', tmp_path)
    assert s.net.output_names == ["loss"] and len(s.test_nets) == 1
    s.solve()
    with torch.no_grad():
        a = s.net(next(iter(s.net.sources[0])))["y"]
        b = s.test_nets[0](next(iter(s.net.sources[0])))["y"]
    assert a.shape == b.shape


@pytest.mark.parametrize("text, message", [
    (f"net_param {{ {NET} }}\ntest_iter: 1", "test_interval must be > 0"),
    (f"train_net_param {{ {NET} }}\ntest_iter: 1\ntest_interval: 1",
     "test_iter must be specified for each test network"),
    (f"net_param {{ {NET} }}\ntrain_net_param {{ {NET} }}", "exactly one train net"),
    (f"net_param {{ {NET} }}\naverage_loss: 0", "average_loss should be >= 1"),
    (f"net_param {{ {NET} }}\ntest_iter: 1\ntest_interval: 2\ntest_state {{}}\ntest_state {{}}",
     "test_state must be unspecified or specified once per test net"),
])
def test_caffe_checks_name_the_field(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        solver(text, tmp_path)
