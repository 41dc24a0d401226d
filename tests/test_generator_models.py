"""The committed model folders: up to date with the templates, round-trip through the
schema, and follow the supervision-branch naming convention."""
import re
from pathlib import Path

import pytest
from google.protobuf import text_format

from generator.architectures import build, catalogue
from generator.render import FILES, render
from runner.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent
NETS = {c.name: build(c) for c in catalogue()}
DS = re.compile(r"_ds(\d+)$")


def _read(name, filename):
    return (ROOT / "models" / name / filename).read_text()


def _net(name, filename):
    return text_format.Parse(_read(name, filename), caffe_pb2.NetParameter())


def test_catalogue_is_the_paper_nets_and_fashion_adaptations():
    expected = {f"{d}-{v}" for d in ("imagenet", "places205", "fashion-mnist")
                for v in ("cnn5", "cnn8", "cnds8", "cnn13", "cnds13")}
    assert set(NETS) == expected
    committed = {p.name for p in (ROOT / "models").iterdir() if p.is_dir()}
    assert expected <= committed


@pytest.mark.parametrize("name", sorted(NETS))
def test_committed_files_equal_todays_rendering(name):
    rendered = render(NETS[name])
    for filename, text in rendered.items():
        assert _read(name, filename) == text, f"models/{name}/{filename} is stale: run make demo"


@pytest.mark.parametrize("name", sorted(NETS))
def test_text_proto_text_proto_round_trip(name):
    for filename in FILES:
        message_type = caffe_pb2.SolverParameter if filename == "solver.prototxt" else caffe_pb2.NetParameter
        first = text_format.Parse(_read(name, filename), message_type())
        text = text_format.MessageToString(first)
        second = text_format.Parse(text, message_type())
        assert second == first
        assert text_format.MessageToString(second) == text
        assert first.ListFields(), f"{filename} parsed empty"


@pytest.mark.parametrize("name", sorted(n for n in NETS if "cnds" in n))
def test_aux_layers_follow_naming_convention_and_are_absent_from_deploy(name):
    net = NETS[name]
    train_val, deploy = _net(name, "train_val.prototxt"), _net(name, "deploy.prototxt")
    main = {lp.name for lp in deploy.layer} | {"loss", "accuracy", "accuracy_top5"}
    aux = [lp for lp in train_val.layer if lp.name not in main]
    assert aux, "no supervision branch layers"
    branches = len(net.config.branches)
    for lp in aux:
        j = DS.search(lp.name)
        assert j and 1 <= int(j.group(1)) <= branches, lp.name
        produced = [t for i, t in enumerate(lp.top) if i >= len(lp.bottom) or lp.bottom[i] != t]
        assert all(t.endswith(j.group()) for t in produced), (lp.name, list(lp.top))
    for j in range(1, branches + 1):
        layers = {lp.name: lp for lp in aux if lp.name.endswith(f"_ds{j}")}
        assert {"pool_ds", "conv_ds", "fc1_ds", "fc2_ds", "fc3_ds", "loss_ds", "accuracy_ds"} <= {
            n[: -len(str(j))] for n in layers}
        loss = layers[f"loss_ds{j}"]
        assert loss.type == "SoftmaxWithLoss" and list(loss.top) == [f"loss_ds{j}"]
        assert list(loss.loss_weight) == [pytest.approx(0.3)]
        acc = layers[f"accuracy_ds{j}"]
        assert acc.type == "Accuracy" and [r.phase for r in acc.include] == [caffe_pb2.TEST]
        assert layers[f"pool_ds{j}"].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert not any(DS.search(n) for lp in deploy.layer for n in [lp.name, *lp.top])
    assert [lp.type for lp in deploy.layer if lp.type in ("Data", "SoftmaxWithLoss", "Accuracy")] == []


@pytest.mark.parametrize("name", sorted(NETS))
def test_main_loss_and_accuracies_and_deploy_ends(name):
    train_val, deploy = _net(name, "train_val.prototxt"), _net(name, "deploy.prototxt")
    by_name = {lp.name: lp for lp in train_val.layer}
    assert by_name["loss"].type == "SoftmaxWithLoss" and not by_name["loss"].loss_weight
    assert by_name["accuracy"].accuracy_param.top_k == 1
    assert by_name["accuracy_top5"].accuracy_param.top_k == 5
    data = [lp for lp in train_val.layer if lp.type == "Data"]
    assert [r.phase for lp in data for r in lp.include] == [caffe_pb2.TRAIN, caffe_pb2.TEST]
    assert all(lp.data_param.backend == caffe_pb2.DataParameter.LMDB for lp in data)
    assert deploy.layer[0].type == "Input" and deploy.layer[-1].type == "Softmax"
    assert list(deploy.layer[-1].top) == ["prob"]
