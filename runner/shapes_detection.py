"""Shape rules of the SSD detection layers (weiliu89/caffe): Normalize, Permute, PriorBox,
DetectionOutput, DetectionEvaluate, MultiBoxLoss, and the parameter readings they share
with the layers.

Imported by runner.shapes, which keeps the rule registry.
"""
from __future__ import annotations

import numpy as np

from runner.shapes import LayerShapes, Shape, rule


@rule("Normalize")
def _normalize(lp, bottoms):
    b = bottoms[0]
    if not 2 <= len(b) <= 4:
        raise ValueError(f"Normalize needs a bottom with 2 to 4 axes (N, C[, H[, W]]), got {list(b)}")
    return LayerShapes([b], [() if lp.norm_param.channel_shared else (b[1],)])


def permute_order(lp, ndim: int) -> list[int]:
    """PermuteLayer's axis order: permute_param.order, then the axes it leaves out, ascending."""
    order = [int(o) for o in lp.permute_param.order]
    for o in order:
        if o >= ndim:
            raise ValueError(f"permute_param.order {o} is not an axis of a {ndim}-D bottom")
    if len(set(order)) != len(order):
        raise ValueError(f"permute_param.order {order} repeats an axis")
    return order + [i for i in range(ndim) if i not in order]


@rule("Permute")
def _permute(lp, bottoms):
    b = bottoms[0]
    return LayerShapes([tuple(b[o] for o in permute_order(lp, len(b)))])


def prior_aspect_ratios(p) -> list[float]:
    """PriorBoxLayer's aspect ratios: 1, then each new ratio (within 1e-6 of none before)
    and, with `flip`, its inverse."""
    ratios = [1.0]
    for ar in p.aspect_ratio:
        if any(abs(ar - r) < 1e-6 for r in ratios):
            continue
        ratios.append(float(ar))
        if p.flip:
            ratios.append(float(np.float32(1.0 / ar)))  # Caffe keeps them as float
    return ratios


def priors_per_cell(p) -> int:
    """Boxes PriorBox makes per feature-map cell: one per (min_size, ratio), one per max_size."""
    return len(prior_aspect_ratios(p)) * len(p.min_size) + len(p.max_size)


@rule("PriorBox")
def _prior_box(lp, bottoms):
    p = lp.prior_box_param
    if not p.min_size:
        raise ValueError("prior_box_param needs at least one min_size")
    if len(bottoms) != 2:
        raise ValueError(f"PriorBox takes 2 bottoms (feature map, image), got {len(bottoms)}")
    feature = bottoms[0]
    if len(feature) != 4:
        raise ValueError(f"PriorBox needs a 4-D feature map (N, C, H, W), got {list(feature)}")
    return LayerShapes([(1, 2, feature[2] * feature[3] * priors_per_cell(p) * 4)])


def prediction_counts(num_classes: int, share_location: bool,
                      bottoms: list[Shape]) -> tuple[int, int]:
    """(number of priors, number of location classes) from the loc, conf and prior bottoms,
    checked against each other as DetectionOutputLayer and MultiBoxLossLayer::Reshape do."""
    loc, conf, prior = bottoms[:3]
    if len(prior) < 3 or prior[1] != 2 or prior[2] % 4 or any(d != 1 for d in prior[3:]):
        raise ValueError(f"the prior bottom must have shape (1, 2, 4 * priors), got {list(prior)}")
    if loc[0] != conf[0]:
        raise ValueError(f"loc and conf bottoms differ in batch size ({loc[0]} vs {conf[0]})")
    num_priors = prior[2] // 4
    loc_classes = 1 if share_location else num_classes
    if len(loc) < 2 or loc[1] != num_priors * loc_classes * 4:
        raise ValueError(f"loc bottom {list(loc)} needs {num_priors * loc_classes * 4} channels "
                         f"({num_priors} priors x {loc_classes} location classes x 4)")
    if len(conf) < 2 or conf[1] != num_priors * num_classes:
        raise ValueError(f"conf bottom {list(conf)} needs {num_priors * num_classes} channels "
                         f"({num_priors} priors x {num_classes} classes)")
    return num_priors, loc_classes


