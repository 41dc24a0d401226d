"""Text prototxt: round trips are exact, and legacy formats upgrade to the hand-written
current-format equivalents (V1 `layers`, input fields, V0 `layer` with padding layers)."""
from pathlib import Path

import pytest

from runner.proto import caffe_pb2, parse_net_text, read_net, read_solver, read_text, to_text, write_text

DATA = Path(__file__).parent / "data" / "proto"
NETS = ["caffenet_train_val", "caffenet_train_val_v1", "googlenet_deploy",
        "googlenet_deploy_v1", "lenet_v0", "lenet_v0_upgraded", "stages_levels"]


@pytest.mark.parametrize("name", NETS)
def test_text_proto_text_proto_is_exact(name, tmp_path):
    net = read_net(DATA / f"{name}.prototxt")
    text = to_text(net)
    again = parse_net_text(text)
    assert again == net
    assert to_text(again) == text
    write_text(again, tmp_path / "out.prototxt")
    assert (tmp_path / "out.prototxt").read_text() == text
    assert read_net(tmp_path / "out.prototxt") == net


@pytest.mark.parametrize("legacy, current", [
    ("caffenet_train_val_v1", "caffenet_train_val"),
    ("googlenet_deploy_v1", "googlenet_deploy"),
    ("lenet_v0", "lenet_v0_upgraded"),
])
def test_legacy_net_upgrades_to_its_current_equivalent(legacy, current):
    raw = read_net(DATA / f"{legacy}.prototxt", upgrade=False)
    assert len(raw.layers) > 0 and len(raw.layer) == 0
    assert read_net(DATA / f"{legacy}.prototxt") == read_net(DATA / f"{current}.prototxt")


def test_v1_upgrade_details_of_caffenet():
    net = read_net(DATA / "caffenet_train_val_v1.prototxt")
    conv1 = next(layer for layer in net.layer if layer.name == "conv1")
    assert conv1.type == "Convolution"
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 0)]
    train_data = net.layer[0]
    assert train_data.transform_param.crop_size == 227 and train_data.transform_param.mirror
    assert not train_data.data_param.HasField("crop_size")
    assert not train_data.data_param.HasField("mean_file")
    assert train_data.include[0].phase == caffe_pb2.TRAIN
    assert [layer.type for layer in net.layer[-2:]] == ["Accuracy", "SoftmaxWithLoss"]


def test_input_dim_fields_become_a_leading_input_layer():
    net = read_net(DATA / "googlenet_deploy_v1.prototxt")
    first = net.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["data"])
    assert list(first.input_param.shape[0].dim) == [10, 3, 224, 224]
    assert not net.input and not net.input_dim and not net.input_shape


def test_input_shape_fields_on_a_current_format_net():
    """`input` + `input_shape` with `layer` entries (a common deploy style) upgrades too."""
    current = read_net(DATA / "googlenet_deploy.prototxt")
    legacy = caffe_pb2.NetParameter()
    legacy.CopyFrom(current)
    del legacy.layer[0]
    legacy.input.append("data")
    legacy.input_shape.add(dim=[10, 3, 224, 224])
    assert parse_net_text(to_text(legacy)) == current


def test_solver_type_enum_upgrades_to_type_string():
    raw = read_text(DATA / "solver_v1.prototxt", caffe_pb2.SolverParameter)
    assert raw.solver_type == caffe_pb2.SolverParameter.NESTEROV and not raw.HasField("type")
    upgraded = read_solver(DATA / "solver_v1.prototxt")
    assert upgraded.type == "Nesterov" and not upgraded.HasField("solver_type")
    assert upgraded == read_solver(DATA / "solver.prototxt")
    assert read_solver(DATA / "solver.prototxt").snapshot_prefix == \
        "models/bvlc_reference_caffenet/caffenet_train"
