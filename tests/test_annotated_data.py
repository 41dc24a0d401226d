"""The SSD fork's AnnotatedData layer on tiny AnnotatedDatum LMDBs written here (raw and
PNG-encoded datums), against transcriptions of the fork's code in this file (ProjectBBox,
SampleBBox, JaccardOverlap, CropImage, ExpandImage, UpdateBBoxByResizePolicy, the label
layout) that replay the layer's draws from the same numpy Generator; bad records and
unsupported fields are DataErrors naming the record or the field. noise_param and
FIT_SMALL_SIZE are in test_annotated_data_noise.py."""
import math

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from runner.data.ssd_boxes import Box, satisfy_sample_constraint
from runner.data.datum import DataError, image_to_datum
from runner.data.lmdb_store import write_lmdb
from runner.data.source import BATCH_STREAM, generator
from runner.data.transformer import DataTransformer
from runner.layers.base import layer_type_list
from runner.proto import caffe_pb2
from runner.sources import source_factory

F = np.float32
SEED = 7
# (group_label, instance_id, xmin, ymin, xmax, ymax, difficult)
BOXES = [(1, 0, 0.1, 0.2, 0.6, 0.7, False), (1, 1, 0.5, 0.5, 0.9, 0.95, True),
         (3, 0, 0.05, 0.6, 0.3, 0.9, False)]


# ---- records ----------------------------------------------------------------------

def annotated(image, boxes=BOXES, encoded=True, typed=True, label=0):
    """An AnnotatedDatum of an HxWxC uint8 image: PNG bytes (with the image's size, as the
    fork's convert_annoset stores it) or raw CHW bytes."""
    record = caffe_pb2.AnnotatedDatum()
    if encoded:
        record.datum.data = cv2.imencode(".png", image)[1].tobytes()
        record.datum.encoded = True
        record.datum.channels, record.datum.height, record.datum.width = \
            image.shape[2], image.shape[0], image.shape[1]
        record.datum.label = label
    else:
        record.datum.CopyFrom(image_to_datum(image, label))
    if typed:
        record.type = caffe_pb2.AnnotatedDatum.BBOX
    for group_label, instance, *corners, difficult in boxes:
        group = next((g for g in record.annotation_group if g.group_label == group_label), None) \
            or record.annotation_group.add(group_label=group_label)
        bbox = group.annotation.add(instance_id=instance).bbox
        bbox.xmin, bbox.ymin, bbox.xmax, bbox.ymax = corners
        bbox.difficult = difficult
    return record


def images(count, height, width, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, channels), dtype=np.uint8) for _ in range(count)]


def write_db(path, records):
    write_lmdb(path, [(f"{i:08d}", r if isinstance(r, bytes) else r.SerializeToString())
                      for i, r in enumerate(records)])
    return path


def source(db, batch_size, transform="", anno="", phase="TRAIN", tops=("data", "label")):
    text = (f'name: "data" type: "AnnotatedData" {" ".join(f"top: {t!r}" for t in tops)} '
            f'data_param {{ source: "{db}" batch_size: {batch_size} backend: LMDB }} '
            f'transform_param {{ {transform} }} annotated_data_param {{ {anno} }}')
    lp = text_format.Parse(text.replace("'", '"'), caffe_pb2.LayerParameter())
    return source_factory("AnnotatedData")(lp, phase, seed=SEED)


# ---- the fork's functions, transcribed (boxes as float32 [xmin, ymin, xmax, ymax]) ----

def uniform(rng, a, b):
    """caffe_rng_uniform as the layer draws it: a + (b - a) * U, rounded to float32."""
    a, b = float(F(a)), float(F(b))
    return F(a + (b - a) * rng.random())


def box(b):
    return [F(v) for v in b]


def bbox_size(b):
    return F(0) if b[2] < b[0] or b[3] < b[1] else (b[2] - b[0]) * (b[3] - b[1])


def clip_bbox(b):
    return [max(min(v, F(1)), F(0)) for v in b]


def project_bbox(src, b):
    if b[0] >= src[2] or b[2] <= src[0] or b[1] >= src[3] or b[3] <= src[1]:
        return None
    w, h = src[2] - src[0], src[3] - src[1]
    p = clip_bbox([(b[0] - src[0]) / w, (b[1] - src[1]) / h, (b[2] - src[0]) / w,
                   (b[3] - src[1]) / h])
    return p if bbox_size(p) > 0 else None


