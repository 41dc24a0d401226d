"""Normalisation layers: LRN, BatchNorm (Caffe's running-sum statistics), MVN and SSD's
Normalize."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from runner.layers.base import Layer, register
from runner.layers.common import constant_filler, filler_or, flatten_from, records_graph
from runner.proto import caffe_pb2


@register("LRN")
class LRN(Layer):
    """Local response normalisation.

    ACROSS_CHANNELS: b = a * (k + alpha/n * sum of a^2 over n channels, zero padded)^-beta.
    WITHIN_CHANNEL: Caffe squares, AVE-pools n x n with pad (n-1)/2 (padding counts in
    the divisor, so it is always n^2 and the output keeps the input size), then
    b = a * (1 + alpha * pooled)^-beta; k is not used.
    """

    bottom_count = top_count = (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.lrn_param
        if p.local_size % 2 != 1:
            raise ValueError(f"layer '{lp.name}': LRN local_size must be odd, got {p.local_size}")
        if len(bottom_shapes[0]) != 4:
            raise ValueError(f"layer '{lp.name}': LRN needs a 4-D bottom (N, C, H, W), "
                             f"got {list(bottom_shapes[0])}")
        self.within = p.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL
        self.size, self.alpha, self.beta, self.k = p.local_size, p.alpha, p.beta, p.k

    def forward(self, x):
        n = self.size
        fresh = records_graph(x)   # else the temporaries are reused in place (same values)
        if not self.within:
            # the window sum as n shifted adds along the channels: 3-4x faster than
            # F.local_response_norm's 3-D average pool, in NCHW and channels_last alike
            half, channels = (n - 1) // 2, x.shape[1]
            padded = F.pad(x * x, (0, 0, 0, 0, half, half))
            window = padded.narrow(1, 0, channels)
            for j in range(1, n):
                term = padded.narrow(1, j, channels)
                window = window + term if fresh or j == 1 else window.add_(term)
            scale = (self.k + self.alpha / n * window if fresh
                     else window.mul_(self.alpha / n).add_(self.k))
        else:
            pooled = F.avg_pool2d(x * x, n, stride=1, padding=(n - 1) // 2, count_include_pad=True)
            scale = 1 + self.alpha * pooled if fresh else pooled.mul_(self.alpha).add_(1)
        return (x * self._power(scale) if fresh else self._power_(scale).mul_(x),)

    def _power(self, scale):
        """scale^-beta; for the usual beta 0.75 as rsqrt(s) * rsqrt(sqrt(s)): 3x faster than
        torch.pow on the CPU, within 3e-7 (relative) of the exact power."""
        if self.beta == 0.75:
            return torch.rsqrt(scale) * torch.rsqrt(torch.sqrt(scale))
        return torch.pow(scale, -self.beta)

    def _power_(self, scale):
        """_power computed into `scale` (the same values)."""
        if self.beta == 0.75:
            quarter = torch.sqrt(scale).rsqrt_()
            return scale.rsqrt_().mul_(quarter)
        return scale.pow_(-self.beta)

    def extra_repr(self):
        region = "WITHIN_CHANNEL" if self.within else "ACROSS_CHANNELS"
        return f"name={self.name!r}, {region}, size={self.size}, alpha={self.alpha:g}, beta={self.beta:g}"


@register("BatchNorm")
class BatchNorm(Layer):
    """Caffe's BatchNorm (no affine part; a Scale layer follows in Caffe nets).

    Blobs: mean_acc, var_acc, s (not learned by gradient). Without global statistics it
    normalises by the batch mean and biased variance and updates
    s = lambda*s + 1, mean_acc = mean_B + lambda*mean_acc,
    var_acc = m/(m-1)*var_B + lambda*var_acc. With global statistics it uses
    mean_acc/s and var_acc/s (s == 0 gives 0). use_global_stats defaults to evaluation
    mode (`not self.training`), Caffe's "phase == TEST".
    """

    bottom_count = top_count = (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.batch_norm_param
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else None
        self.fraction = p.moving_average_fraction
        self.eps = p.eps
        for blob in self.blobs:
            blob.requires_grad_(False)

    def blob_fillers(self):
        return [constant_filler(0.0) for _ in self.blobs]

    def forward(self, x):
        use_global = (not self.training) if self.use_global_stats is None else self.use_global_stats
        x4 = x.reshape(-1, 1) if x.dim() == 1 else x
        mean_acc, var_acc, s = self.blobs
        # statistics stay in float32 at least (half inputs under autocast)
        stat_dtype = torch.promote_types(x.dtype, torch.float32)
        if use_global:
            factor = torch.where(s == 0, torch.zeros_like(s), 1 / s)
            mean = (mean_acc * factor).to(stat_dtype)
            var = (var_acc * factor).to(stat_dtype)
            y = F.batch_norm(x4, mean, var, training=False, momentum=0.0, eps=self.eps)
        else:
            # momentum 1 makes torch leave the batch mean and unbiased (m/(m-1)) variance
            # in these buffers: exactly the terms Caffe adds to its running sums
            batch_mean = torch.zeros(x4.shape[1], dtype=stat_dtype, device=x.device)
            batch_var = torch.ones_like(batch_mean)
            y = F.batch_norm(x4, batch_mean, batch_var, training=True, momentum=1.0, eps=self.eps)
            self._accumulate(batch_mean, batch_var)
        return (y.reshape(x.shape),)

    @torch.no_grad()
    def _accumulate(self, batch_mean, unbiased_var):
        mean_acc, var_acc, s = self.blobs
        s.mul_(self.fraction).add_(1)
        mean_acc.mul_(self.fraction).add_(batch_mean.to(mean_acc.dtype))
        var_acc.mul_(self.fraction).add_(unbiased_var.to(var_acc.dtype))

    def extra_repr(self):
        return f"name={self.name!r}, eps={self.eps:g}, moving_average_fraction={self.fraction:g}"


class _MVNFunction(torch.autograd.Function):
    """y = (x - mean) / (std + eps) over the last axis, with Caffe's backward
    (g - mean(g) - y * mean(g * y)) / (std + eps)."""

    @staticmethod
    def forward(ctx, x, eps):
        centred = x - x.mean(dim=-1, keepdim=True)
        denom = torch.sqrt((centred * centred).mean(dim=-1, keepdim=True)) + eps
        y = centred / denom
        ctx.save_for_backward(y, denom)
        return y

    @staticmethod
    def backward(ctx, g):
        y, denom = ctx.saved_tensors
        dx = g - g.mean(dim=-1, keepdim=True) - y * (g * y).mean(dim=-1, keepdim=True)
        return dx / denom, None


@register("MVN")
class MVN(Layer):
    """Mean-variance normalisation per (sample, channel), or per sample across channels;
    eps is added to the standard deviation, as Caffe does."""

    bottom_count = top_count = (1, 1)

    def forward(self, x):
        p = self.lp.mvn_param
        flat = flatten_from(x, 1 if p.across_channels else 2).flatten(0, -2)
        if p.normalize_variance:
            y = _MVNFunction.apply(flat, p.eps)
        else:
            y = flat - flat.mean(dim=-1, keepdim=True)
        return (y.reshape(x.shape),)



class _NormalizeFunction(torch.autograd.Function):
    """SSD's L2 normalisation of x (N, C, S): top = x / sqrt(sum x^2 + eps) * scale, summed
    over C and S (across_spatial) or over C per position. Backward is the fork's formula
    (g - x * sum(x * g) / norm^2) / norm * scale: the true gradient for a shared scale,
    while with per-channel scales the fork applies each channel's scale after the sum."""

    @staticmethod
    def forward(ctx, x, scale, across_spatial: bool, eps: float):
        dims = (1, 2) if across_spatial else (1,)
        norm = torch.sqrt((x * x).sum(dim=dims, keepdim=True) + eps)
        # across_spatial multiplies by 1/norm (caffe_cpu_scale), else divides (caffe_div)
        normalized = x * (1 / norm) if across_spatial else x / norm
        channel_scale = scale.reshape(-1, 1)
        ctx.save_for_backward(x, norm, normalized, channel_scale)
        ctx.dims, ctx.scale_shape = dims, scale.shape
        return normalized * channel_scale

    @staticmethod
    def backward(ctx, g):
        x, norm, normalized, channel_scale = ctx.saved_tensors
        dot = (x * g).sum(dim=ctx.dims, keepdim=True)
        if len(ctx.dims) == 2:   # the fork's operation order in each case
            dx = (g - x * (dot / norm / norm)) * (1 / norm) * channel_scale
        else:
            dx = (g - x * dot / (norm * norm)) / norm * channel_scale
        per_channel = (normalized * g).sum(dim=(0, 2))
        d_scale = per_channel.sum() if channel_scale.numel() == 1 else per_channel
        return dx, d_scale.reshape(ctx.scale_shape), None, None


@register("Normalize")
class Normalize(Layer):
    """SSD's Normalize (weiliu89/caffe): L2-normalise each sample across channels and
    space, or across channels at each position, then multiply by a learned scale (one,
    or one per channel); eps is added to the sum of squares."""

    bottom_count = top_count = (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.norm_param
        self.across_spatial, self.eps = p.across_spatial, p.eps

    def blob_fillers(self):
        return [filler_or(self.lp.norm_param, "scale_filler", 1.0)]

    def forward(self, x):
        y = _NormalizeFunction.apply(flatten_from(x, 2), self.blobs[0],
                                     self.across_spatial, self.eps)
        return (y.reshape(x.shape),)

    def extra_repr(self):
        shared = "shared" if self.blobs[0].dim() == 0 else "per channel"
        return f"name={self.name!r}, across_spatial={self.across_spatial}, scale {shared}"
