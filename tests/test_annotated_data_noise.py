"""The SSD fork's noise_param (ApplyNoise) and resize_mode FIT_SMALL_SIZE in its AnnotatedData
layer, against transcriptions in this file of the fork's im_transforms.cpp (ApplyNoise,
colorReduce, constantNoise, AspectKeepingResizeBySmall, InferNewSize,
UpdateBBoxByResizePolicy), bbox_util.cpp (ExtrapolateBBox) and of how Transform(cv::Mat)
reads the noised image's rows as bytes; the draws are replayed from the layer's Generator.
A small SSD net trains over FIT_SMALL_SIZE batches of different sizes."""
import math
import warnings

import cv2
import numpy as np
import pytest
import torch

from runner import Net
from runner.data.datum import DataError
from runner.data.source import BATCH_STREAM, generator
from runner.proto import parse_net_text

from solver_helpers import make_solver
from test_annotated_data import (F, SEED, annotated, images, label_rows, source, stored,
                                 transform_annotation, uniform, warp_bbox, write_db)
from test_ssd_training import BODY, DEPLOY, LABEL_MAP, LOSS

EFFECTS = ["decolorize", "gauss_blur", "hist_eq", "clahe", "jpeg", "erode", "posterize",
           "inverse", "saltpepper", "convert_to_hsv", "convert_to_lab"]
GREY_EFFECTS = ["gauss_blur", "hist_eq", "clahe", "jpeg", "erode", "posterize", "inverse",
                "saltpepper"]
PARAMS = {"jpeg": "jpeg: 30.7", "saltpepper": "saltpepper: true saltpepper_param { fraction: 0.1 "
          "value: 255 value: 0 value: 7 }"}


# ---- ApplyNoise, transcribed: the effects in the fork's order ----------------------

