"""Transcriptions of weiliu89/caffe's SSD layer code (normalize_layer.cpp, permute_layer.cpp,
prior_box_layer.cpp, detection_output_layer.cpp and util/bbox_util.cpp), written loop by
loop with the same float/double steps, as references for the layer tests."""
import math

import numpy as np

F = np.float32


# ---- Normalize ---------------------------------------------------------------------

def normalize_forward(x, scale, across_spatial, eps):
    """NormalizeLayer::Forward_cpu on (N, C, S) in float64."""
    n, c, s = x.shape
    top = np.empty_like(x)
    norms = []
    for i in range(n):
        sq = x[i] ** 2
        if across_spatial:
            norm = (sq.sum() + eps) ** 0.5
            out = x[i] * (1.0 / norm)
        else:
            norm = np.sqrt(eps + sq.sum(axis=0))        # norm_ starts at eps, gemv adds
            out = x[i] / norm[None, :]
        out = out * (scale[0] if scale.size == 1 else scale[:, None])
        top[i] = out
        norms.append(norm)
    return top, norms


def normalize_backward(x, scale, top, top_diff, norms, across_spatial):
    """NormalizeLayer::Backward_cpu: (bottom_diff, scale_diff)."""
    n, c, s = x.shape
    scale_diff = np.zeros(scale.size)
    if scale.size == 1:
        scale_diff[0] = (top * top_diff).sum() / scale[0]
    else:
        for i in range(n):
            scale_diff += (top[i] * top_diff[i]).sum(axis=1) / scale
    bottom_diff = np.empty_like(x)
    for i in range(n):
        if across_spatial:
            a = (x[i] * top_diff[i]).sum()
            d = top_diff[i] - x[i] * (a / norms[i] / norms[i])
            d = d * (1.0 / norms[i])
        else:
            spatial = (x[i] * top_diff[i]).sum(axis=0)
            d = x[i] * spatial[None, :]
            d = d / (norms[i] ** 2)[None, :]
            d = top_diff[i] - d
            d = d / norms[i][None, :]
        bottom_diff[i] = d * (scale[0] if scale.size == 1 else scale[:, None])
    return bottom_diff, scale_diff.reshape(scale.shape)


# ---- Permute -----------------------------------------------------------------------

