"""SSD's detection metric (weiliu89/caffe): DetectionEvaluate marks each detection a true or
false positive against the ground truth, and ComputeAP turns the marks the solver gathers
over a test pass (eval_type "detection") into average precision. No gradient (as in the fork)."""
from __future__ import annotations

import numpy as np
import torch

from runner.layers.base import Layer, register
from runner.layers.bbox import box_size
from runner.layers.common import BlobValueError
from runner.layers.cxx_sort import std_sort_order
from runner.proto import caffe_pb2
from runner.shapes_detection import evaluate_background

_F32 = np.float32
_EPS = float(np.float32(1e-6))  # ComputeAP's `const float eps`
AP_VERSIONS = ("11point", "MaxIntegral", "Integral")


def _as_f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def read_name_sizes(path: str) -> list[tuple[int, int]]:
    """DetectionEvaluateLayer::LayerSetUp's name_size_file: (height, width) per
    `name height width` line, read until the first triple that does not parse."""
    try:
        with open(path) as f:
            tokens = f.read().split()
    except OSError as err:
        raise ValueError(f"Failed to open name size file: {path} ({err.strerror})") from None
    sizes = []
    for i in range(0, len(tokens) - 2, 3):
        try:
            sizes.append((int(tokens[i + 1]), int(tokens[i + 2])))
        except ValueError:
            break
    return sizes


