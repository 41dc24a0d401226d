"""WindowData on window files and images written here, against a transcription of
window_data_layer.cpp's load_batch: context padding, warp and square crops, mirrored
padding, mean file/values, scale, and fg/bg sampling; bad window files name the line."""
import math

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from runner import Net
from runner.proto import array_to_blob, caffe_pb2

F = np.float32


def cround(x):
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def caffe_window(img, box, crop, context_pad, square, mirror, mean=None, mean_values=None, scale=1.0):
    """load_batch for one window, line by line (float arithmetic in float32 as Dtype)."""
    x1, y1, x2, y2 = box
    out = np.zeros((3, crop, crop), F)
    pad_w = pad_h = 0
    size_w = size_h = crop
    if context_pad > 0 or square:
        context_scale = F(crop) / F(crop - 2 * context_pad)
        half_height, half_width = F(y2 - y1 + 1) / F(2.0), F(x2 - x1 + 1) / F(2.0)
        center_x, center_y = F(x1) + half_width, F(y1) + half_height
        if square:
            if half_height > half_width:
                half_width = half_height
            else:
                half_height = half_width
        x1 = cround(center_x - half_width * context_scale)
        x2 = cround(center_x + half_width * context_scale)
        y1 = cround(center_y - half_height * context_scale)
        y2 = cround(center_y + half_height * context_scale)
        unclipped_height, unclipped_width = y2 - y1 + 1, x2 - x1 + 1
        pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
        pad_x2, pad_y2 = max(0, x2 - img.shape[1] + 1), max(0, y2 - img.shape[0] + 1)
        x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
        scale_x, scale_y = F(crop) / F(unclipped_width), F(crop) / F(unclipped_height)
        size_w = cround(F(x2 - x1 + 1) * scale_x)
        size_h = cround(F(y2 - y1 + 1) * scale_y)
        pad_x1, pad_x2 = cround(F(pad_x1) * scale_x), cround(F(pad_x2) * scale_x)
        pad_y1 = cround(F(pad_y1) * scale_y)
        pad_h = pad_y1
        pad_w = pad_x2 if mirror else pad_x1
        if pad_h + size_h > crop:
            size_h = crop - pad_h
        if pad_w + size_w > crop:
            size_w = crop - pad_w
    cropped = cv2.resize(img[y1:y2 + 1, x1:x2 + 1], (size_w, size_h), interpolation=cv2.INTER_LINEAR)
    if mirror:
        cropped = cv2.flip(cropped, 1)
    mean_off = (mean.shape[2] - crop) // 2 if mean is not None else 0
    for h in range(cropped.shape[0]):
        for w in range(cropped.shape[1]):
            for c in range(3):
                pixel = F(cropped[h, w, c])
                if mean is not None:
                    value = (pixel - mean[c, h + mean_off + pad_h, w + mean_off + pad_w]) * F(scale)
                elif mean_values is not None:
                    value = (pixel - F(mean_values[c])) * F(scale)
                else:
                    value = pixel * F(scale)
                out[c, h + pad_h, w + pad_w] = value
    return out


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8),
            rng.integers(0, 256, size=(16, 18, 3), dtype=np.uint8)]
    for i, img in enumerate(imgs):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), img)
    return tmp_path, imgs


def window_net(root, windows_text, batch=4, fg_fraction=0.5, transform="crop_size: 10",
               extra="", seed=0, bg_threshold=0.2):
    (root / "windows.txt").write_text(windows_text)
    text = f'''layer {{ name: "win" type: "WindowData" top: "data" top: "label"
      transform_param {{ {transform} }}
      window_data_param {{ source: "{root / 'windows.txt'}" root_folder: "{root}/" batch_size: {batch}
        fg_fraction: {fg_fraction} bg_threshold: {bg_threshold} {extra} }} }}'''
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TRAIN",
               source_kwargs={"seed": seed}).sources[0]


# one fg window (class 3) and one bg window (below bg_threshold 0.2); 0.3 is neither
ONE_EACH = """# 0
im0.png
3 20 24
3
3 0.9 2 3 15 12
5 0.3 0 0 5 5
1 0.1 10 8 23 19
# 1
im1.png
3 16 18
0
"""


