"""SSD's detection layers (weiliu89/caffe): PriorBox makes the default boxes of a feature
map, DetectionOutput decodes the location predictions against them and keeps the best
boxes per class by non-maximum suppression. Neither has a gradient (as in the fork)."""
from __future__ import annotations

import math

import numpy as np
import torch

from runner.layers.base import Layer, register
from runner.layers.bbox import box_size, decode_boxes, nms_fast
from runner.layers.common import FLT_MAX
from runner.shapes_detection import detection_counts, prior_aspect_ratios

_F32 = np.float32


def _as_f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _positive(value, what: str, layer: str) -> float:
    if not value > 0:
        raise ValueError(f"layer '{layer}': {what} must be positive, got {value:g}")
    return value


@register("PriorBox")
class PriorBox(Layer):
    """Default boxes for each cell of bottom 0, in image coordinates of bottom 1 (or
    img_size/img_h/img_w): per min_size a square of that side, a square of side
    sqrt(min_size * max_size), then one box per aspect ratio other than 1. Top (1, 2, 4*n):
    the boxes (clipped to [0, 1] with `clip`), then the variances."""

    bottom_count, top_count = (2, 2), (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p, name = lp.prior_box_param, lp.name
        # the fork truncates sizes to int before using them
        self.min_sizes = [int(_positive(s, "min_size", name)) for s in p.min_size]
        self.max_sizes = [int(s) for s in p.max_size]
        if self.max_sizes and len(self.max_sizes) != len(self.min_sizes):
            raise ValueError(f"layer '{name}': {len(p.max_size)} max_size for "
                             f"{len(p.min_size)} min_size; give one per min_size or none")
        for lo, hi in zip(p.min_size, p.max_size):
            if not hi > lo:
                raise ValueError(f"layer '{name}': max_size {hi:g} must be greater than min_size {lo:g}")
        self.aspect_ratios = prior_aspect_ratios(p)
        if len(p.variance) not in (0, 1, 4):
            raise ValueError(f"layer '{name}': give 1 or 4 variances, got {len(p.variance)}")
        for v in p.variance:
            _positive(v, "variance", name)
        self.variances = list(p.variance) or [0.1]
        self.image_size = self._pair(p, "img_size", "img_h", "img_w", int)
        self.step = self._pair(p, "step", "step_h", "step_w", float)
        self.offset, self.clip = p.offset, p.clip
        self._cache: dict = {}

    def _pair(self, p, both: str, h: str, w: str, cast) -> tuple | None:
        """(h, w) from `both` or `h`/`w` (exclusive, positive), or None when unset."""
        if p.HasField(h) or p.HasField(w):
            if p.HasField(both):
                raise ValueError(f"layer '{self.name}': give either {both} or {h}/{w}, not both")
            return (cast(_positive(getattr(p, h), h, self.name)),
                    cast(_positive(getattr(p, w), w, self.name)))
        if p.HasField(both):
            value = cast(_positive(getattr(p, both), both, self.name))
            return value, value
        return None

    def boxes(self, layer_h: int, layer_w: int, img_h: int, img_w: int) -> np.ndarray:
        """The top (1, 2, layer_h * layer_w * priors * 4) as float32, computed as the fork:
        centres in float, corners in double, stored as float."""
        if self.step is None:
            step_h, step_w = _F32(img_h) / _F32(layer_h), _F32(img_w) / _F32(layer_w)
        else:
            step_h, step_w = _F32(self.step[0]), _F32(self.step[1])
        offset = _F32(self.offset)
        cx = (np.arange(layer_w, dtype=_F32) + offset) * step_w
        cy = (np.arange(layer_h, dtype=_F32) + offset) * step_h
        sides = []  # (width, height) of each prior of a cell, in the fork's order
        for i, min_size in enumerate(self.min_sizes):
            sides.append((min_size, min_size))
            if self.max_sizes:
                side = float(_F32(math.sqrt(min_size * self.max_sizes[i])))
                sides.append((side, side))
            for ar in self.aspect_ratios:
                if abs(ar - 1.0) >= 1e-6:
                    root = math.sqrt(ar)
                    sides.append((float(_F32(min_size * root)), float(_F32(min_size / root))))
        half = np.array(sides, dtype=np.float64) / 2.0                      # (priors, 2)
        x = cx.astype(np.float64)[None, :, None]
        y = cy.astype(np.float64)[:, None, None]
        shape = (layer_h, layer_w, len(sides))
        corners = np.stack([np.broadcast_to((x - half[:, 0]) / img_w, shape),
                            np.broadcast_to((y - half[:, 1]) / img_h, shape),
                            np.broadcast_to((x + half[:, 0]) / img_w, shape),
                            np.broadcast_to((y + half[:, 1]) / img_h, shape)], axis=-1)
        corners = corners.astype(_F32).reshape(-1)
        if self.clip:
            corners = np.clip(corners, 0, 1)
        variances = np.resize(np.array(self.variances, dtype=_F32), corners.size)
        return np.stack([corners, variances])[None]

    def forward(self, feature, image):
        img_h, img_w = self.image_size or (image.shape[-2], image.shape[-1])
        key = (feature.shape[2], feature.shape[3], img_h, img_w, feature.device, feature.dtype)
        if key not in self._cache:
            priors = self.boxes(feature.shape[2], feature.shape[3], img_h, img_w)
            self._cache[key] = torch.from_numpy(priors).to(device=feature.device, dtype=feature.dtype)
        return (self._cache[key],)


@register("DetectionOutput")
class DetectionOutput(Layer):
    """Decode loc (N, priors * loc classes * 4) against the priors, then per image and
    class (background skipped) keep boxes by NMS on conf (N, priors * classes), then the
    keep_top_k best over all classes. Top (1, 1, kept, 7): image, label, score, xmin, ymin,
    xmax, ymax, by image, then label, then score; one row of -1 per image (its index
    first) when nothing is kept. Runs on the CPU in float32, as the fork's CPU path."""

    bottom_count, top_count = (3, 4), (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.detection_output_param
        self.num_priors, self.loc_classes = detection_counts(lp, bottom_shapes)
        if p.visualize or p.save_output_param.output_directory:
            raise ValueError(f"layer '{lp.name}': DetectionOutput's visualize and "
                             f"save_output_param (writing result files) are not supported; "
                             f"read the detections from the top instead")
        nms = p.nms_param
        if nms.nms_threshold < 0:
            raise ValueError(f"layer '{lp.name}': nms_threshold must be non-negative, "
                             f"got {nms.nms_threshold:g}")
        if not 0 < nms.eta <= 1:
            raise ValueError(f"layer '{lp.name}': nms_param.eta must be in (0, 1], got {nms.eta:g}")
        self.num_classes = p.num_classes
        self.background = p.background_label_id
        if p.share_location and self.background == -1:
            raise ValueError(f"layer '{lp.name}': background_label_id -1 with share_location: "
                             "the fork's DecodeBBoxesAll skips the shared locations (their label "
                             "is -1) and its Forward then aborts ('Could not find location "
                             "predictions for label -1'); use share_location: false, or another "
                             "background label")
        self.share_location = p.share_location
        self.code_type, self.encoded_in_target = p.code_type, p.variance_encoded_in_target
        self.keep_top_k = p.keep_top_k
        self.confidence_threshold = p.confidence_threshold if p.HasField("confidence_threshold") else -FLT_MAX
        self.nms_threshold, self.eta = nms.nms_threshold, nms.eta
        self.top_k = nms.top_k if nms.HasField("top_k") else -1

    def forward(self, loc, conf, prior, *image):
        # Reshape: the prior count of these bottoms (a data layer's image size may change)
        try:
            self.num_priors, _ = detection_counts(self.lp, [tuple(b.shape) for b in
                                                            (loc, conf, prior, *image)])
        except ValueError as err:
            raise ValueError(f"layer '{self.name}': {err}") from None
        n, p, device = loc.shape[0], self.num_priors, loc.device
        loc = _as_f32(loc).reshape(n, p, self.loc_classes, 4)
        conf = _as_f32(conf).reshape(n, p, self.num_classes)
        prior = _as_f32(prior).reshape(-1, 2, p, 4)[0]
        rows = []
        for i in range(n):
            rows.extend(self._detect(i, loc[i], conf[i], prior[0], prior[1]))
        if not rows:
            rows = [[i] + [-1.0] * 6 for i in range(n)]
        top = torch.tensor(np.array(rows, dtype=_F32)).reshape(1, 1, -1, 7)
        return (top.to(device),)

    def _detect(self, image: int, loc, conf, priors, variances) -> list[list[float]]:
        """The rows of one image."""
        decoded = {}
        for c in range(self.loc_classes):
            label = -1 if self.share_location else c
            if label != self.background:
                boxes = decode_boxes(priors, variances, loc[:, c], self.code_type, self.encoded_in_target)
                decoded[label] = (boxes, box_size(boxes))
        kept: dict[int, list[int]] = {}
        for c in range(self.num_classes):
            if c == self.background:
                continue
            boxes, areas = decoded[-1 if self.share_location else c]
            kept[c] = nms_fast(boxes, areas, conf[:, c], self.confidence_threshold,
                               self.nms_threshold, self.eta, self.top_k)
        if self.keep_top_k > -1 and sum(map(len, kept.values())) > self.keep_top_k:
            # best scores over all classes (ties in label-then-NMS order), regrouped by label
            pairs = [(conf[idx, c], c, idx) for c, indices in kept.items() for idx in indices]
            pairs.sort(key=lambda t: -t[0])
            kept = {}
            for _, c, idx in pairs[:self.keep_top_k]:
                kept.setdefault(c, []).append(idx)
        rows = []
        for c in sorted(kept):
            boxes = decoded[-1 if self.share_location else c][0]
            rows += [[image, c, conf[idx, c], *boxes[idx]] for idx in kept[c]]
        return rows
