"""SegNet's training pieces (alexgkendall/caffe-segnet): the DenseImageData layer (image and
label image pairs, mirrored and cropped together, the label's pixels as classes) and
SoftmaxWithLoss's class weighting, against hand computations of the fork's code; then a
small SegNet-shaped net (BN, pooling with a mask, Upsample) trains from such pairs."""
import cv2
import numpy as np
import pytest
import torch

from runner import Net
from runner.data.datum import DataError
from runner.graph import NetBuildError
from runner.proto import parse_net_text

F32 = np.float32


def _pairs(root, count=4, size=(6, 8), classes=3, seed=0):
    """`count` colour images and label images of class indices; returns the list file."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        label = rng.integers(0, classes, size, dtype=np.uint8)
        cv2.imwrite(str(root / f"img{i}.png"), image)
        cv2.imwrite(str(root / f"lab{i}.png"), label)
        lines.append(f"img{i}.png  lab{i}.png")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root / "list.txt"


def _data_net(root, param, transform="", batch=2):
    return parse_net_text(f'''name: "d"
layer {{ name: "data" type: "DenseImageData" top: "data" top: "label" {transform}
  dense_image_data_param {{ source: "{root}/list.txt" root_folder: "{root}/" batch_size: {batch} {param} }} }}
''')


def _batch(net):
    source = net.sources[0]
    try:
        return next(iter(source))
    finally:
        source.close()


def test_pairs_come_in_list_order_with_the_labels_pixels(tmp_path):
    _pairs(tmp_path)
    net = Net(_data_net(tmp_path, "", 'transform_param { scale: 0.5 mean_value: 10 }'),
              phase="TRAIN", source_kwargs={"workers": 0})
    batch = _batch(net)
    assert batch["data"].shape == (2, 3, 6, 8) and batch["label"].shape == (2, 1, 6, 8)
    for i in range(2):
        image = cv2.imread(str(tmp_path / f"img{i}.png")).transpose(2, 0, 1).astype(F32)
        label = cv2.imread(str(tmp_path / f"lab{i}.png"), cv2.IMREAD_GRAYSCALE).astype(F32)
        np.testing.assert_array_equal(batch["data"][i].numpy(), (image - 10) * F32(0.5))
        np.testing.assert_array_equal(batch["label"][i, 0].numpy(), label)


def test_mirror_and_crop_move_image_and_label_together(tmp_path):
    """Each item's label is cut from the same place of the same (maybe flipped) label
    image as its pixels; over a few batches both flips and several offsets occur."""
    _pairs(tmp_path, count=2, size=(9, 11), classes=250)   # labels as distinct as the pixels
    net = Net(_data_net(tmp_path, "mirror: true crop_height: 5 crop_width: 6", batch=2),
              phase="TEST", source_kwargs={"workers": 0, "seed": 3})
    source = net.sources[0]
    seen = set()
    for _, batch in zip(range(6), source):
        assert batch["data"].shape == (2, 3, 5, 6) and batch["label"].shape == (2, 1, 5, 6)
        for i in range(2):
            image = cv2.imread(str(tmp_path / f"img{i}.png"))
            label = cv2.imread(str(tmp_path / f"lab{i}.png"), cv2.IMREAD_GRAYSCALE)
            found = [(flip, h, w) for flip in (False, True) for h in range(5) for w in range(6)
                     if np.array_equal((image[:, ::-1] if flip else image)[h:h + 5, w:w + 6]
                                       .transpose(2, 0, 1), batch["data"][i].numpy())]
            assert len(found) == 1
            flip, h, w = found[0]
            window = (label[:, ::-1] if flip else label)[h:h + 5, w:w + 6]
            np.testing.assert_array_equal(batch["label"][i, 0].numpy(), window)
            seen.add(found[0])
    source.close()
    assert {flip for flip, _, _ in seen} == {False, True} and len(seen) > 4


def test_resize_is_bilinear_for_the_image_and_nearest_for_the_label(tmp_path):
    _pairs(tmp_path, count=2, size=(5, 7))
    net = Net(_data_net(tmp_path, "new_height: 8 new_width: 12 is_color: false"), phase="TRAIN",
              source_kwargs={"workers": 0})
    batch = _batch(net)
    image = cv2.imread(str(tmp_path / "img0.png"), cv2.IMREAD_GRAYSCALE)
    label = cv2.imread(str(tmp_path / "lab0.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(batch["data"][0, 0].numpy(), cv2.resize(image, (12, 8)))
    np.testing.assert_array_equal(batch["label"][0, 0].numpy(),
                                  cv2.resize(label, (12, 8), interpolation=cv2.INTER_NEAREST))
    assert set(np.unique(batch["label"].numpy())) <= {0, 1, 2}


def test_workers_give_the_same_batches(tmp_path):
    _pairs(tmp_path, count=5)
    text = _data_net(tmp_path, "shuffle: true mirror: true crop_height: 4 crop_width: 4")
    batches = []
    for workers in (0, 2):
        source = Net(text, phase="TRAIN", source_kwargs={"workers": workers, "seed": 7}).sources[0]
        batches.append([next(source) for _ in range(4)])
        source.close()
    for a, b in zip(*batches):
        for top in ("data", "label"):
            assert torch.equal(a[top], b[top])


@pytest.mark.parametrize("change, message", [
    (lambda root: (root / "list.txt").write_text("img0.png lab0.png img1.png\n"),
     r"list.txt': expected 'IMAGE LABEL' pairs, but its 3 names leave 'img1.png' without a partner"),
    (lambda root: (root / "lab1.png").write_bytes(b"not a png"),
     r"pair '.*img1.png' '.*lab1.png' \(listed in .*list.txt\): OpenCV cannot read the label image"),
    (lambda root: cv2.imwrite(str(root / "lab1.png"), np.zeros((3, 3), np.uint8)),
     r"the label is 3 x 3, the image 6 x 8; they must match"),
    (lambda root: cv2.imwrite(str(root / "lab1.png"), np.full((6, 8), 7, np.uint8)),
     r"lab1.png.*label value 7 is outside \[0, 3\), the classes of layer 'loss'"),
])
def test_bad_pairs_are_named(tmp_path, change, message):
    _pairs(tmp_path)
    change(tmp_path)
    text = _data_net(tmp_path, "")
    loss = parse_net_text('layer { name: "score" type: "Convolution" bottom: "data" top: "score" '
                          'convolution_param { num_output: 3 kernel_size: 1 } } '
                          'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }')
    text.layer.extend(loss.layer)
    with pytest.raises((DataError, NetBuildError), match=message):   # at build or in a batch
        net = Net(text, phase="TRAIN", source_kwargs={"workers": 0})
        source = net.sources[0]
        for _ in range(2):
            next(source)


def test_transform_crop_and_mirror_are_refused(tmp_path):
    _pairs(tmp_path)
    with pytest.raises(NetBuildError, match=r"layer 'data' \(DenseImageData\): transform_param.crop_size and mirror are not used"):
        Net(_data_net(tmp_path, "", "transform_param { crop_size: 4 }"), phase="TRAIN")


# ---- SoftmaxWithLoss with SegNet's class weighting ---------------------------------------

def _weighted_loss(scores, labels, weights, ignore=None, normalize=True):
    """softmax_loss_layer.cpp of the fork: loss and bottom diff, in float64."""
    n, c, h, w = scores.shape
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss, count, diff = 0.0, 0, np.zeros_like(p)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                label = int(labels[i, 0, y, x])
                if label == ignore:
                    continue
                loss -= np.log(max(p[i, label, y, x], np.finfo(F32).tiny)) * weights[label]
                diff[i, :, y, x] = p[i, :, y, x]
                diff[i, label, y, x] -= 1
                diff[i, :, y, x] *= weights[label]
                count += 1
    norm = count if normalize else n
    return loss / norm, diff / norm


@pytest.mark.parametrize("ignore, normalize", [(None, True), (2, True), (None, False)])
def test_class_weighted_softmax_loss_is_the_forks(ignore, normalize):
    weights = [0.25, 1.5, 4.0]
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((2, 3, 4, 5)).astype(F32)
    labels = rng.integers(0, 3, (2, 1, 4, 5)).astype(F32)
    extra = (f" ignore_label: {ignore}" if ignore is not None else "") + \
        ("" if normalize else " normalize: false")
    text = parse_net_text(f'''name: "w"
layer {{ name: "in" type: "Input" top: "score" top: "label"
  input_param {{ shape {{ dim: 2 dim: 3 dim: 4 dim: 5 }} shape {{ dim: 2 dim: 1 dim: 4 dim: 5 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param {{ weight_by_label_freqs: true {" ".join(f"class_weighting: {v}" for v in weights)}{extra} }} }}''')
    x = torch.from_numpy(scores).requires_grad_()
    loss = Net(text)({"score": x, "label": torch.from_numpy(labels)})["loss"]
    loss.backward()
    want_loss, want_diff = _weighted_loss(scores.astype(np.float64), labels, weights, ignore, normalize)
    assert float(loss.detach()) == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), want_diff, rtol=1e-4, atol=1e-7)


def test_class_weighting_needs_one_weight_per_class():
    text = parse_net_text('''name: "w"
layer { name: "in" type: "Input" top: "score" top: "label"
  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param { weight_by_label_freqs: true class_weighting: 1 class_weighting: 2 } }''')
    with pytest.raises(ValueError, match=r"layer 'loss'.*one class_weighting per class \(3\), got 2"):
        Net(text)


# ---- a SegNet-shaped net trains from pairs ------------------------------------------------

SEGNET = '''name: "segnet-tiny"
layer {{ name: "data" type: "DenseImageData" top: "data" top: "label"
  transform_param {{ scale: 0.00390625 }}
  dense_image_data_param {{ source: "{root}/list.txt" root_folder: "{root}/" batch_size: 2
    shuffle: true mirror: true crop_height: 8 crop_width: 8 }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "bn1" type: "BN" bottom: "conv1" top: "conv1"
  bn_param {{ scale_filler {{ type: "constant" value: 1 }} shift_filler {{ type: "constant" value: 0.001 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" top: "pool1_mask"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "upsample1" type: "Upsample" bottom: "pool1" bottom: "pool1_mask" top: "up1"
  upsample_param {{ scale: 2 }} }}
layer {{ name: "score" type: "Convolution" bottom: "up1" top: "score"
  convolution_param {{ num_output: 3 kernel_size: 3 pad: 1 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param {{ weight_by_label_freqs: true class_weighting: 0.5 class_weighting: 1 class_weighting: 2 }}
  softmax_param {{ engine: CAFFE }} }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "score" bottom: "label" top: "accuracy" top: "per_class_accuracy" }}
'''


def test_a_segnet_shaped_net_learns_from_pairs(tmp_path):
    """Labels are a function of the pixels (class = which third of the range the blue
    channel is in), so the loss must fall."""
    rng = np.random.default_rng(2)
    lines = []
    for i in range(6):
        image = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / f"img{i}.png"), image)
        cv2.imwrite(str(tmp_path / f"lab{i}.png"), (image[:, :, 0].astype(int) * 3 // 256).astype(np.uint8))
        lines.append(f"img{i}.png lab{i}.png")
    (tmp_path / "list.txt").write_text("\n".join(lines))
    from solver_helpers import make_solver

    solver = make_solver(SEGNET.format(root=tmp_path), tmp_path / "s", base_lr=0.05, max_iter=80,
                         weight_decay=0, type='"Adam"', momentum=0.9)
    solver.solve()
    net = solver.model.eval()
    source = net.sources[0]
    blobs = net(next(iter(source)))
    source.close()
    assert float(blobs["accuracy"]) > 0.8
    assert blobs["per_class_accuracy"].shape == (3,)


# ---- Bayesian SegNet's Monte Carlo dropout ---------------------------------------------------

def _dropout_net(flag):
    return parse_net_text(f'''name: "mc"
layer {{ name: "in" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 dim: 4 dim: 5 }} }} }}
layer {{ name: "drop" type: "Dropout" bottom: "data" top: "out"
  dropout_param {{ dropout_ratio: 0.25 {flag} }} }}''')


def test_sample_weights_test_drops_units_in_test_as_in_training():
    """DropoutLayer of the fork: with sample_weights_test the TEST phase keeps each unit with
    probability 0.75, scaled by 1/0.75, and backward uses the same mask; without it TEST
    copies the bottom."""
    x = torch.rand(2, 3, 4, 5) + 1
    net = Net(_dropout_net("sample_weights_test: true"), phase="TEST")
    data = x.clone().requires_grad_()
    out = net({"data": data})["out"]
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    assert 0 < int(kept.sum()) < x.numel()
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(data.grad, kept.float() / 0.75)
    assert not torch.equal(net({"data": x})["out"], net({"data": x})["out"])
    assert torch.equal(Net(_dropout_net(""), phase="TEST")({"data": x})["out"], x)


def test_monte_carlo_dropout_stays_random_in_for_inference_and_refuses_onnx():
    from runner.onnx_export import OnnxExportError, build_model

    net = Net(_dropout_net("sample_weights_test: true"), phase="TEST")
    fast = net.for_inference()
    assert fast.differences[fast.form] == 0   # checked under one seed for both forms
    x = torch.rand(2, 3, 4, 5) + 1
    assert not torch.equal(fast({"data": x})["out"], fast({"data": x})["out"])
    with pytest.raises(OnnxExportError, match="sample_weights_test drops units at inference"):
        build_model(net)


# ---- folding BN statistics for deployment (runner.tools.bn_statistics) -----------------------

BN_NET = '''name: "bn-fold"
layer {{ name: "data" type: "DenseImageData" top: "data" top: "label"
  transform_param {{ scale: 0.00390625 }}
  dense_image_data_param {{ source: "{root}/list.txt" root_folder: "{root}/" batch_size: 2 }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "conv1_bn" type: "BN" bottom: "conv1" top: "conv1"
  bn_param {{ scale_filler {{ type: "gaussian" std: 1 }} shift_filler {{ type: "gaussian" std: 1 }} }} }}
layer {{ name: "score" type: "Convolution" bottom: "conv1" top: "score"
  convolution_param {{ num_output: 3 kernel_size: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }}
'''


def test_bn_statistics_folds_the_averaged_statistics_as_segnets_script(tmp_path):
    """Over the list's 3 batches: the batch means and variances averaged, the variance
    times m / (m - 1) (m = 2 x 6 x 8 values per channel), folded into scale and shift;
    the written prototxt runs the layer in INFERENCE mode with those weights."""
    from runner.tools.bn_statistics import main

    _pairs(tmp_path, count=6)
    (tmp_path / "train.prototxt").write_text(BN_NET.format(root=tmp_path))
    net = Net(tmp_path / "train.prototxt", phase="TEST", source_kwargs={"workers": 0})
    net.save_caffemodel(tmp_path / "w.caffemodel")
    out, deploy = tmp_path / "folded.caffemodel", tmp_path / "inference.prototxt"
    assert main([str(tmp_path / "train.prototxt"), str(tmp_path / "w.caffemodel"), str(out),
                 "--inference-prototxt", str(deploy)]) == 0

    source = net.sources[0]
    weight, bias = net.layers["conv1"].blobs   # the BN's bottom (it runs in place)
    conv = [torch.nn.functional.conv2d(next(source)["data"], weight, bias, padding=1).detach().double()
            for _ in range(3)]
    source.close()
    mean = torch.stack([c.mean((0, 2, 3)) for c in conv]).mean(0)
    var = torch.stack([(c * c).mean((0, 2, 3)) - c.mean((0, 2, 3)) ** 2 for c in conv]).mean(0) * 96 / 95
    scale, shift = (b.detach().double().ravel() for b in net.layers["conv1_bn"].blobs)
    root = torch.sqrt(var + 1e-9)
    folded = Net(deploy, phase="TEST", weights=out, source_kwargs={"workers": 0})
    assert folded.layers["conv1_bn"].lp.bn_param.bn_mode == 1 and len(folded.layers["conv1_bn"].lp.top) == 1
    got_scale, got_shift = (b.detach().double().ravel() for b in folded.layers["conv1_bn"].blobs)
    torch.testing.assert_close(got_scale, scale / root, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_shift, shift - scale * mean / root, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded.layers["conv1"].blobs[0], net.layers["conv1"].blobs[0])


def test_bn_statistics_needs_a_learn_mode_bn_layer(tmp_path, capsys):
    from runner.tools.bn_statistics import main

    _pairs(tmp_path)
    text = BN_NET.format(root=tmp_path).replace('type: "BN"', 'type: "ReLU"').replace(
        'bn_param { scale_filler { type: "gaussian" std: 1 } shift_filler { type: "gaussian" std: 1 } }', "")
    (tmp_path / "train.prototxt").write_text(text)
    Net(tmp_path / "train.prototxt", phase="TEST", source_kwargs={"workers": 0}).save_caffemodel(tmp_path / "w.caffemodel")
    assert main([str(tmp_path / "train.prototxt"), str(tmp_path / "w.caffemodel"), str(tmp_path / "o.caffemodel")]) == 2
    assert "no BN layer in LEARN mode" in capsys.readouterr().err
    assert not (tmp_path / "o.caffemodel").exists()
