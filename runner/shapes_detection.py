"""Shape rules of the SSD detection layers (weiliu89/caffe): Normalize, Permute, PriorBox,
DetectionOutput, and the parameter readings they share with the layers.

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


def detection_counts(lp, bottoms: list[Shape]) -> tuple[int, int]:
    """(number of priors, number of location classes) of a DetectionOutput layer, checked
    against its loc, conf and prior bottoms as DetectionOutputLayer::Reshape does."""
    p = lp.detection_output_param
    if not p.HasField("num_classes"):
        raise ValueError("detection_output_param.num_classes is required")
    if len(bottoms) not in (3, 4):
        raise ValueError(f"DetectionOutput takes 3 bottoms (loc, conf, prior), got {len(bottoms)}")
    loc, conf, prior = bottoms[:3]
    if len(prior) < 3 or prior[1] != 2 or prior[2] % 4 or any(d != 1 for d in prior[3:]):
        raise ValueError(f"the prior bottom must have shape (1, 2, 4 * priors), got {list(prior)}")
    if loc[0] != conf[0]:
        raise ValueError(f"loc and conf bottoms differ in batch size ({loc[0]} vs {conf[0]})")
    num_priors = prior[2] // 4
    loc_classes = 1 if p.share_location else p.num_classes
    if len(loc) < 2 or loc[1] != num_priors * loc_classes * 4:
        raise ValueError(f"loc bottom {list(loc)} needs {num_priors * loc_classes * 4} channels "
                         f"({num_priors} priors x {loc_classes} location classes x 4)")
    if len(conf) < 2 or conf[1] != num_priors * p.num_classes:
        raise ValueError(f"conf bottom {list(conf)} needs {num_priors * p.num_classes} channels "
                         f"({num_priors} priors x {p.num_classes} classes)")
    return num_priors, loc_classes


@rule("DetectionOutput")
def _detection_output(lp, bottoms):
    detection_counts(lp, bottoms)
    # Caffe's Reshape declares one row; Forward resizes the top to the detections kept.
    return LayerShapes([(1, 1, 1, 7)])
