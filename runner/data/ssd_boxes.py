"""The SSD fork's box arithmetic for its AnnotatedData layer, in float32 as its NormalizedBBox:
util/bbox_util.cpp's clipping, overlap, projection and emit constraints, the resize policy's
effect on boxes, TransformAnnotation, and util/sampler.cpp's batch samplers."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from runner.data.datum import DataError
from runner.proto import caffe_pb2

F32 = np.float32
RESIZE = caffe_pb2.ResizeParameter
EMIT = caffe_pb2.EmitConstraint


def uniform(rng: np.random.Generator, a, b) -> np.float32:
    """caffe_rng_uniform(1, a, b, &x): a float32 in [a, b]."""
    a, b = float(F32(a)), float(F32(b))
    return F32(a + (b - a) * rng.random())


# ---- boxes (util/bbox_util.cpp), float32 as the fork's NormalizedBBox -------------------

@dataclass
class Box:
    """A NormalizedBBox: corners, difficult, and `size` once set (BBoxSize returns a set size
    as it is, even after the corners moved)."""
    xmin: np.float32
    ymin: np.float32
    xmax: np.float32
    ymax: np.float32
    difficult: bool = False
    size: np.float32 | None = None


# (group_label, [(instance_id, box)]): an AnnotationGroup
Group = tuple[int, list[tuple[int, Box]]]


def bbox_size(b: Box) -> np.float32:
    """BBoxSize (normalized)."""
    if b.xmax < b.xmin or b.ymax < b.ymin:
        return F32(0)
    return b.size if b.size is not None else (b.xmax - b.xmin) * (b.ymax - b.ymin)


def clip_bbox(b: Box) -> Box:
    """ClipBBox: corners into [0, 1], size set from them."""
    clipped = Box(*(max(min(v, F32(1)), F32(0)) for v in (b.xmin, b.ymin, b.xmax, b.ymax)),
                  difficult=b.difficult)
    clipped.size = bbox_size(clipped)
    return clipped


def intersect_bbox(a: Box, b: Box) -> Box:
    """IntersectBBox: [0, 0, 0, 0] when they do not meet."""
    if b.xmin > a.xmax or b.xmax < a.xmin or b.ymin > a.ymax or b.ymax < a.ymin:
        return Box(F32(0), F32(0), F32(0), F32(0))
    return Box(max(a.xmin, b.xmin), max(a.ymin, b.ymin), min(a.xmax, b.xmax), min(a.ymax, b.ymax))


def jaccard_overlap(a: Box, b: Box) -> np.float32:
    """JaccardOverlap (normalized)."""
    inter = intersect_bbox(a, b)
    width, height = inter.xmax - inter.xmin, inter.ymax - inter.ymin
    if width > 0 and height > 0:
        size = width * height
        return size / (bbox_size(a) + bbox_size(b) - size)
    return F32(0)


def bbox_coverage(a: Box, b: Box) -> np.float32:
    """BBoxCoverage: the part of `a` that `b` covers."""
    size = bbox_size(intersect_bbox(a, b))
    return size / bbox_size(a) if size > 0 else F32(0)


def project_bbox(src: Box, b: Box) -> Box | None:
    """ProjectBBox: `b` in the coordinates of `src`, clipped; None if nothing is left."""
    if b.xmin >= src.xmax or b.xmax <= src.xmin or b.ymin >= src.ymax or b.ymax <= src.ymin:
        return None
    width, height = src.xmax - src.xmin, src.ymax - src.ymin
    proj = clip_bbox(Box((b.xmin - src.xmin) / width, (b.ymin - src.ymin) / height,
                         (b.xmax - src.xmin) / width, (b.ymax - src.ymin) / height,
                         difficult=b.difficult))
    return proj if bbox_size(proj) > 0 else None


def meet_emit_constraint(src: Box, b: Box, emit: caffe_pb2.EmitConstraint) -> bool:
    """MeetEmitConstraint: CENTER (b's centre inside src) or MIN_OVERLAP."""
    if emit.emit_type == EMIT.CENTER:
        x, y = (b.xmin + b.xmax) / F32(2), (b.ymin + b.ymax) / F32(2)
        return bool(src.xmin <= x <= src.xmax and src.ymin <= y <= src.ymax)
    return bool(bbox_coverage(b, src) > F32(emit.emit_overlap))


def fit_small_size(param: caffe_pb2.ResizeParameter, width: int, height: int
                   ) -> tuple[np.float32, np.float32]:
    """The (height, width) FIT_SMALL_SIZE scales a width x height image to, in float as
    UpdateBBoxByResizePolicy and ExtrapolateBBox compute it (InferNewSize,
    runner.data.ssd_images.infer_new_size, truncates them to the image's pixels)."""
    new_h, new_w = F32(param.height), F32(param.width)
    orig_aspect = F32(width) / F32(height)
    if orig_aspect < new_w / new_h:
        return new_w / orig_aspect, new_w
    return new_h, orig_aspect * new_h


def update_bbox_by_resize_policy(param: caffe_pb2.ResizeParameter, old_width: int,
                                 old_height: int, b: Box) -> Box:
    """UpdateBBoxByResizePolicy (size kept as it was)."""
    new_h, new_w = F32(param.height), F32(param.width)
    old_w, old_h, zero, two = F32(old_width), F32(old_height), F32(0), F32(2)
    x_min, y_min, x_max, y_max = b.xmin * old_w, b.ymin * old_h, b.xmax * old_w, b.ymax * old_h
    orig_aspect = old_w / old_h
    warp = param.resize_mode in (RESIZE.WARP, RESIZE.FIT_SMALL_SIZE)
    if param.resize_mode == RESIZE.FIT_SMALL_SIZE:
        new_h, new_w = fit_small_size(param, old_width, old_height)
    warp_x = warp or orig_aspect > new_w / new_h
    warp_y = warp or not orig_aspect > new_w / new_h
    if warp_x:
        x_min, x_max = max(zero, x_min * new_w / old_w), min(new_w, x_max * new_w / old_w)
    else:   # FIT_LARGE_SIZE_AND_PAD, padded left and right
        padding = (new_w - orig_aspect * new_h) / two
        x_min = padding + max(zero, x_min * (new_w - two * padding) / old_w)
        x_max = padding + min(new_w, x_max * (new_w - two * padding) / old_w)
    if warp_y:
        y_min, y_max = max(zero, y_min * new_h / old_h), min(new_h, y_max * new_h / old_h)
    else:   # FIT_LARGE_SIZE_AND_PAD, padded above and below
        padding = (new_h - new_w / orig_aspect) / two
        y_min = padding + max(zero, y_min * (new_h - two * padding) / old_h)
        y_max = padding + min(new_h, y_max * (new_h - two * padding) / old_h)
    return replace(b, xmin=x_min / new_w, ymin=y_min / new_h, xmax=x_max / new_w,
                   ymax=y_max / new_h)


def extrapolate_bbox(param: caffe_pb2.ResizeParameter, height: int, width: int, crop: Box,
                     b: Box, where: str) -> None:
    """ExtrapolateBBox: with FIT_SMALL_SIZE and both height_scale and width_scale set, the
    box (normalized to the crop) is rescaled from the crop's size in pixels of the resized
    image to width_scale x height_scale, in place (so it may leave [0, 1])."""
    if not (param.resize_mode == RESIZE.FIT_SMALL_SIZE and param.height_scale > 0
            and param.width_scale > 0):
        return
    resize_h, resize_w = fit_small_size(param, width, height)
    crop_h, crop_w = resize_h * (crop.ymax - crop.ymin), resize_w * (crop.xmax - crop.xmin)
    scale_h, scale_w = F32(param.height_scale), F32(param.width_scale)
    if not (crop_w >= scale_w and crop_h >= scale_h):
        raise DataError(f"{where}: the crop is {crop_w:g} x {crop_h:g} pixels of the resized "
                        f"image, smaller than resize_param's width_scale x height_scale "
                        f"{param.width_scale} x {param.height_scale} (the fork CHECKs it)")
    b.xmin, b.xmax = b.xmin * crop_w / scale_w, b.xmax * crop_w / scale_w
    b.ymin, b.ymax = b.ymin * crop_h / scale_h, b.ymax * crop_h / scale_h


def transform_annotation(groups: list[Group], crop: Box, mirror: bool,
                         emit: caffe_pb2.EmitConstraint | None,
                         resize: tuple[caffe_pb2.ResizeParameter, int, int] | None = None,
                         where: str = "") -> list[Group]:
    """TransformAnnotation: each box through the resize policy (`resize`: the parameter and
    the datum's width and height), the emit constraint and the projection onto `crop`,
    mirrored, then ExtrapolateBBox; groups left without a box are dropped."""
    out = []
    for label, annos in groups:
        kept = []
        for instance, box in annos:
            if resize is not None:
                box = update_bbox_by_resize_policy(*resize, box)
            if emit is not None and not meet_emit_constraint(crop, box, emit):
                continue
            proj = project_bbox(crop, box)
            if proj is not None:
                if mirror:
                    proj.xmin, proj.xmax = F32(1) - proj.xmax, F32(1) - proj.xmin
                if resize is not None:
                    param, width, height = resize
                    extrapolate_bbox(param, height, width, crop, proj, where)
                kept.append((instance, proj))
        if kept:
            out.append((label, kept))
    return out


# ---- batch samplers (util/sampler.cpp) ----------------------------------------------

# SampleConstraint's (min, max) fields and what they bound, for (sampled, object) boxes
CONSTRAINTS = (("min_jaccard_overlap", "max_jaccard_overlap", jaccard_overlap),
               ("min_sample_coverage", "max_sample_coverage", bbox_coverage),
               ("min_object_coverage", "max_object_coverage", lambda s, o: bbox_coverage(o, s)))


def satisfy_sample_constraint(sampled: Box, objects: list[Box],
                              constraint: caffe_pb2.SampleConstraint) -> bool:
    """SatisfySampleConstraint, with the fork's `found`, which stays set from one object to
    the next: in effect only the first kind of constraint given (jaccard overlap, else sample
    coverage, else object coverage) decides."""
    has = constraint.HasField
    tests = [test for test in CONSTRAINTS if has(test[0]) or has(test[1])]
    if not tests:
        return True
    found = False
    for obj in objects:
        for low, high, measure in tests:
            value = measure(sampled, obj)
            if (has(low) and value < F32(getattr(constraint, low))) or \
                    (has(high) and value > F32(getattr(constraint, high))):
                break
            found = True
        else:
            if found:
                return True
    return found


def sample_bbox(sampler: caffe_pb2.Sampler, rng: np.random.Generator) -> Box:
    """SampleBBox: scale, aspect ratio (kept within [scale^2, 1/scale^2]), then the offsets."""
    scale = uniform(rng, sampler.min_scale, sampler.max_scale)
    aspect = uniform(rng, sampler.min_aspect_ratio, sampler.max_aspect_ratio)
    aspect = max(aspect, F32(float(scale) ** 2))
    aspect = min(aspect, F32(1 / float(scale) ** 2))
    width = F32(float(scale) * math.sqrt(float(aspect)))    # C's double sqrt
    height = F32(float(scale) / math.sqrt(float(aspect)))
    w_off = uniform(rng, 0, F32(1) - width)
    h_off = uniform(rng, 0, F32(1) - height)
    return Box(w_off, h_off, w_off + width, h_off + height)


def generate_batch_samples(objects: list[Box], samplers, rng: np.random.Generator) -> list[Box]:
    """GenerateBatchSamples: every sampler with use_original_image tries max_trials boxes
    (stopping at max_sample found) and keeps those meeting its constraint. LocateBBox in the
    unit box is the identity, so the sampled box is used as drawn."""
    boxes = []
    for batch_sampler in samplers:
        if not batch_sampler.use_original_image:
            continue
        found = 0
        for _ in range(batch_sampler.max_trials):
            if batch_sampler.HasField("max_sample") and found >= batch_sampler.max_sample:
                break
            box = sample_bbox(batch_sampler.sampler, rng)
            if satisfy_sample_constraint(box, objects, batch_sampler.sample_constraint):
                found += 1
                boxes.append(box)
    return boxes
