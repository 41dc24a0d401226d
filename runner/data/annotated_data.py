"""weiliu89/caffe's (SSD fork) AnnotatedData layer as a Source: AnnotatedDatum records from an
LMDB or LevelDB with SSD's training augmentation, giving `data` (N x C x H x W float32) and
the boxes as `label` (1 x 1 x num_boxes x 8, rows [item_id, group_label, instance_id, xmin,
ymin, xmax, ymax, difficult]; one row of -1 when the batch has no box). Records without an
annotation type (and a layer without annotated_data_param.anno_type) give one label per item
from the Datum, N floats.

Per item, as annotated_data_layer.cpp's load_batch, in every phase: distort_param
(DistortImage), expand_param (ExpandImage), the batch samplers (GenerateBatchSamples, then
CropImage with one of the sampled boxes), then the transform (Transform of the datum:
mirror, resize_param, noise_param, crop, mean, scale; TransformAnnotation: resize policy,
emit_constraint, projection onto the crop, mirror, ExtrapolateBBox). The fork keeps an
encoded datum encoded: distort, expand and crop each re-encode their result as JPEG
(OpenCV's default quality, 95), and so do these steps here; raw datums are never resized,
distorted or noised, as in the fork (a warning says so once).

noise_param is the fork's ApplyNoise: every effect set applies to every image, in its order
(decolorize, gauss_blur, hist_eq, clahe, jpeg, erode, posterize, inverse, saltpepper,
convert_to_hsv, convert_to_lab); its `prob` is never read by the fork (a warning says so
when it is set). As the fork's Transform(cv::Mat), the pixels are then read as bytes, the
image's channels' worth per pixel from the start of each row of the crop, whatever the
noised image holds: convert_to_lab's float32 Lab gives the bytes of those floats, and a grey
image that jpeg decoded in colour gives the first third of each row.

resize_mode FIT_SMALL_SIZE (AspectKeepingResizeBySmall) scales each image until it covers
height x width, so each image has its own size: the fork allows it with batch_size 1 only
(refused otherwise), and the data top takes each batch's size (top_shapes holds the first
record's). With height_scale and width_scale set, ExtrapolateBBox rescales the boxes from
the crop's size in pixels to width_scale x height_scale (they may leave [0, 1]).

Randomness, same rules, different draws: what the fork draws from caffe_rng_uniform(a, b) is
a + (b - a) * rng.random() rounded to float32, caffe_rng_rand() is rng.integers(2**32) and the
transformer's Rand(n) is rng.integers(n), all on one numpy Generator per (seed, rank, batch)
(runner.data.source.generator), in the fork's order per item: distort (branch, then per
effect its probability and amount; std::random_shuffle's channel order becomes
rng.permutation), expand (probability, ratio, row offset, column offset), each sampler's
trials (scale, aspect ratio, column offset, row offset), the sampled box's index, then
mirror, resize_param's interpolation pick, noise_param's salt-and-pepper pixels
(caffe_rng_rand() for the column, then for the row, per pixel; drawn as one array of
rng.integers(2**32), which numpy draws as the same sequence) and the crop offsets. A batch
depends on (seed, rank, index) only. Records are read as the Data layer reads them (key
order, wrap-around, rank shares, rand_skip).

annotated_data_param.label_map_file is for the fork's tools and changes nothing here, nor
does resize_param.prob (the fork never reads it). Refused, as DataErrors naming the field:
settings on which the fork aborts or reads out of bounds (a mean file with a crop of a
decoded image, crop_h without crop_w, FIT_SMALL_SIZE with batch_size above 1, a crop
smaller than height_scale/width_scale, decolorize or convert_to_hsv/lab of a grey image,
saltpepper_param values neither 1 nor one per channel, saltpepper hitting pixels with no
value, values that are not bytes). Unlike the fork, a box with xmin > xmax or ymin > ymax is
an error naming the record (the fork drops it silently), and an encoded datum stored without
its size (as BVLC's tools write them) uses its decoded size where the resize policy needs
one. transform_param.noise_param stays refused by the other data layers but VideoData (which
runs the same Transform(cv::Mat) on its frames), as the rest of the fork's transform
(resize_param, which it follows) is.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from runner.data.databases import LABELS, ProcessReader, backend_name
from runner.data.datum import DataError, datum_to_array, dims, hwc_to_chw
from runner.data.source import (BATCH_STREAM, SKIP_STREAM, check_tops, generator, resolve_seed,
                                stream_offsets)
from runner.data.ssd_boxes import (F32, RESIZE, Box, Group, clip_bbox, generate_batch_samples,
                                   transform_annotation, uniform)
from runner.data.ssd_images import (apply_distort, apply_noise, apply_resize, fork_pixel_bytes,
                                    hwc, resized_size, warn_unread_noise_prob)
from runner.data.transformer import _SSD_FORK_FIELDS, DataTransformer, crop_offsets, phase_value
from runner.proto import caffe_pb2
from runner.sources import register_source


@dataclass
class Item:
    """One AnnotatedDatum on its way through load_batch."""
    image: np.ndarray      # H x W x C (a raw Datum's C x H x W pixels, transposed)
    encoded: bool          # encoded datums stay encoded: each step re-encodes as JPEG
    height: int            # the Datum's own height and width (TransformAnnotation reads them)
    width: int
    groups: list[Group]
    label: int


class AnnotatedDataSource(ProcessReader):
    """The fork's AnnotatedData layer: data_param (source, backend, batch_size, rand_skip),
    annotated_data_param and transform_param (the plain fields, which a DataTransformer
    holds and checks, and the fork's resize_param, distort_param, expand_param,
    emit_constraint, crop_h, crop_w)."""

    def __init__(self, lp, phase, *, rank: int = 0, world_size: int = 1,
                 seed: int | None = None):
        data, anno, t = lp.data_param, lp.annotated_data_param, lp.transform_param
        self.name, self.tops = lp.name, check_tops(lp)
        self.where = where = f"layer '{lp.name}' (AnnotatedData)"
        if not data.source:
            raise DataError(f"{where}: data_param.source names no database")
        if data.batch_size <= 0:
            raise DataError(f"{where}: data_param.batch_size must be positive")
        self._check_fork_fields(t, anno, phase, data.batch_size)
        plain = copy.deepcopy(t)
        for field in _SSD_FORK_FIELDS:
            plain.ClearField(field)
        self.plain = DataTransformer(plain, phase, layer=lp.name)
        crop = self.plain.crop
        self.crop_hw = (crop, crop) if crop else (t.crop_h, t.crop_w)
        self.resize = t.resize_param if t.HasField("resize_param") else None
        self.distort = t.distort_param if t.HasField("distort_param") else None
        self.expand = t.expand_param if t.HasField("expand_param") else None
        self.emit = t.emit_constraint if t.HasField("emit_constraint") else None
        self.noise = t.noise_param if t.HasField("noise_param") else None
        # FIT_SMALL_SIZE gives each image its own size (batch_size is 1): the data top's
        # shape changes from batch to batch, as the fork reshapes it in load_batch
        self.varying_size = self.resize is not None and \
            self.resize.resize_mode == RESIZE.FIT_SMALL_SIZE
        self.samplers = list(anno.batch_sampler)
        self.batch_size, self.rank, self.world_size = data.batch_size, rank, world_size
        self.seed = resolve_seed(seed, world_size, data.rand_skip > 0, where)
        self.skip = int(generator(self.seed, SKIP_STREAM).integers(data.rand_skip)) \
            if data.rand_skip else 0
        self.path, self.backend = Path.cwd() / data.source, backend_name(data.backend)
        self._warned_raw = set()
        self._next_batch = 0
        where_first, first = self._read(rank)
        self.typed = first.HasField("type") or anno.HasField("anno_type")
        item = self._decode(first, where_first)
        self.data_shape = self._blob_shape(item, where_first)
        self.top_shapes = {self.tops[0]: (self.batch_size, *self.data_shape)}
        if len(self.tops) > 1:
            boxes = sum(len(annos) for _, annos in item.groups)
            self.top_shapes[self.tops[1]] = (1, 1, max(boxes, 1), 8) if self.typed \
                else (self.batch_size,)
        self.num_records = len(self.reader())   # in the whole database, all ranks

    def _check_fork_fields(self, t, anno, phase, batch_size: int) -> None:
        """What the fork's DataTransformer and layer CHECK at setup, and what is refused."""
        where = self.where
        warn_unread_noise_prob(t.noise_param, where, stacklevel=4)
        if t.HasField("resize_param"):
            r = t.resize_param
            if r.height <= 0 or r.width <= 0:
                raise DataError(f"{where}: resize_param.height and width must be positive")
            if r.resize_mode == RESIZE.FIT_SMALL_SIZE and batch_size != 1:
                raise DataError(f"{where}: resize_param.resize_mode FIT_SMALL_SIZE gives each "
                                "image its own size, so it needs data_param.batch_size 1 (the "
                                f"fork CHECKs it), got {batch_size}")
        if t.HasField("expand_param") and not t.expand_param.max_expand_ratio > 1:
            raise DataError(f"{where}: expand_param.max_expand_ratio must be > 1")
        if not t.crop_size and bool(t.crop_h) != bool(t.crop_w):
            raise DataError(f"{where}: give both crop_h and crop_w (or crop_size); the fork "
                            "crops only when both are set, yet shapes the top by either")
        if t.crop_h and not t.crop_size and not t.mirror and \
                phase_value(phase) == caffe_pb2.TRAIN:
            raise DataError(f"{where}: crop_h/crop_w crop at random in TRAIN, but without "
                            "mirror or crop_size the fork's DataTransformer has no random "
                            "generator (InitRand) and aborts")
        d = t.distort_param
        for name, prob, ok in (
                ("brightness_delta must be >= 0", d.brightness_prob, d.brightness_delta >= 0),
                ("contrast_upper must be >= contrast_lower >= 0", d.contrast_prob,
                 d.contrast_upper >= d.contrast_lower >= 0),
                ("saturation_upper must be >= saturation_lower >= 0", d.saturation_prob,
                 d.saturation_upper >= d.saturation_lower >= 0),
                ("hue_delta must be >= 0", d.hue_prob, d.hue_delta >= 0)):
            if prob > 0 and not ok:
                raise DataError(f"{where}: distort_param.{name}")
        for i, sampler in ((i, s.sampler) for i, s in enumerate(anno.batch_sampler)
                           if s.use_original_image):
            if not (0 < sampler.min_scale <= sampler.max_scale <= 1):
                raise DataError(f"{where}: batch_sampler {i}: need 0 < min_scale <= max_scale "
                                f"<= 1, got {sampler.min_scale} and {sampler.max_scale}")
            if not (0 < sampler.min_aspect_ratio <= sampler.max_aspect_ratio
                    < np.finfo(F32).max):
                raise DataError(f"{where}: batch_sampler {i}: need 0 < min_aspect_ratio <= "
                                f"max_aspect_ratio < FLT_MAX, got {sampler.min_aspect_ratio} "
                                f"and {sampler.max_aspect_ratio}")

    # -- records

    def _read(self, position: int) -> tuple[str, caffe_pb2.AnnotatedDatum]:
        reader = self.reader()
        key, value = reader.record_view((self.skip + position) % len(reader))
        where = f"layer '{self.name}': {LABELS[self.backend]} '{self.path}' key '{key}'"
        record = caffe_pb2.AnnotatedDatum()
        try:
            record.ParseFromString(value)
        except Exception as exc:   # protobuf's DecodeError, or a bad enum value
            raise DataError(f"{where}: record is not an AnnotatedDatum ({exc})") from None
        if not record.HasField("datum"):
            raise DataError(f"{where}: record is not an AnnotatedDatum (it holds no datum; a "
                            "plain Datum? AnnotatedData reads convert_annoset's records)")
        return where, record

    def _decode(self, record: caffe_pb2.AnnotatedDatum, where: str) -> Item:
        """The record's pixels (decoded with force_color/force_gray) and boxes, checked."""
        datum = record.datum
        if not datum.encoded and min(datum.channels, datum.height, datum.width) <= 0:
            raise DataError(f"{where}: record is not an image Datum (channels={datum.channels} "
                            f"height={datum.height} width={datum.width})")
        image = datum_to_array(datum, where, self.plain.flag).transpose(1, 2, 0)
        if self.typed and not record.HasField("type"):
            raise DataError(f"{where}: record has no annotation type, unlike the layer's "
                            "first record (or its anno_type)")
        groups = []
        for group in record.annotation_group:
            annos = []
            for a in group.annotation:
                b = a.bbox
                corners = [F32(b.xmin), F32(b.ymin), F32(b.xmax), F32(b.ymax)]
                if not (np.isfinite(corners).all() and b.xmin <= b.xmax and b.ymin <= b.ymax):
                    raise DataError(f"{where}: group {group.group_label} instance "
                                    f"{a.instance_id} has box ({b.xmin}, {b.ymin}, {b.xmax}, "
                                    f"{b.ymax}); need xmin <= xmax and ymin <= ymax")
                annos.append((a.instance_id, Box(
                    *corners, difficult=b.difficult,
                    size=F32(b.size) if b.HasField("size") else None)))
            groups.append((group.group_label, annos))
        # the fork's convert_annoset stores an encoded image's size; where none is stored,
        # the decoded image's is used
        height, width = (datum.height, datum.width) if datum.height > 0 and datum.width > 0 \
            else image.shape[:2]
        return Item(image, datum.encoded, height, width, groups, datum.label)

    # -- load_batch's steps

    def _reencode(self, image: np.ndarray, where: str) -> np.ndarray:
        """EncodeCVMatToDatum(image, "jpg") and the next step's decoding of it."""
        ok, buffer = cv2.imencode(".jpg", image)
        if not ok:
            raise DataError(f"{where}: OpenCV cannot encode a {dims(image.shape)} image as JPEG")
        return hwc(cv2.imdecode(buffer, self.plain.flag))

    def _warn_raw(self, field: str, where: str) -> None:
        """Once per field: distort_param and noise_param leave raw datums as they are."""
        if field not in self._warned_raw:
            warnings.warn(f"{where}: {field} changes encoded datums only; raw ones are left as "
                          "they are, as in the fork", stacklevel=4)
            self._warned_raw.add(field)

    def _distort(self, item: Item, rng: np.random.Generator, where: str) -> Item:
        """DistortImage: encoded datums only (the fork logs an error for a raw one and leaves
        it as it is)."""
        if not item.encoded:
            self._warn_raw("distort_param", where)
            return item
        image = self._reencode(apply_distort(item.image, self.distort, rng, where), where)
        return replace(item, image=image, height=image.shape[0], width=image.shape[1])

    def _raw_bytes(self, item: Item, step: str, where: str) -> None:
        if item.image.dtype != np.uint8:
            raise DataError(f"{where}: {step} needs byte pixels; the fork copies a raw Datum's "
                            "`data` bytes and has none for float_data")

    def _expand(self, item: Item, rng: np.random.Generator, where: str) -> Item:
        """ExpandImage: with probability expand_param.prob, the image at a random offset in a
        canvas up to max_expand_ratio times its size, filled with the mean (an encoded
        datum's; a raw datum's canvas holds the fork's ' ' bytes, 32)."""
        if uniform(rng, 0, 1) > F32(self.expand.prob) or \
                abs(float(F32(self.expand.max_expand_ratio)) - 1.0) < 1e-2:
            return item
        ratio = uniform(rng, 1, self.expand.max_expand_ratio)
        img_h, img_w, channels = item.image.shape
        height, width = int(F32(img_h) * ratio), int(F32(img_w) * ratio)
        h_off = F32(math.floor(uniform(rng, 0, F32(height - img_h))))
        w_off = F32(math.floor(uniform(rng, 0, F32(width - img_w))))
        box = Box(-w_off / F32(img_w), -h_off / F32(img_h), (F32(width) - w_off) / F32(img_w),
                  (F32(height) - h_off) / F32(img_h))
        if item.encoded:
            canvas = self._expand_canvas(height, width, channels, where)
        else:
            self._raw_bytes(item, "expand_param", where)
            canvas = np.full((height, width, channels), ord(" "), np.uint8)
        canvas[int(h_off):int(h_off) + img_h, int(w_off):int(w_off) + img_w] = item.image
        if item.encoded:
            canvas = self._reencode(canvas, where)
        return replace(item, image=canvas, height=height, width=width,
                       groups=transform_annotation(item.groups, box, False, self.emit))

    def _expand_canvas(self, height: int, width: int, channels: int, where: str) -> np.ndarray:
        """ExpandImage's canvas of a decoded image: zeros, or the mean file cast to char (it
        must be the canvas's size), or the mean values rounded."""
        canvas = np.zeros((height, width, channels), np.uint8)
        mean, values = self.plain.mean, self.plain.mean_values
        if mean is not None:
            if mean.shape != (channels, height, width):
                raise DataError(f"{where}: expand_param: the expanded image is "
                                f"{dims((channels, height, width))}, the mean file "
                                f"{dims(mean.shape)}; the fork needs them equal")
            canvas[:] = (np.trunc(mean).astype(np.int64) & 0xFF).astype(np.uint8).transpose(1, 2, 0)
        elif values is not None:
            self._check_mean_values(channels, where)
            canvas[:] = np.clip(np.rint(np.broadcast_to(values, (channels,))), 0, 255)
        return canvas

    def _crop(self, item: Item, box: Box, where: str) -> Item:
        """CropImage: the pixels of the clipped box, truncated to whole pixels, and the
        boxes projected into it."""
        clipped = clip_bbox(box)
        height, width = item.image.shape[:2]
        x0, y0 = clipped.xmin * F32(width), clipped.ymin * F32(height)
        x1, y1 = clipped.xmax * F32(width), clipped.ymax * F32(height)
        w_off, h_off, crop_w, crop_h = int(x0), int(y0), int(x1 - x0), int(y1 - y0)
        if crop_w <= 0 or crop_h <= 0:
            raise DataError(f"{where}: the sampled box ({box.xmin}, {box.ymin}, {box.xmax}, "
                            f"{box.ymax}) keeps no pixel of the {width} x {height} image")
        if not item.encoded:
            self._raw_bytes(item, "a batch_sampler crop", where)
        image = item.image[h_off:h_off + crop_h, w_off:w_off + crop_w]
        image = self._reencode(image, where) if item.encoded else image
        return replace(item, image=image, height=crop_h, width=crop_w,
                       groups=transform_annotation(item.groups, clipped, False, self.emit))

    def _blob_shape(self, item: Item, where: str) -> tuple[int, int, int]:
        """InferBlobShape: C x H x W after resize_param (InferNewSize: WARP and
        FIT_LARGE_SIZE_AND_PAD give its size, FIT_SMALL_SIZE the image's aspect ratio
        covering it) and the crop."""
        height, width, channels = item.image.shape
        height, width = resized_size(self.resize, self.crop_hw, height, width, where, "image")
        crop_h, crop_w = self.crop_hw
        return channels, crop_h or height, crop_w or width

    def _check_mean_values(self, channels: int, where: str) -> None:
        values = self.plain.mean_values
        if len(values) not in (1, channels):
            raise DataError(f"{where}: specify either 1 mean_value or as many as channels "
                            f"({channels}), got {len(values)}")

    def _transform(self, item: Item, rng: np.random.Generator, where: str
                   ) -> tuple[np.ndarray, list[Group]]:
        """Transform(AnnotatedDatum): mirror draw, resize and noise (encoded datums), crop,
        then (x - mean) * scale, flipped if mirrored; the boxes by TransformAnnotation. The
        mean file is taken at the source pixel for a raw datum and at the output pixel for a
        decoded one (the fork's Transform(cv::Mat) indexes it by the mirrored column). The
        pixels are the bytes the fork reads from the noised image (fork_pixel_bytes)."""
        shape = self._blob_shape(item, where)
        if shape != self.data_shape and not self.varying_size:
            raise DataError(f"{where}: image gives {dims(shape)} after the augmentation, the "
                            f"layer's first record {dims(self.data_shape)}; use resize_param "
                            "or crop_size so that every image gives one size")
        mirror = self.plain.mirror and rng.integers(2) == 1
        image, channels = item.image, item.image.shape[2]
        if item.encoded and self.resize is not None:
            image = apply_resize(image, self.resize, rng, where)
        if self.noise is not None:
            if item.encoded:
                image = apply_noise(image, self.noise, rng, where)
            else:
                self._warn_raw("noise_param", where)
        img_h, img_w = image.shape[:2]
        crop_h, crop_w = self.crop_hw if item.encoded else (self.plain.crop, self.plain.crop)
        height, width = (crop_h, crop_w) if crop_h and crop_w else (img_h, img_w)
        if (channels, height, width) != shape:
            raise DataError(f"{where}: raw Datum of {dims((channels, img_h, img_w))} would "
                            f"have to give {dims(shape)}; the fork resizes and crops by "
                            "crop_h/crop_w encoded datums only")
        h_off, w_off = crop_offsets(rng, self.plain.train, (img_h, img_w), (height, width)) \
            if crop_h and crop_w else (0, 0)
        crop_box = Box(F32(w_off) / F32(img_w), F32(h_off) / F32(img_h),
                       F32(w_off + width) / F32(img_w), F32(h_off + height) / F32(img_h))
        mean, values = self.plain.mean, self.plain.mean_values
        if mean is not None and mean.shape != ((channels, img_h, img_w) if not item.encoded
                                               else (channels, height, width)):
            raise DataError(f"{where}: image is {dims((channels, img_h, img_w))}, cropped to "
                            f"{height} x {width}, the mean file {dims(mean.shape)}")
        if mean is not None and item.encoded and (img_h, img_w) != (height, width):
            raise DataError(f"{where}: a mean file with a crop of a decoded image is not "
                            "supported: the fork's Transform(cv::Mat) indexes the mean by the "
                            "uncropped size and reads past it")
        if values is not None:
            self._check_mean_values(channels, where)
        pixels = fork_pixel_bytes(image, channels, h_off, w_off, height, width) \
            if item.encoded else image[h_off:h_off + height, w_off:w_off + width]
        out = hwc_to_chw(pixels).astype(F32)
        if mean is not None and not item.encoded:
            out -= mean[:, h_off:h_off + height, w_off:w_off + width]
        if mirror:
            out = out[:, :, ::-1]
        if mean is not None and item.encoded:
            out = out - mean
        elif values is not None:
            out = out - values.reshape(-1, 1, 1)
        out = out * F32(self.plain.scale)
        resize = (self.resize, item.width, item.height) if self.resize is not None else None
        return out, transform_annotation(item.groups, crop_box, mirror, self.emit, resize, where)

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        """Batch number `index` of this rank."""
        rng = generator(self.seed, BATCH_STREAM, self.rank, index)
        data, labels, rows = [], np.empty(self.batch_size, F32), []
        for item_id, position in enumerate(stream_offsets(index, self.batch_size, self.rank,
                                                          self.world_size)):
            where, record = self._read(position)
            item = self._decode(record, where)
            if self.distort is not None:
                item = self._distort(item, rng, where)
            if self.expand is not None:
                item = self._expand(item, rng, where)
            if self.samplers:
                objects = [box for _, annos in item.groups for _, box in annos]
                boxes = generate_batch_samples(objects, self.samplers, rng)
                if boxes:
                    item = self._crop(item, boxes[int(rng.integers(2 ** 32)) % len(boxes)], where)
            pixels, groups = self._transform(item, rng, where)
            data.append(pixels)
            labels[item_id] = item.label
            rows += [[item_id, label, instance, b.xmin, b.ymin, b.xmax, b.ymax, b.difficult]
                     for label, annos in groups for instance, b in annos]
        tops = {self.tops[0]: torch.from_numpy(np.stack(data))}
        if len(self.tops) > 1:
            boxes = np.asarray(rows or [[-1] * 8], F32).reshape(1, 1, -1, 8)
            tops[self.tops[1]] = torch.from_numpy(boxes if self.typed else labels)
        return tops

    def skip_batches(self, n: int) -> None:
        """Position the stream n batches further on (a batch depends on its index only)."""
        self._next_batch += n

    def __iter__(self) -> AnnotatedDataSource:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        index, self._next_batch = self._next_batch, self._next_batch + 1
        return self.batch(index)


@register_source("AnnotatedData")
def annotated_data_source(lp, phase, *, rank=0, world_size=1, seed=None, workers=None
                          ) -> AnnotatedDataSource:
    """Source factory for the SSD fork's AnnotatedData layer (made in this process: its
    label's shape changes from batch to batch)."""
    return AnnotatedDataSource(lp, phase, rank=rank, world_size=world_size, seed=seed)
