"""Shape rules of NVIDIA/LMB FlowNet 2.0's Caffe layers (lmb-freiburg/flownet2): Correlation,
Correlation1D, Resample, FlowWarp, ChannelNorm, Accum, DataAugmentation, NegReLU and L1Loss,
with the geometry their layers share (each the fork's Reshape, its CHECKs as errors).

Imported by runner.shapes, which keeps the rule registry.
"""
from __future__ import annotations

from dataclasses import dataclass

from runner.proto import caffe_pb2
from runner.shapes import LayerShapes, rule


def _four_axes(kind: str, b, what: str = "bottom") -> None:
    if len(b) != 4:
        raise ValueError(f"{kind} needs a 4-axis {what} (N, C, H, W), got {list(b)}")


@dataclass(frozen=True)
class CorrelationGeometry:
    kernel: int
    stride1: int
    pad_y: int      # rows of zeros above and below (0 for Correlation1D)
    pad_x: int
    origin_y: int   # padded row of the first window's top edge
    origin_x: int
    top_h: int
    top_w: int
    displacements: tuple[tuple[int, int], ...]   # (dy, dx) per top channel


def correlation_geometry(lp, bottoms) -> CorrelationGeometry:
    """CorrelationLayer::Reshape and Correlation1DLayer::Reshape (with the 1-D kernel's x_shift)."""
    kind, p = lp.type, lp.correlation_param
    if len(bottoms) != 2:
        raise ValueError(f"{kind} takes two bottoms, got {len(bottoms)}")
    a, b = bottoms
    _four_axes(kind, a)
    if tuple(b) != tuple(a):
        raise ValueError(f"{kind}'s bottoms must have the same shape, got {list(a)} and {list(b)}")
    if not p.HasField("kernel_size") or not p.HasField("max_displacement"):
        raise ValueError(f"{kind} needs correlation_param.kernel_size and max_displacement "
                         "(the fork CHECKs both)")
    k, md, s1, s2 = p.kernel_size, p.max_displacement, p.stride_1, p.stride_2
    if k % 2 == 0:
        raise ValueError(f"{kind}: correlation_param.kernel_size {k} must be odd")
    if s1 < 1 or s2 < 1:
        raise ValueError(f"{kind}: correlation_param.stride_1 and stride_2 must be >= 1, got {s1} and {s2}")
    kr = (k - 1) // 2
    radius = md // s2
    one_d = kind == "Correlation1D"
    pad_y = 0 if one_d else p.pad
    padded_h, padded_w = a[2] + 2 * pad_y, a[3] + 2 * p.pad
    top_w = -(-(padded_w - 2 * (md + kr)) // s1)
    top_h = -(-(padded_h - 2 * (kr if one_d else md + kr)) // s1)
    if top_w < 1 or top_h < 1:
        raise ValueError(f"{kind}: correlation cannot be done with these settings: the neighbourhood "
                         f"(max_displacement {md}) and kernel ({k}) do not fit in the padded "
                         f"{padded_h} x {padded_w} bottom")
    if one_d:
        if p.single_direction == -1:
            raise ValueError(
                "Correlation1D with single_direction -1: the fork's kernel then shifts by "
                f"-(max_displacement / stride_2 + 1) * stride_2 = {-(radius + 1) * s2}, past "
                f"max_displacement {md}, and reads before the start of its padded buffer")
        width = radius + 1 if p.single_direction != 0 else 2 * radius + 1
        shift = 0 if p.single_direction == 1 else -radius
        disps = tuple((0, (o + shift) * s2) for o in range(width))
        origin_y = 0
    else:
        disps = tuple(((j - radius) * s2, (i - radius) * s2)
                      for j in range(2 * radius + 1) for i in range(2 * radius + 1))
        origin_y = md
    return CorrelationGeometry(k, s1, pad_y, p.pad, origin_y, md, top_h, top_w, disps)


@rule("Correlation", "Correlation1D")
def _correlation(lp, bottoms):
    g = correlation_geometry(lp, bottoms)
    n, c = bottoms[0][:2]
    macs = n * len(g.displacements) * g.top_h * g.top_w * g.kernel * g.kernel * c
    return LayerShapes([(n, len(g.displacements), g.top_h, g.top_w)], macs=macs)


def resample_size(lp, bottoms) -> tuple[int, int]:
    """ResampleLayer::Reshape: the second bottom's height and width, else resample_param's
    (`factor` is never read)."""
    p = lp.resample_param
    for b in bottoms:
        _four_axes("Resample", b)
    if p.type == caffe_pb2.ResampleParameter.AREA:
        raise ValueError("Resample: only CUBIC, LINEAR and NEAREST interpolation exist in the fork "
                         "(its LayerSetUp aborts on AREA)")
    h, w = (bottoms[1][2], bottoms[1][3]) if len(bottoms) == 2 else (p.height, p.width)
    if h < 1 or w < 1:
        raise ValueError(f"Resample's top would be {h} x {w}: give resample_param height and width "
                         "or a second bottom")
    return h, w


@rule("Resample")
def _resample(lp, bottoms):
    return LayerShapes([(*bottoms[0][:2], *resample_size(lp, bottoms))])


@rule("FlowWarp")
def _flow_warp(lp, bottoms):
    image, flow = bottoms
    _four_axes("FlowWarp", image)
    if len(flow) != 4 or flow[0] != image[0] or flow[1] != 2 or tuple(flow[2:]) != tuple(image[2:]):
        raise ValueError(f"FlowWarp's second bottom is the N x 2 x H x W flow of its first "
                         f"{list(image)}, got {list(flow)}")
    return LayerShapes([image])


@rule("ChannelNorm")
def _channel_norm(lp, bottoms):
    b = bottoms[0]
    _four_axes("ChannelNorm", b)
    return LayerShapes([(b[0], 1, b[2], b[3])])


def accum_size(lp, bottoms) -> tuple[int, int]:
    """AccumLayer::Reshape's top height and width."""
    p = lp.accum_param
    for b in bottoms:
        _four_axes("Accum", b)
    sources = bottoms[:-1] if p.have_reference else bottoms
    if not sources:
        raise ValueError("Accum with have_reference needs at least two bottoms (the last is the reference)")
    if any(b[0] != sources[0][0] for b in sources):
        raise ValueError(f"Accum: all accumulated bottoms need the same num, got {[list(b) for b in sources]}")
    if p.have_reference:
        h, w = bottoms[-1][2], bottoms[-1][3]
    else:
        max_h, max_w = max(b[2] for b in bottoms), max(b[3] for b in bottoms)
        if p.HasField("size_divisible_by"):
            d = p.size_divisible_by
            if d < 1:
                raise ValueError("Accum: accum_param.size_divisible_by must be >= 1")
            top_h, top_w = -(-max_h // d) * d, -(-max_w // d) * d
        else:
            top_h, top_w = p.top_height, p.top_width
        # the fork takes the given size only when it exceeds the bottoms' in both directions
        h, w = (top_h, top_w) if top_h > max_h and top_w > max_w else (max_h, max_w)
    if h < 2 or w < 2:
        raise ValueError(f"Accum's top would be {h} x {w}; the fork's sampling divides by "
                         "(top size - 1), so each side needs at least 2")
    return h, w


@rule("Accum")
def _accum(lp, bottoms):
    h, w = accum_size(lp, bottoms)
    sources = bottoms[:-1] if lp.accum_param.have_reference else bottoms
    return LayerShapes([(sources[0][0], sum(b[1] for b in sources), h, w)])


@rule("DataAugmentation")
def _data_augmentation(lp, bottoms):
    p, b = lp.augmentation_param, bottoms[0]
    _four_axes("DataAugmentation", b)
    if len(bottoms) > 1 or len(lp.top) > 1:
        raise ValueError("DataAugmentation: the augmentation-coefficient bottom and top (the fork's "
                         "second bottom and top) are not supported")
    if p.HasField("crop_width") and p.HasField("crop_height"):
        raise ValueError("DataAugmentation with crop_width and crop_height: the fork's spatial, "
                         "chromatic and effect augmentation (random in TRAIN and with "
                         "augment_during_test) is not supported; without a crop the fork copies "
                         "the bottom and only subtracts the mean, which is what runs here")
    blobs = [(1, 1, 1, 1)]
    if p.recompute_mean:
        blobs += [(1, b[1], b[2], b[3]), (1, b[1], 1, 1)]
    elif len(p.mean) == 3 and not p.mean_per_pixel and b[1] != 3:
        raise ValueError(f"DataAugmentation: augmentation_param.mean gives 3 values for a "
                         f"{b[1]}-channel bottom")
    return LayerShapes([b], blobs)


@rule("NegReLU")
def _neg_relu(lp, bottoms):
    return LayerShapes([bottoms[0]])


@rule("L1Loss")
def _l1_loss(lp, bottoms):
    if len(bottoms) not in (1, 2):
        raise ValueError(f"L1Loss takes one or two bottoms, got {len(bottoms)}")
    if len(bottoms) == 2 and tuple(bottoms[1]) != tuple(bottoms[0]):
        raise ValueError(f"L1Loss's bottoms must have the same shape, got {list(bottoms[0])} "
                         f"and {list(bottoms[1])}")
    if len(bottoms[0]) < 2:
        raise ValueError(f"L1Loss needs a bottom with a channel axis, got {list(bottoms[0])}")
    return LayerShapes([()])
