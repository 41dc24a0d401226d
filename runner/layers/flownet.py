"""NVIDIA/LMB FlowNet 2.0's Caffe layers (lmb-freiburg/flownet2): Correlation, Correlation1D,
Resample, FlowWarp, ChannelNorm, Accum, DataAugmentation (its deploy use: copy and mean
subtraction), NegReLU and L1Loss. Several of the fork's CPU versions are stubs; each layer
here repeats the arithmetic of the fork's CUDA kernels in float32, vectorised. Backward is
autograd's where that is the fork's backward, and the fork's own formula where it is not
(said per layer)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from runner.layers.base import Layer, register
from runner.layers.common import constant_filler
from runner.proto import caffe_pb2
from runner.shapes_flownet import accum_size, correlation_geometry, resample_size


# ---- Correlation, Correlation1D ------------------------------------------------------------

def _window(t, y, x, h, w):
    return t[:, :, y:y + h, x:x + w]


def _correlate(a, b, g, subtract: bool):
    """top[d, y, x] = mean over the k x k x C window at padded (origin + y*s1, origin + x*s1)
    of a * b (or |a - b|), b's window displaced by d: the fork's CorrelateData and
    CorrelateDataSubtract (sum / (k*k*C))."""
    h, w = (g.top_h - 1) * g.stride1 + g.kernel, (g.top_w - 1) * g.stride1 + g.kernel
    first = _window(a, g.origin_y, g.origin_x, h, w)
    maps = []
    for dy, dx in g.displacements:
        second = _window(b, g.origin_y + dy, g.origin_x + dx, h, w)
        maps.append(((first - second).abs() if subtract else first * second).mean(1, keepdim=True))
    return F.avg_pool2d(torch.cat(maps, 1), g.kernel, g.stride1)


class _SubtractCorrelation(torch.autograd.Function):
    """SUBTRACT correlation with the fork's backward (CorrelateDataBackward0/1Subtract): the
    sign of each |a - b| term is read at one position for both blobs, a's and b's values
    at the displaced position for a's diff and at the undisplaced one for b's, and is +1
    where they are equal; not the gradient of the forward."""

    @staticmethod
    def forward(ctx, a, b, g):
        ctx.save_for_backward(a, b)
        ctx.g = g
        return _correlate(a, b, g, subtract=True)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        g = ctx.g
        n, d = grad.shape[:2]
        ones = grad.new_ones(1, 1, g.kernel, g.kernel)
        # per displacement, the summed top diffs of every window covering a position
        cover = F.conv_transpose2d(grad.reshape(n * d, 1, g.top_h, g.top_w), ones, stride=g.stride1)
        cover = cover.reshape(n, d, *cover.shape[2:]) / (g.kernel * g.kernel * a.shape[1])
        h, w = cover.shape[2:]
        sign = torch.where(a >= b, 1.0, -1.0).to(a.dtype)
        grad_a, grad_b = torch.zeros_like(a), torch.zeros_like(b)
        here = sign[:, :, g.origin_y:g.origin_y + h, g.origin_x:g.origin_x + w]
        for i, (dy, dx) in enumerate(g.displacements):
            c = cover[:, i:i + 1]
            _window(grad_a, g.origin_y, g.origin_x, h, w).add_(
                _window(sign, g.origin_y + dy, g.origin_x + dx, h, w) * c)
            _window(grad_b, g.origin_y + dy, g.origin_x + dx, h, w).sub_(here * c)
        return grad_a, grad_b, None


@register("Correlation", "Correlation1D")
class Correlation(Layer):
    """FlowNet's correlation of two feature maps (the fork's CUDA kernels; its CPU ones are
    stubs). Both bottoms are zero-padded by `pad` (Correlation1D: in width only); top channel
    (j, i) holds, at each position (y, x), the mean over the k x k x C window whose
    upper-left corner is (y * stride_1 + max_displacement, x * stride_1 + max_displacement)
    of bottom 0 times bottom 1 displaced by ((j - r) * stride_2, (i - r) * stride_2),
    r = max_displacement / stride_2; SUBTRACT takes |a - b| instead. Correlation1D displaces in
    x only, its windows start at row y * stride_1, and a nonzero single_direction keeps
    r + 1 displacements: from 0 with 1, from -r with any other value but -1 (refused: the
    fork's x_shift then reads before its buffer).
    `do_abs` is read and never used by the fork, as here.

    MULTIPLY's backward (CorrelateDataBackward0/1) is autograd's, which equals it;
    SUBTRACT's is the fork's own sign formula (_SubtractCorrelation)."""

    bottom_count, top_count = (2, 2), (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.geometry = correlation_geometry(lp, bottom_shapes)
        self.subtract = lp.correlation_param.correlation_type == caffe_pb2.CorrelationParameter.SUBTRACT

    def forward(self, a, b):
        g = self.geometry
        pads = (g.pad_x, g.pad_x, g.pad_y, g.pad_y)
        a, b = F.pad(a, pads), F.pad(b, pads)
        if self.subtract:
            return (_SubtractCorrelation.apply(a, b, g),)
        return (_correlate(a, b, g, subtract=False),)

    def extra_repr(self):
        p = self.lp.correlation_param
        return (f"name={self.name!r}, kernel_size={p.kernel_size}, max_displacement="
                f"{p.max_displacement}, pad={p.pad}, stride_1={p.stride_1}, stride_2={p.stride_2}, "
                f"{'SUBTRACT' if self.subtract else 'MULTIPLY'}")


# ---- Resample ------------------------------------------------------------------------------

def _round_away(v: np.ndarray) -> np.ndarray:
    """CUDA's round(): halves away from zero."""
    whole = np.trunc(v)
    return (whole + np.sign(v) * (np.abs(v - whole) >= 0.5)).astype(np.int64)


def _bicubic(v):
    v = np.abs(v)
    return np.where(v <= 1, v * v * (np.float32(1.5) * v - np.float32(2.5)) + 1,
                    np.where(v < 2, v * (v * (np.float32(-0.5) * v + np.float32(2.5)) - 4) + 2, 0)
                    ).astype(np.float32)


def _triangle(v):
    return np.where((v >= -1) & (v < 0), v + 1, np.where((v >= 0) & (v <= 1), 1 - v, 0)).astype(np.float32)


def _resample_positions(n_out: int, f: np.float32, other: np.float32) -> np.ndarray:
    """The fork's source coordinate x_out * f + other / 2 - 0.5, in float (note `other`: the
    kernels add half the *other* axis's factor)."""
    return (np.arange(n_out, dtype=np.float32) * f + other / np.float32(2.0)) - np.float32(0.5)


def _resample_weights(n_out, n_in, f, other, cubic: bool, antialias: bool) -> np.ndarray:
    """(n_out, n_in) weights of InterpolationKernel along one axis: a * filter(a * (pos - x))
    for x within round(pos) +- r inside the blob, a = 1 / f when antialiasing."""
    pos = _resample_positions(n_out, f, other)
    scale = np.float32(1) / f if antialias else np.float32(1)
    width = 4 if cubic else 2
    radius = 2 if f < 1 else math.ceil(np.float32(width) / scale)
    centre = _round_away(pos)
    weights = np.zeros((n_out, n_in), np.float32)
    for off in range(-radius, radius + 1):
        x = centre + off
        inside = (x >= 0) & (x < n_in)
        dist = (pos - x).astype(np.float32) * scale
        w = scale * (_bicubic(dist) if cubic else _triangle(dist))
        np.add.at(weights, (np.nonzero(inside)[0], x[inside]), w[inside])
    return weights


@register("Resample")
class Resample(Layer):
    """The fork's ResampleLayer (CUDA; its CPU forward aborts) to resample_param's width and
    height, or to the second bottom's. fx = W_in / W_out, fy = H_in / H_out, and output
    (x, y) reads source position (x * fx + fy / 2 - 0.5, y * fy + fx / 2 - 0.5), each axis
    offset by half the other's factor as in the fork. NEAREST: the rounded position
    (halves away from zero), read from the channel plane's flat memory as the kernel does.
    LINEAR / CUBIC: triangle / bicubic weights over round(pos) +- r inside the blob,
    normalised by their sum (0 where it is 0); with `antialias` and fx > 1 or fy > 1 the
    filters widen by fx and fy (both axes, as the fork). `factor` is never read.

    The fork's ResampleLayer::AllowBackward is false: its top needs no backward, so no
    gradient reaches the bottom (the top here is detached)."""

    bottom_count, top_count = (1, 2), (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.resample_param
        n, c, h_in, w_in = bottom_shapes[0]
        h_out, w_out = resample_size(lp, bottom_shapes)
        fx, fy = np.float32(w_in) / np.float32(w_out), np.float32(h_in) / np.float32(h_out)
        self.nearest = p.type == caffe_pb2.ResampleParameter.NEAREST
        if self.nearest:
            xs = _round_away(_resample_positions(w_out, fx, fy))
            ys = _round_away(_resample_positions(h_out, fy, fx))
            flat = ys[:, None] * w_in + xs[None, :]
            planes = np.arange(n * c)[:, None, None] * (h_in * w_in)
            if (planes + flat).min() < 0 or (planes + flat).max() >= n * c * h_in * w_in:
                raise ValueError(f"layer '{lp.name}' (Resample): NEAREST from {h_in} x {w_in} to "
                                 f"{h_out} x {w_out} reads outside the blob in the fork's kernel")
            self.register_buffer("index", torch.from_numpy(flat.reshape(-1)), persistent=False)
        else:
            cubic = p.type == caffe_pb2.ResampleParameter.CUBIC
            antialias = bool(p.antialias) and (fx > 1 or fy > 1)
            wx = _resample_weights(w_out, w_in, fx, fy, cubic, antialias)
            wy = _resample_weights(h_out, h_in, fy, fx, cubic, antialias)
            norm = np.outer(wy.sum(1), wx.sum(1)).astype(np.float32)
            self.register_buffer("wx", torch.from_numpy(wx), persistent=False)
            self.register_buffer("wy", torch.from_numpy(wy), persistent=False)
            self.register_buffer("inv_norm", torch.from_numpy(
                np.where(norm == 0, 0, 1 / np.where(norm == 0, 1, norm)).astype(np.float32)), persistent=False)
        self.out_hw = (h_out, w_out)

    def forward(self, x, reference=None):
        n, c = x.shape[:2]
        with torch.no_grad():
            if self.nearest:
                planes = torch.arange(n * c, device=x.device)[:, None] * (x.shape[2] * x.shape[3])
                out = x.reshape(-1)[(planes + self.index.to(x.device)).reshape(-1)]
            else:
                wy, wx = self.wy.to(x.dtype), self.wx.to(x.dtype)
                out = torch.matmul(torch.matmul(wy, x), wx.t()) * self.inv_norm.to(x.dtype)
        return (out.reshape(n, c, *self.out_hw),)

    def extra_repr(self):
        p = self.lp.resample_param
        return (f"name={self.name!r}, {caffe_pb2.ResampleParameter.ResampleType.Name(p.type)}, "
                f"antialias={p.antialias}, out={self.out_hw}")


# ---- FlowWarp ------------------------------------------------------------------------------

@register("FlowWarp")
class FlowWarp(Layer):
    """The fork's FlowWarpLayer: top (x, y) is bottom 0 read bilinearly at (x + u, y + v),
    (u, v) the flow of bottom 1; the right and bottom neighbours clamp to the last column
    and row; a position outside [0, W) x [0, H) (or a NaN flow) gives fill_value (0, or NaN
    with NOT_A_NUMBER). Backward is autograd's, which equals the fork's
    flow_warp_backward_kernel (its flow diff uses 1 - beta and 1 - alpha as iy2_B - y2 and
    ix2_R - x2, which agree with the derivative also at the clamped edges)."""

    bottom_count, top_count = (2, 2), (1, 1)

    def forward(self, image, flow):
        n, c, h, w = image.shape
        xs = torch.arange(w, dtype=flow.dtype, device=flow.device)
        ys = torch.arange(h, dtype=flow.dtype, device=flow.device)[:, None]
        x2, y2 = xs + flow[:, 0], ys + flow[:, 1]
        inside = (x2 >= 0) & (y2 >= 0) & (x2 < w) & (y2 < h)
        x2 = torch.where(inside, x2, torch.zeros_like(x2))
        y2 = torch.where(inside, y2, torch.zeros_like(y2))
        left, top = x2.detach().floor().long(), y2.detach().floor().long()
        right, bottom = (left + 1).clamp(max=w - 1), (top + 1).clamp(max=h - 1)
        alpha, beta = (x2 - left.to(x2.dtype))[:, None], (y2 - top.to(y2.dtype))[:, None]
        flat = image.reshape(n, c, h * w)

        def at(yy, xx):
            idx = (yy * w + xx).reshape(n, 1, h * w).expand(n, c, h * w)
            return flat.gather(2, idx).reshape(n, c, h, w)

        warped = ((1 - alpha) * (1 - beta) * at(top, left) + alpha * (1 - beta) * at(top, right)
                  + (1 - alpha) * beta * at(bottom, left) + alpha * beta * at(bottom, right))
        fill = float("nan") if self.lp.flow_warp_param.fill_value == \
            caffe_pb2.FlowWarpParameter.NOT_A_NUMBER else 0.0
        return (torch.where(inside[:, None], warped, torch.full_like(warped, fill)),)


# ---- ChannelNorm ---------------------------------------------------------------------------

class _ChannelNormFunction(torch.autograd.Function):
    """sqrt(sum over channels of x^2); backward top_diff * x / (norm + 1e-9), as the fork
    (autograd's x / norm is NaN where the norm is 0)."""

    @staticmethod
    def forward(ctx, x):
        norm = x.mul(x).sum(1, keepdim=True).sqrt()
        ctx.save_for_backward(x, norm)
        return norm

    @staticmethod
    def backward(ctx, grad):
        x, norm = ctx.saved_tensors
        return grad * x / (norm + 1e-9)


@register("ChannelNorm")
class ChannelNorm(Layer):
    """The fork's ChannelNormLayer: N x 1 x H x W Euclidean norm over the channels; its
    backward adds 1e-9 to the norm (_ChannelNormFunction)."""

    bottom_count, top_count = (1, 1), (1, 1)

    def forward(self, x):
        return (_ChannelNormFunction.apply(x),)


# ---- Accum ---------------------------------------------------------------------------------

def _corner_positions(n_out: int, n_in: int, device):
    """AccumLayer's pos = i / (n_out - 1) * (n_in - 1) in float: (floor, ceil-clamped, frac)."""
    pos = torch.arange(n_out, dtype=torch.float32, device=device) / np.float32(n_out - 1) * np.float32(n_in - 1)
    low = pos.floor()
    return low.long(), (low.long() + 1).clamp(max=n_in - 1), pos - low


@register("Accum")
class Accum(Layer):
    """The fork's AccumLayer: every bottom (but the last with `have_reference`) resized
    bilinearly, corners aligned (pos = i / (top - 1) * (bottom - 1)), to the top's size and
    concatenated along the channels. The size: the reference's; else the largest bottom's,
    unless top_height/top_width (or size_divisible_by, rounding the largest up) exceed it in
    both directions. The fork's right/bottom neighbour at the last column/row reads the next
    row's memory with weight 0; it is clamped here (the same wherever values are finite).

    Backward is autograd's: the adjoint of the resize, which the fork's DownscaleFeatures
    computes as tri(|tx - topx| / scale); the reference gets no diff, as in the fork."""

    bottom_count, top_count = (1, None), (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.size = accum_size(lp, bottom_shapes)

    def forward(self, *bottoms):
        if self.lp.accum_param.have_reference:
            bottoms = bottoms[:-1]
        h, w = self.size
        outs = []
        for b in bottoms:
            y0, y1, yd = _corner_positions(h, b.shape[2], b.device)
            x0, x1, xd = _corner_positions(w, b.shape[3], b.device)
            yd, xd = yd.to(b.dtype)[:, None], xd.to(b.dtype)
            rows0, rows1 = b[:, :, y0], b[:, :, y1]
            tl, tr, bl, br = rows0[..., x0], rows0[..., x1], rows1[..., x0], rows1[..., x1]
            outs.append((1 - xd) * (1 - yd) * tl + xd * yd * br + (1 - xd) * yd * bl + xd * (1 - yd) * tr)
        return (torch.cat(outs, 1),)


# ---- DataAugmentation ----------------------------------------------------------------------

@register("DataAugmentation")
class DataAugmentation(Layer):
    """The fork's DataAugmentationLayer as FlowNet 2.0's deploy nets use it: without
    crop_width/crop_height the fork copies the bottom, whatever random augmentation the
    parameter describes ("only augment when cropping"), then subtracts a mean. Blob 0
    counts forwards (incremented on every forward, in any phase). With recompute_mean R > 0,
    blobs 1 (1 x C x H x W) and 2 (1 x C x 1 x 1) hold the running per-pixel mean of the
    copied batches and its per-channel average, updated while the count is <= R;
    mean_per_pixel subtracts blob 1, else blob 2. Without recompute_mean, three `mean`
    values with mean_per_pixel false are subtracted per channel. Cropping (the spatial,
    chromatic and effect augmentation) is refused at build. The blobs are never learned
    and no gradient passes (the fork's AllowBackward is false).

    Loading weights follows the fork's adjust_blobs (custom_copy_blobs): only with
    recompute_mean and at least two stored blobs, the count is copied, then blob 2 (not
    mean_per_pixel), or blob 1 when its size matches (blob 2 its average), or blob 2 the
    average of the stored blob 1 and blob 1 that average spread over the pixels."""

    bottom_count, top_count = (1, 1), (1, 1)
    forward_state = ("blobs",)   # the forward count and the running mean

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        for blob in self.blobs:
            blob.requires_grad_(False)

    def blob_fillers(self):
        return [constant_filler(0.0) for _ in self.blobs]

    def custom_copy_blobs(self, stored: list[np.ndarray]) -> list[np.ndarray]:
        """The blobs after the fork's CustomCopyBlobs (adjust_blobs) of `stored`."""
        p = self.lp.augmentation_param
        ours = [b.detach().cpu().numpy().copy() for b in self.blobs]
        if not p.recompute_mean or len(stored) < 2:
            return ours
        ours[0] = stored[0].reshape(ours[0].shape).astype(np.float32)
        channels = ours[1].shape[1]
        if stored[1].ndim != 4 or stored[1].shape[1] != channels:
            raise ValueError(f"layer '{self.name}': the stored mean blob has shape "
                             f"{list(stored[1].shape)}, not 1 x {channels} x H x W")
        if not p.mean_per_pixel:
            ours[2] = stored[2].reshape(-1)[:channels].reshape(ours[2].shape).astype(np.float32)
            return ours
        if stored[1].shape[-2:] == ours[1].shape[-2:]:
            ours[1] = stored[1].reshape(ours[1].shape).astype(np.float32)
            ours[2] = ours[1].reshape(channels, -1).mean(1, dtype=np.float32).reshape(ours[2].shape)
        else:
            ours[2] = stored[1][0].reshape(channels, -1).mean(1, dtype=np.float32).reshape(ours[2].shape)
            ours[1] = np.broadcast_to(ours[2], ours[1].shape).astype(np.float32)
        return ours

    @torch.no_grad()
    def forward(self, x):
        p = self.lp.augmentation_param
        count = self.blobs[0]
        count.add_(1)
        if p.recompute_mean:
            mean, channel_mean = self.blobs[1], self.blobs[2]
            iteration = float(count.reshape(-1)[0])
            if iteration <= p.recompute_mean:
                mean.mul_(iteration - 1).add_(x.mean(0, keepdim=True).to(mean.dtype)).div_(iteration)
                channel_mean.copy_(mean.mean((2, 3), keepdim=True))
            return (x - (mean if p.mean_per_pixel else channel_mean).to(x.dtype),)
        if len(p.mean) == 3 and not p.mean_per_pixel:
            return (x - torch.tensor(list(p.mean), dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1),)
        return (x.clone(),)


# ---- NegReLU, L1Loss -----------------------------------------------------------------------

@register("NegReLU")
class NegReLU(Layer):
    """The fork's NegReLULayer: min(x, 0) + relu_param.negative_slope * max(x, 0); the
    derivative is negative_slope at 0 (the fork's `x >= 0`), as autograd gives here."""

    bottom_count, top_count = (1, 1), (1, 1)

    def forward(self, x):
        return (torch.where(x < 0, x, x * self.lp.relu_param.negative_slope),)


@register("L1Loss")
class L1Loss(Layer):
    """The fork's L1LossLayer (CUDA; the CPU one is a stub) of bottom 0, or of bottom 0 minus
    bottom 1. NaN entries are masked out; the loss is divided by N, or with
    normalize_by_num_entries by the count of non-NaN entries / C. Plain: the sum of |d|,
    entries with |d| < plateau masked too; the diff is sign(d) with the fork's sign, -1 at
    d == 0. l2_per_location: sum over positions of sqrt(sum over channels of d^2
    (/ C with l2_prescale_by_channels) + epsilon), a position whose sum is below plateau^2
    counting sqrt(epsilon) with no diff (autograd here equals the fork's chain of Power,
    1x1-convolution and Power backwards). The top diff scales the bottom diffs; bottom 1's
    is minus bottom 0's. With one bottom the fork also zeroes the masked entries of that
    bottom in place; the bottom is left as it is here."""

    is_loss = True
    bottom_count, top_count = (1, 2), (1, 1)

    def forward(self, *bottoms):
        p = self.lp.l1_loss_param
        d = bottoms[0] - bottoms[1] if len(bottoms) == 2 else bottoms[0]
        valid = ~torch.isnan(d)
        if p.normalize_by_num_entries:
            norm = valid.sum().to(d.dtype) / d.shape[1]
        else:
            norm = d.shape[0]
        d = torch.where(valid, d, torch.zeros_like(d))
        if p.l2_per_location:
            square = d * d
            summed = square.sum(1) / d.shape[1] if p.l2_prescale_by_channels else square.sum(1)
            if p.plateau > 0:
                plateau = np.float32(p.plateau) * np.float32(p.plateau)
                summed = summed * (summed.detach() >= plateau).to(d.dtype)
            return ((summed + p.epsilon).sqrt().sum() / norm,)
        if p.plateau > 0:
            d = torch.where(d.detach().abs() < p.plateau, torch.zeros_like(d), d)
        sign = torch.where(d.detach() > 0, 1.0, -1.0).to(d.dtype)
        return ((d * sign).sum() / norm,)
