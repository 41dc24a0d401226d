"""SSD's box arithmetic (weiliu89/caffe src/caffe/util/bbox_util.cpp), in numpy float32.

Boxes are (..., 4) arrays of xmin, ymin, xmax, ymax in [0, 1] image coordinates. Each step
follows the fork's float arithmetic (operation order, float vs double intermediates), so
decoded boxes, overlaps and the boxes NMS keeps are the fork's.
"""
from __future__ import annotations

import numpy as np

from runner.proto import caffe_pb2

_F32 = np.float32
CodeType = caffe_pb2.PriorBoxParameter
NMS_BLOCK = 512  # NMS candidates whose overlaps are computed together


def box_size(boxes: np.ndarray) -> np.ndarray:
    """BBoxSize (normalized): width * height, 0 for a box with xmax < xmin or ymax < ymin."""
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    return np.where((width < 0) | (height < 0), _F32(0), width * height)


def _center_size(priors, variances, loc, encoded_in_target):
    prior_w = priors[:, 2] - priors[:, 0]
    prior_h = priors[:, 3] - priors[:, 1]
    center_x = (priors[:, 0] + priors[:, 2]) / _F32(2)
    center_y = (priors[:, 1] + priors[:, 3]) / _F32(2)
    if encoded_in_target:
        dx, dy, dw, dh = loc[:, 0], loc[:, 1], loc[:, 2], loc[:, 3]
    else:
        dx, dy = variances[:, 0] * loc[:, 0], variances[:, 1] * loc[:, 1]
        dw, dh = variances[:, 2] * loc[:, 2], variances[:, 3] * loc[:, 3]
    x = dx * prior_w + center_x
    y = dy * prior_h + center_y
    # exp() of a float is the double exp, times the width in double, then stored as float
    w = (np.exp(dw.astype(np.float64)) * prior_w).astype(_F32)
    h = (np.exp(dh.astype(np.float64)) * prior_h).astype(_F32)
    half_w, half_h = w.astype(np.float64) / 2, h.astype(np.float64) / 2
    return np.stack([x - half_w, y - half_h, x + half_w, y + half_h], axis=-1).astype(_F32)


def decode_boxes(priors: np.ndarray, variances: np.ndarray, loc: np.ndarray,
                 code_type: int, encoded_in_target: bool) -> np.ndarray:
    """DecodeBBoxes: location predictions (P, 4) against priors (P, 4) and their variances."""
    if code_type not in (CodeType.CORNER, CodeType.CENTER_SIZE, CodeType.CORNER_SIZE):
        raise ValueError(f"unknown code_type {code_type} (CORNER, CENTER_SIZE, CORNER_SIZE)")
    if code_type != CodeType.CORNER:
        prior_w = priors[:, 2] - priors[:, 0]
        prior_h = priors[:, 3] - priors[:, 1]
        if not ((prior_w > 0).all() and (prior_h > 0).all()):
            bad = int(np.flatnonzero((prior_w <= 0) | (prior_h <= 0))[0])
            raise ValueError(f"prior box {bad} {priors[bad].tolist()} has no positive width "
                             f"and height, which {CodeType.CodeType.Name(code_type)} needs")
    if code_type == CodeType.CENTER_SIZE:
        return _center_size(priors, variances, loc, encoded_in_target)
    offsets = loc if encoded_in_target else variances * loc
    if code_type == CodeType.CORNER_SIZE:
        sides = np.stack([prior_w, prior_h, prior_w, prior_h], axis=-1)
        offsets = offsets * sides
    return priors + offsets


def cross_boundary(boxes: np.ndarray) -> np.ndarray:
    """IsCrossBoundaryBBox: whether some coordinate of each box lies outside [0, 1]."""
    return ((boxes < 0) | (boxes > 1)).any(axis=-1)


