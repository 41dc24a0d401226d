"""Caffe's upgrade rules beyond the sample nets: param names and share modes, BatchNorm
param specs, data-layer transformation fields, solver types, snapshot_prefix, the CLIs."""
import subprocess
import sys
from pathlib import Path

import pytest

from runner.proto import (ProtoError, caffe_pb2, loss_normalization, parse_net_text,
                          parse_solver_text, read_net, read_solver)
from runner.proto.upgrade import V1_TYPE_NAMES, SOLVER_TYPE_NAMES

DATA = Path(__file__).parent / "data" / "proto"
REPO = Path(__file__).resolve().parents[1]


def test_every_v1_enum_has_a_type_name():
    assert set(V1_TYPE_NAMES) == set(caffe_pb2.V1LayerParameter.LayerType.values())
    assert set(SOLVER_TYPE_NAMES) == set(caffe_pb2.SolverParameter.SolverType.values())


def test_v1_param_names_and_share_modes_become_param_specs():
    net = parse_net_text("""
        layers { name: "ip" type: INNER_PRODUCT bottom: "x" top: "y"
                 param: "w_shared" param: "b_shared" blob_share_mode: PERMISSIVE
                 blobs_lr: 0 loss_weight: 0.5 exclude { stage: "deploy" } }""")
    layer = net.layer[0]
    assert [p.name for p in layer.param] == ["w_shared", "b_shared"]
    assert layer.param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert not layer.param[1].HasField("share_mode")
    assert layer.param[0].lr_mult == 0 and not layer.param[1].HasField("lr_mult")
    assert list(layer.loss_weight) == [0.5] and layer.exclude[0].stage == ["deploy"]


def test_data_upgrade_marks_transform_param_on_every_data_layer_as_caffe_does():
    net = parse_net_text("""
        layers { name: "a" type: DATA top: "a" data_param { source: "x" scale: 0.5 } }
        layers { name: "b" type: IMAGE_DATA top: "b" }""")
    assert net.layer[0].transform_param.scale == 0.5
    assert not net.layer[0].data_param.HasField("scale")
    assert net.layer[1].HasField("transform_param") and net.layer[1].HasField("image_data_param")


def test_current_format_data_param_transform_fields_are_left_alone_with_a_warning():
    with pytest.warns(UserWarning, match="data_param.crop_size, which Caffe ignores"):
        net = parse_net_text('layer { name: "d" type: "Data" top: "d" data_param { crop_size: 3 } }')
    assert net.layer[0].data_param.crop_size == 3 and not net.layer[0].HasField("transform_param")


def test_batch_norm_with_three_param_specs_gets_zero_multipliers():
    net = parse_net_text("""
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
                param { lr_mult: 1 name: "m" } param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 2 } }
        layer { name: "bn2" type: "BatchNorm" bottom: "x" top: "x" param { lr_mult: 1 } }""")
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [(0, 0)] * 3
    assert net.layer[0].param[0].name == "m"
    assert [p.lr_mult for p in net.layer[1].param] == [1]


def test_mixing_layers_and_layer_is_refused():
    with pytest.raises(ProtoError, match="mixes legacy 'layers' with current 'layer'"):
        parse_net_text('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }', "mixed.prototxt")


def test_input_dim_count_must_match_inputs():
    with pytest.raises(ProtoError, match=r"net.prototxt: 2 'input' blobs need 8 'input_dim' values"):
        parse_net_text('input: "a" input: "b" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4',
                       "net.prototxt")


def test_v0_unknown_type_and_misplaced_parameter_are_errors():
    with pytest.raises(ProtoError, match="V0 layer 'x' has unknown type 'convolution'"):
        parse_net_text('layers { layer { name: "x" type: "convolution" } }')
    with pytest.raises(ProtoError, match="'relu' has parameter 'num_output'"):
        parse_net_text('layers { layer { name: "x" type: "relu" num_output: 3 } }')


def test_solver_with_both_solver_type_and_type_is_refused():
    with pytest.raises(ProtoError, match="s.prototxt: old solver_type field .* cannot both"):
        parse_solver_text('type: "SGD" solver_type: ADAM', "s.prototxt")


def test_snapshot_prefix_defaults_like_caffe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snaps").mkdir()
    Path("solver.prototxt").write_text('base_lr: 0.1')
    assert read_solver("solver.prototxt").snapshot_prefix == "solver"
    Path("solver.prototxt").write_text('snapshot_prefix: "snaps"')
    assert read_solver("solver.prototxt").snapshot_prefix == "snaps/solver"


@pytest.mark.parametrize("fields, default, expected", [
    ("", caffe_pb2.LossParameter.VALID, caffe_pb2.LossParameter.VALID),
    ("normalize: false", caffe_pb2.LossParameter.VALID, caffe_pb2.LossParameter.BATCH_SIZE),
    ("normalize: true", caffe_pb2.LossParameter.BATCH_SIZE, caffe_pb2.LossParameter.VALID),
    ("normalize: false normalization: FULL", caffe_pb2.LossParameter.VALID, caffe_pb2.LossParameter.FULL),
    ("", caffe_pb2.LossParameter.BATCH_SIZE, caffe_pb2.LossParameter.BATCH_SIZE),
])
def test_legacy_normalize_flag(fields, default, expected):
    net = parse_net_text(f'layer {{ name: "l" type: "SoftmaxWithLoss" loss_param {{ {fields} }} }}')
    assert net.layer[0].loss_param.HasField("normalize") == ("normalize" in fields)  # kept as written
    assert loss_normalization(net.layer[0].loss_param, default) == expected


def _cli(tool, *args):
    return subprocess.run([sys.executable, "-m", f"runner.tools.{tool}", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True)


def test_upgrade_net_cli_writes_the_current_format(tmp_path):
    out = tmp_path / "upgraded.prototxt"
    done = _cli("upgrade_net_proto_text", DATA / "googlenet_deploy_v1.prototxt", out)
    assert done.returncode == 0, done.stderr
    assert "V1 'layers' -> 'layer'" in done.stderr and "input fields -> Input layer" in done.stderr
    assert "layers {" not in out.read_text() and "input_dim" not in out.read_text()
    assert read_net(out, upgrade=False) == read_net(DATA / "googlenet_deploy.prototxt")


def test_upgrade_solver_cli(tmp_path):
    out = tmp_path / "solver.prototxt"
    done = _cli("upgrade_solver_proto_text", DATA / "solver_v1.prototxt", out)
    assert done.returncode == 0, done.stderr
    assert 'type: "Nesterov"' in out.read_text() and "solver_type" not in out.read_text()


def test_upgrade_cli_bad_input_exits_non_zero_with_one_clear_error(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layers {\n  name: "x"\n  type: CONVOLUTON\n}\n')
    done = _cli("upgrade_net_proto_text", bad, tmp_path / "out.prototxt")
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {bad}:3:9: ")
    assert "CONVOLUTON" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.prototxt").exists()
    missing = _cli("upgrade_solver_proto_text", tmp_path / "nope.prototxt", tmp_path / "o")
    assert missing.returncode == 2 and "nope.prototxt: cannot read" in missing.stderr
