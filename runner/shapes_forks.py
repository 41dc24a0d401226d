"""Shape rules of the fork layers beyond SSD: ShuffleChannel (ShuffleNet forks), Reorg (YOLO v2
ports), BN (SegNet), SegAccuracy (DeepLab), Interp
(DeepLab, PSPNet), ROIPooling (Fast/Faster R-CNN), PSROIPooling (R-FCN), the MobileNet forks' depthwise
convolutions, Axpy (SENet), Upsample (YOLOv3 ports, SegNet), SmoothL1Loss and Proposal
(Fast/Faster R-CNN), MultiStageMeanfield (CRF-RNN) and DeepLab v2's DenseCRF, MatWrite and
MatRead, with the parameter readings their layers share.

Imported by runner.shapes, which keeps the rule registry.
"""
from __future__ import annotations

from runner import matfile
from runner.proto import caffe_pb2
from runner.shapes import LayerShapes, conv_shapes, rule


@rule("ShuffleChannel")
def _shuffle_channel(lp, bottoms):
    b, group = bottoms[0], lp.shuffle_channel_param.group
    if len(b) < 2 or group < 1 or b[1] % group:
        raise ValueError(f"ShuffleChannel needs channels (axis 1 of {list(b)}) divisible by "
                         f"shuffle_channel_param.group {group}")
    return LayerShapes([b])


def reorg_stride(lp, bottom) -> int:
    """reorg_param.stride, checked against the bottom as the YOLO v2 ports' Reshape needs."""
    p, b, s = lp.reorg_param, bottom, lp.reorg_param.stride
    if len(b) != 4 or s < 1:
        raise ValueError(f"Reorg needs a 4-axis bottom (N, C, H, W) and reorg_param.stride >= 1, "
                         f"got {list(b)} and stride {s}")
    if b[1] % (s * s):
        raise ValueError(f"Reorg needs channels ({b[1]}) divisible by stride^2 ({s * s}): darknet's "
                         f"reorg reads the blob as (C / stride^2, H * stride, W * stride)")
    if not p.reverse and (b[2] % s or b[3] % s):
        raise ValueError(f"Reorg needs height and width ({b[2]} x {b[3]}) divisible by "
                         f"reorg_param.stride {s}")
    return s