def permute_indices(shape, orders):
    """The fork's Permute(): for each top index i, the bottom index old_idx it reads, from
    i decomposed with the top's steps and mapped through the bottom's steps."""
    old_steps = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
    top_shape = [shape[o] for o in orders]
    new_steps = [int(np.prod(top_shape[i + 1:])) for i in range(len(shape))]
    pairs = []
    for i in range(int(np.prod(shape))):
        old_idx, idx = 0, i
        for j, order in enumerate(orders):
            old_idx += (idx // new_steps[j]) * old_steps[order]
            idx %= new_steps[j]
        pairs.append((i, old_idx))
    return top_shape, pairs


def permute_forward(x, orders):
    """Forward: top[i] = bottom[old_idx]."""
    top_shape, pairs = permute_indices(x.shape, orders)
    flat, top = x.reshape(-1), np.empty(x.size, x.dtype)
    for i, old_idx in pairs:
        top[i] = flat[old_idx]
    return top.reshape(top_shape)


def permute_backward(x_shape, top_diff, orders):
    """Backward: bottom_diff[old_idx] = top_diff[i]."""
    _, pairs = permute_indices(x_shape, orders)
    bottom, flat = np.zeros(int(np.prod(x_shape))), top_diff.reshape(-1)
    for i, old_idx in pairs:
        bottom[old_idx] = flat[i]
    return bottom.reshape(x_shape)


# ---- PriorBox ----------------------------------------------------------------------

def prior_box(layer_h, layer_w, img_h, img_w, min_sizes, max_sizes=(), aspect_ratios=(),
              flip=True, clip=False, variances=(), step=None, offset=0.5):
    """PriorBoxLayer::LayerSetUp + Forward_cpu; the top as a (1, 2, n) float32 array."""
    ars = [F(1.0)]
    for ar in map(F, aspect_ratios):
        if not any(abs(float(ar) - float(a)) < 1e-6 for a in ars):
            ars.append(ar)
            if flip:
                ars.append(F(1.0 / float(ar)))
    variances = [F(v) for v in variances] or [F(0.1)]
    if step is None:
        step_w, step_h = F(img_w) / F(layer_w), F(img_h) / F(layer_h)
    else:
        step_w = step_h = F(step)
    out = []

    def push(cx, cy, bw, bh):
        out.extend([F((float(cx) - float(bw) / 2.0) / img_w), F((float(cy) - float(bh) / 2.0) / img_h),
                    F((float(cx) + float(bw) / 2.0) / img_w), F((float(cy) + float(bh) / 2.0) / img_h)])

    for h in range(layer_h):
        for w in range(layer_w):
            cx = (F(w) + F(offset)) * step_w
            cy = (F(h) + F(offset)) * step_h
            for s, min_size in enumerate(min_sizes):
                ms = int(F(min_size))
                push(cx, cy, F(ms), F(ms))
                if max_sizes:
                    side = F(math.sqrt(ms * int(F(max_sizes[s]))))
                    push(cx, cy, side, side)
                for ar in ars:
                    if abs(float(ar) - 1.0) < 1e-6:
                        continue
                    push(cx, cy, F(ms * math.sqrt(float(ar))), F(ms / math.sqrt(float(ar))))
    boxes = np.array(out, dtype=F)
    if clip:
        boxes = np.minimum(np.maximum(boxes, F(0)), F(1))
    var = np.array([variances[0]] * boxes.size if len(variances) == 1
                   else variances * (boxes.size // 4), dtype=F)
    return np.stack([boxes, var])[None]


# ---- DetectionOutput ---------------------------------------------------------------

CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3


def bbox_size(b):
    """BBoxSize (normalized), honouring a stored size."""
    if b["xmax"] < b["xmin"] or b["ymax"] < b["ymin"]:
        return F(0)
    if "size" in b:
        return b["size"]
    return F(b["xmax"] - b["xmin"]) * F(b["ymax"] - b["ymin"])


def decode_bbox(prior, var, code_type, encoded, loc):
    """DecodeBBox for one box (dicts of float32 scalars)."""
    xmin, ymin, xmax, ymax = (prior[k] for k in ("xmin", "ymin", "xmax", "ymax"))
    lx, ly, lw, lh = loc
    if code_type == CORNER:
        if encoded:
            d = [xmin + lx, ymin + ly, xmax + lw, ymax + lh]
        else:
            d = [xmin + var[0] * lx, ymin + var[1] * ly, xmax + var[2] * lw, ymax + var[3] * lh]
    elif code_type == CENTER_SIZE:
        pw, ph = xmax - xmin, ymax - ymin
        assert pw > 0 and ph > 0
        pcx, pcy = F((float(xmin + xmax)) / 2.0), F((float(ymin + ymax)) / 2.0)
        if encoded:
            cx, cy = lx * pw + pcx, ly * ph + pcy
            w = F(math.exp(float(lw)) * float(pw))
            h = F(math.exp(float(lh)) * float(ph))
        else:
            cx, cy = var[0] * lx * pw + pcx, var[1] * ly * ph + pcy
            w = F(math.exp(float(var[2] * lw)) * float(pw))
            h = F(math.exp(float(var[3] * lh)) * float(ph))
        d = [F(float(cx) - float(w) / 2.0), F(float(cy) - float(h) / 2.0),
             F(float(cx) + float(w) / 2.0), F(float(cy) + float(h) / 2.0)]
    else:
        pw, ph = xmax - xmin, ymax - ymin
        assert pw > 0 and ph > 0
        if encoded:
            d = [xmin + lx * pw, ymin + ly * ph, xmax + lw * pw, ymax + lh * ph]
        else:
            d = [xmin + var[0] * lx * pw, ymin + var[1] * ly * ph,
                 xmax + var[2] * lw * pw, ymax + var[3] * lh * ph]
    box = dict(zip(("xmin", "ymin", "xmax", "ymax"), map(F, d)))
    box["size"] = bbox_size(box)
    return box


def jaccard_overlap(b1, b2):
    """JaccardOverlap (normalized) via IntersectBBox."""
    if b2["xmin"] > b1["xmax"] or b2["xmax"] < b1["xmin"] or b2["ymin"] > b1["ymax"] or b2["ymax"] < b1["ymin"]:
        inter = dict(xmin=F(0), ymin=F(0), xmax=F(0), ymax=F(0))
    else:
        inter = dict(xmin=max(b1["xmin"], b2["xmin"]), ymin=max(b1["ymin"], b2["ymin"]),
                     xmax=min(b1["xmax"], b2["xmax"]), ymax=min(b1["ymax"], b2["ymax"]))
    iw, ih = inter["xmax"] - inter["xmin"], inter["ymax"] - inter["ymin"]
    if iw > 0 and ih > 0:
        isz = iw * ih
        return isz / (bbox_size(b1) + bbox_size(b2) - isz)
    return F(0)


def apply_nms_fast(bboxes, scores, score_threshold, nms_threshold, eta, top_k):
    """ApplyNMSFast with GetMaxScoreIndex (stable sort, descending)."""
    pairs = [(scores[i], i) for i in range(len(scores)) if scores[i] > F(score_threshold)]
    pairs = sorted(pairs, key=lambda p: -p[0])  # sorted() is stable
    if top_k > -1 and top_k < len(pairs):
        pairs = pairs[:top_k]
    adaptive, indices = F(nms_threshold), []
    while pairs:
        idx = pairs[0][1]
        keep = True
        for kept in indices:
            if keep:
                keep = jaccard_overlap(bboxes[idx], bboxes[kept]) <= adaptive
            else:
                break
        if keep:
            indices.append(idx)
        pairs.pop(0)
        if keep and eta < 1 and adaptive > 0.5:
            adaptive = F(adaptive * F(eta))
    return indices


def detection_output(loc, conf, prior, num_classes, share_location=True, background_label_id=0,
                     code_type=CORNER, variance_encoded_in_target=False, keep_top_k=-1,
                     confidence_threshold=None, nms_threshold=0.3, eta=1.0, top_k=-1):
    """DetectionOutputLayer::Forward_cpu: the top as a (1, 1, kept, 7) float32 array."""
    num = loc.shape[0]
    num_priors = prior.shape[2] // 4
    num_loc_classes = 1 if share_location else num_classes
    threshold = -3.4028234663852886e38 if confidence_threshold is None else confidence_threshold
    loc, conf, prior = (np.asarray(a, F).reshape(a.shape[0], -1) for a in (loc, conf, prior))
    priors = [dict(zip(("xmin", "ymin", "xmax", "ymax"), prior[0, 4 * i:4 * i + 4])) for i in range(num_priors)]
    for p in priors:
        p["size"] = bbox_size(p)
    variances = [prior[0, 4 * (num_priors + i):4 * (num_priors + i) + 4] for i in range(num_priors)]
    rows = []
    for i in range(num):
        loc_preds, decoded = {}, {}
        for p in range(num_priors):
            start = p * num_loc_classes * 4
            for c in range(num_loc_classes):
                label = -1 if share_location else c
                loc_preds.setdefault(label, []).append(loc[i, start + c * 4:start + c * 4 + 4])
        scores = {c: [conf[i, p * num_classes + c] for p in range(num_priors)] for c in range(num_classes)}
        for c in range(num_loc_classes):
            label = -1 if share_location else c
            if label == background_label_id:
                continue
            decoded[label] = [decode_bbox(priors[p], variances[p], code_type, variance_encoded_in_target,
                                          loc_preds[label][p]) for p in range(num_priors)]
        indices, num_det = {}, 0
        for c in range(num_classes):
            if c == background_label_id:
                continue
            label = -1 if share_location else c
            indices[c] = apply_nms_fast(decoded[label], scores[c], threshold, nms_threshold, eta, top_k)
            num_det += len(indices[c])
        if keep_top_k > -1 and num_det > keep_top_k:
            pairs = [(scores[c][idx], c, idx) for c in sorted(indices) for idx in indices[c]]
            pairs = sorted(pairs, key=lambda t: -t[0])[:keep_top_k]
            indices = {}
            for _, c, idx in pairs:
                indices.setdefault(c, []).append(idx)
        for c in sorted(indices):
            boxes = decoded[-1 if share_location else c]
            for idx in indices[c]:
                b = boxes[idx]
                rows.append([i, c, scores[c][idx], b["xmin"], b["ymin"], b["xmax"], b["ymax"]])
    if not rows:
        rows = [[i, -1, -1, -1, -1, -1, -1] for i in range(num)]
    return np.array(rows, dtype=F).reshape(1, 1, -1, 7)