def encode_boxes(priors: np.ndarray, variances: np.ndarray, boxes: np.ndarray,
                 code_type: int, encoded_in_target: bool) -> np.ndarray:
    """EncodeBBox: boxes (M, 4) as offsets from their priors (M, 4), the inverse of
    decode_boxes (with the variances divided out unless they are encoded in the target)."""
    if code_type == CodeType.CENTER_SIZE:
        prior_w = priors[:, 2] - priors[:, 0]
        prior_h = priors[:, 3] - priors[:, 1]
        width = boxes[:, 2] - boxes[:, 0]
        height = boxes[:, 3] - boxes[:, 1]
        dx = ((boxes[:, 0] + boxes[:, 2]) / _F32(2) - (priors[:, 0] + priors[:, 2]) / _F32(2)) / prior_w
        dy = ((boxes[:, 1] + boxes[:, 3]) / _F32(2) - (priors[:, 1] + priors[:, 3]) / _F32(2)) / prior_h
        # log() of a float ratio is the double log; with the variance divided in double
        dw = np.log((width / prior_w).astype(np.float64))
        dh = np.log((height / prior_h).astype(np.float64))
        if not encoded_in_target:
            dx, dy = dx / variances[:, 0], dy / variances[:, 1]
            dw, dh = dw / variances[:, 2], dh / variances[:, 3]
        return np.stack([dx, dy, dw.astype(_F32), dh.astype(_F32)], axis=-1)
    if code_type not in (CodeType.CORNER, CodeType.CORNER_SIZE):
        raise ValueError(f"unknown code_type {code_type} (CORNER, CENTER_SIZE, CORNER_SIZE)")
    offsets = boxes - priors
    if code_type == CodeType.CORNER_SIZE:
        prior_w = priors[:, 2] - priors[:, 0]
        prior_h = priors[:, 3] - priors[:, 1]
        offsets = offsets / np.stack([prior_w, prior_h, prior_w, prior_h], axis=-1)
    return offsets if encoded_in_target else offsets / variances


def jaccard(boxes1: np.ndarray, areas1: np.ndarray, boxes2: np.ndarray,
            areas2: np.ndarray) -> np.ndarray:
    """JaccardOverlap of each of boxes1 (rows) with each of boxes2 (columns), from their
    stored sizes: 0 where the boxes are disjoint or the intersection has no positive
    width and height."""
    b1, b2 = boxes1[:, None, :], boxes2[None, :, :]
    disjoint = ((b2[..., 0] > b1[..., 2]) | (b2[..., 2] < b1[..., 0])
                | (b2[..., 1] > b1[..., 3]) | (b2[..., 3] < b1[..., 1]))
    width = np.minimum(b1[..., 2], b2[..., 2]) - np.maximum(b1[..., 0], b2[..., 0])
    height = np.minimum(b1[..., 3], b2[..., 3]) - np.maximum(b1[..., 1], b2[..., 1])
    inter = width * height
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iou = inter / ((areas1[:, None] + areas2[None, :]) - inter)
    return np.where(disjoint | ~((width > 0) & (height > 0)), _F32(0), iou)


def nms_fast(boxes: np.ndarray, areas: np.ndarray, scores: np.ndarray, score_threshold: float,
             nms_threshold: float, eta: float, top_k: int) -> list[int]:
    """ApplyNMSFast: boxes scoring above the threshold, best first (stable on ties), at most
    top_k of them; each is kept unless it overlaps a kept box by more than the threshold,
    which shrinks by eta after each keep while above 0.5. Overlaps are computed for a
    block of candidates at a time against all better ones."""
    candidates = np.flatnonzero(scores > _F32(score_threshold))
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if top_k > -1:
        order = order[:top_k]
    boxes, areas = boxes[order], areas[order]
    threshold, eta = _F32(nms_threshold), _F32(eta)
    kept: list[int] = []   # positions in `order`
    for start in range(0, len(order), NMS_BLOCK):
        stop = min(start + NMS_BLOCK, len(order))
        overlaps = jaccard(boxes[start:stop], areas[start:stop], boxes[:stop], areas[:stop])
        for i in range(start, stop):
            if kept and not (overlaps[i - start, kept] <= threshold).all():
                continue
            kept.append(i)
            if eta < 1 and threshold > 0.5:
                threshold = _F32(threshold * eta)
    return order[kept].tolist()