@rule("Reorg")
def _reorg(lp, bottoms):
    s = reorg_stride(lp, bottoms[0])
    n, c, h, w = bottoms[0]
    if lp.reorg_param.reverse:
        return LayerShapes([(n, c // (s * s), h * s, w * s)])
    return LayerShapes([(n, c * s * s, h // s, w // s)])


@rule("SegAccuracy")
def _seg_accuracy(lp, bottoms):
    scores, label = bottoms
    if len(scores) != 4 or len(label) != 4 or label[1] != 1 or \
            (scores[0], *scores[2:]) != (label[0], *label[2:]):
        raise ValueError(f"SegAccuracy takes N x C x H x W scores and an N x 1 x H x W label, "
                         f"got {list(scores)} and {list(label)}")
    return LayerShapes([(1, 1, 1, 3)])


_SEGNET_BN_FIELDS = ("scale_filler", "shift_filler", "bn_mode")
_TSN_BN_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")


def is_tsn_bn(lp) -> bool:
    """Whether a BN layer is TSN's (yjxiong/caffe: running statistics) rather than
    SegNet's: it sets one of TSN's bn_param fields."""
    p = lp.bn_param
    tsn = [f for f in _TSN_BN_FIELDS if p.HasField(f)]
    segnet = [f for f in _SEGNET_BN_FIELDS if p.HasField(f)]
    if tsn and segnet:
        raise ValueError(f"bn_param mixes SegNet's BN fields {segnet} with TSN's {tsn}; "
                         "they are two different layers")
    return bool(tsn)


@rule("BN")
def _bn(lp, bottoms):
    b = bottoms[0]
    if not 2 <= len(b) <= 4:
        raise ValueError(f"BN needs a bottom of 2 to 4 axes (N, C[, H, W]), got {list(b)}")
    if is_tsn_bn(lp):
        if len(lp.top) > 1:
            raise ValueError("TSN's BN has one top")
        return LayerShapes([b], [(1, b[1])] * 4)
    if lp.bn_param.bn_mode == caffe_pb2.BNParameter.INFERENCE and len(lp.top) > 1:
        raise ValueError("BN with bn_mode INFERENCE has one top; the batch mean and variance "
                         "tops exist only in LEARN")
    channel = (1, b[1], 1, 1)
    return LayerShapes([b] + [channel] * (len(lp.top) - 1), [channel, channel])


def interp_geometry(lp, bottoms) -> tuple[int, int, int, int, int]:
    """InterpLayer::Reshape: (pad_beg, height_in_eff, width_in_eff, height_out, width_out)."""
    p, b = lp.interp_param, bottoms[0]
    if len(b) != 4:
        raise ValueError(f"Interp needs a 4-axis bottom (N, C, H, W), got {list(b)}")
    if p.pad_beg > 0 or p.pad_end > 0:
        raise ValueError("interp_param: only non-positive pad_beg/pad_end (cropping) are supported")
    h_eff, w_eff = b[2] + p.pad_beg + p.pad_end, b[3] + p.pad_beg + p.pad_end
    if h_eff <= 0 or w_eff <= 0:
        raise ValueError(f"interp_param's pads leave nothing of a {b[2]} x {b[3]} bottom")
    specs = [p.HasField("zoom_factor") or p.HasField("shrink_factor"),
             p.HasField("height") and p.HasField("width"), len(bottoms) == 2]
    if sum(specs) != 1:
        raise ValueError("Interp's output size comes from exactly one of zoom_factor and/or "
                         "shrink_factor, height and width, or a second bottom")
    if len(bottoms) == 2:
        if len(bottoms[1]) != 4:
            raise ValueError(f"Interp's second bottom gives the size; it needs 4 axes, got {list(bottoms[1])}")
        h_out, w_out = bottoms[1][2], bottoms[1][3]
    elif specs[1]:
        h_out, w_out = p.height, p.width
    else:
        h_out, w_out = h_eff, w_eff
        if p.HasField("shrink_factor"):
            if p.shrink_factor < 1:
                raise ValueError(f"interp_param.shrink_factor {p.shrink_factor} must be >= 1")
            h_out, w_out = (h_out - 1) // p.shrink_factor + 1, (w_out - 1) // p.shrink_factor + 1
        if p.HasField("zoom_factor"):
            if p.zoom_factor < 1:
                raise ValueError(f"interp_param.zoom_factor {p.zoom_factor} must be >= 1")
            h_out, w_out = h_out + (h_out - 1) * (p.zoom_factor - 1), w_out + (w_out - 1) * (p.zoom_factor - 1)
    if h_out <= 0 or w_out <= 0:
        raise ValueError(f"Interp's output would be {h_out} x {w_out}")
    return p.pad_beg, h_eff, w_eff, h_out, w_out


@rule("Interp")
def _interp(lp, bottoms):
    *_, h_out, w_out = interp_geometry(lp, bottoms)
    return LayerShapes([(*bottoms[0][:2], h_out, w_out)])


def _check_regions(kind: str, features, rois) -> None:
    if len(features) != 4:
        raise ValueError(f"{kind}'s first bottom needs 4 axes (N, C, H, W), got {list(features)}")
    if not rois or rois[0] and (len(rois) < 2 or rois[1] != 5 or any(d != 1 for d in rois[2:])):
        raise ValueError(f"{kind}'s second bottom holds one (batch index, x1, y1, x2, y2) per "
                         f"region: shape (R, 5), got {list(rois)}")


@rule("ROIPooling")
def _roi_pooling(lp, bottoms):
    p = lp.roi_pooling_param
    features, rois = bottoms
    if p.pooled_h <= 0 or p.pooled_w <= 0:
        raise ValueError("roi_pooling_param needs pooled_h > 0 and pooled_w > 0")
    _check_regions("ROIPooling", features, rois)
    return LayerShapes([(rois[0], features[1], p.pooled_h, p.pooled_w)])


@rule("PSROIPooling")
def _psroi_pooling(lp, bottoms):
    p = lp.psroi_pooling_param
    features, rois = bottoms
    missing = [f for f in ("spatial_scale", "output_dim", "group_size") if not p.HasField(f)]
    if missing:
        raise ValueError(f"psroi_pooling_param needs {', '.join(missing)} (required in the fork)")
    if p.output_dim <= 0 or p.group_size <= 0:
        raise ValueError("psroi_pooling_param needs output_dim > 0 and group_size > 0")
    _check_regions("PSROIPooling", features, rois)
    if features[1] != p.output_dim * p.group_size ** 2:
        raise ValueError(f"PSROIPooling's input has {features[1]} channels; output_dim * "
                         f"group_size^2 = {p.output_dim * p.group_size ** 2}")
    return LayerShapes([(rois[0], p.output_dim, p.group_size, p.group_size)])


def as_convolution(lp, bottom: tuple[int, ...]):
    """A fork's depthwise convolution as the BVLC Convolution it computes:
    DepthwiseConvolution (yonghenglh6) is one as written; ConvolutionDepthwise (farmingyard)
    has one (C, 1, kh, kw) filter per channel whatever num_output and group say."""
    plain = caffe_pb2.LayerParameter()
    plain.CopyFrom(lp)
    plain.type = "Convolution"
    if lp.type == "ConvolutionDepthwise":
        if len(bottom) < 2:
            raise ValueError(f"ConvolutionDepthwise needs a bottom with channels, got {list(bottom)}")
        plain.convolution_param.num_output = plain.convolution_param.group = bottom[1]
        plain.convolution_param.axis = 1
    return plain


@rule("ConvolutionDepthwise", "DepthwiseConvolution")
def _depthwise(lp, bottoms):
    return conv_shapes(as_convolution(lp, bottoms[0]), bottoms)


@rule("Axpy")
def _axpy(lp, bottoms):
    scale, x, y = bottoms
    if x != y or len(x) < 2 or tuple(scale[:2]) != tuple(x[:2]) or any(d != 1 for d in scale[2:]):
        raise ValueError(f"Axpy takes a (N, C[, 1, 1]) scale and two equal (N, C, ...) blobs, got "
                         f"{[list(b) for b in bottoms]}")
    return LayerShapes([x])


def upsample_size(lp, bottoms) -> tuple[int, int]:
    """The (height, width) of Upsample's top: SegNet's rules with a mask bottom (UpsampleLayer
    LayerSetUp/Reshape), else the bottom's times `scale` (the YOLOv3 ports)."""
    p, b = lp.upsample_param, bottoms[0]
    if len(bottoms) == 1:
        scale = p.scale if p.HasField("scale") else 1
        if len(b) < 2 or scale < 1:
            raise ValueError(f"Upsample by scale {scale} needs scale >= 1 and a bottom with 2 "
                             f"spatial axes, got {list(b)}")
        return b[-2] * scale, b[-1] * scale
    mask = bottoms[1]
    if len(b) != 4 or mask != b:
        raise ValueError(f"Upsample's mask (bottom 1) must have the 4-axis shape of bottom 0: "
                         f"{list(b)} and {list(mask)}")
    if p.HasField("upsample_h") and p.HasField("upsample_w"):
        if p.upsample_h <= 1 or p.upsample_w <= 1:
            raise ValueError("upsample_h and upsample_w must be > 1")
        return p.upsample_h, p.upsample_w
    if p.HasField("scale_h") != p.HasField("scale_w") or (p.HasField("scale_h") and p.HasField("scale")):
        raise ValueError("upsample_param: give upsample_h and upsample_w, or scale, or scale_h "
                         "and scale_w")
    scale_h, scale_w = (p.scale_h, p.scale_w) if p.HasField("scale_h") else (p.scale or 2,) * 2
    if scale_h <= 1 or scale_w <= 1:
        raise ValueError(f"upsample_param's scales ({scale_h}, {scale_w}) must be > 1")
    if (p.pad_out_h and scale_h != 2) or (p.pad_out_w and scale_w != 2):
        raise ValueError("pad_out_h/pad_out_w need a scale of 2 on their axis")
    return b[2] * scale_h - int(p.pad_out_h), b[3] * scale_w - int(p.pad_out_w)


@rule("Upsample")
def _upsample(lp, bottoms):
    return LayerShapes([(*bottoms[0][:-2], *upsample_size(lp, bottoms))])


@rule("SmoothL1Loss")
def _smooth_l1_loss(lp, bottoms):
    if len(bottoms) not in (2, 4):
        raise ValueError(f"SmoothL1Loss takes 2 bottoms, or 4 with inside and outside weights; "
                         f"got {len(bottoms)}")
    first = bottoms[0]
    for i, b in enumerate(bottoms[1:], 1):
        if len(b) < 2 or b[1:] != first[1:] or b[0] != first[0]:
            raise ValueError(f"SmoothL1Loss's bottom {i} has shape {list(b)}; bottom 0 has {list(first)}")
    return LayerShapes([()])


def proposal_anchor_shapes(p) -> tuple[list[float], list[float]]:
    """ProposalLayer's ratios and scales (py-faster-rcnn's defaults when none are given)."""
    return list(p.ratio) or [0.5, 1.0, 2.0], list(p.scale) or [8.0, 16.0, 32.0]


@rule("Proposal")
def _proposal(lp, bottoms):
    p = lp.proposal_param
    scores, deltas, im_info = bottoms
    ratios, scales = proposal_anchor_shapes(p)
    anchors = len(ratios) * len(scales)
    if len(scores) != 4 or scores[0] != 1 or scores[1] != 2 * anchors:
        raise ValueError(f"Proposal's scores (bottom 0) must be (1, 2 x {anchors} anchors, H, W), "
                         f"got {list(scores)} (one image per batch, as the layer allows)")
    if tuple(deltas) != (1, 4 * anchors, *scores[2:]):
        raise ValueError(f"Proposal's box deltas (bottom 1) must be (1, {4 * anchors}, "
                         f"{scores[2]}, {scores[3]}), got {list(deltas)}")
    if im_info[-1:] != (3,) or (len(im_info) > 1 and im_info[0] != 1):
        raise ValueError(f"Proposal's im_info (bottom 2) holds (height, width, scale), got {list(im_info)}")
    if p.feat_stride < 1 or p.base_size < 1 or p.post_nms_topn < 1:
        raise ValueError("proposal_param needs feat_stride, base_size and post_nms_topn >= 1")
    rows = p.post_nms_topn   # at most; a forward gives as many as NMS keeps
    return LayerShapes([(rows, 5), (rows, 1)][:len(lp.top)])


def _legacy_bottoms(bottoms) -> list[tuple[int, int, int, int]]:
    """Each bottom as Caffe's legacy num/channels/height/width read it (missing axes 1),
    which take at most four axes."""
    if any(len(b) > 4 for b in bottoms):
        raise ValueError(f"bottoms of at most 4 axes (the fork reads num/channels/height/width), "
                         f"got {[list(b) for b in bottoms]}")
    return [tuple(b) + (1,) * (4 - len(b)) for b in bottoms]


def meanfield_geometry(lp, bottoms) -> tuple[int, int, int, int]:
    """(N, C, H, W) of a MultiStageMeanfield layer (CRF-RNN), its parameters and bottoms
    checked. The fork reads every bottom through Caffe's legacy num/channels/height/width
    (at most four axes) and takes all sizes from bottom 0; bottom 1 is softmaxed and filtered
    as if it had bottom 0's shape, bottom 2's first three channels are read at bottom 0's H x W."""
    p = lp.multi_stage_meanfield_param
    missing = [f for f in ("theta_alpha", "theta_beta", "theta_gamma", "num_iterations")
               if not p.HasField(f)]
    if missing:
        raise ValueError(f"multi_stage_meanfield_param needs {', '.join(missing)} (required "
                         f"fields in the fork)")
    if p.num_iterations <= 1:
        raise ValueError(f"multi_stage_meanfield_param.num_iterations must be greater than 1 (the "
                         f"fork's CHECK), got {p.num_iterations}")
    for name in ("theta_alpha", "theta_beta", "theta_gamma"):
        theta = getattr(p, name)
        if not theta or theta != theta or abs(theta) == float("inf"):
            raise ValueError(f"multi_stage_meanfield_param.{name} must be a nonzero finite number "
                             f"(the lattice features are divided by it), got {theta}")
    unary, q, image = _legacy_bottoms(bottoms)
    if q != unary:
        raise ValueError(f"bottom 1 (the Q initialisation) must have bottom 0's (the unaries') "
                         f"shape {list(unary)}, got {list(q)}")
    n, c, h, w = unary
    if image[0] != n or image[2:] != (h, w) or image[1] < 3:
        raise ValueError(f"bottom 2 (the image) must be N x 3 (or more channels) x H x W with "
                         f"the unaries' N, H, W ({n}, {h}, {w}), got {list(image)}")
    return n, c, h, w


@rule("MultiStageMeanfield")
def _multi_stage_meanfield(lp, bottoms):
    n, c, h, w = meanfield_geometry(lp, bottoms)
    return LayerShapes([(n, c, h, w)], [(1, 1, c, c)] * 3)


def dense_crf_kernels(lp) -> tuple[list[tuple[float, float]], list[tuple[float, float, float]]]:
    """DeepLab v2's DenseCRF kernels as its LayerSetUp pairs them: (pos_w, pos_xy_std) per
    Gaussian kernel, (bi_w, bi_xy_std, bi_rgb_std) per bilateral one."""
    p = lp.dense_crf_param
    if len(p.pos_w) != len(p.pos_xy_std):
        raise ValueError(f"dense_crf_param: pos_w and pos_xy_std should have the same size, got "
                         f"{len(p.pos_w)} and {len(p.pos_xy_std)}")
    if not len(p.bi_w) == len(p.bi_xy_std) == len(p.bi_rgb_std):
        raise ValueError(f"dense_crf_param: bi_w, bi_xy_std and bi_rgb_std should have the same "
                         f"size, got {len(p.bi_w)}, {len(p.bi_xy_std)} and {len(p.bi_rgb_std)}")
    for name in ("pos_xy_std", "bi_xy_std", "bi_rgb_std"):
        for std in getattr(p, name):
            if not std or std != std or abs(std) == float("inf"):
                raise ValueError(f"dense_crf_param.{name} must be nonzero and finite (the lattice "
                                 f"features are divided by it), got {std}")
    return list(zip(p.pos_w, p.pos_xy_std)), list(zip(p.bi_w, p.bi_xy_std, p.bi_rgb_std))


@rule("DenseCRF")
def _dense_crf(lp, bottoms):
    """Bottoms: scores (N x M x H x W), data_dim (each item's real height and width first),
    the image (N x 3 x H x W); the top has the scores' legacy 4-D shape. The fork's Reshape
    reads bottom 2 unconditionally, so its two-bottom form (no image) is refused."""
    _, bilateral = dense_crf_kernels(lp)
    if len(bottoms) != 3:
        raise ValueError(f"DenseCRF needs its third bottom, the image: with {len(bottoms)} bottoms "
                         f"the fork's Reshape reads a bottom 2 that does not exist")
    if not bilateral:
        raise ValueError("DenseCRF has the image as input but no bilateral parameters (bi_w, "
                         "bi_xy_std, bi_rgb_std)")
    scores, dims, image = _legacy_bottoms(bottoms)
    if image[1] != 3:
        raise ValueError(f"the image (bottom 2) must have 3 channels (the fork supports only "
                         f"colour images), got {list(image)}")
    if not scores[0] == dims[0] == image[0]:
        raise ValueError(f"scores, data_dim and image must have the same number of items, got "
                         f"{list(scores)}, {list(dims)} and {list(image)}")
    if image[2:] != scores[2:]:
        raise ValueError(f"the image must have the scores' height and width, got {list(image)} "
                         f"for scores {list(scores)}")
    if dims[1] * dims[2] * dims[3] < 2:
        raise ValueError(f"data_dim (bottom 1) must hold each item's height and width, got "
                         f"{list(dims)}")
    return LayerShapes([scores])


@rule("MatWrite")
def _mat_write(lp, bottoms):
    if not lp.mat_write_param.HasField("prefix"):
        raise ValueError("mat_write_param.prefix is required")
    if lp.mat_write_param.period <= 0:
        raise ValueError(f"mat_write_param.period must be positive, got {lp.mat_write_param.period}")
    _legacy_bottoms(bottoms)
    return LayerShapes([])


@rule("MatRead")
def _mat_read(lp, bottoms):
    """(batch_size, C, H, W) of the first listed file's blob, which must have num 1."""
    p = lp.mat_read_param
    if not p.HasField("prefix"):
        raise ValueError("mat_read_param.prefix is required")
    if p.batch_size <= 0:
        raise ValueError(f"mat_read_param.batch_size must be positive, got {p.batch_size}")
    names = matfile.list_names(p, "MatRead")
    if not names:
        raise ValueError("mat_read_param.source must name at least one file (the fork reads the "
                         "shape from its first name, also without a source)")
    first = matfile.read_blob(matfile.blob_file(p.prefix, names, 0, 0), "MatRead")
    if first.shape[0] != 1:
        raise ValueError(f"the blob in {matfile.blob_file(p.prefix, names, 0, 0)} must have num 1, "
                         f"got {list(first.shape)}")
    return LayerShapes([(p.batch_size, *first.shape[1:])])