@pytest.mark.parametrize("transform, extra, mean", [
    ("crop_size: 10", "context_pad: 2 scale: 0.5", None),
    ("crop_size: 10 mean_value: 10 mean_value: 20 mean_value: 30", "crop_mode: 'square'", "values"),
    ("crop_size: 8 mean_file: 'MEAN'", "context_pad: 1 crop_mode: 'square' scale: 2", "file"),
    ("crop_size: 9", "", None),
])
def test_window_pixels_equal_caffes_crop_warp_and_mean(images, transform, extra, mean):
    root, imgs = images
    mean_file = mean_values = None
    if mean == "file":
        mean_file = np.random.default_rng(1).uniform(0, 255, size=(3, 12, 12)).astype(F)
        (root / "mean.binaryproto").write_bytes(array_to_blob(mean_file[None]).SerializeToString())
        transform = transform.replace("MEAN", str(root / "mean.binaryproto"))
    if mean == "values":
        mean_values = [10, 20, 30]
    source = window_net(root, ONE_EACH, transform=transform, extra=extra)
    crop = source.crop
    batch = next(iter(source))
    assert batch["data"].shape == (4, 3, crop, crop)
    assert batch["label"].tolist() == [0, 0, 3, 3]   # background first, then foreground
    scale = float(extra.split("scale: ")[1]) if "scale" in extra else 1.0
    pad = int(extra.split("context_pad: ")[1].split()[0]) if "context_pad" in extra else 0
    square = "square" in extra
    bg = caffe_window(imgs[0], (10, 8, 23, 19), crop, pad, square, False, mean_file, mean_values, scale)
    fg = caffe_window(imgs[0], (2, 3, 15, 12), crop, pad, square, False, mean_file, mean_values, scale)
    for item, want in zip(batch["data"].numpy(), [bg, bg, fg, fg]):
        np.testing.assert_allclose(item, want, rtol=1e-6, atol=1e-4)


def test_mirror_flips_the_window_and_its_context_padding(images):
    root, imgs = images
    source = window_net(root, ONE_EACH, batch=8, transform="crop_size: 12 mirror: true",
                        extra="context_pad: 3")
    batch = next(iter(source))
    box = {0: (10, 8, 23, 19), 3: (2, 3, 15, 12)}   # the bg box runs past the image's edges
    flipped = 0
    for item, label in zip(batch["data"].numpy(), batch["label"].tolist()):
        plain = caffe_window(imgs[0], box[int(label)], 12, 3, False, False)
        mirrored = caffe_window(imgs[0], box[int(label)], 12, 3, False, True)
        assert np.array_equal(item, plain) or np.array_equal(item, mirrored)
        flipped += np.array_equal(item, mirrored) and not np.array_equal(item, plain)
    assert 0 < flipped < 8


def test_foreground_and_background_sampling(images):
    root, _ = images
    text = """# 0
im0.png
3 20 24
6
1 0.8 0 0 9 9
2 0.7 5 5 15 15
3 0.95 10 2 20 12
7 0.2 1 1 6 6
7 0.4 12 3 22 15
4 0.5 3 4 12 14
"""
    source = window_net(root, text, batch=5, fg_fraction=0.6, extra="fg_threshold: 0.6",
                        bg_threshold=0.45)
    it = iter(source)
    seen = set()
    for _ in range(10):
        labels = next(it)["label"].tolist()
        assert labels[:2] == [0, 0] and all(lab in (1, 2, 3) for lab in labels[2:])   # int(5 * 0.6) fg
        seen.update(labels[2:])
    assert seen == {1, 2, 3}
    assert len(source.windows.background) == 2   # 0.2 and 0.4; 0.5 is neither fg nor bg


@pytest.mark.parametrize("text, match", [
    ("# 0\nim0.png\n3 20 24\n1\n0 0.9 1 1 5 5\n", "line 5: foreground window .* needs a label > 0"),
    ("# 1\nim0.png\n3 20 24\n0\n", "line 1: image index 1, expected 0"),
    ("# 0\nim0.png\n3 20 x\n", "line 3: expected width, got 'x'"),
    ("# 0\nmissing.png\n3 20 24\n2\n1 0.9 1 1 5 5\n0 0.1 1 1 5 5\n", "cannot read image .*missing.png.*line [56]"),
    ("# 0\nim0.png\n3 20 24\n2\n1 0.9 1 1 50 5\n0 0.1 1 1 5 5\n", "window at window file line 5 .* does not fit"),
])
def test_bad_window_files_name_the_line(images, text, match):
    root, _ = images
    with pytest.raises(ValueError, match=match):
        for batch in iter(window_net(root, text, batch=2, fg_fraction=1.0)):
            break


def test_transform_scale_is_ignored_with_a_warning_as_caffe_ignores_it(images):
    root, imgs = images
    with pytest.warns(UserWarning, match=r"transform_param.scale is ignored"):
        source = window_net(root, ONE_EACH, transform="crop_size: 6 scale: 0.1")
    data = next(iter(source))["data"].numpy()
    np.testing.assert_array_equal(data[0], caffe_window(imgs[0], (10, 8, 23, 19), 6, 0, False, False))