def jaccard_overlap(a, b):
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return F(0)
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw > 0 and ih > 0:
        inter = iw * ih
        return inter / (bbox_size(a) + bbox_size(b) - inter)
    return F(0)


def centre_inside(src, b):
    x, y = (b[0] + b[2]) / F(2), (b[1] + b[3]) / F(2)
    return src[0] <= x <= src[2] and src[1] <= y <= src[3]


def transform_annotation(annos, crop, mirror=False, emit_centre=False):
    """[(group, instance, box, difficult)] projected onto `crop` (groups keep their order)."""
    out = []
    for group, instance, b, difficult in annos:
        if emit_centre and not centre_inside(crop, b):
            continue
        p = project_bbox(crop, b)
        if p is not None:
            if mirror:
                p[0], p[2] = F(1) - p[2], F(1) - p[0]
            out.append((group, instance, p, difficult))
    return out


def sample_bbox(rng, min_scale, max_scale, min_aspect, max_aspect):
    scale = uniform(rng, min_scale, max_scale)
    aspect = uniform(rng, min_aspect, max_aspect)
    aspect = min(max(aspect, F(float(scale) ** 2)), F(1 / float(scale) ** 2))
    w = F(float(scale) * math.sqrt(float(aspect)))
    h = F(float(scale) / math.sqrt(float(aspect)))
    x, y = uniform(rng, 0, F(1) - w), uniform(rng, 0, F(1) - h)
    return [x, y, x + w, y + h]


def crop_image(image, b):
    """CropImage's pixels: the clipped box scaled to pixels, truncated."""
    b = clip_bbox(b)
    height, width = image.shape[:2]
    x0, y0, x1, y1 = b[0] * F(width), b[1] * F(height), b[2] * F(width), b[3] * F(height)
    return image[int(y0):int(y0) + int(y1 - y0), int(x0):int(x0) + int(x1 - x0)]


def warp_bbox(b, old_w, old_h, new_w, new_h):
    """UpdateBBoxByResizePolicy, WARP."""
    ow, oh, nw, nh = F(old_w), F(old_h), F(new_w), F(new_h)
    x0, y0, x1, y1 = b[0] * ow, b[1] * oh, b[2] * ow, b[3] * oh
    return [max(F(0), x0 * nw / ow) / nw, max(F(0), y0 * nh / oh) / nh,
            min(nw, x1 * nw / ow) / nw, min(nh, y1 * nh / oh) / nh]


def jpeg(image):
    """EncodeCVMatToDatum(.., "jpg") and the next step's DecodeDatumToCVMatNative."""
    decoded = cv2.imdecode(cv2.imencode(".jpg", image)[1], cv2.IMREAD_ANYCOLOR)
    return decoded[:, :, None] if decoded.ndim == 2 else decoded


def stored(boxes=BOXES):
    return [(g, i, box(b), d) for g, i, *b, d in boxes]


def label_rows(per_item):
    """The label top: [item_id, group_label, instance_id, xmin, ymin, xmax, ymax, difficult]
    per box (each item's boxes listed group by group); one row of -1 if there is none."""
    rows = [[item, g, i, *b, d] for item, annos in enumerate(per_item) for g, i, b, d in annos]
    return np.asarray(rows or [[-1] * 8], F).reshape(1, 1, -1, 8)


# ---- tests ------------------------------------------------------------------------

def test_annotated_data_is_a_layer_type():
    assert "AnnotatedData" in layer_type_list()


@pytest.mark.parametrize("encoded", [False, True])
def test_without_augmentation_data_is_the_plain_transform_and_labels_the_stored_boxes(tmp_path, encoded):
    pics = images(3, 6, 8)
    db = write_db(tmp_path / "db", [annotated(p, encoded=encoded) for p in pics])
    transform = "mean_value: 10 mean_value: 20 mean_value: 30 scale: 0.5"
    layer = source(db, 2, transform)
    assert layer.top_shapes == {"data": (2, 3, 6, 8), "label": (1, 1, 3, 8)}
    assert layer.num_records == 3
    plain = DataTransformer(text_format.Parse(transform, caffe_pb2.TransformationParameter()),
                            "TRAIN")
    batches = iter(layer)
    for index in range(2):
        batch = next(batches)
        assert torch.equal(batch["data"], layer.batch(index)["data"])    # depends on the index only
        expected = np.empty((2, 3, 6, 8), F)
        for item in range(2):
            plain.transform_into(np.ascontiguousarray(pics[(2 * index + item) % 3].transpose(2, 0, 1)),
                                 expected[item], None, "")
        np.testing.assert_array_equal(batch["data"].numpy(), expected)
        np.testing.assert_array_equal(batch["label"].numpy(), label_rows([stored(), stored()]))
    layer.skip_batches(3)
    assert torch.equal(next(iter(layer))["data"], layer.batch(5)["data"])


