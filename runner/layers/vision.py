"""Convolution, Deconvolution and Pooling, on torch's native kernels with Caffe's geometry."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from runner.layers.base import Layer, register
from runner.layers.common import FLT_MAX, filler_or, records_graph
from runner.proto import caffe_pb2
from runner.shapes import canonical_axis, pool_out, pooling_geometry, spatial_params, spp_geometry

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@register("Convolution", "Deconvolution")
class Convolution(Layer):
    """Caffe's (de)convolution: group, dilation, per-axis pad/kernel/stride, channel `axis`.

    Every bottom is convolved with the same weights (one top per bottom), as in Caffe.
    """

    bottom_count = top_count = (1, None)
    same_bottom_top_count = True

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.convolution_param
        b = bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(b), lp.name)
        n_spatial = len(b) - self.axis - 1
        table = _CONV if lp.type == "Convolution" else _DECONV
        if n_spatial not in table:
            raise ValueError(f"layer '{lp.name}': {lp.type} over {n_spatial} spatial axes is not "
                             f"supported (1, 2 or 3)")
        self._op = table[n_spatial]
        _, stride, pad, dilation = spatial_params(p, n_spatial)
        self._kw = dict(stride=tuple(stride), padding=tuple(pad), dilation=tuple(dilation),
                        groups=p.group)
        self.bias_term = p.bias_term

    def blob_fillers(self):
        p = self.lp.convolution_param
        fillers = [filler_or(p, "weight_filler")]
        return fillers + ([filler_or(p, "bias_filler")] if self.bias_term else [])

    def forward(self, *bottoms):
        weight = self.blobs[0]
        bias = self.blobs[1] if self.bias_term else None
        tops = []
        for x in bottoms:
            if self.axis == 1:
                tops.append(self._op(x, weight, bias, **self._kw))
                continue
            lead = x.shape[:self.axis]
            y = self._op(x.reshape(-1, *x.shape[self.axis:]), weight, bias, **self._kw)
            tops.append(y.reshape(*lead, *y.shape[1:]))
        return tuple(tops)

    def extra_repr(self):
        k = tuple(self.blobs[0].shape[2:])
        return f"name={self.name!r}, kernel={k}, " + ", ".join(f"{a}={v}" for a, v in self._kw.items())


def _torch_pool_out(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """Output size torch's pooling kernels produce (aten pooling_output_shape)."""
    out = (size + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


class PoolPlan:
    """How to pool one input size exactly as Caffe: torch's kernel directly, or explicit
    padding (so torch's window count equals Caffe's) plus Caffe's AVE divisor."""

    def __init__(self, geometry, ceil_mode: bool, h: int, w: int):
        self.kernel, self.stride, self.pad = geometry
        padded = any(self.pad)
        self.out = [pool_out(n, k, s, q, ceil_mode, padded)
                    for n, k, s, q in zip((h, w), self.kernel, self.stride, self.pad)]
        self.size = (h, w)
        self.torch_ceil = None
        if all(2 * q <= k for q, k in zip(self.pad, self.kernel)):
            for mode in (ceil_mode, not ceil_mode):
                if all(_torch_pool_out(n, k, s, q, mode) == o for n, k, s, q, o in
                       zip((h, w), self.kernel, self.stride, self.pad, self.out)):
                    self.torch_ceil = mode
                    break
        # explicit padding: pad before, and after so that the last window ends exactly
        self.after = [(o - 1) * s + k - (n + q)
                      for n, k, s, q, o in zip((h, w), self.kernel, self.stride, self.pad, self.out)]
        self._divisors: dict = {}

    @property
    def native(self) -> bool:
        return self.torch_ceil is not None

    def padding(self):
        """F.pad argument (left, right, top, bottom); negative values crop unused rows."""
        return (self.pad[1], self.after[1], self.pad[0], self.after[0])

    def divisor(self, like: torch.Tensor) -> torch.Tensor:
        """Caffe's AVE divisor per output cell: the window clipped to the padded input."""
        key = (like.device, like.dtype)
        if key not in self._divisors:
            sides = []
            for n, k, s, q, o in zip(self.size, self.kernel, self.stride, self.pad, self.out):
                start = torch.arange(o, dtype=torch.float64) * s - q
                sides.append(torch.minimum(start + k, torch.tensor(float(n + q))) - start)
            div = sides[0][:, None] * sides[1][None, :]
            self._divisors[key] = div.to(device=like.device, dtype=like.dtype)
        return self._divisors[key]


def caffe_pool(x, plan: PoolPlan, is_max: bool, with_mask: bool = False) -> tuple:
    """Pool x (N, C, H, W) as Caffe; returns (top,) or, for MAX with a mask, (top, mask)."""
    through_channels_last = _pool_channels_last(x)
    if through_channels_last and not records_graph(x):
        tops = _caffe_pool(x.contiguous(memory_format=torch.channels_last), plan, is_max, with_mask)
        return tuple(t.contiguous() for t in tops)
    if through_channels_last and is_max and plan.native and not with_mask:
        return (_MaxPoolThroughChannelsLast.apply(x, plan),)
    return _caffe_pool(x, plan, is_max, with_mask)


def _pool_channels_last(x) -> bool:
    """Whether to pool an NCHW CPU tensor of 8 channels or more through channels_last:
    torch's CPU pooling kernels vectorise over the channels there (3-4x faster forward,
    the same values and masks). With a backward to follow only MAX pooling does (below)."""
    return x.device.type == "cpu" and x.shape[1] >= 8 and x.is_contiguous()


class _MaxPoolThroughChannelsLast(torch.autograd.Function):
    """MAX pooling of an NCHW tensor that needs a gradient, forward and backward in
    channels_last (layouts converted on the way in and out, both directions): bit for bit
    the NCHW kernels' top and bottom gradient, in 0.56-0.64 of their time (AMD EPYC,
    batch 8, 64 to 512 channels; 8x64x112x112, 3x3 stride 2: 16.8 against 26.5 ms). Autograd
    through plain layout copies instead hands the backward a mixed-layout gradient and is
    no faster."""

    @staticmethod
    def forward(ctx, x, plan: PoolPlan):
        geometry = (list(plan.kernel), list(plan.stride), list(plan.pad), [1, 1], plan.torch_ceil)
        top, indices = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), *geometry)
        ctx.save_for_backward(indices)
        ctx.geometry, ctx.bottom_shape = geometry, x.shape
        return top.contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        bottom = torch.empty(ctx.bottom_shape, dtype=grad.dtype,   # its shape and layout only
                             memory_format=torch.channels_last)
        grad_bottom = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(memory_format=torch.channels_last), bottom, *ctx.geometry, indices)
        return grad_bottom.contiguous(), None


