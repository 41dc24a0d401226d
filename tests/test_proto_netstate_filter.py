"""NetState filtering (Caffe's FilterNet/StateMeetsRule) and the wiring checks."""
import pytest

from runner.proto import ProtoError, caffe_pb2, check_bottoms, filter_net, parse_net_text, read_net
from test_proto_text_roundtrip import DATA

ALWAYS = ["data", "always"]


@pytest.mark.parametrize("phase, stages, level, expected", [
    ("TRAIN", (), 0, ALWAYS + ["train_only", "not_test", "not_stage_b", "level_max_1", "exclude_level_2"]),
    ("TEST", (), 0, ALWAYS + ["not_stage_b", "level_max_1", "exclude_level_2"]),
    ("TEST", ("a",), 0, ALWAYS + ["stage_a", "stage_a_or_b", "not_stage_b", "level_max_1", "exclude_level_2"]),
    ("TEST", ("a", "b"), 0, ALWAYS + ["stage_a", "stage_a_and_b", "stage_a_or_b", "level_max_1",
                                      "exclude_level_2"]),
    ("TEST", ("b",), 1, ALWAYS + ["stage_a_or_b", "level_min_1", "level_max_1", "exclude_level_2"]),
    ("TRAIN", (), 2, ALWAYS + ["train_only", "not_test", "not_stage_b", "level_min_1"]),
    ("TEST", ("deploy",), 0, ALWAYS + ["not_stage_b", "level_max_1", "exclude_level_2", "test_stage_deploy"]),
    ("TRAIN", ("deploy",), 0, ALWAYS + ["train_only", "not_test", "not_stage_b", "level_max_1",
                                        "exclude_level_2"]),
    (caffe_pb2.TEST, (), -1, ALWAYS + ["not_stage_b", "level_max_1", "exclude_level_2"]),
])
def test_filter_net_follows_caffe_rules(phase, stages, level, expected):
    net = read_net(DATA / "stages_levels.prototxt")
    filtered = filter_net(net, phase, stages, level)
    assert [layer.name for layer in filtered.layer] == expected
    assert filtered.state.phase == (caffe_pb2.TRAIN if phase == "TRAIN" else caffe_pb2.TEST)
    assert list(filtered.state.stage) == list(stages) and filtered.state.level == level
    check_bottoms(filtered)
    assert len(net.layer) == 12  # the input is not modified


def test_the_nets_own_stages_are_kept():
    net = read_net(DATA / "stages_levels.prototxt")
    net.state.stage.append("a")
    names = [layer.name for layer in filter_net(net, "test", ("b",)).layer]
    assert "stage_a_and_b" in names and "not_stage_b" not in names


def test_caffenet_phases():
    net = read_net(DATA / "caffenet_train_val.prototxt")
    train, test = filter_net(net, "TRAIN"), filter_net(net, "TEST")
    assert [layer.name for layer in train.layer].count("data") == 1 and len(train.layer) == 24
    assert train.layer[0].data_param.batch_size == 256
    assert test.layer[0].data_param.batch_size == 50 and test.layer[-2].name == "accuracy"
    check_bottoms(train, "train_val.prototxt")
    check_bottoms(test, "train_val.prototxt")
    with pytest.raises(ProtoError, match="train_val.prototxt: layer 'data' \\(Data\\): top 'data' is "
                                         "already produced by layer 'data'"):
        check_bottoms(net, "train_val.prototxt")


def test_include_and_exclude_together_is_an_error():
    net = parse_net_text('layer { name: "both" type: "ReLU" include { phase: TRAIN } exclude { stage: "x" } }')
    with pytest.raises(ProtoError, match="layer 'both' specifies both include and exclude"):
        filter_net(net, "TRAIN")


def test_bad_phase_is_an_error():
    with pytest.raises(ProtoError, match="phase must be TRAIN or TEST, got 'VAL'"):
        filter_net(caffe_pb2.NetParameter(), "VAL")


def test_missing_bottom_names_file_layer_and_blob():
    net = parse_net_text("""
        layer { name: "input" type: "Input" top: "data" }
        layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" }
        layer { name: "fc" type: "InnerProduct" bottom: "conv1" bottom: "pool1" top: "fc" }""")
    with pytest.raises(ProtoError) as err:
        check_bottoms(net, "models/x/deploy.prototxt")
    assert str(err.value) == ("models/x/deploy.prototxt: layer 'fc' (InnerProduct): bottom 'pool1' "
                              "(bottom 1) is not produced by any earlier layer")


def test_bottom_must_come_from_an_earlier_layer():
    net = parse_net_text("""
        layer { name: "relu" type: "ReLU" bottom: "x" top: "y" }
        layer { name: "src" type: "Input" top: "x" }""")
    with pytest.raises(ProtoError, match="layer 'relu' \\(ReLU\\): bottom 'x'"):
        check_bottoms(net)


def test_in_place_tops_are_fine_but_two_producers_are_not():
    ok = parse_net_text("""
        input: "data"
        layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }""", upgrade=False)
    check_bottoms(ok)
    clash = parse_net_text("""
        layer { name: "a" type: "Input" top: "x" }
        layer { name: "b" type: "Input" top: "x" }""")
    with pytest.raises(ProtoError, match="layer 'b' \\(Input\\): top 'x' is already produced by layer 'a'"):
        check_bottoms(clash)
