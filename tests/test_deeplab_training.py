"""DeepLab's training pieces (deeplab-public-ver2): the ImageSegData layer (image and label
read, scaled, padded, cropped and mirrored together as TransformImgAndSeg does; label types
PIXEL, IMAGE and NONE; data_dim) and SegAccuracy (a per-pixel confusion matrix), each
against a numpy transcription of the fork's code; then a small DeepLab-shaped net (a label
shrunk by Interp, ignore_label 255) trains from such pairs."""
import cv2
import numpy as np
import pytest
import torch

from runner import Net
from runner.data.datum import DataError
from runner.graph import NetBuildError
from runner.layers.common import LabelError
from runner.proto import parse_net_text

F32 = np.float32
MEANS = (104.0, 117.0, 123.0)


def _images(root, count=3, size=(5, 6), classes=4, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(count):
        cv2.imwrite(str(root / f"img{i}.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        cv2.imwrite(str(root / f"seg{i}.png"), rng.integers(0, classes, size, dtype=np.uint8))


def _net(root, lines, transform, param="label_type: PIXEL", tops=3, batch=1):
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    names = " ".join(f'top: "{t}"' for t in ("data", "label", "data_dim")[:tops])
    return parse_net_text(f'''name: "d"
layer {{ name: "data" type: "ImageSegData" {names}
  transform_param {{ {transform} }}
  image_data_param {{ source: "{root}/list.txt" root_folder: "{root}/" batch_size: {batch} {param} }} }}
''')


def _first(text, phase="TRAIN", seed=0):
    source = Net(text, phase=phase, source_kwargs={"workers": 0, "seed": seed}).sources[0]
    try:
        return next(source)
    finally:
        source.close()


def transform_img_and_seg(image, seg, crop, means, scale, ignore, h_off, w_off, mirror):
    """TransformImgAndSeg after its random draws: pad bottom/right to the crop (means /
    ignore), cut the window, (pixel - mean) * scale in double, flip when mirrored."""
    image = image.astype(np.float64)
    pad_h, pad_w = max(crop[0] - image.shape[0], 0), max(crop[1] - image.shape[1], 0)
    image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=means)
    seg = cv2.copyMakeBorder(seg.astype(np.float64), 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=ignore)
    data = np.zeros((3, *crop))
    label = np.zeros(crop)
    for h in range(crop[0]):
        for w in range(crop[1]):
            out_w = crop[1] - 1 - w if mirror else w
            for c in range(3):
                data[c, h, out_w] = (image[h + h_off, w + w_off, c] - means[c]) * F32(scale)
            label[h, out_w] = seg[h + h_off, w + w_off]
    return data.astype(F32), label.astype(F32)


def test_padding_to_the_crop_with_means_and_ignore_label(tmp_path):
    """A 5 x 6 pair in an 8 x 8 crop: padded at the bottom and right, so the window is the
    whole padded pair; data_dim is the pair's size."""
    _images(tmp_path)
    text = _net(tmp_path, ["img0.png seg0.png"],
                f"crop_size: 8 mean_value: {MEANS[0]} mean_value: {MEANS[1]} mean_value: {MEANS[2]} scale: 0.5")
    batch = _first(text)
    image, seg = cv2.imread(str(tmp_path / "img0.png")), cv2.imread(str(tmp_path / "seg0.png"), 0)
    data, label = transform_img_and_seg(image, seg, (8, 8), MEANS, 0.5, 255, 0, 0, False)
    np.testing.assert_array_equal(batch["data"][0].numpy(), data)
    np.testing.assert_array_equal(batch["label"][0, 0].numpy(), label)
    assert batch["data_dim"].tolist() == [[[[5, 6]]]]
    assert (batch["label"][0, 0, 5:] == 255).all() and (batch["data"][0, :, 5:] == 0).all()


def test_test_phase_crops_the_centre_and_train_crops_at_random(tmp_path):
    """A 9 x 12 pair in a 5 x 5 crop: the TEST window starts at (2, 3) and is flipped after
    cutting (flipping first would start it at column 4)."""
    _images(tmp_path, size=(9, 12))
    text = _net(tmp_path, ["img0.png seg0.png"], "crop_size: 5 mirror: true mean_value: 100")
    image, seg = cv2.imread(str(tmp_path / "img0.png")), cv2.imread(str(tmp_path / "seg0.png"), 0)
    seen = set()
    for seed in range(8):
        batch = _first(text, "TEST", seed)
        candidates = {flip: transform_img_and_seg(image, seg, (5, 5), (100,) * 3, 1, 255, 2, 3, flip)
                      for flip in (False, True)}
        flip = [f for f, (d, _) in candidates.items() if np.array_equal(d, batch["data"][0].numpy())]
        assert len(flip) == 1   # the centre (2, 3), mirrored or not: mirror is not phase-gated
        np.testing.assert_array_equal(batch["label"][0, 0].numpy(), candidates[flip[0]][1])
        seen.add(flip[0])
        batch = _first(text, "TRAIN", seed)
        found = [(h, w, f) for h in range(5) for w in range(8) for f in (False, True)
                 if np.array_equal(transform_img_and_seg(image, seg, (5, 5), (100,) * 3, 1, 255, h, w, f)[0],
                                   batch["data"][0].numpy())]
        assert len(found) == 1
        h, w, f = found[0]
        np.testing.assert_array_equal(batch["label"][0, 0].numpy(),
                                      transform_img_and_seg(image, seg, (5, 5), (100,) * 3, 1, 255, h, w, f)[1])
        seen.add((h, w))
    assert {True, False} <= seen and len(seen) > 4


def test_scale_factors_resize_image_bilinear_and_label_nearest(tmp_path):
    _images(tmp_path, size=(10, 12))
    text = _net(tmp_path, ["img0.png seg0.png"], "crop_size: 6 scale_factors: 0.5")
    batch = _first(text, "TEST")
    image = cv2.resize(cv2.imread(str(tmp_path / "img0.png")), (6, 5), interpolation=cv2.INTER_LINEAR)
    seg = cv2.resize(cv2.imread(str(tmp_path / "seg0.png"), 0), (6, 5), interpolation=cv2.INTER_NEAREST)
    data, label = transform_img_and_seg(image, seg, (6, 6), (0, 0, 0), 1, 255, 0, 0, False)
    np.testing.assert_array_equal(batch["data"][0].numpy(), data)
    np.testing.assert_array_equal(batch["label"][0, 0].numpy(), label)
    assert batch["data_dim"].tolist() == [[[[6, 6]]]]   # before scaling: min(crop, 10 x 12)


@pytest.mark.parametrize("label_type, line, value", [
    ("IMAGE", "img1.png 3 extra words", 3),
    ("NONE", "img1.png", 255),
])
def test_image_and_none_labels_fill_the_map(tmp_path, label_type, line, value):
    _images(tmp_path)
    batch = _first(_net(tmp_path, [line], "", f"label_type: {label_type}", tops=2))
    assert batch["label"].shape == (1, 1, 5, 6) and (batch["label"] == value).all()
    np.testing.assert_array_equal(batch["data"][0].numpy(),
                                  cv2.imread(str(tmp_path / "img1.png")).transpose(2, 0, 1).astype(F32))


@pytest.mark.parametrize("transform, param, lines, message", [
    ('mean_file: "m.binaryproto"', "label_type: PIXEL", ["img0.png seg0.png"], "takes mean_value, not a mean file"),
    ("crop_size: 4 crop_height: 4 crop_width: 4", "label_type: PIXEL", ["img0.png seg0.png"], "crop_size or crop_height and crop_width, not both"),
    ("", "label_type: PIXEL", ["img0.png"], r"list.txt:1: expected 'IMAGE LABEL', got 'img0.png'"),
    ("", "label_type: IMAGE", ["img0.png cat"], "label_type IMAGE needs an integer class"),
    ("scale_factors: 0", "label_type: PIXEL", ["img0.png seg0.png"], "must be positive"),
    ("", "label_type: PIXEL", ["img0.png nope.png"], r"img0.png' \(listed in .*list.txt\) with label '.*nope.png': OpenCV cannot read the label image"),
])
def test_bad_settings_and_lists_are_named(tmp_path, transform, param, lines, message):
    _images(tmp_path)
    with pytest.raises((DataError, NetBuildError), match=message):
        _first(_net(tmp_path, lines, transform, param))


def test_other_data_layers_refuse_the_deeplab_transform_fields(tmp_path):
    _images(tmp_path)
    (tmp_path / "list.txt").write_text("img0.png 0\n")
    text = parse_net_text(f'''name: "d"
layer {{ name: "data" type: "ImageData" top: "data" top: "label" transform_param {{ crop_height: 4 crop_width: 4 }}
  image_data_param {{ source: "{tmp_path}/list.txt" root_folder: "{tmp_path}/" batch_size: 1 }} }}''')
    with pytest.raises(NetBuildError, match=r"crop_height, crop_width belong to DeepLab's ImageSegData"):
        Net(text, phase="TRAIN")


# ---- SegAccuracy ---------------------------------------------------------------------------

def seg_accuracy(scores, labels, ignore, classes, matrix=None):
    """SegAccuracyLayer::Forward_cpu with ConfusionMatrix: returns (metrics, matrix)."""
    matrix = np.zeros((classes, classes)) if matrix is None else matrix
    n, c, h, w = scores.shape
    for i in range(n):
        for y in range(h):
            for x in range(w):
                label = int(labels[i, 0, y, x])
                if label in ignore:
                    continue
                pairs = sorted(((scores[i, k, y, x], k) for k in range(c)), reverse=True)
                matrix[label, pairs[0][1]] += 1
    total, diag = matrix.sum(), np.diag(matrix)
    accuracy = diag.sum() / total if total else 0.0
    rows = matrix.sum(1)
    recall = np.mean([diag[k] / rows[k] for k in range(classes) if rows[k] > 0])
    cols = matrix.sum(0)
    iou = np.mean([1.0 if diag[k] == rows[k] + cols[k] - diag[k] else diag[k] / (rows[k] + cols[k] - diag[k])
                   for k in range(classes)])
    return np.array([accuracy, recall, iou]), matrix


def _seg_accuracy_net(reset="", ignore="ignore_label: 255 ignore_label: 3"):
    return parse_net_text(f'''name: "a"
layer {{ name: "in" type: "Input" top: "score" top: "label"
  input_param {{ shape {{ dim: 2 dim: 5 dim: 3 dim: 4 }} shape {{ dim: 2 dim: 1 dim: 3 dim: 4 }} }} }}
layer {{ name: "acc" type: "SegAccuracy" bottom: "score" bottom: "label" top: "acc"
  seg_accuracy_param {{ {ignore} {reset} }} }}''')


def test_seg_accuracy_is_the_forks_confusion_matrix_and_adds_up_without_reset():
    rng = np.random.default_rng(4)
    batches = [(rng.integers(0, 3, (2, 5, 3, 4)).astype(F32),    # many ties
                rng.choice([0, 1, 2, 3, 4, 255], (2, 1, 3, 4)).astype(F32)) for _ in range(2)]
    for reset in ("", "reset: false"):
        net = Net(_seg_accuracy_net(reset))
        matrix = None
        for scores, labels in batches:
            got = net({"score": torch.from_numpy(scores), "label": torch.from_numpy(labels)})["acc"]
            want, matrix = seg_accuracy(scores, labels, {255, 3}, 5, matrix if reset else None)
            assert got.shape == (1, 1, 1, 3)
            np.testing.assert_allclose(got.numpy().ravel(), want, rtol=1e-6)
    assert float(got.ravel()[0]) != pytest.approx(seg_accuracy(*batches[1], {255, 3}, 5)[0][0])


def test_seg_accuracy_refuses_labels_outside_the_classes():
    net = Net(_seg_accuracy_net(ignore="ignore_label: 255"))
    labels = torch.zeros(2, 1, 3, 4)
    labels[1, 0, 2, 3] = 7
    with pytest.raises(LabelError, match=r"layer 'acc': label 7 is outside \[0, 5\) and not an ignore_label"):
        net({"score": torch.zeros(2, 5, 3, 4), "label": labels})


# ---- a DeepLab-shaped net trains --------------------------------------------------------------

DEEPLAB = '''name: "deeplab-tiny"
layer {{ name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim"
  transform_param {{ mirror: true crop_size: 9 mean_value: 128 mean_value: 128 mean_value: 128 scale: 0.0078125 }}
  image_data_param {{ source: "{root}/list.txt" root_folder: "{root}/" batch_size: 2 shuffle: true
    label_type: PIXEL }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "score" type: "Convolution" bottom: "conv1" top: "score"
  convolution_param {{ num_output: 2 kernel_size: 3 stride: 2 pad: 1 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "label_shrink" type: "Interp" bottom: "label" top: "label_shrink" interp_param {{ shrink_factor: 2 }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label_shrink" top: "loss"
  loss_param {{ ignore_label: 255 }} }}
layer {{ name: "accuracy" type: "SegAccuracy" bottom: "score" bottom: "label_shrink" top: "accuracy"
  seg_accuracy_param {{ ignore_label: 255 }} }}
layer {{ name: "silence" type: "Silence" bottom: "data_dim" }}
'''


def test_a_deeplab_shaped_net_learns_from_pairs(tmp_path):
    """Labels are a function of the pixels (class 1 where green > 127), on 7 x 8 images
    padded to the 9 x 9 crop with ignore_label; the shrunk label keeps every other pixel."""
    rng = np.random.default_rng(3)
    lines = []
    for i in range(6):
        image = rng.integers(0, 256, (7, 8, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / f"img{i}.png"), image)
        cv2.imwrite(str(tmp_path / f"seg{i}.png"), (image[:, :, 1] > 127).astype(np.uint8))
        lines.append(f"img{i}.png seg{i}.png")
    (tmp_path / "list.txt").write_text("\n".join(lines))
    from solver_helpers import make_solver

    solver = make_solver(DEEPLAB.format(root=tmp_path), tmp_path / "s", base_lr=0.05, max_iter=80,
                         weight_decay=0, type='"Adam"', momentum=0.9)
    solver.solve()
    source = solver.model.sources[0]
    blobs = solver.model.eval()(next(iter(source)))
    source.close()
    assert blobs["accuracy"].shape == (1, 1, 1, 3)
    assert float(blobs["accuracy"].ravel()[0]) > 0.8