@pytest.mark.parametrize("encoded", [False, True])
def test_crop_and_mirror_draw_as_the_plain_transformer_and_move_the_boxes(tmp_path, encoded):
    pics = images(4, 9, 10)
    db = write_db(tmp_path / "db", [annotated(p, encoded=encoded) for p in pics])
    transform = "crop_size: 6 mirror: true mean_value: 100 scale: 0.25"
    layer = source(db, 4, transform)
    plain = DataTransformer(text_format.Parse(transform, caffe_pb2.TransformationParameter()),
                            "TRAIN")
    mirrored = set()
    for index in range(3):
        batch = layer.batch(index)
        rng, shadow = (generator(SEED, BATCH_STREAM, 0, index) for _ in range(2))
        expected, per_item = np.empty((4, 3, 6, 6), F), []
        for item, pic in enumerate(pics):
            plain.transform_into(np.ascontiguousarray(pic.transpose(2, 0, 1)), expected[item], rng, "")
            mirror = shadow.integers(2) == 1
            h_off, w_off = shadow.integers(9 - 6 + 1), shadow.integers(10 - 6 + 1)
            crop = [F(w_off) / F(10), F(h_off) / F(9), F(w_off + 6) / F(10), F(h_off + 6) / F(9)]
            per_item.append(transform_annotation(stored(), crop, mirror))
            mirrored.add(bool(mirror))
        np.testing.assert_array_equal(batch["data"].numpy(), expected)
        np.testing.assert_array_equal(batch["label"].numpy(), label_rows(per_item))
    assert mirrored == {True, False}


