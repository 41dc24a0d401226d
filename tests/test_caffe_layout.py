"""Caffe's Net::Init bookkeeping: InsertSplits' layers and names (util/insert_splits.cpp),
and which layers and bottoms Backward visits (net.cpp), on hand-worked nets."""
from runner.caffe_layout import LayerFacts, insert_splits, plan
from runner.proto import parse_net_text


def split_of(text):
    return insert_splits(parse_net_text(text))


def test_a_top_used_twice_feeds_a_split_named_as_caffe_names_it():
    out = split_of("""
layer { name: "in" type: "Input" top: "a" top: "b" }
layer { name: "l1" type: "ReLU" bottom: "b" top: "c" }
layer { name: "l2" type: "ReLU" bottom: "b" top: "d" }
layer { name: "l3" type: "Eltwise" bottom: "b" bottom: "a" top: "e" }""")
    assert [l.name for l in out.layer] == ["in", "b_in_1_split", "l1", "l2", "l3"]
    split = out.layer[1]
    assert split.type == "Split" and list(split.bottom) == ["b"]
    assert list(split.top) == ["b_in_1_split_0", "b_in_1_split_1", "b_in_1_split_2"]
    assert [list(l.bottom) for l in out.layer[2:]] == [["b_in_1_split_0"], ["b_in_1_split_1"],
                                                       ["b_in_1_split_2", "a"]]


def test_an_in_place_chain_splits_its_last_top_and_a_loss_use_counts_as_a_bottom():
    out = split_of("""
layer { name: "in" type: "Input" top: "x" }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" loss_weight: 0.5 }
layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
layer { name: "p" type: "Power" bottom: "y" top: "z" }""")
    # ip's y is used by relu and as a loss: a split whose first top carries the weight
    assert [l.name for l in out.layer] == ["in", "ip", "y_ip_0_split", "relu", "p"]
    assert list(out.layer[1].loss_weight) == []
    assert list(out.layer[2].loss_weight) == [0.5, 0.0]
    assert list(out.layer[3].bottom) == ["y_ip_0_split_1"]   # split 0 went to the loss
    assert list(out.layer[3].top) == ["y"]                  # the in-place top keeps its name
    assert list(out.layer[4].bottom) == ["y"]               # used once after relu: no split


def facts(*entries):
    return [LayerFacts(learns, weights, blocked) for learns, weights, blocked in entries]


NET = """{force}
layer {{ name: "in" type: "Input" top: "x" top: "label" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "x" top: "fc" }}
layer {{ name: "side" type: "InnerProduct" bottom: "x" top: "side" {side} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}"""


def layout(force="", side="", side_weight=0):
    param = insert_splits(parse_net_text(NET.format(force=force, side=side)))
    return param, plan(param, facts((False, [0, 0], ()), (False, [0, 0], ()), (True, [0], ()),
                                    (True, [side_weight], ()), (False, [1], (1,))))


def test_backward_skips_layers_no_loss_depends_on():
    param, out = layout()
    assert [l.name for l in param.layer] == ["in", "x_in_0_split", "fc", "side", "loss"]
    assert out.layer_needs_backward == [False, False, True, False, True]
    assert out.bottom_needs_backward[4] == [True, False]   # label: no diff
    assert out.bottom_needs_backward[2] == [False]          # x needs none without force_backward
    assert out.output_names == ["loss", "side"]
    assert out.input_names == ["x", "label"]
    assert out.blob_names == ["x", "label", "x_in_0_split_0", "x_in_0_split_1", "fc", "side", "loss"]


def test_force_backward_reaches_every_bottom_a_layer_allows():
    _, out = layout(force="force_backward: true")
    assert all(out.layer_needs_backward)
    assert out.bottom_needs_backward[4] == [True, False]    # the loss still refuses its labels
    assert out.bottom_needs_backward[2] == [True] and out.bottom_needs_backward[1] == [True]


def test_propagate_down_false_stops_at_that_bottom():
    _, out = layout(side="propagate_down: false", side_weight=1)
    assert out.layer_needs_backward[3] is True              # learns, and is now under a loss
    assert out.bottom_needs_backward[3] == [False]