def _caffe_pool(x, plan: PoolPlan, is_max: bool, with_mask: bool) -> tuple:
    k, s = plan.kernel, plan.stride
    if is_max:
        if plan.native:
            y = F.max_pool2d(x, k, s, plan.pad, ceil_mode=plan.torch_ceil, return_indices=with_mask)
            return (y[0], y[1].to(x.dtype)) if with_mask else (y,)
        fill = -min(FLT_MAX, torch.finfo(x.dtype).max)
        xp = F.pad(x, plan.padding(), value=fill)
        y = F.max_pool2d(xp, k, s, return_indices=with_mask)
        return (y[0], _mask_from_padded(y[1], plan, xp.shape[3], x)) if with_mask else (y,)
    if plan.native:
        return (F.avg_pool2d(x, k, s, plan.pad, ceil_mode=plan.torch_ceil, count_include_pad=True),)
    summed = F.avg_pool2d(F.pad(x, plan.padding()), k, s, divisor_override=1)
    return (summed / plan.divisor(x),)


def _mask_from_padded(idx, plan, padded_w, x):
    """Caffe's mask (h * W + w in the bottom) from indices into the padded input."""
    h = torch.div(idx, padded_w, rounding_mode="floor") - plan.pad[0]
    w = idx % padded_w - plan.pad[1]
    inside = (h >= 0) & (h < x.shape[2]) & (w >= 0) & (w < x.shape[3])
    return torch.where(inside, h * x.shape[3] + w, -1).to(x.dtype)


@register("Pooling")
class Pooling(Layer):
    """Caffe's MAX/AVE pooling: ceil (or floor) output size with the last-window clip,
    AVE divided by the window clipped to the padded input; optional MAX mask top."""

    bottom_count, top_count = (1, 1), (1, 2)  # MAX only: the mask top

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.pooling_param
        P = caffe_pb2.PoolingParameter
        if p.pool not in (P.MAX, P.AVE):
            raise ValueError(f"layer '{lp.name}': pooling method "
                             f"{P.PoolMethod.Name(p.pool)} is not supported (MAX, AVE)")
        if len(bottom_shapes[0]) != 4:
            raise ValueError(f"layer '{lp.name}': Pooling needs a 4-D bottom (N, C, H, W), "
                             f"got {list(bottom_shapes[0])}")
        if len(lp.top) > 1 and p.pool != P.MAX:
            raise ValueError(f"layer '{lp.name}': only MAX pooling has a second (mask) top")
        self.is_max = p.pool == P.MAX
        self.with_mask = len(lp.top) > 1
        self._plans: dict[tuple[int, int], PoolPlan] = {}

    def _plan(self, h: int, w: int) -> PoolPlan:
        plan = self._plans.get((h, w))
        if plan is None:
            p = self.lp.pooling_param
            plan = self._plans[(h, w)] = PoolPlan(pooling_geometry(p, h, w),
                                                   p.round_mode == caffe_pb2.PoolingParameter.CEIL, h, w)
        return plan

    def forward(self, x):
        return caffe_pool(x, self._plan(x.shape[2], x.shape[3]), self.is_max, self.with_mask)

    def extra_repr(self):
        p = self.lp.pooling_param
        return (f"name={self.name!r}, pool={caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool)}"
                + (", global" if p.global_pooling else ""))


@register("SPP")
class SPP(Layer):
    """Spatial pyramid pooling: level i pools into 2^i x 2^i bins (Caffe's kernel, stride
    and pad per level), each flattened, all concatenated; one level is plain pooling."""

    bottom_count = top_count = (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        P = caffe_pb2.SPPParameter
        if lp.spp_param.pool not in (P.MAX, P.AVE):
            raise ValueError(f"layer '{lp.name}': SPP pooling method "
                             f"{P.PoolMethod.Name(lp.spp_param.pool)} is not supported (MAX, AVE)")
        self.is_max = lp.spp_param.pool == P.MAX
        self._plans: dict[tuple[int, int], list[PoolPlan]] = {}

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        plans = self._plans.get((h, w))
        if plans is None:
            plans = self._plans[(h, w)] = [
                PoolPlan(spp_geometry(level, h, w), True, h, w)
                for level in range(self.lp.spp_param.pyramid_height)]
        pooled = [caffe_pool(x, plan, self.is_max)[0] for plan in plans]
        if len(pooled) == 1:
            return (pooled[0],)
        return (torch.cat([p.flatten(1) for p in pooled], dim=1),)
