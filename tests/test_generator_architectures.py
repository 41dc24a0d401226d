"""The layout rules: depths 6..19, branch taps, the 28x28 adaptation, WIDTH, initialisation
and the solver schedules, checked on the rendered prototxt."""
import pytest

from generator.architectures import NetConfig, build, default_branches, stage_sizes
from generator.render import parse, render
from generator.summary import shape_table
from runner.proto import caffe_pb2


def _nets(config):
    texts = render(build(config))
    return (parse("train_val.prototxt", texts["train_val.prototxt"]),
            parse("deploy.prototxt", texts["deploy.prototxt"]),
            parse("solver.prototxt", texts["solver.prototxt"]))


def _convs(net):
    return [lp for lp in net.layer if lp.type == "Convolution"]


@pytest.mark.parametrize("depth,sizes", [(6, [1, 1, 1, 2]), (8, [1, 2, 2, 2]), (9, [2, 2, 2, 2]),
                                         (13, [3, 3, 3, 3]), (16, [3, 4, 4, 4]), (19, [4, 4, 5, 5])])
def test_stage_rule_spreads_depth_minus_one_convs_later_stages_first(depth, sizes):
    assert stage_sizes(depth) == sizes


@pytest.mark.parametrize("depth", [6, 7, 10, 13, 19])
def test_every_depth_renders_that_many_convs_in_five_pooled_stages(depth):
    _, deploy, _ = _nets(NetConfig(variant="cnn", depth=depth))
    convs = _convs(deploy)
    assert len(convs) == depth
    assert convs[0].name == "conv1" and convs[0].convolution_param.kernel_size == [7]
    assert all(c.convolution_param.kernel_size == [3] for c in convs[1:])
    per_stage = [sum(c.name.startswith(f"conv{s}") for c in convs) for s in range(2, 6)]
    assert per_stage == stage_sizes(depth)
    pools = [lp.name for lp in deploy.layer if lp.type == "Pooling"]
    assert pools == ["pool1", "pool2", "pool3", "pool4", "pool5"]
    rows = {r.name: r for r in shape_table(deploy, "TEST")}
    assert rows["pool5"].tops == ((1, 512, 4, 4),) and rows["fc8"].tops == ((1, 1000),)


def test_eight_layer_names_match_the_released_net():
    _, deploy, _ = _nets(NetConfig(variant="cnn", depth=8))
    assert [c.name for c in _convs(deploy)] == [
        "conv1", "conv2", "conv3_1", "conv3_2", "conv4_1", "conv4_2", "conv5_1", "conv5_2"]
    conv1 = _convs(deploy)[0].convolution_param
    assert (conv1.num_output, conv1.stride, conv1.pad) == (64, [2], [1])


@pytest.mark.parametrize("depth,taps", [(5, (3,)), (6, (4,)), (8, (4,)), (9, (4, 7)), (13, (4, 7, 10)),
                                        (19, (4, 7, 10, 13, 16))])
def test_default_branch_taps(depth, taps):
    assert default_branches(depth) == taps


@pytest.mark.parametrize("depth", [5, 8, 13, 17])
def test_branches_tap_the_kth_conv_after_its_relu(depth):
    train_val, _, _ = _nets(NetConfig(depth=depth))
    layers = list(train_val.layer)
    convs = [lp.name for lp in layers if lp.type == "Convolution" and "_ds" not in lp.name]
    for j, k in enumerate(default_branches(depth), start=1):
        at = next(i for i, lp in enumerate(layers) if lp.name == f"pool_ds{j}")
        assert list(layers[at].bottom) == [convs[k - 1]]
        relu = next(i for i, lp in enumerate(layers) if lp.type == "ReLU" and list(lp.bottom) == [convs[k - 1]])
        assert relu < at
        conv_ds = layers[at + 1]
        assert conv_ds.name == f"conv_ds{j}" and conv_ds.convolution_param.kernel_size == [1]
        assert layers[at + 2].type == "InnerProduct"  # no ReLU on the 1x1 conv


def test_cnn5_is_caffenet_style():
    _, deploy, _ = _nets(NetConfig(variant="cnn", depth=5))
    types = [lp.type for lp in deploy.layer]
    assert types[:6] == ["Input", "Convolution", "ReLU", "LRN", "Pooling", "Convolution"]
    convs = {c.name: c.convolution_param for c in _convs(deploy)}
    assert [(p.num_output, p.kernel_size[0], p.group) for p in convs.values()] == [
        (96, 11, 1), (256, 5, 2), (384, 3, 1), (384, 3, 2), (256, 3, 2)]
    rows = {r.name: r for r in shape_table(deploy, "TEST")}
    assert rows["conv1"].tops == ((1, 96, 55, 55),) and rows["pool5"].tops == ((1, 256, 6, 6),)


