"""Shape tables of the ImageNet 8-layer nets against shapes, counts and MACs worked out by hand."""
from generator.architectures import NetConfig, build
from generator.make import report
from generator.render import parse, render
from generator.summary import format_table, shape_table

# Caffe: conv out = floor((H + 2p - k)/s) + 1; pool out = ceil((H - k)/s) + 1.
# conv1 (227 + 2 - 7)/2 + 1 = 112; pool1 ceil(109/2) + 1 = 56; the 2/2 pools halve
# 56 -> 28 -> 14 -> 7, and pool5 ceil((7 - 2)/2) + 1 = 4 (floor rounding would give 3).
CNN8_DEPLOY = [
    ("data", (1, 3, 227, 227)),
    ("conv1", (1, 64, 112, 112)), ("relu1", (1, 64, 112, 112)), ("pool1", (1, 64, 56, 56)),
    ("conv2", (1, 128, 56, 56)), ("relu2", (1, 128, 56, 56)), ("pool2", (1, 128, 28, 28)),
    ("conv3_1", (1, 256, 28, 28)), ("relu3_1", (1, 256, 28, 28)),
    ("conv3_2", (1, 256, 28, 28)), ("relu3_2", (1, 256, 28, 28)), ("pool3", (1, 256, 14, 14)),
    ("conv4_1", (1, 512, 14, 14)), ("relu4_1", (1, 512, 14, 14)),
    ("conv4_2", (1, 512, 14, 14)), ("relu4_2", (1, 512, 14, 14)), ("pool4", (1, 512, 7, 7)),
    ("conv5_1", (1, 512, 7, 7)), ("relu5_1", (1, 512, 7, 7)),
    ("conv5_2", (1, 512, 7, 7)), ("relu5_2", (1, 512, 7, 7)), ("pool5", (1, 512, 4, 4)),
    ("fc6", (1, 4096)), ("relu6", (1, 4096)), ("drop6", (1, 4096)),
    ("fc7", (1, 4096)), ("relu7", (1, 4096)), ("drop7", (1, 4096)),
    ("fc8", (1, 1000)), ("prob", (1, 1000)),
]
CNN8_PARAMS = {  # weights + biases
    "conv1": 64 * 3 * 7 * 7 + 64, "conv2": 128 * 64 * 9 + 128,
    "conv3_1": 256 * 128 * 9 + 256, "conv3_2": 256 * 256 * 9 + 256,
    "conv4_1": 512 * 256 * 9 + 512, "conv4_2": 512 * 512 * 9 + 512,
    "conv5_1": 512 * 512 * 9 + 512, "conv5_2": 512 * 512 * 9 + 512,
    "fc6": 4096 * 512 * 4 * 4 + 4096, "fc7": 4096 * 4096 + 4096, "fc8": 1000 * 4096 + 1000,
}


def _deploy_rows(variant):
    net = build(NetConfig(dataset="imagenet", variant=variant, depth=8))
    return shape_table(parse("deploy.prototxt", render(net)["deploy.prototxt"]), "TEST")


def test_imagenet_cnn8_deploy_shapes_match_hand_computed():
    rows = _deploy_rows("cnn")
    assert [(r.name, r.tops[0]) for r in rows] == CNN8_DEPLOY
    by_name = {r.name: r for r in rows}
    assert by_name["fc6"].blobs == ((4096, 512 * 4 * 4), (4096,))
    assert {r.name: r.params for r in rows if r.params} == CNN8_PARAMS
    assert by_name["conv1"].macs == 64 * 112 * 112 * (3 * 7 * 7)
    assert by_name["conv3_2"].macs == 256 * 28 * 28 * (256 * 3 * 3)
    assert by_name["fc6"].macs == 4096 * 8192
    assert all(r.macs == 0 for r in rows if r.type in ("ReLU", "Pooling", "Dropout", "Softmax"))


def test_cnds8_deploy_equals_cnn8_deploy_table():
    assert _deploy_rows("cnds") == _deploy_rows("cnn")


def test_imagenet_cnds8_train_branch_shapes_match_hand_computed():
    net = build(NetConfig(dataset="imagenet", variant="cnds", depth=8))
    train_val = parse("train_val.prototxt", render(net)["train_val.prototxt"])
    rows = {r.name: r for r in shape_table(train_val, "TRAIN", {"data": (128, 3, 227, 227), "label": (128,)})}
    # AVE pool 5/2 on conv3_2's 28x28: ceil((28 - 5)/2) + 1 = 13.
    assert rows["pool_ds1"].tops == ((128, 256, 13, 13),)
    assert rows["conv_ds1"].tops == ((128, 64, 13, 13),)
    assert rows["conv_ds1"].blobs == ((64, 256, 1, 1), (64,))
    assert rows["fc1_ds1"].blobs == ((1024, 64 * 13 * 13), (1024,))
    assert rows["fc1_ds1"].macs == 128 * 1024 * 10816
    assert rows["fc3_ds1"].tops == ((128, 1000),)
    assert rows["loss_ds1"].tops == ((),) and rows["loss"].tops == ((),)
    assert "accuracy" not in rows and "accuracy_ds1" not in rows  # TEST only


def test_report_prints_totals_and_aux_cost():
    net = build(NetConfig(dataset="imagenet", variant="cnds", depth=8))
    text = report(net, render(net))
    total = sum(CNN8_PARAMS.values())
    lines = text.splitlines()
    assert lines[0].startswith("imagenet-cnds8: deploy net")
    assert lines[-2].split()[0] == "total" and lines[-2].split()[1] == f"{total:,}"
    aux = (256 * 64 + 64) + (10816 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 1000 + 1000)
    aux_macs = 256 * 64 * 13 * 13 + 10816 * 1024 + 1024 * 1024 + 1024 * 1000
    assert lines[-1] == f"auxiliary branches (training only): 1, params {aux:,}, MACs per image {aux_macs:,}"


def test_format_table_columns_line_up():
    rows = _deploy_rows("cnn")
    lines = format_table(rows, "t").splitlines()
    body = lines[3:-2]
    assert len(body) == len(rows)
    assert len({len(line) for line in lines[1:]}) == 1  # every row as wide as the header
    assert body[0].split() == ["data", "Input", "1x3x227x227", "0", "0"]
