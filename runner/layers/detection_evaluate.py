"""SSD's detection metric (weiliu89/caffe): DetectionEvaluate marks each detection a true or
false positive against the ground truth; the solver turns the marks of a test pass into
average precision (runner/solver/detection_eval.py). No gradient (as in the fork).

With name_size_file the boxes are compared in pixels (bbox_util.cpp's OutputBBox): clipped
to [0, 1] and scaled to the image's height and width, as without resize_param, with WARP,
and with FIT_SMALL_SIZE when height_scale or width_scale is 0. FIT_SMALL_SIZE with both
set scales the unclipped box by width_scale and height_scale and clips it to the image's
width and height in pixels; the size it stores is then ClipBBox's normalized one, w * h,
while the overlap still counts both edges (+1), as the fork (so the overlap of a box with
itself exceeds 1). resize_param's height and width only enter the fork's CHECKs there
(positive, refused otherwise). FIT_LARGE_SIZE_AND_PAD first takes each box out of the
padding the resize added (ProjectBBox from the part of the height x width input the image
filled), then clips and scales as WARP; a box wholly inside the padding is left as it was,
as the fork ignores ProjectBBox's refusal there."""
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


def output_boxes(boxes: np.ndarray, height: int, width: int,
                 scales: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """OutputBBox without resize (or with WARP, or FIT_SMALL_SIZE without both scales):
    boxes clipped to [0, 1], scaled to the image's pixels, and their sizes as ScaleBBox
    stores them ((w + 1) * (h + 1) once the image is larger than 1 pixel). With `scales`
    (FIT_SMALL_SIZE's height_scale, width_scale): ScaleBBox by the scales, then ClipBBox to
    the image's pixels, which stores the size w * h."""
    if scales is not None:
        scaled = boxes * np.array([scales[1], scales[0], scales[1], scales[0]], dtype=_F32)
        upper = np.array([width, height, width, height], dtype=_F32)
        clipped = np.maximum(np.minimum(scaled, upper), _F32(0))
        return clipped, box_size(clipped)
    scale = np.array([width, height, width, height], dtype=_F32)
    scaled = np.clip(boxes, _F32(0), _F32(1)) * scale
    if not (width > 1 or height > 1):
        return scaled, box_size(scaled)
    w = scaled[:, 2] - scaled[:, 0]
    h = scaled[:, 3] - scaled[:, 1]
    return scaled, np.where((w < 0) | (h < 0), _F32(0), (w + _F32(1)) * (h + _F32(1)))


def unpad_boxes(boxes: np.ndarray, height: int, width: int, resize_height: int,
                resize_width: int) -> np.ndarray:
    """OutputBBox's FIT_LARGE_SIZE_AND_PAD step: boxes normalized to the resized, padded
    input, projected onto the part the height x width image filled (clipped to [0, 1]);
    boxes disjoint from that part stay as they were."""
    rh, rw = _F32(resize_height), _F32(resize_width)
    aspect = _F32(width) / _F32(height)
    if aspect > rw / rh:
        pad = ((rh - rw / aspect) / _F32(2)) / rh
        source = np.array([0, pad, 1, 1.0 - float(pad)], dtype=_F32)
    else:
        pad = ((rw - rh * aspect) / _F32(2)) / rw
        source = np.array([pad, 0, 1.0 - float(pad), 1], dtype=_F32)
    disjoint = ((boxes[:, 0] >= source[2]) | (boxes[:, 2] <= source[0])
                | (boxes[:, 1] >= source[3]) | (boxes[:, 3] <= source[1]))
    extent = np.tile(source[2:] - source[:2], 2)
    projected = np.clip((boxes - np.tile(source[:2], 2)) / extent, _F32(0), _F32(1))
    return np.where(disjoint[:, None], boxes, projected)


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
    forward_state = ("count",)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.detection_evaluate_param
        self.background = evaluate_background(p)
        self.num_classes = p.num_classes
        self.threshold = _F32(p.overlap_threshold)
        self.evaluate_difficult = p.evaluate_difficult_gt
        self.sizes = read_name_sizes(p.name_size_file) if p.HasField("name_size_file") else []
        r, resize = p.resize_param, caffe_pb2.ResizeParameter
        self.scales = None   # FIT_SMALL_SIZE's (height_scale, width_scale) when both are set
        self.padded_to = None   # FIT_LARGE_SIZE_AND_PAD's (height, width)
        if self.sizes and p.HasField("resize_param"):
            if r.height <= 0 or r.width <= 0:
                raise ValueError(f"layer '{lp.name}': detection_evaluate_param.resize_param."
                                 "height and width must be positive (the fork CHECKs them "
                                 "when it scales a box to the name_size_file's pixels)")
            if r.resize_mode == resize.FIT_SMALL_SIZE and r.height_scale and r.width_scale:
                self.scales = (r.height_scale, r.width_scale)
            if r.resize_mode == resize.FIT_LARGE_SIZE_AND_PAD:
                self.padded_to = (r.height, r.width)
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
            if self.padded_to:
                gt_boxes = unpad_boxes(gt_boxes, height, width, *self.padded_to)
                boxes = unpad_boxes(boxes, height, width, *self.padded_to)
            gt_boxes, gt_sizes = output_boxes(gt_boxes, height, width, self.scales)
            boxes, sizes = output_boxes(boxes, height, width, self.scales)
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

    def _by_image_and_label(self, rows: np.ndarray, what: str, fork_message: str,
                            stop_at_minus_one: bool) -> dict[int, dict[int, list[int]]]:
        """Row indices grouped {image: {label: [rows]}} in row order; a row of image -1 ends
        the list or is skipped, and a background label is refused, as the fork's readers."""
        out: dict[int, dict[int, list[int]]] = {}
        for r, row in enumerate(rows):
            image, c = int(row[0]), int(row[1])
            if image == -1:
                if stop_at_minus_one:
                    break
                continue
            if c == self.background:
                raise BlobValueError(f"layer '{self.name}': {what} row {r} has the background "
                                     f"label {c} (the fork stops: '{fork_message}')")
            out.setdefault(image, {}).setdefault(c, []).append(r)
        return out

    def _detections(self, rows: np.ndarray) -> dict[int, dict[int, tuple]]:
        """GetDetectionResults: {image: {label: (boxes (k, 4), scores (k,))}} in row order,
        rows with image -1 left out."""
        grouped = self._by_image_and_label(rows, "detection", "Found background label in the "
                                           "detection results.", stop_at_minus_one=False)
        return {image: {c: (rows[idx, 3:7], rows[idx, 2]) for c, idx in by_label.items()}
                for image, by_label in grouped.items()}

    def _ground_truth(self, rows: np.ndarray) -> dict[int, dict[int, tuple]]:
        """GetGroundTruth (the LabelBBox form, which stops at the first row of image -1):
        {image: {label: (boxes, sizes, difficult)}}, difficult boxes included."""
        grouped = self._by_image_and_label(rows, "ground truth", "Found background label in "
                                           "the dataset.", stop_at_minus_one=True)
        return {image: {c: (rows[idx, 3:7], box_size(rows[idx, 3:7]), rows[idx, 7] != 0)
                        for c, idx in by_label.items()}
                for image, by_label in grouped.items()}