@pytest.mark.parametrize("depth", [5, 8, 13, 19])
def test_fashion_mnist_adaptation(depth):
    train_val, deploy, solver = _nets(NetConfig(dataset="fashion-mnist", depth=depth, variant="cnds" if depth > 5 else "cnn"))
    conv1 = _convs(deploy)[0].convolution_param
    assert (conv1.kernel_size, conv1.stride, conv1.pad) == ([3], [], [1])
    assert conv1.num_output == (24 if depth == 5 else 16)  # 96 or 64 at WIDTH 0.25
    assert len(_convs(deploy)) == depth
    data = train_val.layer[0]
    assert data.transform_param.scale == pytest.approx(1 / 256) and not data.transform_param.crop_size
    rows = shape_table(train_val, "TRAIN", {"data": (64, 1, 28, 28), "label": (64,)})
    assert all(min(t[2:], default=1) >= 1 for r in rows for t in r.tops)
    assert solver.solver_mode == caffe_pb2.SolverParameter.CPU
    for lp in train_val.layer:
        if lp.name.startswith("pool_ds"):
            assert lp.pooling_param.kernel_size <= 3


def test_width_scales_channels_to_multiples_of_eight_but_not_classes():
    _, deploy, _ = _nets(NetConfig(variant="cnn", depth=8, width=0.3))
    outs = [c.convolution_param.num_output for c in _convs(deploy)]
    assert outs == [16, 40, 80, 80, 152, 152, 152, 152]  # round(c * 0.3 / 8) * 8
    fcs = [lp.inner_product_param.num_output for lp in deploy.layer if lp.type == "InnerProduct"]
    assert fcs == [1232, 1232, 1000]


def test_released_and_vanilla_initialisation():
    released, _, _ = _nets(NetConfig(depth=8))
    biases = {lp.name: (lp.convolution_param if lp.type == "Convolution" else lp.inner_product_param).bias_filler.value
              for lp in released.layer if lp.type in ("Convolution", "InnerProduct")}
    assert biases["conv1"] == 0.5 and biases["conv2"] == pytest.approx(0.1) and biases["conv5_2"] == pytest.approx(0.1)
    assert biases["fc6"] == 1 and biases["fc7"] == 1 and biases["fc8"] == 0
    vanilla, _, _ = _nets(NetConfig(depth=8, init="vanilla"))
    for lp in vanilla.layer:
        if lp.type in ("Convolution", "InnerProduct"):
            p = lp.convolution_param if lp.type == "Convolution" else lp.inner_product_param
            assert p.bias_filler.value == 0 and p.weight_filler.std == pytest.approx(0.01)
            assert [(s.lr_mult, s.decay_mult) for s in lp.param] == [(1, 1), (2, 0)]


def _fillers(net):
    for lp in net.layer:
        if lp.type in ("Convolution", "InnerProduct"):
            p = lp.convolution_param if lp.type == "Convolution" else lp.inner_product_param
            yield lp.name, p.weight_filler, p.bias_filler


def test_fashion_mnist_defaults_to_msra_and_keeps_the_paper_init_as_an_option():
    msra, _, _ = _nets(NetConfig(dataset="fashion-mnist", depth=8))
    fillers = list(_fillers(msra))
    assert any(name.endswith("_ds1") for name, _, _ in fillers)
    for name, weight, bias in fillers:
        assert (weight.type, bias.value) == ("msra", 0), name
    paper, _, _ = _nets(NetConfig(dataset="fashion-mnist", depth=8, init="released"))
    for name, weight, _ in _fillers(paper):
        assert weight.type == "gaussian" and weight.std == pytest.approx(0.01), name
    imagenet, _, _ = _nets(NetConfig(depth=8))
    assert {w.type for _, w, _ in _fillers(imagenet)} == {"gaussian"}


@pytest.mark.parametrize("dataset,variant,depth,max_iter", [
    ("imagenet", "cnn", 8, 800_730),     # 80 epochs * 1,281,167 / 128, rounded up
    ("imagenet", "cnds", 8, 650_593),    # 65 epochs
    ("imagenet", "cnds", 13, 670_611),   # 67 epochs
    ("places205", "cnn", 8, 240_000),
    ("places205", "cnds", 8, 190_000),
])
def test_paper_training_lengths(dataset, variant, depth, max_iter):
    _, _, solver = _nets(NetConfig(dataset=dataset, variant=variant, depth=depth))
    assert solver.max_iter == max_iter
    assert (solver.base_lr, solver.momentum, solver.lr_policy) == (pytest.approx(0.01), pytest.approx(0.9), "step")
    assert solver.weight_decay == pytest.approx(0.0005) and solver.gamma == pytest.approx(0.1)


@pytest.mark.parametrize("dataset,test_iter", [("imagenet", 1000), ("places205", 205), ("fashion-mnist", 100)])
def test_test_iter_covers_the_validation_set(dataset, test_iter):
    train_val, _, solver = _nets(NetConfig(dataset=dataset))
    test_batch = train_val.layer[1].data_param.batch_size
    assert solver.test_iter == [test_iter] and test_iter * test_batch >= {
        "imagenet": 50_000, "places205": 20_500, "fashion-mnist": 10_000}[dataset]