def detection_counts(lp, bottoms: list[Shape]) -> tuple[int, int]:
    """(number of priors, number of location classes) of a DetectionOutput layer."""
    p = lp.detection_output_param
    if not p.HasField("num_classes"):
        raise ValueError("detection_output_param.num_classes is required")
    if len(bottoms) not in (3, 4):
        raise ValueError(f"DetectionOutput takes 3 bottoms (loc, conf, prior), got {len(bottoms)}")
    return prediction_counts(p.num_classes, p.share_location, bottoms)


@rule("DetectionOutput")
def _detection_output(lp, bottoms):
    detection_counts(lp, bottoms)
    # Caffe's Reshape declares one row; Forward resizes the top to the detections kept.
    return LayerShapes([(1, 1, 1, 7)])


def evaluate_background(p) -> int:
    """DetectionEvaluateLayer's checks; background_label_id as its int member holds it (a
    uint32 of 2^32 - 1 is -1), refused outside [0, num_classes) unless -1 (the fork would
    write past its top)."""
    if not p.HasField("num_classes"):
        raise ValueError("detection_evaluate_param.num_classes is required (the fork: "
                         "'Must provide num_classes.')")
    background = p.background_label_id - (1 << 32 if p.background_label_id >= 1 << 31 else 0)
    if background != -1 and not 0 <= background < p.num_classes:
        raise ValueError(f"detection_evaluate_param.background_label_id {background} must be -1 "
                         f"or in [0, num_classes {p.num_classes})")
    if not p.overlap_threshold > 0:
        raise ValueError(f"detection_evaluate_param.overlap_threshold must be positive, got "
                         f"{p.overlap_threshold:g}")
    return background


@rule("DetectionEvaluate")
def _detection_evaluate(lp, bottoms):
    background = evaluate_background(lp.detection_evaluate_param)
    if len(bottoms) != 2:
        raise ValueError(f"DetectionEvaluate takes 2 bottoms (detections, ground truth), "
                         f"got {len(bottoms)}")
    for what, b, width in (("detection", bottoms[0], 7), ("label", bottoms[1], 8)):
        if len(b) != 4 or b[0] != 1 or b[1] != 1 or b[3] != width:
            raise ValueError(f"DetectionEvaluate's {what} bottom must have shape (1, 1, rows, "
                             f"{width}), got {list(b)}")
    classes = lp.detection_evaluate_param.num_classes - (background != -1)
    # Forward adds a row per detection whose label is not -1 (the detections' values).
    return LayerShapes([(1, 1, classes, 5)])


@rule("MultiBoxLoss")
def _multibox_loss(lp, bottoms):
    p = lp.multibox_loss_param
    if not p.HasField("num_classes"):
        raise ValueError("multibox_loss_param.num_classes is required")
    if p.num_classes < 1:
        raise ValueError(f"multibox_loss_param.num_classes must be at least 1, got {p.num_classes}")
    if len(bottoms) != 4:
        raise ValueError(f"MultiBoxLoss takes 4 bottoms (loc, conf, prior, label), got {len(bottoms)}")
    prediction_counts(p.num_classes, p.share_location, bottoms)
    for name, b in zip(("loc", "conf"), bottoms[:2]):
        if any(d != 1 for d in b[2:]):
            raise ValueError(f"{name} bottom {list(b)} must have one row per image (N, C[, 1, 1])")
    label = bottoms[3]
    if len(label) != 4 or label[0] != 1 or label[1] != 1 or label[3] != 8:
        raise ValueError(f"the label bottom must have shape (1, 1, boxes, 8), one row [item_id, "
                         f"label, instance_id, xmin, ymin, xmax, ymax, difficult] per box; "
                         f"got {list(label)}")
    return LayerShapes([()] * len(lp.top))
