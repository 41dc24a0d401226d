"""Layers of Caffe forks that deployed models use, beyond SSD's: ShuffleChannel (ShuffleNet
forks), Reorg (YOLO v2 ports), BN (SegNet), Interp (DeepLab, PSPNet), ROIPooling (Fast/Faster R-CNN), PSROIPooling (R-FCN),
the MobileNet forks' depthwise convolutions, Axpy (SENet), Upsample (YOLOv3 ports,
SegNet), SmoothL1Loss and Proposal (Faster R-CNN). Each repeats its fork's arithmetic (float where
the fork computes in float); backward is autograd's, which here is the fork's own backward:
the adjoint of the interpolation, the gradient of each pooled maximum sent to the first
position that held it."""
from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import torch
import yaml

from runner.graph import NetBuildError
from runner.layers.base import TEST, TRAIN, Layer, register
from runner.layers.common import BlobValueError, constant_filler, filler_or
from runner.layers.vision import Convolution
from runner.proto import caffe_pb2
from runner.shapes import infer_layer
from runner.shapes_forks import (as_convolution, interp_geometry, is_tsn_bn,
                                 proposal_anchor_shapes, upsample_size)


@register("ShuffleChannel")
class ShuffleChannel(Layer):
    """Channel c = i * (C / group) + j moves to j * group + i (farmingyard's Resize_cpu)."""

    bottom_count = top_count = (1, 1)

    def forward(self, x):
        group = self.lp.shuffle_channel_param.group
        n, c = x.shape[:2]
        shuffled = x.reshape(n, group, c // group, -1).transpose(1, 2)
        return (shuffled.reshape(x.shape),)

    def extra_repr(self):
        return f"name={self.name!r}, group={self.lp.shuffle_channel_param.group}"


@register("Reorg")
class Reorg(Layer):
    """darknet's reorg_cpu as the YOLO v2 ports call it (forward flag 0, or 1 with `reverse`).
    The bottom's memory, read as (C / s^2, H, s, W, s), is rewritten in (s, s, C / s^2, H, W)
    order, the s x s blocks of that (C / s^2, H * s, W * s) reading becoming channels, and
    shown as (C * s^2, H / s, W / s). `reverse` rewrites it the other way, shown as
    (C / s^2, H * s, W * s). Backward is the adjoint (darknet's backward); the ports' own
    CPU backwards differ from it and from each other."""

    bottom_count = top_count = (1, 1)

    def forward(self, x):
        s = self.lp.reorg_param.stride
        n, c, h, w = x.shape
        if self.lp.reorg_param.reverse:
            blocks = x.reshape(n, s, s, c // (s * s), h, w).permute(0, 3, 4, 1, 5, 2)
            return (blocks.reshape(n, c // (s * s), h * s, w * s),)
        blocks = x.reshape(n, c // (s * s), h, s, w, s).permute(0, 3, 5, 1, 2, 4)
        return (blocks.reshape(n, c * s * s, h // s, w // s),)

    def extra_repr(self):
        p = self.lp.reorg_param
        return f"name={self.name!r}, stride={p.stride}, reverse={p.reverse}"


@register("BN")
class BN(Layer):
    """The BN type of two forks, told apart by their bn_param fields (is_tsn_bn).

    SegNet's (alexgkendall/caffe-segnet): blobs scale and shift, (1, C, 1, 1). LEARN (the
    default), in every phase as in the fork: y = scale * (x - mean) / sqrt(var + 1e-9) +
    shift, with the batch's per-channel mean and biased variance E[x^2] - mean^2; optional
    second and third tops give that mean and variance (without the 1e-9), which SegNet's
    compute_bn_statistics.py averages. INFERENCE: y = scale * x + shift, for weights that
    script folded the statistics into. Parameter diffs accumulate as in BVLC Caffe (the
    fork overwrites them).

    TSN's (yjxiong/caffe): blobs slope, bias, running mean and running variance, (1, C).
    Training without `frozen`: y = slope * (x - mean) / sqrt(var + eps) + bias with the
    batch's mean and biased variance, and running = momentum * running + (1 - momentum) *
    batch; in evaluation (Caffe's TEST) or `frozen`, the running statistics instead. The
    running blobs (and with `frozen` all four) are never learned. Backward is autograd's,
    the forks' formulas."""

    bottom_count = (1, 1)
    top_count = (1, 3)
    variance_eps = 1e-9   # SegNet's var_eps_

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.tsn = is_tsn_bn(lp)
        if self.tsn:
            for blob in self.blobs[2:]:
                blob.requires_grad_(False)

    def blob_fillers(self):
        p = self.lp.bn_param
        if self.tsn:
            return [filler_or(p, "slope_filler"), filler_or(p, "bias_filler"), constant_filler(0.0),
                    constant_filler(1.0 if p.frozen else 0.0)]
        return [filler_or(p, "scale_filler"), filler_or(p, "shift_filler")]

    def forward(self, x):
        view = (1, x.shape[1]) + (1,) * (x.dim() - 2)
        if self.tsn:
            return (self._tsn(x, view),)
        scale, shift = (blob.reshape(view) for blob in self.blobs)
        if self.lp.bn_param.bn_mode == caffe_pb2.BNParameter.INFERENCE:
            return (x * scale + shift,)
        axes = [0, *range(2, x.dim())]
        mean = x.mean(axes, keepdim=True)
        var = (x * x).mean(axes, keepdim=True) - mean * mean
        y = (x - mean) / torch.sqrt(var + self.variance_eps) * scale + shift
        statistics = (mean.detach().reshape(1, -1, 1, 1), var.detach().reshape(1, -1, 1, 1))
        return (y, *statistics[:len(self.lp.top) - 1])

    def _tsn(self, x, view):
        p = self.lp.bn_param
        slope, bias, running_mean, running_var = (blob.reshape(view) for blob in self.blobs)
        if p.frozen or not self.training:
            mean, var = running_mean, running_var
        else:
            axes = [0, *range(2, x.dim())]
            mean = x.mean(axes, keepdim=True)
            var = ((x - mean) ** 2).mean(axes, keepdim=True)
            with torch.no_grad():
                for blob, batch in ((self.blobs[2], mean), (self.blobs[3], var)):
                    blob.mul_(p.momentum).add_(batch.reshape(blob.shape), alpha=1 - p.momentum)
        return slope * (x - mean) * torch.rsqrt(var + p.eps) + bias

    def extra_repr(self):
        p = self.lp.bn_param
        if self.tsn:
            return f"name={self.name!r}, TSN, eps={p.eps:g}, momentum={p.momentum:g}, frozen={p.frozen}"
        return f"name={self.name!r}, bn_mode={caffe_pb2.BNParameter.BNMode.Name(p.bn_mode)}"


def _interp_axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """caffe_cpu_interp2's sampling along one axis: (index, index + step to the next
    sample, weight of that next sample), computed in float as the fork does."""
    if size_in == size_out:
        index = np.arange(size_out)
        return index, index, np.zeros(size_out, np.float32)
    ratio = np.float32(size_in - 1) / np.float32(size_out - 1) if size_out > 1 else np.float32(0)
    position = ratio * np.arange(size_out, dtype=np.float32)
    index = position.astype(np.int64)            # C's float -> int truncation
    step = (index < size_in - 1).astype(np.int64)
    return index, index + step, (position - index.astype(np.float32)).astype(np.float32)


@register("Interp")
class Interp(Layer):
    """Bilinear resize with corners aligned (caffe_cpu_interp2): output (h2, w2) samples the
    bottom at (h2 * (H - 1) / (h2_out - 1), ...), after cropping -pad_beg/-pad_end. The
    geometry follows the bottom's shape at each forward, as the fork's Reshape."""

    bottom_count = (1, 2)
    top_count = (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self._samplers: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def _axis(self, size_in: int, size_out: int, device) -> tuple[torch.Tensor, ...]:
        key = (size_in, size_out, str(device))
        if key not in self._samplers:
            self._samplers[key] = tuple(torch.from_numpy(a).to(device)
                                        for a in _interp_axis(size_in, size_out))
        return self._samplers[key]

    def forward(self, x, *size_giver):
        shapes = [tuple(x.shape), *(tuple(s.shape) for s in size_giver)]
        pad_beg, h_eff, w_eff, h_out, w_out = interp_geometry(self.lp, shapes)
        x = x[:, :, -pad_beg:h_eff - pad_beg, -pad_beg:w_eff - pad_beg]
        h0, h1, h_weight = self._axis(h_eff, h_out, x.device)
        w0, w1, w_weight = self._axis(w_eff, w_out, x.device)
        hl1, wl1 = h_weight.to(x.dtype)[:, None], w_weight.to(x.dtype)
        hl0, wl0 = 1 - hl1, 1 - wl1
        top, bottom = x[:, :, h0], x[:, :, h1]
        # h0 * (w0 * p00 + w1 * p01) + h1 * (w0 * p10 + w1 * p11), in the fork's order
        return (hl0 * (wl0 * top[..., w0] + wl1 * top[..., w1])
                + hl1 * (wl0 * bottom[..., w0] + wl1 * bottom[..., w1]),)

    def extra_repr(self):
        return f"name={self.name!r}, top={list(self.top_shapes[0])}"


def _c_round(values: np.ndarray) -> np.ndarray:
    """C's round(): halves away from zero."""
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def _regions(layer: Layer, rois: torch.Tensor, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The (R, 5) regions as float32 numpy and their batch indices, checked as the forks'
    CHECK_GE/CHECK_LT do."""
    boxes = rois.detach().reshape(rois.shape[0], 5).to("cpu", torch.float32).numpy()
    batch_index = boxes[:, 0].astype(np.int64)
    if len(boxes) and (batch_index.min() < 0 or batch_index.max() >= batch):
        raise BlobValueError(f"layer '{layer.name}' ({layer.type}): a region's batch index is outside "
                         f"0..{batch - 1}: {sorted(set(batch_index.tolist()))}")
    return boxes, batch_index


def _bin_positions(rows: np.ndarray, cols: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """For bins [begin, end) along rows (PH, 2) and columns (PW, 2): each bin's flat
    positions h * width + w in the forks' scan order (row by row), padded to one length
    K, and which of them are real: two (PH, PW, K) arrays."""
    heights, widths = rows[:, 1] - rows[:, 0], cols[:, 1] - cols[:, 0]
    bh, bw = max(int(heights.max()), 1), max(int(widths.max()), 1)
    r = rows[:, :1] + np.arange(bh)                       # (PH, bh)
    c = cols[:, :1] + np.arange(bw)                       # (PW, bw)
    valid = ((np.arange(bh) < heights[:, None])[:, None, :, None]
             & (np.arange(bw) < widths[:, None])[None, :, None, :])   # (PH, PW, bh, bw)
    index = np.where(valid, r[:, None, :, None] * width + c[None, :, None, :], 0)
    shape = (*valid.shape[:2], bh * bw)
    return index.reshape(shape), valid.reshape(shape)


@register("ROIPooling")
class ROIPooling(Layer):
    """Max pooling of each region (batch index, x1, y1, x2, y2 in input pixels) scaled by
    spatial_scale into a pooled_h x pooled_w grid; an empty bin is 0 (ROIPoolingLayer)."""

    bottom_count = (2, 2)
    top_count = (1, 1)
    force_backward_blocked = (1,)   # the regions get no diff, as in the fork

    def forward(self, features, rois):
        p = self.lp.roi_pooling_param
        n, channels, height, width = features.shape
        boxes, batch_index = _regions(self, rois, n)
        if not len(boxes):
            return (features.new_zeros((0, channels, p.pooled_h, p.pooled_w)),)
        corners = _c_round(boxes[:, 1:] * np.float32(p.spatial_scale)).astype(np.int64)
        x1, y1, x2, y2 = corners.T
        rows = _bins(y1, np.maximum(y2 - y1 + 1, 1), p.pooled_h, height)
        cols = _bins(x1, np.maximum(x2 - x1 + 1, 1), p.pooled_w, width)
        flat = features.reshape(n, channels, height * width)
        pooled = []
        for r in range(len(boxes)):
            index, valid = _bin_positions(rows[r], cols[r], width)
            values = flat[batch_index[r]][:, torch.from_numpy(index).to(flat.device)]
            mask = torch.from_numpy(valid).to(flat.device)
            best = values.masked_fill(~mask, float("-inf")).max(dim=-1).values   # first maximum
            pooled.append(best.masked_fill(~mask.any(-1), 0))                   # empty bins: 0
        return (torch.stack(pooled),)

    def extra_repr(self):
        p = self.lp.roi_pooling_param
        return f"name={self.name!r}, pooled={p.pooled_h}x{p.pooled_w}, spatial_scale={p.spatial_scale}"


def _bins(start: np.ndarray, length: np.ndarray, pooled: int, size: int) -> np.ndarray:
    """ROIPooling's (regions, pooled, 2) [begin, end) of each bin along one axis, clipped to
    the map: floor(p * bin) and ceil((p + 1) * bin) with bin = length / pooled in float."""
    bin_size = length.astype(np.float32) / np.float32(pooled)
    steps = np.arange(pooled + 1, dtype=np.float32)
    begin = np.floor(steps[None, :-1] * bin_size[:, None]).astype(np.int64)
    end = np.ceil(steps[None, 1:] * bin_size[:, None]).astype(np.int64)
    return np.clip(np.stack([begin, end], -1) + start[:, None, None], 0, size)


def _ps_bins(start: np.ndarray, end: np.ndarray, groups: int, size: int) -> np.ndarray:
    """PSROIPooling's (regions, groups, 2) [begin, end) along one axis: floor(p * bin +
    start) and ceil((p + 1) * bin + start), all in float, bin = max(end - start, 0.1) /
    groups; clipped to the map."""
    f32 = np.float32
    bin_size = np.maximum(end - start, f32(0.1)) / f32(groups)
    steps = np.arange(groups + 1, dtype=f32)
    begin = np.floor(steps[None, :-1] * bin_size[:, None] + start[:, None]).astype(np.int64)
    finish = np.ceil(steps[None, 1:] * bin_size[:, None] + start[:, None]).astype(np.int64)
    return np.clip(np.stack([begin, finish], -1), 0, size)


@register("PSROIPooling")
class PSROIPooling(Layer):
    """R-FCN's position-sensitive ROI pooling: bin (i, j) of output channel c averages input
    channel (c * group_size + i) * group_size + j over that bin of the region; an empty bin
    is 0. Each bin's diff is spread evenly over it, as the fork's backward."""

    bottom_count = (2, 2)
    top_count = (1, 1)
    force_backward_blocked = (1,)

    def forward(self, features, rois):
        p = self.lp.psroi_pooling_param
        groups, dim = p.group_size, p.output_dim
        n, _, height, width = features.shape
        boxes, batch_index = _regions(self, rois, n)
        if not len(boxes):
            return (features.new_zeros((0, dim, groups, groups)),)
        f32, scale = np.float32, np.float32(p.spatial_scale)
        rounded = _c_round(boxes[:, 1:].astype(np.float64))
        x1, y1 = rounded[:, 0].astype(f32) * scale, rounded[:, 1].astype(f32) * scale
        x2, y2 = (rounded[:, 2] + 1).astype(f32) * scale, (rounded[:, 3] + 1).astype(f32) * scale
        rows, cols = _ps_bins(y1, y2, groups, height), _ps_bins(x1, x2, groups, width)
        planes = features.reshape(n, dim, groups, groups, height * width)
        bin_row = torch.arange(groups, device=features.device)[:, None, None]
        bin_col = torch.arange(groups, device=features.device)[None, :, None]
        pooled = []
        for r in range(len(boxes)):
            index, valid = _bin_positions(rows[r], cols[r], width)
            mask = torch.from_numpy(valid).to(features.device)
            values = planes[batch_index[r]][:, bin_row, bin_col, torch.from_numpy(index).to(features.device)]
            area = mask.sum(-1).to(features.dtype)
            total = values.masked_fill(~mask, 0).sum(-1)
            pooled.append(torch.where(area > 0, total / area.clamp(min=1), total.new_zeros(())))
        return (torch.stack(pooled),)

    def extra_repr(self):
        p = self.lp.psroi_pooling_param
        return f"name={self.name!r}, output_dim={p.output_dim}, group_size={p.group_size}"


@register("ConvolutionDepthwise", "DepthwiseConvolution")
class DepthwiseConvolution(Convolution):
    """A MobileNet fork's depthwise convolution, built as the BVLC Convolution it computes
    (runner.shapes_forks.as_convolution); it folds, packs and exports as one."""

    def __init__(self, lp, bottom_shapes, phase):
        self.fork_lp = lp   # the layer as written: its shape rule and errors name its type
        super().__init__(as_convolution(lp, bottom_shapes[0]), bottom_shapes, phase)

    def infer_shapes(self, lp, bottom_shapes):
        return infer_layer(self.fork_lp, bottom_shapes)


@register("Axpy")
class Axpy(Layer):
    """SENet's Axpy: top = scale * x + y, one scale per (sample, channel)."""

    bottom_count = (3, 3)
    top_count = (1, 1)

    def forward(self, scale, x, y):
        scale = scale.reshape(*x.shape[:2], *([1] * (x.dim() - 2)))
        return (scale * x + y,)


@register("Upsample")
class Upsample(Layer):
    """With one bottom, nearest-neighbour by `scale` (the YOLOv3 ports); with SegNet's MAX
    pooling mask as second bottom, each value written where the mask points in a zero top
    (a later write to one place wins, as the fork's loop; its diff goes back by the mask)."""

    bottom_count = (1, 2)
    top_count = (1, 1)
    force_backward_blocked = (1,)

    def forward(self, x, *mask):
        height, width = upsample_size(self.lp, [tuple(x.shape), *(tuple(m.shape) for m in mask)])
        if not mask:
            scale = height // x.shape[-2]
            return (x.repeat_interleave(scale, -2).repeat_interleave(scale, -1),)
        n, c = x.shape[:2]
        index = mask[0].detach().reshape(n, c, -1).long()
        if index.numel() and (index.min() < 0 or index.max() >= height * width):
            raise BlobValueError(f"layer '{self.name}' (Upsample): mask index {int(index.min())}.."
                             f"{int(index.max())} outside the {height} x {width} top; the "
                             "upsample size must match the pooling layer that made the mask")
        top = x.new_zeros(n, c, height * width).scatter(2, index, x.reshape(n, c, -1))
        return (top.reshape(n, c, height, width),)


@register("SmoothL1Loss")
class SmoothL1Loss(Layer):
    """Fast R-CNN's smooth L1: x = w_in * (prediction - target); 0.5 * sigma^2 * x^2 where
    |x| < 1 / sigma^2, else |x| - 0.5 / sigma^2; times w_out, summed, over num. Both the
    prediction and the target get diffs, as in the fork."""

    is_loss = True
    bottom_count, top_count = (2, 4), (1, 1)
    force_backward_blocked = (2, 3)   # the weights

    def forward(self, prediction, target, *weights):
        sigma2 = float(self.lp.smooth_l1_loss_param.sigma) ** 2
        x = prediction - target
        if weights:
            x = weights[0] * x
        small = x.abs() < 1.0 / sigma2
        errors = torch.where(small, 0.5 * sigma2 * x * x, x.abs() - 0.5 / sigma2)
        if weights:
            errors = weights[1] * errors
        return (errors.sum() / prediction.shape[0],)


def generate_anchors(base_size: int, ratios, scales) -> np.ndarray:
    """py-faster-rcnn's generate_anchors: (x1, y1, x2, y2) around the base_size window at
    (0, 0), for each ratio (widths and heights rounded) and then each scale."""
    def whctrs(anchor):
        w, h = anchor[2] - anchor[0] + 1, anchor[3] - anchor[1] + 1
        return w, h, anchor[0] + 0.5 * (w - 1), anchor[1] + 0.5 * (h - 1)

    def make(ws, hs, x, y):
        ws, hs = ws[:, None], hs[:, None]
        return np.hstack((x - 0.5 * (ws - 1), y - 0.5 * (hs - 1), x + 0.5 * (ws - 1), y + 0.5 * (hs - 1)))

    w, h, x, y = whctrs(np.array([1, 1, base_size, base_size], np.float64) - 1)
    ws = np.round(np.sqrt(w * h / np.asarray(ratios, np.float64)))
    by_ratio = make(ws, np.round(ws * np.asarray(ratios, np.float64)), x, y)
    scales = np.asarray(scales, np.float64)
    return np.vstack([make(w * scales, h * scales, x, y)
                      for w, h, x, y in (whctrs(a) for a in by_ratio)])


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """py-faster-rcnn's py_cpu_nms: greedy by score, overlap with +1 pixel areas."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= threshold]
    return keep


@register("Proposal")
class Proposal(Layer):
    """Faster R-CNN's region proposals, as py-faster-rcnn's proposal layer computes them (in
    float32 on the CPU): anchors at every cell shifted by the predicted deltas, clipped to the
    image, those under min_size * scale dropped, the pre_nms_topn best kept, NMS at
    nms_thresh, at most post_nms_topn rows of (0, x1, y1, x2, y2); a second top gets their
    scores. No diffs flow back, as in the Python layer."""

    bottom_count, top_count = (3, 3), (1, 2)
    force_backward_blocked = (0, 1, 2)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.proposal_param
        self.anchors = generate_anchors(p.base_size, *proposal_anchor_shapes(p))

    def cell_anchors(self, height: int, width: int) -> np.ndarray:
        """The anchors of every cell of a height x width map, (H W A, 4) float32 in the
        order of the transposed (H, W, A) scores."""
        stride = self.lp.proposal_param.feat_stride
        shift_x, shift_y = np.meshgrid(np.arange(width) * stride, np.arange(height) * stride)
        shifts = np.stack([shift_x.ravel(), shift_y.ravel()] * 2, axis=1)
        return (self.anchors[None] + shifts[:, None]).reshape(-1, 4).astype(np.float32)

    def forward(self, scores, deltas, im_info):
        p = self.lp.proposal_param
        count = len(self.anchors)
        height, width = scores.shape[-2:]
        fg = scores.detach()[:, count:].to("cpu", torch.float32).numpy()
        fg = fg.transpose(0, 2, 3, 1).reshape(-1)
        moves = deltas.detach().to("cpu", torch.float32).numpy().transpose(0, 2, 3, 1).reshape(-1, 4)
        info = im_info.detach().to("cpu", torch.float32).numpy().reshape(-1)
        boxes = _shift_boxes(self.cell_anchors(height, width), moves)
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, info[1] - 1)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, info[0] - 1)
        least = p.min_size * info[2]
        big = ((boxes[:, 2] - boxes[:, 0] + 1 >= least) & (boxes[:, 3] - boxes[:, 1] + 1 >= least))
        boxes, fg = boxes[big], fg[big]
        order = fg.argsort()[::-1]
        if p.pre_nms_topn > 0:
            order = order[:p.pre_nms_topn]
        boxes, fg = boxes[order], fg[order]
        keep = _nms(boxes, fg, p.nms_thresh)[:p.post_nms_topn]
        rois = np.hstack([np.zeros((len(keep), 1), np.float32), boxes[keep]]).astype(np.float32)
        tops = (torch.from_numpy(rois), torch.from_numpy(fg[keep].reshape(-1, 1).copy()))
        return tuple(t.to(scores.device) for t in tops[:len(self.top_shapes)])


def _shift_boxes(anchors: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """py-faster-rcnn's bbox_transform_inv, in float32: centres moved by (dx, dy) times the
    size, sizes scaled by exp(dw), exp(dh)."""
    widths = anchors[:, 2] - anchors[:, 0] + np.float32(1)
    heights = anchors[:, 3] - anchors[:, 1] + np.float32(1)
    ctr_x, ctr_y = anchors[:, 0] + np.float32(0.5) * widths, anchors[:, 1] + np.float32(0.5) * heights
    x = deltas[:, 0] * widths + ctr_x
    y = deltas[:, 1] * heights + ctr_y
    w, h = np.exp(deltas[:, 2]) * widths, np.exp(deltas[:, 3]) * heights
    half = np.float32(0.5)
    return np.stack([x - half * w, y - half * h, x + half * w, y + half * h], axis=1)


# py-faster-rcnn's cfg.TRAIN / cfg.TEST settings of its proposal layer
_PY_FASTER_RCNN = {TRAIN: dict(pre_nms_topn=12000, post_nms_topn=2000),
                   TEST: dict(pre_nms_topn=6000, post_nms_topn=300)}


def python_layer_stand_in(lp, phase: int):
    """The Proposal layer that computes py-faster-rcnn's `rpn.proposal_layer.ProposalLayer`
    (its param_str's feat_stride and scales; cfg's settings for the phase), when that Python
    module cannot be imported, as OpenCV's importer does; None for any other layer. A module
    that imports runs as the Python layer it is."""
    p = lp.python_param
    if lp.type != "Python" or (p.module, p.layer) != ("rpn.proposal_layer", "ProposalLayer"):
        return None
    try:
        if importlib.util.find_spec(p.module) is not None:
            return None
    except ImportError:
        pass
    try:
        params = yaml.safe_load(p.param_str) or {}
        stride, scales = int(params["feat_stride"]), [float(s) for s in params.get("scales", (8, 16, 32))]
    except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise NetBuildError(f"layer '{lp.name}' (Python, rpn.proposal_layer): param_str "
                         f"{p.param_str!r} is not py-faster-rcnn's {{'feat_stride': N[, 'scales': "
                         f"(...)]}} ({type(err).__name__}: {err})") from None
    settings = _PY_FASTER_RCNN[phase]
    stand_in = caffe_pb2.LayerParameter()
    stand_in.CopyFrom(lp)
    stand_in.type = "Proposal"
    stand_in.ClearField("python_param")
    stand_in.proposal_param.feat_stride = stride
    stand_in.proposal_param.scale.extend(scales)
    stand_in.proposal_param.pre_nms_topn = settings["pre_nms_topn"]
    stand_in.proposal_param.post_nms_topn = settings["post_nms_topn"]
    warnings.warn(f"layer '{lp.name}': Python module rpn.proposal_layer is not importable; the "
                  f"built-in Proposal computes it (py-faster-rcnn's algorithm, feat_stride {stride}, "
                  f"scales {scales}, {settings['pre_nms_topn']}/{settings['post_nms_topn']} boxes "
                  "before/after NMS at 0.7, min_size 16)", stacklevel=2)
    return stand_in
