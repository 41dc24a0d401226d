"""Deep supervision's conventions (runner/deep_supervision.py) agree with what the generator
renders: every layer of branch j and nothing else is recognised as branch j, the solver
finds exactly the branches' losses, and a net's name parses back into its config."""
import pytest

from generator.architectures import NetConfig, build
from generator.render import parse, render
from runner import Net
from runner.deep_supervision import (aux_branch, aux_loss_tops, model_name, parse_model_name,
                                     vanishes, without_aux)
from runner.proto import parse_net_text


def _train_val(config: NetConfig):
    net = build(config)
    return parse("train_val.prototxt", render(net)["train_val.prototxt"], net.name)


def _with_input(net):
    """`net` with its Data layers replaced by one Input layer (no LMDB needed)."""
    text = 'layer { name: "data" type: "Input" top: "data" top: "label" input_param { ' \
           'shape { dim: 2 dim: 1 dim: 28 dim: 28 } shape { dim: 2 } } }'
    out = parse_net_text(text, "input")
    out.name = net.name
    out.layer.extend(lp for lp in net.layer if lp.type != "Data")
    return out


def test_branch_layers_and_losses_are_recognised_and_only_they():
    config = NetConfig(dataset="fashion-mnist", variant="cnds", depth=8, branches=(2, 5), width=0.125)
    net = _train_val(config)
    branches = {lp.name: aux_branch(lp.name) for lp in net.layer}
    assert {b for b in branches.values() if b is not None} == {1, 2}
    trunk_tops = {t for lp in net.layer if branches[lp.name] is None for t in lp.top}
    for lp in net.layer:
        j = branches[lp.name]
        if j is None:      # the trunk never reads a branch blob
            assert not [b for b in lp.bottom if aux_branch(b) is not None], lp.name
        else:              # a branch layer reads trunk blobs or blobs of its own branch
            assert all(b in trunk_tops or aux_branch(b) == j for b in lp.bottom), lp.name
            assert all(aux_branch(t) == j for t in lp.top), lp.name
    assert aux_loss_tops(Net(_with_input(net), phase="TRAIN").loss_weights) == ["loss_ds1", "loss_ds2"]
    cnn = _train_val(NetConfig(dataset="fashion-mnist", variant="cnn", depth=8, width=0.125))
    assert [lp.name for lp in without_aux(net).layer] == [lp.name for lp in cnn.layer]


@pytest.mark.parametrize("dataset,variant,depth", [("imagenet", "cnds", 8), ("places205", "cnn", 13),
                                                   ("fashion-mnist", "cnds", 19)])
def test_model_name_round_trips(dataset, variant, depth):
    name = NetConfig(dataset=dataset, variant=variant, depth=depth).name
    assert name == model_name(dataset, variant, depth) == f"{dataset}-{variant}{depth}"
    assert parse_model_name(name) == (dataset, variant, depth)


@pytest.mark.parametrize("name", ["fashion-mnist-cnds", "imagenet-resnet8", "cnds8", "imagenet_cnds8"])
def test_other_names_are_not_generated_ones(name):
    assert parse_model_name(name) is None


def test_vanishing_is_strictly_below_the_threshold():
    assert vanishes(9.9e-8) and not vanishes(1e-7) and not vanishes(2e-7)
    assert vanishes(0.5, threshold=1.0) and not vanishes(1.0, threshold=1.0)