@pytest.mark.parametrize("encoded", [False, True])
def test_a_mean_file_is_taken_at_the_source_pixel_of_a_raw_datum_and_the_output_pixel_of_a_decoded_one(
        tmp_path, encoded):
    """The fork's Transform(cv::Mat) indexes the mean by the mirrored column; its raw-Datum
    Transform, as BVLC's, by the pixel's own; with a crop, the former reads past the mean."""
    pics = images(3, 4, 5)
    mean = np.arange(60, dtype=F).reshape(3, 4, 5)
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=4, width=5, data=mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    mean_file = f'mean_file: "{tmp_path / "mean.binaryproto"}"'
    db = write_db(tmp_path / "db", [annotated(p, encoded=encoded) for p in pics])
    batch = source(db, 3, f"mirror: true {mean_file}").batch(0)
    rng = generator(SEED, BATCH_STREAM, 0, 0)
    for item, pic in enumerate(pics):
        pixels = pic.transpose(2, 0, 1).astype(F)
        out = (pixels - mean)[:, :, ::-1] if not encoded else pixels[:, :, ::-1] - mean
        np.testing.assert_array_equal(batch["data"][item].numpy(),
                                      out if rng.integers(2) == 1 else pixels - mean)
    if encoded:   # a mean of the crop's size, which the fork indexes by the image's
        blob = caffe_pb2.BlobProto(num=1, channels=3, height=3, width=3, data=[0.0] * 27)
        (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
        with pytest.raises(DataError, match="a mean file with a crop of a decoded image"):
            source(db, 3, f"crop_size: 3 {mean_file}").batch(0)


def test_mirror_flips_pixels_and_boxes(tmp_path):
    pics = images(2, 5, 7)
    db = write_db(tmp_path / "db", [annotated(p, encoded=False) for p in pics])
    layer = source(db, 2, "mirror: true", phase="TEST")
    seen = set()
    for index in range(3):
        batch, rng = layer.batch(index), generator(SEED, BATCH_STREAM, 0, index)
        labels = batch["label"].numpy()[0, 0]
        for item, pic in enumerate(pics):
            mirror = rng.integers(2) == 1
            seen.add(bool(mirror))
            pixels = pic[:, ::-1] if mirror else pic
            np.testing.assert_array_equal(batch["data"][item].numpy(), pixels.transpose(2, 0, 1))
            rows = labels[labels[:, 0] == item]
            want = np.asarray([b for *_, b, _ in stored()])
            if mirror:
                want = np.stack([1 - want[:, 2], want[:, 1], 1 - want[:, 0], want[:, 3]], 1)
            np.testing.assert_allclose(rows[:, 3:7], want, rtol=0, atol=1e-7)
    assert seen == {True, False}


@pytest.mark.parametrize("encoded", [False, True])
def test_batch_sampler_crops_to_a_box_meeting_its_overlap_and_projects_the_boxes(tmp_path, encoded):
    """TEST phase too: the fork samples in every phase. crop_size 8 (a centre crop in TEST)
    gives every sampled crop one size; emit_constraint CENTER drops boxes whose centre falls
    outside the sampled box, then outside the centre crop. An encoded crop is re-encoded."""
    pics = images(3, 40, 40)
    boxes = [(1, 0, 0.1, 0.1, 0.6, 0.7, False), (2, 0, 0.7, 0.7, 0.9, 0.95, False)]
    db = write_db(tmp_path / "db", [annotated(p, boxes, encoded=encoded) for p in pics])
    anno = ("batch_sampler { sampler { min_scale: 0.5 max_scale: 1 min_aspect_ratio: 0.5 "
            "max_aspect_ratio: 2 } sample_constraint { min_jaccard_overlap: 0.5 } "
            "max_sample: 1 max_trials: 50 }")
    layer = source(db, 3, "crop_size: 8 emit_constraint { emit_type: CENTER }", anno, phase="TEST")
    objects, cropped, dropped = stored(boxes), 0, 0
    for index in range(4):
        batch, rng = layer.batch(index), generator(SEED, BATCH_STREAM, 0, index)
        expected, per_item = np.empty((3, 3, 8, 8), F), []
        for item, pic in enumerate(pics):
            found = []
            for _ in range(50):
                if found:
                    break
                sampled = sample_bbox(rng, 0.5, 1, 0.5, 2)
                if any(jaccard_overlap(sampled, b) >= F(0.5) for _, _, b, _ in objects):
                    found.append(sampled)
            annos, image = objects, pic
            if found:
                sampled = found[int(rng.integers(2 ** 32)) % len(found)]
                assert max(jaccard_overlap(sampled, b) for _, _, b, _ in objects) >= F(0.5)
                image = jpeg(crop_image(pic, sampled)) if encoded else crop_image(pic, sampled)
                annos = transform_annotation(objects, clip_bbox(sampled), emit_centre=True)
                cropped += 1
                dropped += len(objects) - len(annos)
            height, width = image.shape[:2]
            h_off, w_off = (height - 8) // 2, (width - 8) // 2
            expected[item] = image[h_off:h_off + 8, w_off:w_off + 8].transpose(2, 0, 1)
            centre = [F(w_off) / F(width), F(h_off) / F(height), F(w_off + 8) / F(width),
                      F(h_off + 8) / F(height)]
            per_item.append(transform_annotation(annos, centre, emit_centre=True))
        np.testing.assert_array_equal(batch["data"].numpy(), expected)
        np.testing.assert_array_equal(batch["label"].numpy(), label_rows(per_item))
    assert cropped > 6 and dropped > 0


def test_only_the_first_kind_of_sample_constraint_decides():
    """SatisfySampleConstraint's `found` is set by the jaccard test and never reset: an
    object coverage above its maximum does not reject the sample."""
    sampled, obj = Box(*box([0, 0, 0.5, 0.5])), Box(*box([0.1, 0.1, 0.4, 0.4]))
    constraint = caffe_pb2.SampleConstraint(min_jaccard_overlap=0.1, max_object_coverage=0.5)
    assert jaccard_overlap(box([0, 0, 0.5, 0.5]), box([0.1, 0.1, 0.4, 0.4])) >= F(0.1)
    assert satisfy_sample_constraint(sampled, [obj], constraint)
    constraint = caffe_pb2.SampleConstraint(max_object_coverage=0.5)
    assert not satisfy_sample_constraint(sampled, [obj], constraint)


def test_expand_places_a_raw_image_in_the_forks_canvas_of_spaces(tmp_path):
    """A raw datum's canvas holds the fork's ' ' bytes (32), whatever the mean."""
    pics = images(2, 10, 12)
    db = write_db(tmp_path / "db", [annotated(p, encoded=False) for p in pics])
    layer = source(db, 2, "crop_size: 10 mean_value: 2 expand_param { prob: 1 max_expand_ratio: 2 }",
                   phase="TEST")
    for index in range(2):
        batch, rng = layer.batch(index), generator(SEED, BATCH_STREAM, 0, index)
        expected, per_item = np.empty((2, 3, 10, 10), F), []
        for item, pic in enumerate(pics):
            assert not uniform(rng, 0, 1) > 1
            ratio = uniform(rng, 1, 2)
            height, width = int(F(10) * ratio), int(F(12) * ratio)
            h_off = F(math.floor(uniform(rng, 0, F(height - 10))))
            w_off = F(math.floor(uniform(rng, 0, F(width - 12))))
            canvas = np.full((height, width, 3), 32, np.uint8)
            canvas[int(h_off):int(h_off) + 10, int(w_off):int(w_off) + 12] = pic
            expand = [-w_off / F(12), -h_off / F(10), (F(width) - w_off) / F(12),
                      (F(height) - h_off) / F(10)]
            annos = transform_annotation(stored(), expand)
            for (*_, before, _), (*_, after, _) in zip(stored(), annos):   # shrunk by the ratio
                assert after[2] - after[0] == pytest.approx((before[2] - before[0]) * 12 / width, abs=1e-6)
            top, left = (height - 10) // 2, (width - 10) // 2
            expected[item] = canvas[top:top + 10, left:left + 10].transpose(2, 0, 1).astype(F) - F(2)
            centre = [F(left) / F(width), F(top) / F(height), F(left + 10) / F(width),
                      F(top + 10) / F(height)]
            per_item.append(transform_annotation(annos, centre))
        np.testing.assert_array_equal(batch["data"].numpy(), expected)
        np.testing.assert_array_equal(batch["label"].numpy(), label_rows(per_item))


def test_expand_fills_an_encoded_images_canvas_with_the_mean_and_re_encodes(tmp_path):
    """ExpandImage on a decoded image: the canvas is the mean values (rounded), the result
    re-encoded as JPEG; then resize_param WARP 16 x 16 makes every item one size."""
    pics = images(2, 10, 12)
    db = write_db(tmp_path / "db", [annotated(p) for p in pics])
    means = [10, 20, 30.6]
    layer = source(db, 2, "mean_value: 10 mean_value: 20 mean_value: 30.6 "
                          "resize_param { height: 16 width: 16 } "
                          "expand_param { prob: 1 max_expand_ratio: 3 }")
    for index in range(2):
        batch, rng = layer.batch(index), generator(SEED, BATCH_STREAM, 0, index)
        expected, per_item = np.empty((2, 3, 16, 16), F), []
        for item, pic in enumerate(pics):
            uniform(rng, 0, 1)
            ratio = uniform(rng, 1, 3)
            height, width = int(F(10) * ratio), int(F(12) * ratio)
            h_off = F(math.floor(uniform(rng, 0, F(height - 10))))
            w_off = F(math.floor(uniform(rng, 0, F(width - 12))))
            canvas = np.empty((height, width, 3), np.uint8)
            canvas[:] = np.rint(means)          # 30.6 -> 31
            canvas[int(h_off):int(h_off) + 10, int(w_off):int(w_off) + 12] = pic
            resized = cv2.resize(jpeg(canvas), (16, 16), interpolation=cv2.INTER_LINEAR)
            expected[item] = resized.transpose(2, 0, 1).astype(F) - np.asarray(means, F)[:, None, None]
            expand = [-w_off / F(12), -h_off / F(10), (F(width) - w_off) / F(12),
                      (F(height) - h_off) / F(10)]
            per_item.append([(g, i, project_bbox(box([0, 0, 1, 1]), warp_bbox(b, width, height, 16, 16)), d)
                             for g, i, b, d in transform_annotation(stored(), expand)])
        np.testing.assert_array_equal(batch["data"].numpy(), expected)
        np.testing.assert_array_equal(batch["label"].numpy(), label_rows(per_item))


def test_distort_changes_pixels_but_keeps_the_shape_and_the_boxes(tmp_path):
    pics = images(2, 8, 8)
    db = write_db(tmp_path / "db", [annotated(p) for p in pics])
    plain = source(db, 2).batch(0)
    distort = ("distort_param { brightness_prob: 1 brightness_delta: 32 contrast_prob: 1 "
               "contrast_lower: 0.5 contrast_upper: 1.5 saturation_prob: 1 saturation_lower: 0.5 "
               "saturation_upper: 1.5 hue_prob: 1 hue_delta: 18 random_order_prob: 1 }")
    batch = source(db, 2, distort).batch(0)
    assert batch["data"].shape == plain["data"].shape
    assert not torch.equal(batch["data"], plain["data"])
    assert torch.equal(batch["label"], plain["label"])

    # brightness alone, replayed: branch, probability and delta, then the other four's
    # probabilities; the result re-encoded as JPEG
    batch = source(db, 2, "distort_param { brightness_prob: 1 brightness_delta: 32 }").batch(0)
    rng = generator(SEED, BATCH_STREAM, 0, 0)
    for item, pic in enumerate(pics):
        uniform(rng, 0, 1), uniform(rng, 0, 1)
        delta = uniform(rng, -32, 32)
        [uniform(rng, 0, 1) for _ in range(4)]
        bright = np.clip(np.rint(pic.astype(F) + delta), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(batch["data"][item].numpy(),
                                      jpeg(bright).transpose(2, 0, 1).astype(F))


def test_saturation_always_goes_through_hsv(tmp_path):
    """AdjustSaturation's test `fabs(delta - 1.f) != 1e-3` always holds: a factor of 1 still
    converts to HSV and back, which changes pixels."""
    pic = images(1, 8, 8)[0]
    db = write_db(tmp_path / "db", [annotated(pic)])
    batch = source(db, 1, "distort_param { saturation_prob: 1 saturation_lower: 1 "
                          "saturation_upper: 1 }").batch(0)
    round_trip = cv2.cvtColor(cv2.cvtColor(pic, cv2.COLOR_BGR2HSV), cv2.COLOR_HSV2BGR)
    assert not np.array_equal(jpeg(round_trip), jpeg(pic))
    np.testing.assert_array_equal(batch["data"][0].numpy(), jpeg(round_trip).transpose(2, 0, 1))


def test_expand_canvas_rounds_mean_values_and_truncates_a_mean_file(tmp_path):
    """ExpandImage: a Scalar of mean values is rounded into bytes; a mean file's floats are
    cast to char, truncated."""
    db = write_db(tmp_path / "db", [annotated(images(1, 4, 4)[0])])
    expand = "expand_param { max_expand_ratio: 2 }"
    layer = source(db, 1, f"mean_value: 10.5 mean_value: 20.4 mean_value: 30.6 {expand}")
    np.testing.assert_array_equal(layer._expand_canvas(2, 3, 3, "")[0, 0], [10, 20, 31])
    mean = np.asarray([10.9, 20.5, 200.7], F).repeat(6).reshape(3, 2, 3)
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=3, data=mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    layer = source(db, 1, f'mean_file: "{tmp_path / "mean.binaryproto"}" {expand}')
    np.testing.assert_array_equal(layer._expand_canvas(2, 3, 3, "")[1, 2], [10, 20, 200])
    with pytest.raises(DataError, match="the expanded image is 3 x 4 x 4, the mean file 3 x 2 x 3"):
        layer._expand_canvas(4, 4, 3, "")


@pytest.mark.parametrize("modes", [[], ["LINEAR", "NEAREST", "CUBIC"]])
def test_resize_warp_keeps_normalized_boxes(tmp_path, modes):
    pics = images(2, 20, 30)
    db = write_db(tmp_path / "db", [annotated(p) for p in pics])
    interp = "".join(f" interp_mode: {m}" for m in modes)
    layer = source(db, 2, f"resize_param {{ resize_mode: WARP height: 300 width: 300{interp} }}")
    assert layer.top_shapes["data"] == (2, 3, 300, 300)
    flags = {"LINEAR": cv2.INTER_LINEAR, "NEAREST": cv2.INTER_NEAREST, "CUBIC": cv2.INTER_CUBIC}
    batch, rng = layer.batch(0), generator(SEED, BATCH_STREAM, 0, 0)
    for item, pic in enumerate(pics):
        flag = cv2.INTER_LINEAR
        if modes:
            cumulative = np.cumsum(np.full(len(modes), F(1) / F(len(modes))), dtype=F)
            flag = flags[modes[int(np.searchsorted(cumulative, uniform(rng, 0, cumulative[-1])))]]
        np.testing.assert_array_equal(batch["data"][item].numpy(),
                                      cv2.resize(pic, (300, 300), interpolation=flag).transpose(2, 0, 1))
    want = label_rows([stored(), stored()])
    np.testing.assert_allclose(batch["label"].numpy(), want, rtol=0, atol=1e-6)


def test_resize_fit_large_size_and_pad(tmp_path):
    """A 20 x 40 image into 32 x 32: resized to 32 x 16, 8 rows of pad_value above and below;
    the boxes' rows follow UpdateBBoxByResizePolicy's float padding."""
    pic = images(1, 20, 40)[0]
    db = write_db(tmp_path / "db", [annotated(pic)])
    batch = source(db, 1, "resize_param { resize_mode: FIT_LARGE_SIZE_AND_PAD height: 32 width: 32 "
                          "pad_value: 7 }").batch(0)
    expected = np.full((32, 32, 3), 7, np.uint8)
    expected[8:24] = cv2.resize(pic, (32, 16), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(batch["data"][0].numpy(), expected.transpose(2, 0, 1))
    padding = (F(32) - F(32) / (F(40) / F(20))) / F(2)
    rows = []
    for g, i, b, d in stored():
        y0 = padding + max(F(0), b[1] * F(20) * (F(32) - F(2) * padding) / F(20))
        y1 = padding + min(F(32), b[3] * F(20) * (F(32) - F(2) * padding) / F(20))
        rows.append((g, i, [b[0] * F(40) * F(32) / F(40) / F(32), y0 / F(32),
                            b[2] * F(40) * F(32) / F(40) / F(32), y1 / F(32)], d))
    np.testing.assert_array_equal(batch["label"].numpy(), label_rows([rows]))


def test_a_batch_without_boxes_gives_one_row_of_minus_one(tmp_path):
    db = write_db(tmp_path / "db", [annotated(p, boxes=[]) for p in images(2, 4, 4)])
    layer = source(db, 2)
    assert layer.top_shapes["label"] == (1, 1, 1, 8)
    np.testing.assert_array_equal(layer.batch(0)["label"].numpy(), -np.ones((1, 1, 1, 8), F))
    assert set(source(db, 2, tops=("data",)).batch(0)) == {"data"}


def test_records_without_a_type_give_their_datum_labels(tmp_path):
    db = write_db(tmp_path / "db", [annotated(p, typed=False, label=i)
                                    for i, p in enumerate(images(3, 4, 4))])
    layer = source(db, 2)
    assert layer.top_shapes == {"data": (2, 3, 4, 4), "label": (2,)}
    assert layer.batch(1)["label"].tolist() == [2, 0]


def test_bad_records_name_their_key(tmp_path):
    pics = images(2, 4, 4)
    plain = image_to_datum(pics[1], 0).SerializeToString()
    layer = source(write_db(tmp_path / "plain", [annotated(pics[0]), plain]), 2)
    with pytest.raises(DataError, match=r"layer 'data': LMDB '.*plain' key '00000001': record "
                                        r"is not an AnnotatedDatum"):
        layer.batch(0)
    inverted = [(1, 0, 0.6, 0.2, 0.1, 0.7, False)]
    layer = source(write_db(tmp_path / "inverted", [annotated(pics[0]), annotated(pics[1], inverted)]), 2)
    with pytest.raises(DataError, match=r"key '00000001': group 1 instance 0 has box "
                                        r"\(0.6.*xmin <= xmax"):
        layer.batch(0)


@pytest.mark.parametrize("transform, message", [
    ("resize_param { resize_mode: FIT_SMALL_SIZE height: 8 width: 8 }",
     "FIT_SMALL_SIZE gives each image its own size, so it needs data_param.batch_size 1 .*got 2"),
    ("expand_param { prob: 1 }", "max_expand_ratio must be > 1"),
    ("crop_h: 3", "give both crop_h and crop_w"),
])
def test_unsupported_fields_are_refused_naming_them(tmp_path, transform, message):
    db = write_db(tmp_path / "db", [annotated(images(1, 4, 4)[0])])
    with pytest.raises(DataError, match=rf"layer 'data' \(AnnotatedData\): .*{message}"):
        source(db, 2, transform)


def test_other_data_layers_still_refuse_the_forks_fields():
    param = text_format.Parse("expand_param { max_expand_ratio: 2 }", caffe_pb2.TransformationParameter())
    with pytest.raises(DataError, match="expand_param"):
        DataTransformer(param, "TRAIN")