def apply_noise(img, p, rng):
    """`p`: {effect: value}. `img` H x W x C bytes; returns the cv::Mat ApplyNoise gives."""
    out = img.copy()
    if p.get("decolorize"):
        out = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if p.get("gauss_blur"):
        out = cv2.GaussianBlur(out, (7, 7), 1.5)
    for effect in ("hist_eq", "clahe"):
        if p.get(effect):
            equalize = cv2.equalizeHist if effect == "hist_eq" else \
                cv2.createCLAHE(clipLimit=4, tileGridSize=(8, 8)).apply
            if out.ndim == 3 and out.shape[2] > 1:
                planes = list(cv2.split(cv2.cvtColor(out, cv2.COLOR_BGR2YCrCb)))
                planes[0] = equalize(planes[0])
                out = cv2.cvtColor(cv2.merge(planes), cv2.COLOR_YCrCb2BGR)
            else:
                out = equalize(out.reshape(out.shape[:2]))
    if p.get("jpeg", -1) > 0:
        buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(p["jpeg"])])[1]
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if p.get("erode"):
        out = cv2.erode(out, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3), (1, 1)))
    if p.get("posterize"):
        table = np.array([i // 64 * 64 + 32 for i in range(256)], np.uint8)
        out = cv2.LUT(out, table)
    if p.get("inverse"):
        out = cv2.bitwise_not(out)
    out = out.reshape(*out.shape[:2], -1)
    values = p.get("values", [])
    if values and out.shape[2] > 1 and len(values) == 1:
        values = values * out.shape[2]
    if p.get("saltpepper"):
        n = math.floor(F(p["fraction"]) * F(out.shape[1]) * F(out.shape[0]))
        for _ in range(n):
            i = int(rng.integers(2 ** 32)) % out.shape[1]
            j = int(rng.integers(2 ** 32)) % out.shape[0]
            out[j, i] = values
    if p.get("convert_to_hsv"):
        out = cv2.cvtColor(out, cv2.COLOR_BGR2HSV)
    if p.get("convert_to_lab"):
        lab = out.astype(np.float32) * (1.0 / 255)
        out = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_BGR2Lab)
    return out.reshape(*out.shape[:2], -1)


def read_as_bytes(mat, channels, h_off, w_off, height, width):
    """Transform(cv::Mat): cv_img(roi), then per row `ptr<uchar>(h)[0 .. width * channels)`."""
    roi = mat[h_off:h_off + height, w_off:w_off + width]
    rows = [np.frombuffer(roi[h].tobytes(), np.uint8)[:width * channels] for h in range(height)]
    return np.stack(rows).reshape(height, width, channels).transpose(2, 0, 1).astype(F)


def noise_dict(effect):
    p = {effect: True}
    if effect == "jpeg":
        p["jpeg"] = 30.7
    if effect == "saltpepper":
        p.update(fraction=0.1, values=[255, 0, 7])
    return p


# ---- each effect through the layer -------------------------------------------------

@pytest.mark.parametrize("effect", EFFECTS)
def test_each_noise_effect_is_the_forks(tmp_path, effect):
    pics = images(2, 17, 23)
    db = write_db(tmp_path / "db", [annotated(p) for p in pics])
    text = PARAMS.get(effect, f"{effect}: true")
    layer = source(db, 2, f"noise_param {{ {text} }}")
    batch, rng = layer.batch(0), generator(SEED, BATCH_STREAM, 0, 0)
    assert layer.top_shapes["data"] == (2, 3, 17, 23)
    for item, pic in enumerate(pics):
        mat = apply_noise(pic, noise_dict(effect), rng)
        want = read_as_bytes(mat, 3, 0, 0, 17, 23)
        np.testing.assert_array_equal(batch["data"][item].numpy(), want)
        if effect not in ("jpeg", "convert_to_lab"):   # a byte image of 3 channels: itself
            np.testing.assert_array_equal(want, mat.transpose(2, 0, 1))
        assert not np.array_equal(want, pic.transpose(2, 0, 1))    # the effect did something
    np.testing.assert_array_equal(batch["label"].numpy(), label_rows([stored(), stored()]))


def test_lab_floats_are_read_as_their_bytes(tmp_path):
    """convert_to_lab leaves float32 Lab in the cv::Mat; Transform reads the first
    width * channels bytes of each row, so pixel (h, w, c) is byte 3w + c of row h's floats."""
    pic = images(1, 5, 8)[0]
    lab = cv2.cvtColor(pic.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_BGR2Lab)
    got = source(write_db(tmp_path / "db", [annotated(pic)]), 1,
                 "noise_param { convert_to_lab: true }").batch(0)["data"][0].numpy()
    raw = lab.reshape(5, -1).view(np.uint8)          # 4 bytes per float, 12 per pixel
    assert got[2, 1, 3] == raw[1, 3 * 3 + 2]
    assert got.shape == (3, 5, 8) and got.max() <= 255


@pytest.mark.parametrize("effect", GREY_EFFECTS)
def test_each_noise_effect_on_a_grey_image(tmp_path, effect):
    """One channel: hist_eq and clahe equalize the image itself; jpeg decodes in colour, so
    the fork reads the first third of each 3-channel row (pixel w is byte w of the row)."""
    pics = images(2, 16, 20, channels=1, seed=3)
    db = write_db(tmp_path / "db", [annotated(p) for p in pics])
    text = PARAMS.get(effect, f"{effect}: true").replace("value: 255 value: 0 value: 7", "value: 200")
    batch, rng = source(db, 2, f"noise_param {{ {text} }}").batch(0), generator(SEED, BATCH_STREAM, 0, 0)
    for item, pic in enumerate(pics):
        p = noise_dict(effect)
        if effect == "saltpepper":
            p["values"] = [200]
        mat = apply_noise(pic, p, rng)
        assert mat.shape[2] == (3 if effect == "jpeg" else 1)
        np.testing.assert_array_equal(batch["data"][item].numpy(), read_as_bytes(mat, 1, 0, 0, 16, 20))


def test_noise_effects_combined_with_resize_crop_mirror_and_mean(tmp_path):
    """Transform(cv::Mat)'s order: mirror draw, ApplyResize (interpolation draw), ApplyNoise
    (salt-and-pepper draws), the crop offsets; then mean, scale, mirror; boxes as ever."""
    pics = images(3, 30, 26, seed=5)
    db = write_db(tmp_path / "db", [annotated(p) for p in pics])
    noise = ("decolorize: true gauss_blur: true hist_eq: true clahe: true jpeg: 80 erode: true "
             "posterize: true inverse: true saltpepper: true saltpepper_param { fraction: 0.05 "
             "value: 9 } convert_to_hsv: true")
    layer = source(db, 3, "mirror: true crop_h: 16 crop_w: 18 mean_value: 100 scale: 0.5 "
                          "resize_param { resize_mode: WARP height: 20 width: 24 interp_mode: LINEAR "
                          f"interp_mode: CUBIC }} noise_param {{ {noise} }}")
    p = {e: True for e in ("decolorize", "gauss_blur", "hist_eq", "clahe", "erode", "posterize",
                           "inverse", "saltpepper", "convert_to_hsv")}
    p.update(jpeg=80, fraction=0.05, values=[9])
    for index in range(2):
        batch, rng = layer.batch(index), generator(SEED, BATCH_STREAM, 0, index)
        rows = []
        for item in range(3):
            pic = pics[(3 * index + item) % 3]
            mirror = rng.integers(2) == 1
            u = uniform(rng, 0, F(1))
            flag = cv2.INTER_LINEAR if u <= F(0.5) else cv2.INTER_CUBIC
            mat = apply_noise(cv2.resize(pic, (24, 20), interpolation=flag), p, rng)
            h_off, w_off = int(rng.integers(20 - 16 + 1)), int(rng.integers(24 - 18 + 1))
            want = read_as_bytes(mat, 3, h_off, w_off, 16, 18)
            if mirror:
                want = want[:, :, ::-1]
            np.testing.assert_array_equal(batch["data"][item].numpy(), (want - F(100)) * F(0.5))
            crop = [F(w_off) / F(24), F(h_off) / F(20), F(w_off + 18) / F(24), F(h_off + 16) / F(20)]
            warped = [(g, i, warp_bbox(b, 26, 30, 24, 20), d) for g, i, b, d in stored()]
            rows.append(transform_annotation(warped, crop, mirror))
        np.testing.assert_allclose(batch["label"].numpy(), label_rows(rows), rtol=0, atol=1e-6)


def test_noise_prob_is_ignored_with_a_warning_and_every_effect_applies(tmp_path):
    pic = images(1, 8, 8)[0]
    db = write_db(tmp_path / "db", [annotated(pic)])
    with pytest.warns(UserWarning, match=r"noise_param.prob is ignored: the fork never reads it"):
        layer = source(db, 1, "noise_param { prob: 0 inverse: true }")
    np.testing.assert_array_equal(layer.batch(0)["data"][0].numpy(), (255 - pic).transpose(2, 0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source(db, 1, "noise_param { inverse: true }")


def test_noise_leaves_raw_datums_as_they_are_with_a_warning(tmp_path):
    pic = images(1, 6, 6)[0]
    layer = source(write_db(tmp_path / "db", [annotated(pic, encoded=False)]), 1,
                   "noise_param { inverse: true }")
    with pytest.warns(UserWarning, match="noise_param changes encoded datums only"):
        got = layer.batch(0)["data"][0].numpy()
    np.testing.assert_array_equal(got, pic.transpose(2, 0, 1))


@pytest.mark.parametrize("channels, noise, message", [
    (1, "decolorize: true", r"noise_param.decolorize needs 3-channel images .* has 1"),
    (1, "convert_to_hsv: true", r"noise_param.convert_to_hsv needs 3-channel"),
    (1, "convert_to_lab: true", r"noise_param.convert_to_lab needs 3-channel"),
    (3, "saltpepper_param { value: 1 value: 2 }", r"either 1 saltpepper_param.value or as many as channels \(3\), got 2"),
    (3, "saltpepper: true saltpepper_param { fraction: 0.5 }", "saltpepper needs saltpepper_param.value"),
    (3, "saltpepper: true saltpepper_param { fraction: 0.5 value: 300 }", "must be byte values"),
])
def test_what_the_fork_aborts_on_is_a_data_error(tmp_path, channels, noise, message):
    db = write_db(tmp_path / "db", [annotated(images(1, 8, 8, channels=channels)[0])])
    with pytest.raises(DataError, match=rf"key '00000000'.*{message}"):
        source(db, 1, f"noise_param {{ {noise} }}").batch(0)


def test_salt_and_pepper_without_values_is_fine_when_it_hits_no_pixel(tmp_path):
    pic = images(1, 8, 8)[0]
    batch = source(write_db(tmp_path / "db", [annotated(pic)]), 1,
                   "noise_param { saltpepper: true saltpepper_param { fraction: 0.01 } }").batch(0)
    np.testing.assert_array_equal(batch["data"][0].numpy(), pic.transpose(2, 0, 1))


# ---- FIT_SMALL_SIZE ----------------------------------------------------------------

def infer_new_size(width, height, new_w, new_h):
    """InferNewSize, FIT_SMALL_SIZE: (height, width)."""
    orig_aspect = F(width) / F(height)
    if orig_aspect < F(new_w) / F(new_h):
        return int(new_w / orig_aspect), new_w
    return new_h, int(orig_aspect * new_h)


def fit_small_bbox(b, old_w, old_h, new_w, new_h):
    """UpdateBBoxByResizePolicy, FIT_SMALL_SIZE."""
    new_h, new_w = F(new_h), F(new_w)
    orig_aspect = F(old_w) / F(old_h)
    if orig_aspect < new_w / new_h:
        new_h = new_w / orig_aspect
    else:
        new_w = orig_aspect * new_h
    ow, oh = F(old_w), F(old_h)
    x0, y0, x1, y1 = b[0] * ow, b[1] * oh, b[2] * ow, b[3] * oh
    x0, x1 = max(F(0), x0 * new_w / ow), min(new_w, x1 * new_w / ow)
    y0, y1 = max(F(0), y0 * new_h / oh), min(new_h, y1 * new_h / oh)
    return [x0 / new_w, y0 / new_h, x1 / new_w, y1 / new_h], (new_h, new_w)


@pytest.mark.parametrize("scales", [None, (12, 10)])
def test_fit_small_size_gives_each_image_its_own_size(tmp_path, scales):
    """Images 20 x 40 and 30 x 15 into 16 x 16: the short side becomes 16, the long one
    follows the aspect ratio (truncated); each batch (of one) has its image's size. With
    height_scale/width_scale, ExtrapolateBBox rescales the boxes by crop size / scale."""
    pics = [images(1, 20, 40, seed=1)[0], images(1, 30, 15, seed=2)[0], images(1, 16, 16, seed=4)[0]]
    db = write_db(tmp_path / "db", [annotated(p) for p in pics])
    extra = f" height_scale: {scales[0]} width_scale: {scales[1]}" if scales else ""
    layer = source(db, 1, f"mirror: true resize_param {{ resize_mode: FIT_SMALL_SIZE height: 16 width: 16 "
                          f"interp_mode: AREA{extra} }}")
    assert layer.top_shapes["data"] == (1, 3, 16, 32)
    sizes = []
    for index, pic in enumerate(pics):
        batch, rng = layer.batch(index), generator(SEED, BATCH_STREAM, 0, index)
        mirror = rng.integers(2) == 1
        uniform(rng, 0, F(1))    # the pick among one interpolation
        height, width = infer_new_size(pic.shape[1], pic.shape[0], 16, 16)
        want = cv2.resize(pic, (width, height), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
        np.testing.assert_array_equal(batch["data"][0].numpy(), want[:, :, ::-1] if mirror else want)
        sizes.append(tuple(batch["data"].shape))
        annos = []
        for g, i, b, d in stored():
            moved, (res_h, res_w) = fit_small_bbox(b, pic.shape[1], pic.shape[0], 16, 16)
            annos.append((g, i, moved, d))
        rows = transform_annotation(annos, [F(0), F(0), F(1), F(1)], mirror)
        if scales:   # ExtrapolateBBox, after the mirror; the crop is the whole image
            crop_h, crop_w = res_h * (F(1) - F(0)), res_w * (F(1) - F(0))
            rows = [(g, i, [b[0] * crop_w / F(scales[1]), b[1] * crop_h / F(scales[0]),
                            b[2] * crop_w / F(scales[1]), b[3] * crop_h / F(scales[0])], d)
                    for g, i, b, d in rows]
        np.testing.assert_array_equal(batch["label"].numpy(), label_rows([rows]))
        if scales:
            assert batch["label"][0, 0, :, 5].max() > 1    # no longer within the image
    assert sizes == [(1, 3, 16, 32), (1, 3, 32, 16), (1, 3, 16, 16)]


def test_fit_small_size_with_a_crop_extrapolates_by_the_crops_size(tmp_path):
    pic = images(1, 20, 40, seed=1)[0]
    layer = source(write_db(tmp_path / "db", [annotated(pic)]), 1,
                   "crop_h: 12 crop_w: 20 mirror: true resize_param { resize_mode: FIT_SMALL_SIZE "
                   "height: 16 width: 16 height_scale: 6 width_scale: 5 }")
    assert layer.top_shapes["data"] == (1, 3, 12, 20)
    batch, rng = layer.batch(0), generator(SEED, BATCH_STREAM, 0, 0)
    mirror = rng.integers(2) == 1
    resized = cv2.resize(pic, (32, 16), interpolation=cv2.INTER_LINEAR)
    h_off, w_off = int(rng.integers(16 - 12 + 1)), int(rng.integers(32 - 20 + 1))
    want = resized[h_off:h_off + 12, w_off:w_off + 20].transpose(2, 0, 1)
    np.testing.assert_array_equal(batch["data"][0].numpy(), want[:, :, ::-1] if mirror else want)
    crop = [F(w_off) / F(32), F(h_off) / F(16), F(w_off + 20) / F(32), F(h_off + 12) / F(16)]
    annos = [(g, i, fit_small_bbox(b, 40, 20, 16, 16)[0], d) for g, i, b, d in stored()]
    crop_h, crop_w = F(16) * (crop[3] - crop[1]), F(32) * (crop[2] - crop[0])
    rows = [(g, i, [b[0] * crop_w / F(5), b[1] * crop_h / F(6), b[2] * crop_w / F(5), b[3] * crop_h / F(6)], d)
            for g, i, b, d in transform_annotation(annos, crop, mirror)]
    np.testing.assert_array_equal(batch["label"].numpy(), label_rows([rows]))
    too_big = source(write_db(tmp_path / "db2", [annotated(pic)]), 1,
                     "crop_h: 12 crop_w: 20 mirror: true resize_param { resize_mode: FIT_SMALL_SIZE "
                     "height: 16 width: 16 height_scale: 13 width_scale: 5 }")
    with pytest.raises(DataError, match="smaller than resize_param's width_scale x height_scale 5 x 13"):
        too_big.batch(0)


def test_fit_small_size_needs_batch_size_one(tmp_path):
    db = write_db(tmp_path / "db", [annotated(p) for p in images(2, 8, 8)])
    with pytest.raises(DataError, match=r"layer 'data' \(AnnotatedData\): resize_param.resize_mode "
                                        r"FIT_SMALL_SIZE .* needs data_param.batch_size 1 .*got 2"):
        source(db, 2, "resize_param { resize_mode: FIT_SMALL_SIZE height: 8 width: 8 }")


# ---- a net over batches of different sizes -------------------------------------------

SMALL_DATA = '''name: "ssd-small"
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
  transform_param {{ mirror: true mean_value: 127 scale: 0.0078125
    resize_param {{ resize_mode: FIT_SMALL_SIZE height: 32 width: 32 interp_mode: LINEAR }}
    noise_param {{ gauss_blur: true saltpepper: true saltpepper_param {{ fraction: 0.01 value: 0 }} }} }}
  data_param {{ source: "{root}/db" batch_size: 1 backend: LMDB }}
  annotated_data_param {{ label_map_file: "{root}/labelmap.prototxt" }} }}
'''


def test_an_ssd_net_trains_over_batches_of_different_sizes(tmp_path):
    """convert_annoset of images 32 x 48, 40 x 32 and 32 x 32; FIT_SMALL_SIZE gives data tops
    of those sizes, PriorBox as many priors as each feature map has cells, and MultiBoxLoss
    and backward follow each batch's count, as the fork reshapes its layers per batch."""
    from runner.tools.convert_annoset import main as convert_annoset

    lines = []
    for i, (h, w) in enumerate([(32, 48), (40, 32), (32, 32)]):
        image = np.full((h, w, 3), 60, np.uint8)
        image[8:20, 10:24] = 220
        cv2.imwrite(str(tmp_path / f"{i}.png"), image)
        (tmp_path / f"{i}.xml").write_text(
            f"<annotation><size><width>{w}</width><height>{h}</height></size><object><name>square"
            "</name><difficult>0</difficult><bndbox><xmin>10</xmin><ymin>8</ymin><xmax>24</xmax>"
            "<ymax>20</ymax></bndbox></object></annotation>")
        lines.append(f"{i}.png {i}.xml")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "labelmap.prototxt").write_text(LABEL_MAP)
    assert convert_annoset([f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db"),
                            "--anno_type", "detection", "--encoded",
                            "--label_map_file", str(tmp_path / "labelmap.prototxt")]) == 0
    net = Net(parse_net_text(SMALL_DATA.format(root=tmp_path) + BODY + LOSS), phase="TRAIN",
              source_kwargs={"workers": 0, "seed": 0})
    assert net.blob_shapes["data"] == (1, 3, 32, 48)
    source = net.sources[0]
    shapes, priors = [], []
    for _ in range(4):
        blobs = net(next(source))
        loss = net.objective(blobs)
        net.zero_grad()
        loss.backward()
        shapes.append(tuple(blobs["data"].shape))
        priors.append(blobs["priorbox"].shape[2] // 4)
        assert torch.isfinite(loss) and loss > 0
        grad = net.layers["conv1"].blobs[0].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    source.close()
    assert shapes == [(1, 3, 32, 48), (1, 3, 40, 32), (1, 3, 32, 32), (1, 3, 32, 48)]
    # conv2 is a quarter of the image (stride 2 twice, padded); 4 priors a cell
    assert priors == [8 * 12 * 4, 10 * 8 * 4, 8 * 8 * 4, 8 * 12 * 4]
    # DetectionOutput too takes each batch's priors (a TEST net reading the same data)
    tail = DEPLOY[DEPLOY.index('layer { name: "conf_reshape"'):]
    test = Net(parse_net_text(SMALL_DATA.format(root=tmp_path) + BODY + tail), phase="TEST",
               source_kwargs={"workers": 0, "seed": 0})
    for _ in range(3):
        detections = test(next(test.sources[0]))["detection_out"]
        assert detections.shape[-1] == 7 and detections.shape[2] >= 1
    test.sources[0].close()
    # and the solver's training loop over them
    solver = make_solver(SMALL_DATA.format(root=tmp_path) + BODY + LOSS, tmp_path / "small",
                         base_lr=0.01, max_iter=6, random_seed=3)
    solver.solve()
    assert (tmp_path / "small_iter_6.caffemodel").is_file()