def output_boxes(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """OutputBBox without resize (or with WARP): boxes clipped to [0, 1], scaled to the
    image's pixels, and their sizes as ScaleBBox stores them ((w + 1) * (h + 1) once the
    image is larger than 1 pixel)."""
    scale = np.array([width, height, width, height], dtype=_F32)
    scaled = np.clip(boxes, _F32(0), _F32(1)) * scale
    if not (width > 1 or height > 1):
        return scaled, box_size(scaled)
    w = scaled[:, 2] - scaled[:, 0]
    h = scaled[:, 3] - scaled[:, 1]
    return scaled, np.where((w < 0) | (h < 0), _F32(0), (w + _F32(1)) * (h + _F32(1)))


def overlaps(box: np.ndarray, size, gt: np.ndarray, gt_sizes: np.ndarray,
             normalized: bool) -> np.ndarray:
    """JaccardOverlap (the NormalizedBBox form) of one box with each gt box, from their
    stored sizes; pixel boxes count both edges (+1)."""
    disjoint = ((gt[:, 0] > box[2]) | (gt[:, 2] < box[0])
                | (gt[:, 1] > box[3]) | (gt[:, 3] < box[1]))
    width = np.minimum(box[2], gt[:, 2]) - np.maximum(box[0], gt[:, 0])
    height = np.minimum(box[3], gt[:, 3]) - np.maximum(box[1], gt[:, 1])
    if not normalized:
        width, height = width + _F32(1), height + _F32(1)
    inter = width * height
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iou = inter / ((size + gt_sizes) - inter)
    return np.where(disjoint | ~((width > 0) & (height > 0)), _F32(0), iou)


@register("DetectionEvaluate")
class DetectionEvaluate(Layer):
    """Bottoms: detections (1, 1, D, 7) as DetectionOutput writes them and ground truth
    (1, 1, G, 8). Top (1, 1, classes + detections, 5): per positive class a row
    [-1, label, number of gt, -1, -1], then per detection [image, label, score, tp, fp],
    by image, then label, best score first where the label has gt (a detection matched to
    a difficult gt that is not evaluated keeps tp = fp = 0). With name_size_file the
    boxes are compared in the original image's pixels."""

    bottom_count, top_count = (2, 2), (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.detection_evaluate_param
        self.background = evaluate_background(p)
        self.num_classes = p.num_classes
        self.threshold = _F32(p.overlap_threshold)
        self.evaluate_difficult = p.evaluate_difficult_gt
        self.sizes = read_name_sizes(p.name_size_file) if p.HasField("name_size_file") else []
        mode = p.resize_param.resize_mode
        if self.sizes and p.HasField("resize_param") and mode != caffe_pb2.ResizeParameter.WARP:
            raise ValueError(f"layer '{lp.name}': detection_evaluate_param.resize_param with "
                             f"resize_mode {caffe_pb2.ResizeParameter.Resize_mode.Name(mode)} "
                             f"is not supported (WARP or no resize_param)")
        self.count = 0   # the fork's count_: images evaluated so far, into name_size_file

    def forward(self, det, label):
        rows = _as_f32(det).reshape(-1, 7)
        detections = self._detections(rows)
        gts = self._ground_truth(_as_f32(label).reshape(-1, 8))
        num_pos: dict[int, int] = {}
        for by_label in gts.values():
            for c, (_, _, difficult) in by_label.items():
                n = len(difficult) if self.evaluate_difficult else int((~difficult).sum())
                num_pos[c] = num_pos.get(c, 0) + n
        classes = [c for c in range(self.num_classes) if c != self.background]
        top = np.zeros((len(classes) + int((rows[:, 1] != -1).sum()), 5), dtype=_F32)
        top[:len(classes)] = [[-1, c, num_pos.get(c, 0), -1, -1] for c in classes]
        n = len(classes)
        for image in sorted(detections):
            for c, (boxes, scores) in sorted(detections[image].items()):
                if c == -1:
                    continue
                gt = gts.get(image, {}).get(c)
                if gt is None:   # no ground truth of this label: all false positives
                    top[n:n + len(scores)] = [[image, c, s, 0, 1] for s in scores]
                    n += len(scores)
                    continue
                n = self._match(top, n, image, c, boxes, scores, gt)
            if self.sizes:
                self.count = (self.count + 1) % len(self.sizes)
        return (torch.from_numpy(top).reshape(1, 1, -1, 5).to(device=det.device, dtype=det.dtype),)

    def _match(self, top, n, image, c, boxes, scores, gt) -> int:
        """The rows of one image's detections of one label that has ground truth."""
        gt_boxes, gt_sizes, difficult = gt
        normalized = not self.sizes
        if not normalized:
            height, width = self.sizes[self.count]
            gt_boxes, gt_sizes = output_boxes(gt_boxes, height, width)
            boxes, sizes = output_boxes(boxes, height, width)
        else:
            sizes = box_size(boxes)
        visited = np.zeros(len(gt_boxes), dtype=bool)
        for i in std_sort_order(scores):
            top[n, :3] = image, c, scores[i]
            iou = overlaps(boxes[i], sizes[i], gt_boxes, gt_sizes, normalized)
            j = int(np.argmax(iou))
            if iou[j] >= self.threshold:
                if self.evaluate_difficult or not difficult[j]:
                    top[n, 3:] = (0, 1) if visited[j] else (1, 0)
                    visited[j] = True
            else:
                top[n, 3:] = 0, 1
            n += 1
        return n

    def _detections(self, rows: np.ndarray) -> dict[int, dict[int, tuple]]:
        """GetDetectionResults: {image: {label: (boxes (k, 4), scores (k,))}} in row order,
        rows with image -1 left out."""
        out: dict[int, dict[int, list]] = {}
        for r, row in enumerate(rows):
            image, c = int(row[0]), int(row[1])
            if image == -1:
                continue
            if c == self.background:
                raise BlobValueError(f"layer '{self.name}': detection row {r} has the background "
                                     f"label {c} (the fork stops: 'Found background label in "
                                     f"the detection results.')")
            out.setdefault(image, {}).setdefault(c, []).append(r)
        return {image: {c: (rows[idx, 3:7], rows[idx, 2]) for c, idx in by_label.items()}
                for image, by_label in out.items()}

    def _ground_truth(self, rows: np.ndarray) -> dict[int, dict[int, tuple]]:
        """GetGroundTruth (the LabelBBox form, which stops at the first row of image -1):
        {image: {label: (boxes, sizes, difficult)}}, difficult boxes included."""
        out: dict[int, dict[int, list]] = {}
        for r, row in enumerate(rows):
            image, c = int(row[0]), int(row[1])
            if image == -1:
                break
            if c == self.background:
                raise BlobValueError(f"layer '{self.name}': ground truth row {r} has the background "
                                     f"label {c} (the fork stops: 'Found background label in "
                                     f"the dataset.')")
            out.setdefault(image, {}).setdefault(c, []).append(r)
        result = {}
        for image, by_label in out.items():
            result[image] = {}
            for c, idx in by_label.items():
                boxes = rows[idx, 3:7]
                result[image][c] = (boxes, box_size(boxes), rows[idx, 7] != 0)
        return result


def _cumsum(pairs: list[tuple[float, int]]) -> np.ndarray:
    """CumSum: running sums of the flags, best score first (stable on ties)."""
    order = sorted(range(len(pairs)), key=lambda i: -pairs[i][0])
    return np.cumsum([pairs[i][1] for i in order])


def compute_ap(tp: list[tuple[float, int]], num_pos: int, fp: list[tuple[float, int]],
               ap_version: str) -> float:
    """ComputeAP: average precision of (score, flag) true/false positive lists against
    num_pos ground truth boxes, in the fork's float arithmetic (its `fabs` is C's double
    one); 0 without detections or positives."""
    if ap_version not in AP_VERSIONS:
        raise ValueError(f"Unknown ap_version: {ap_version} ({', '.join(AP_VERSIONS)})")
    if len(tp) != len(fp):
        raise ValueError(f"tp must have same size as fp ({len(tp)} vs {len(fp)})")
    for (s_tp, t), (s_fp, f) in zip(tp, fp):
        if abs(_F32(s_tp) - _F32(s_fp)) > _EPS or t != 1 - f:
            raise ValueError(f"tp ({s_tp}, {t}) and fp ({s_fp}, {f}) are not complements")
    ap = _F32(0)
    if not tp or num_pos == 0:
        return ap
    tp_sum, fp_sum = _cumsum(tp), _cumsum(fp)
    if tp_sum[-1] > num_pos:
        raise ValueError(f"{tp_sum[-1]} true positives for {num_pos} ground truth boxes")
    prec = tp_sum.astype(_F32) / (tp_sum + fp_sum).astype(_F32)
    rec = tp_sum.astype(_F32) / _F32(num_pos)
    num = len(tp)
    if ap_version == "11point":
        max_precs = [_F32(0)] * 11
        start = num - 1
        for j in range(10, -1, -1):
            for i in range(start, -1, -1):
                if float(rec[i]) < j / 10.0:
                    start = i
                    if j > 0:
                        max_precs[j - 1] = max_precs[j]
                    break
                max_precs[j] = max(max_precs[j], prec[i])
        for j in range(10, -1, -1):
            ap = _F32(ap + max_precs[j] / _F32(11))
    elif ap_version == "MaxIntegral":
        cur_rec, cur_prec = rec[-1], prec[-1]
        for i in range(num - 2, -1, -1):
            cur_prec = max(prec[i], cur_prec)
            step = abs(float(cur_rec - rec[i]))
            if step > _EPS:
                ap = _F32(float(ap) + float(cur_prec) * step)
            cur_rec = rec[i]
        ap = _F32(ap + cur_rec * cur_prec)
    else:
        prev_rec = _F32(0)
        for i in range(num):
            step = abs(float(rec[i] - prev_rec))
            if step > _EPS:
                ap = _F32(float(ap) + float(prec[i]) * step)
            prev_rec = rec[i]
    return ap
