"""SSD's MultiBoxLoss (weiliu89/caffe) against a loop-by-loop transcription of the fork's
MultiBoxLossLayer::Forward_cpu / Backward_cpu and the bbox_util.cpp functions it calls
(GetGroundTruth, MatchBBox, FindMatches, EncodeBBox, ComputeConfLoss, ComputeLocLoss,
ApplyNMS, MineHardExamples with MAX_NEGATIVE and HARD_EXAMPLE, EncodeLocPrediction,
EncodeConfPrediction) with its SmoothL1, Euclidean, SoftmaxWithLoss and
SigmoidCrossEntropyLoss inner layers; a small hard example mining case by hand; the tie order of its std::sort against g++;
a tiny SSD-shaped net that trains; and the errors, which name the layer."""
import math
import shutil
import subprocess

import numpy as np
import pytest
import torch
from ssd_reference import CENTER_SIZE, CORNER, CORNER_SIZE, bbox_size, decode_bbox, jaccard_overlap

from runner import Net
from runner.layers.common import BlobValueError, LabelError
from runner.layers.cxx_sort import std_sort_order
from layer_helpers import layer_from_text

F = np.float32
FLT_MIN = 1.1754943508222875e-38
BIPARTITE, PER_PREDICTION = 0, 1
SOFTMAX, LOGISTIC = 0, 1
L2, SMOOTH_L1 = 0, 1
FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3
KEYS = ("xmin", "ymin", "xmax", "ymax")


# ---- the fork's code, loop by loop ---------------------------------------------------

def get_ground_truth(rows, background, use_difficult_gt):
    all_gt = {}
    for row in rows:
        item = int(row[0])
        if item == -1:
            continue
        label = int(row[1])
        assert label != background, "Found background label in the dataset."
        difficult = bool(row[7])
        if not use_difficult_gt and difficult:
            continue
        box = dict(zip(KEYS, (F(v) for v in row[3:7])), label=label)
        box["size"] = bbox_size(box)
        all_gt.setdefault(item, []).append(box)
    return all_gt


def get_prior_bboxes(prior_data, num_priors):
    flat = prior_data.reshape(-1)
    priors, variances = [], []
    for i in range(num_priors):
        box = dict(zip(KEYS, (F(v) for v in flat[i * 4:i * 4 + 4])))
        box["size"] = bbox_size(box)
        priors.append(box)
    for i in range(num_priors):
        variances.append([F(v) for v in flat[(num_priors + i) * 4:(num_priors + i) * 4 + 4]])
    return priors, variances


def get_loc_predictions(loc_data, num, num_priors, loc_classes, share_location):
    preds = []
    for i in range(num):
        label_bbox = {}
        for p in range(num_priors):
            start = p * loc_classes * 4
            for c in range(loc_classes):
                label = -1 if share_location else c
                label_bbox.setdefault(label, [None] * num_priors)[p] = [
                    F(v) for v in loc_data[i, start + c * 4:start + c * 4 + 4]]
        preds.append(label_bbox)
    return preds


def is_cross_boundary(b):
    return any(b[k] < 0 or b[k] > 1 for k in KEYS)


def match_bbox(gt_bboxes, pred_bboxes, label, match_type, overlap_threshold, ignore_cross):
    num_pred = len(pred_bboxes)
    match_indices, match_overlaps = [-1] * num_pred, [F(0)] * num_pred
    gt_indices = [i for i, g in enumerate(gt_bboxes) if label == -1 or g["label"] == label]
    num_gt = len(gt_indices)
    if num_gt == 0:
        return match_indices, match_overlaps
    overlaps = {}   # std::map<int, std::map<int, float>>: filled in ascending i
    for i in range(num_pred):
        if ignore_cross and is_cross_boundary(pred_bboxes[i]):
            match_indices[i] = -2
            continue
        for j in range(num_gt):
            overlap = jaccard_overlap(pred_bboxes[i], gt_bboxes[gt_indices[j]])
            if overlap > 1e-6:
                match_overlaps[i] = max(match_overlaps[i], overlap)
                overlaps.setdefault(i, {})[j] = overlap
    gt_pool = list(range(num_gt))
    while gt_pool:
        max_idx, max_gt_idx, max_overlap = -1, -1, -1
        for i, row in overlaps.items():
            if match_indices[i] != -1:
                continue
            for j in gt_pool:
                if j in row and row[j] > max_overlap:
                    max_idx, max_gt_idx, max_overlap = i, j, row[j]
        if max_idx == -1:
            break
        match_indices[max_idx] = gt_indices[max_gt_idx]
        match_overlaps[max_idx] = max_overlap
        gt_pool.remove(max_gt_idx)
    if match_type == PER_PREDICTION:
        for i, row in overlaps.items():
            if match_indices[i] != -1:
                continue
            max_gt_idx, max_overlap = -1, -1
            for j in range(num_gt):
                if j in row and row[j] >= F(overlap_threshold) and row[j] > max_overlap:
                    max_gt_idx, max_overlap = j, row[j]
            if max_gt_idx != -1:
                match_indices[i] = gt_indices[max_gt_idx]
                match_overlaps[i] = max_overlap
    return match_indices, match_overlaps


def find_matches(all_loc_preds, all_gt, priors, variances, p):
    loc_classes = 1 if p["share_location"] else p["num_classes"]
    all_indices, all_overlaps = [], []
    for i in range(len(all_loc_preds)):
        indices, overlaps = {}, {}
        if i in all_gt:
            gt = all_gt[i]
            if not p["use_prior_for_matching"]:
                for c in range(loc_classes):
                    label = -1 if p["share_location"] else c
                    if not p["share_location"] and label == p["background_label_id"]:
                        continue
                    boxes = [decode_bbox(pr, var, p["code_type"], p["encode_variance_in_target"], loc)
                             for pr, var, loc in zip(priors, variances, all_loc_preds[i][label])]
                    indices[label], overlaps[label] = match_bbox(
                        gt, boxes, label, p["match_type"], p["overlap_threshold"],
                        p["ignore_cross_boundary_bbox"])
            else:
                temp, temp_overlaps = match_bbox(gt, priors, -1, p["match_type"], p["overlap_threshold"],
                                                 p["ignore_cross_boundary_bbox"])
                if p["share_location"]:
                    indices[-1], overlaps[-1] = temp, temp_overlaps
                else:
                    for c in range(loc_classes):
                        if c == p["background_label_id"]:
                            continue
                        indices[c] = [-1] * len(temp)
                        overlaps[c] = temp_overlaps
                        for m, g in enumerate(temp):
                            if g > -1 and gt[g]["label"] == c:
                                indices[c][m] = g
        all_indices.append(indices)
        all_overlaps.append(overlaps)
    return all_indices, all_overlaps


def compute_conf_loss(conf, num, num_priors, num_classes, background, loss_type, all_indices, all_gt):
    all_loss = []
    for i in range(num):
        losses = []
        for p in range(num_priors):
            x = conf[i, p * num_classes:(p + 1) * num_classes]
            label = background
            for _, indices in sorted(all_indices[i].items()):
                if indices[p] > -1:
                    label = all_gt[i][indices[p]]["label"]
                    break
            if loss_type == SOFTMAX:
                maxval = x[0]
                for c in range(1, num_classes):
                    maxval = max(x[c], maxval)
                total = F(0)
                for c in range(num_classes):
                    total += F(math.exp(float(x[c] - maxval)))
                prob = F(math.exp(float(x[label] - maxval))) / total
                loss = F(-math.log(float(max(prob, F(FLT_MIN)))))
            else:
                loss = F(0)
                for c in range(num_classes):
                    target = 1 if c == label else 0
                    pos = 1 if x[c] >= 0 else 0
                    loss = F(float(loss) - (float(x[c] * F(target - pos))
                                            - math.log(1 + math.exp(float(x[c] - 2 * x[c] * pos)))))
            losses.append(loss)
        all_loss.append(losses)
    return all_loss


def compute_loc_loss(all_loc_preds, all_gt, all_indices, priors, variances, p, num, num_priors):
    """ComputeLocLoss on EncodeLocPrediction's float rows: per prior, the float sum of
    double terms over the 4 coordinates; 0 for a prior without a match."""
    all_loss = [[F(0)] * num_priors for _ in range(num)]
    if not any(g > -1 for d in all_indices for v in d.values() for g in v):
        return all_loss
    pred, target, where = encode_loc_prediction(all_loc_preds, all_gt, all_indices, priors,
                                                variances, p)
    for (i, j, _), prow, trow in zip(where, pred, target):
        loss = F(0)
        for k in range(4):
            val = float(F(prow[k]) - F(trow[k]))   # caffe_sub on the float blobs
            if p["loc_loss_type"] == SMOOTH_L1 and not abs(val) < 1.0:
                loss = F(float(loss) + (abs(val) - 0.5))
            else:
                loss = F(float(loss) + 0.5 * val * val)
        all_loss[i][j] = loss
    return all_loss


def apply_nms(bboxes, scores, threshold, top_k):
    """ApplyNMS (the plain one, reuse_overlaps false) with GetTopKScoreIndex."""
    pairs = sorted(((scores[i], i) for i in range(len(scores))), key=lambda t: -t[0])  # stable
    if top_k > -1 and top_k < len(pairs):
        pairs = pairs[:top_k]
    indices = []
    while pairs:
        best = pairs[0][1]
        if float(bbox_size(bboxes[best])) < 1e-5:
            pairs.pop(0)
            continue
        indices.append(best)
        pairs.pop(0)
        if top_k > -1 and len(indices) >= top_k:
            break
        rest = []
        for score, cur in pairs:
            if float(bbox_size(bboxes[cur])) < 1e-5:
                continue
            if jaccard_overlap(bboxes[best], bboxes[cur]) > F(threshold):
                continue
            rest.append((score, cur))
        pairs = rest
    return indices


def mine_hard_examples(conf, all_gt, num_priors, all_overlaps, all_indices, p, all_loc_preds,
                       priors, variances):
    """MineHardExamples: (num_matches, num_negs, negatives); HARD_EXAMPLE sets the matches
    it does not select to -1 in all_indices."""
    num = len(all_indices)
    num_matches = sum(1 for d in all_indices for v in d.values() for g in v if g > -1)
    all_neg = [[] for _ in range(num)]
    if not p["mining"]:
        return num_matches, 0, all_neg
    hard = p["hard"]
    nms = p["nms"]
    nms_threshold, top_k = (F(nms.get("nms_threshold", 0.3)), nms.get("top_k", 0)) if nms is not None \
        else (F(0), -1)
    conf_loss = compute_conf_loss(conf, num, num_priors, p["num_classes"], p["background_label_id"],
                                  p["conf_loss_type"], all_indices, all_gt)
    if hard:
        loc_loss = compute_loc_loss(all_loc_preds, all_gt, all_indices, priors, variances, p, num,
                                    num_priors)
    else:
        loc_loss = [[F(0)] * num_priors for _ in range(num)]
    num_negs = 0
    for i in range(num):
        loss = [conf_loss[i][m] + loc_loss[i][m] for m in range(num_priors)]   # float + float
        selected, neg = set(), []
        for label, indices in sorted(all_indices[i].items()):
            def eligible(m):
                return hard or (indices[m] == -1 and all_overlaps[i][label][m] < F(p["neg_overlap"]))
            pairs = [(loss[m], m) for m in range(len(indices)) if eligible(m)]
            num_sel = len(pairs)
            if hard:
                assert p["sample_size"] > 0
                num_sel = min(p["sample_size"], num_sel)
            else:
                num_pos = sum(1 for g in indices if g > -1)
                num_sel = min(int(F(num_pos) * F(p["neg_pos_ratio"])), num_sel)
            if nms is not None and nms_threshold > 0:
                if p["use_prior_for_nms"]:
                    boxes = priors
                else:
                    boxes = [decode_bbox(pr, var, p["code_type"], p["encode_variance_in_target"], lp)
                             for pr, var, lp in zip(priors, variances, all_loc_preds[i][label])]
                sel_boxes = [boxes[m] for m in range(len(indices)) if eligible(m)]
                nms_indices = apply_nms(sel_boxes, [t[0] for t in pairs], nms_threshold, top_k)
                num_sel = min(len(nms_indices), num_sel)
                selected |= {pairs[nms_indices[n]][1] for n in range(num_sel)}
            else:
                pairs.sort(key=lambda t: -t[0])
                assert num_sel <= 0 or num_sel == len(pairs) or pairs[num_sel - 1][0] != pairs[num_sel][0], \
                    "a tie at the cut: the case depends on std::sort's order"
                selected |= {m for _, m in pairs[:max(num_sel, 0)]}
            for m in range(len(indices)):
                if indices[m] > -1:
                    if hard and m not in selected:
                        indices[m] = -1
                        num_matches -= 1
                elif indices[m] == -1 and m in selected:
                    neg.append(m)
                    num_negs += 1
        all_neg[i] = neg
    return num_matches, num_negs, all_neg


def encode_bbox(prior, var, code_type, in_target, box):
    px0, py0, px1, py1 = (prior[k] for k in KEYS)
    bx0, by0, bx1, by1 = (box[k] for k in KEYS)
    if code_type == CORNER:
        d = [bx0 - px0, by0 - py0, bx1 - px1, by1 - py1]
        return d if in_target else [d[k] / var[k] for k in range(4)]
    pw, ph = px1 - px0, py1 - py0
    if code_type == CORNER_SIZE:
        d = [(bx0 - px0) / pw, (by0 - py0) / ph, (bx1 - px1) / pw, (by1 - py1) / ph]
        return d if in_target else [d[k] / var[k] for k in range(4)]
    pcx, pcy = F(float(px0 + px1) / 2.0), F(float(py0 + py1) / 2.0)
    bw, bh = bx1 - bx0, by1 - by0
    bcx, bcy = F(float(bx0 + bx1) / 2.0), F(float(by0 + by1) / 2.0)
    if in_target:
        return [(bcx - pcx) / pw, (bcy - pcy) / ph, F(math.log(float(bw / pw))), F(math.log(float(bh / ph)))]
    return [(bcx - pcx) / pw / var[0], (bcy - pcy) / ph / var[1],
            F(math.log(float(bw / pw)) / float(var[2])), F(math.log(float(bh / ph)) / float(var[3]))]


def encode_loc_prediction(all_loc_preds, all_gt, all_indices, priors, variances, p):
    """(loc_pred, loc_gt, where): where[k] = (image, prior, location slot) of row k."""
    pred, target, where = [], [], []
    for i in range(len(all_loc_preds)):
        for label, indices in sorted(all_indices[i].items()):
            loc = all_loc_preds[i][label]
            for j, g in enumerate(indices):
                if g <= -1:
                    continue
                enc = encode_bbox(priors[j], variances[j], p["code_type"],
                                  p["encode_variance_in_target"], all_gt[i][g])
                row = list(loc[j])
                if p["bp_inside"]:
                    match = priors[j] if p["use_prior_for_matching"] else decode_bbox(
                        priors[j], variances[j], p["code_type"], p["encode_variance_in_target"], loc[j])
                    row = [enc[k] if match[KEYS[k]] < 0 or match[KEYS[k]] > 1 else row[k] for k in range(4)]
                if p["encode_variance_in_target"]:
                    row = [row[k] / variances[j][k] for k in range(4)]
                    enc = [enc[k] / variances[j][k] for k in range(4)]
                pred.append(row)
                target.append(enc)
                where.append((i, j, 0 if p["share_location"] else label))
    return np.array(pred, np.float64), np.array(target, np.float64), where


def encode_conf_prediction(conf, num, num_priors, all_indices, all_neg, all_gt, p):
    """(conf_pred, conf_gt, rows): rows[k] = (image, prior) of conf_pred row k."""
    c, bg = p["num_classes"], p["background_label_id"]
    mining, softmax = p["mining"], p["conf_loss_type"] == SOFTMAX
    num_conf = (sum(1 for d in all_indices for v in d.values() for g in v if g > -1)
                + sum(map(len, all_neg))) if mining else num * num_priors
    gt_data = np.full(num_conf if softmax else num_conf * c, bg, np.float64)
    pred, rows = [], []
    count, gt_offset = 0, 0
    for i in range(num):
        if i in all_gt:
            for _, indices in sorted(all_indices[i].items()):
                for j in range(num_priors):
                    if indices[j] <= -1:
                        continue
                    gt_label = bg + 1 if p["map_object_to_agnostic"] else all_gt[i][indices[j]]["label"]
                    idx = count if mining else j
                    if softmax:
                        gt_data[gt_offset + idx] = gt_label
                    else:
                        gt_data[gt_offset + idx * c + gt_label] = 1
                    if mining:
                        pred.append(conf[i, j * c:(j + 1) * c])
                        rows.append((i, j))
                        count += 1
            if mining:
                for j in all_neg[i]:
                    pred.append(conf[i, j * c:(j + 1) * c])
                    rows.append((i, j))
                    if softmax:
                        gt_data[count] = bg
                    elif 0 <= bg < c:
                        gt_data[count * c + bg] = 1
                    count += 1
        if not mining:
            gt_offset += num_priors   # the fork's step, also for LOGISTIC
    if not mining:
        pred = list(conf.reshape(num * num_priors, c))
        rows = [(i, j) for i in range(num) for j in range(num_priors)]
    return np.array(pred, np.float64).reshape(-1, c), gt_data, rows


def smooth_l1(pred, target):
    d = pred - target
    loss = np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5).sum()
    return loss, np.where(np.abs(d) < 1, d, np.sign(d))


def softmax_loss(x, labels):
    prob = np.exp(x - x.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    lab = labels.astype(int)
    loss = -np.log(np.maximum(prob[np.arange(len(x)), lab], FLT_MIN)).sum()
    diff = prob.copy()
    diff[np.arange(len(x)), lab] -= 1
    return loss, diff


def sigmoid_cross_entropy(x, target):
    pos = (x >= 0).astype(np.float64)
    loss = -(x * (target - pos) - np.log(1 + np.exp(x - 2 * x * pos))).sum()
    return loss, 1 / (1 + np.exp(-x)) - target


def get_normalizer(mode, num, num_priors, valid):
    value = {FULL: num * num_priors, VALID: valid, BATCH_SIZE: num, NONE: 1}[mode]
    return max(1.0, float(value))


def multibox_loss(loc, conf, prior, label, p, top_diff=1.0):
    """Forward_cpu and Backward_cpu: (loss, loc diff, conf diff, matched priors, negatives)."""
    num, loc_classes = loc.shape[0], 1 if p["share_location"] else p["num_classes"]
    num_priors, c = prior.shape[2] // 4, p["num_classes"]
    all_gt = get_ground_truth(label.reshape(-1, 8), p["background_label_id"], p["use_difficult_gt"])
    priors, variances = get_prior_bboxes(prior, num_priors)
    all_loc_preds = get_loc_predictions(loc, num, num_priors, loc_classes, p["share_location"])
    all_indices, all_overlaps = find_matches(all_loc_preds, all_gt, priors, variances, p)
    num_matches, num_negs, all_neg = mine_hard_examples(conf, all_gt, num_priors, all_overlaps,
                                                         all_indices, p, all_loc_preds, priors,
                                                         variances)
    normalizer = get_normalizer(p["normalization"], num, num_priors, num_matches)
    loc_diff, conf_diff = np.zeros(loc.shape), np.zeros(conf.shape)
    loc_loss = conf_loss = 0.0
    if num_matches >= 1:
        pred, target, where = encode_loc_prediction(all_loc_preds, all_gt, all_indices, priors,
                                                    variances, p)
        if p["loc_loss_type"] == SMOOTH_L1:
            loc_loss, d = smooth_l1(pred, target)
        else:
            d = pred - target
            loc_loss = (d * d).sum() / 2
        d = d * p["loc_weight"] * top_diff / normalizer
        for (i, j, slot), row in zip(where, d):
            start = loc_classes * 4 * j + slot * 4
            loc_diff[i, start:start + 4] = row
    num_conf = num_matches + num_negs if p["mining"] else num * num_priors
    if num_conf >= 1:
        x, gt, rows = encode_conf_prediction(conf, num, num_priors, all_indices, all_neg, all_gt, p)
        if p["conf_loss_type"] == SOFTMAX:
            conf_loss, d = softmax_loss(x, gt)
        else:
            conf_loss, d = sigmoid_cross_entropy(x, gt.reshape(x.shape))
        d = d * top_diff / normalizer
        for (i, j), row in zip(rows, d):
            conf_diff[i, j * c:(j + 1) * c] = row
    loss = 0.0
    if p["propagate_down"][0]:
        loss += p["loc_weight"] * loc_loss / normalizer
    else:
        loc_diff[:] = 0
    if p["propagate_down"][1]:
        loss += conf_loss / normalizer
    else:
        conf_diff[:] = 0
    return loss, loc_diff, conf_diff, all_indices, all_neg


# ---- cases ---------------------------------------------------------------------------

DEFAULTS = dict(num_classes=4, share_location=True, match_type=PER_PREDICTION, overlap_threshold=0.5,
                use_prior_for_matching=True, background_label_id=0, use_difficult_gt=True,
                mining=True, neg_pos_ratio=3.0, neg_overlap=0.5, code_type=CORNER,
                encode_variance_in_target=False, map_object_to_agnostic=False,
                ignore_cross_boundary_bbox=False, bp_inside=False, loc_loss_type=SMOOTH_L1,
                conf_loss_type=SOFTMAX, loc_weight=1.0, normalization=VALID,
                propagate_down=(True, True), hard=False, nms=None, sample_size=64,
                use_prior_for_nms=False)


def layer_text(p, extra=""):
    names = {"match_type": ("BIPARTITE", "PER_PREDICTION"), "conf_loss_type": ("SOFTMAX", "LOGISTIC"),
             "loc_loss_type": ("L2", "SMOOTH_L1")}
    codes = {CORNER: "CORNER", CENTER_SIZE: "CENTER_SIZE", CORNER_SIZE: "CORNER_SIZE"}
    fields = []
    for key in ("num_classes", "share_location", "match_type", "overlap_threshold",
                "use_prior_for_matching", "background_label_id", "use_difficult_gt", "neg_pos_ratio",
                "neg_overlap", "code_type", "encode_variance_in_target", "map_object_to_agnostic",
                "ignore_cross_boundary_bbox", "bp_inside", "loc_loss_type", "conf_loss_type",
                "loc_weight", "sample_size", "use_prior_for_nms"):
        value = p[key]
        if key in names:
            value = names[key][value]
        elif key == "code_type":
            value = codes[value]
        elif isinstance(value, bool):
            value = str(value).lower()
        fields.append(f"{key}: {value}")
    fields.append(f"mining_type: {('NONE', 'HARD_EXAMPLE' if p['hard'] else 'MAX_NEGATIVE')[p['mining']]}")
    if p["nms"] is not None:
        fields.append("nms_param { " + " ".join(f"{k}: {v}" for k, v in p["nms"].items()) + " }")
    norm = ("FULL", "VALID", "BATCH_SIZE", "NONE")[p["normalization"]]
    down = " ".join(f"propagate_down: {str(d).lower()}" for d in (*p["propagate_down"], False, False))
    return (f'name: "mbox_loss" type: "MultiBoxLoss" {down} loss_param {{ normalization: {norm} }} '
            f'multibox_loss_param {{ {" ".join(fields)} }} {extra}')


def make_case(seed, p, num=3, images_without_gt=(1,), variances=(0.1, 0.1, 0.2, 0.2)):
    """Priors on a 4 x 4 grid (some crossing the border), a few ground truth boxes per
    image with difficult ones and an item_id -1 row, random predictions."""
    rng = np.random.default_rng(seed)
    centres = (np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2) + 0.5) / 4
    sides = np.array([[0.2, 0.2], [0.4, 0.4], [0.35, 0.18]])
    boxes = np.concatenate([np.concatenate([centres - s / 2, centres + s / 2], 1) for s in sides])
    num_priors = len(boxes)
    prior = np.stack([boxes.reshape(-1), np.tile(variances, num_priors)]).astype(F)[None]
    c, bg = p["num_classes"], p["background_label_id"]
    objects = [k for k in range(c) if k != bg]
    rows = []
    for i in range(num):
        if i in images_without_gt:
            continue
        for _ in range(rng.integers(1, 4)):
            centre = rng.uniform(0.15, 0.85, 2)
            side = rng.uniform(0.15, 0.45, 2)
            box = np.clip(np.concatenate([centre - side / 2, centre + side / 2]), 0, 1)
            rows.append([i, rng.choice(objects), 0, *box, float(rng.random() < 0.3)])
        if i == 0:
            rows.append([-1] * 8)
    label = np.array(rows, F).reshape(1, 1, -1, 8)
    loc_classes = 1 if p["share_location"] else c
    loc = (rng.normal(size=(num, num_priors * loc_classes * 4)) * 0.5).astype(F)
    conf = rng.normal(size=(num, num_priors * c)).astype(F)
    return loc, conf, prior, label


def run_layer(p, loc, conf, prior, label, top_diff=1.0, extra=""):
    layer = layer_from_text(layer_text(p, extra), [loc.shape, conf.shape, prior.shape, label.shape])
    loc_t = torch.tensor(loc, requires_grad=True)
    conf_t = torch.tensor(conf, requires_grad=True)
    (loss,) = layer(loc_t, conf_t, torch.tensor(prior), torch.tensor(label))
    loss.backward(torch.tensor(top_diff))
    return loss.item(), loc_t.grad.numpy(), conf_t.grad.numpy()


CASES = {
    "per_prediction_corner_mining_valid": {},
    "bipartite_center_size_no_difficult": dict(match_type=BIPARTITE, code_type=CENTER_SIZE,
                                               use_difficult_gt=False),
    "center_size_variance_in_target_no_mining_full": dict(code_type=CENTER_SIZE, mining=False,
                                                          encode_variance_in_target=True, normalization=FULL),
    "bipartite_corner_no_mining_batch_size": dict(match_type=BIPARTITE, mining=False,
                                                  normalization=BATCH_SIZE),
    "corner_size_none_weighted": dict(code_type=CORNER_SIZE, normalization=NONE, loc_weight=2.5,
                                      neg_pos_ratio=2.5, neg_overlap=0.3, overlap_threshold=0.4),
    "ignore_cross_boundary": dict(code_type=CENTER_SIZE, ignore_cross_boundary_bbox=True),
    "l2_logistic_no_mining": dict(loc_loss_type=L2, conf_loss_type=LOGISTIC, mining=False,
                                  normalization=BATCH_SIZE),
    "logistic_mining": dict(conf_loss_type=LOGISTIC, code_type=CENTER_SIZE),
    # LOGISTIC targets start as the background id: 2 here, not 0
    "logistic_background_2": dict(conf_loss_type=LOGISTIC, background_label_id=2, mining=False),
    "logistic_background_2_mining": dict(conf_loss_type=LOGISTIC, background_label_id=2),
    "per_class_locations": dict(share_location=False, mining=False),
    "match_decoded_predictions": dict(use_prior_for_matching=False, code_type=CENTER_SIZE,
                                      overlap_threshold=0.3),
    "match_decoded_per_class": dict(use_prior_for_matching=False, share_location=False, mining=False,
                                    overlap_threshold=0.3),
    "bp_inside": dict(bp_inside=True),
    "bp_inside_decoded": dict(bp_inside=True, use_prior_for_matching=False, code_type=CENTER_SIZE,
                              encode_variance_in_target=True),
    "agnostic": dict(map_object_to_agnostic=True, num_classes=2),
    "background_not_zero": dict(background_label_id=2, code_type=CENTER_SIZE),
    "conf_term_only": dict(propagate_down=(False, True)),
    "loc_term_only": dict(propagate_down=(True, False), mining=False),
    # MAX_NEGATIVE with nms_param: the negatives are the first after NMS over the losses
    "max_negative_nms_priors": dict(nms=dict(nms_threshold=0.2, top_k=40), use_prior_for_nms=True),
    "max_negative_nms_decoded": dict(nms=dict(nms_threshold=0.25, top_k=-1), code_type=CENTER_SIZE,
                                     neg_pos_ratio=5.0, normalization=FULL),
    # HARD_EXAMPLE: the sample_size priors of largest loc + conf loss, matched or not
    "hard_sample_10_valid": dict(hard=True, sample_size=10),
    "hard_sample_over_all_l2_logistic_batch": dict(hard=True, sample_size=100, loc_loss_type=L2,
                                                   conf_loss_type=LOGISTIC, normalization=BATCH_SIZE),
    "hard_nms_priors_top_k_full": dict(hard=True, sample_size=12, use_prior_for_nms=True,
                                       nms=dict(nms_threshold=0.2, top_k=20), normalization=FULL),
    "hard_nms_decoded_no_limit_logistic_none": dict(
        hard=True, sample_size=100, nms=dict(nms_threshold=0.3, top_k=-1, eta=0.8),
        code_type=CENTER_SIZE, conf_loss_type=LOGISTIC, normalization=NONE, loc_weight=1.5),
    "hard_nms_decoded_l2_variance_bp_inside": dict(
        hard=True, sample_size=16, nms=dict(nms_threshold=0.25, top_k=30), loc_loss_type=L2,
        code_type=CENTER_SIZE, encode_variance_in_target=True, bp_inside=True),
    "hard_nms_threshold_0_sorts": dict(hard=True, sample_size=16, nms=dict(nms_threshold=0, top_k=3),
                                       normalization=BATCH_SIZE),
    "hard_ignore_cross_boundary": dict(hard=True, sample_size=20, code_type=CENTER_SIZE,
                                       ignore_cross_boundary_bbox=True, use_prior_for_nms=True,
                                       nms=dict(nms_threshold=0.35, top_k=-1)),
    "hard_match_decoded_logistic_background_2": dict(
        hard=True, sample_size=14, use_prior_for_matching=False, code_type=CENTER_SIZE,
        overlap_threshold=0.3, conf_loss_type=LOGISTIC, background_label_id=2),
    "hard_agnostic_corner_size": dict(hard=True, sample_size=24, map_object_to_agnostic=True,
                                      num_classes=2, code_type=CORNER_SIZE,
                                      nms=dict(nms_threshold=0.4, top_k=25)),
    "hard_conf_term_only": dict(hard=True, sample_size=10, propagate_down=(False, True)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_and_gradients_match_the_fork(name):
    p = {**DEFAULTS, **CASES[name]}
    for seed in range(3):
        case = make_case(seed, p)
        loss, dloc, dconf = run_layer(p, *case, top_diff=0.7)
        want, want_loc, want_conf, matches, _ = multibox_loss(*case, p, top_diff=0.7)
        assert sum(g > -1 for d in matches for v in d.values() for g in v) > 0, "a case without matches"
        np.testing.assert_allclose(loss, want, rtol=1e-5)
        np.testing.assert_allclose(dloc, want_loc, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(dconf, want_conf, rtol=1e-4, atol=1e-7)


def test_negatives_are_the_fork_ones():
    """Mining picks the unmatched priors with the largest background loss: the conf
    gradient is non-zero exactly on the matched priors and the fork's negatives."""
    p = dict(DEFAULTS, neg_pos_ratio=1.5)
    loc, conf, prior, label = make_case(5, p)
    _, _, dconf = run_layer(p, loc, conf, prior, label)
    _, _, _, matches, negatives = multibox_loss(loc, conf, prior, label, p)
    for i in range(len(loc)):
        rows = np.flatnonzero(np.abs(dconf[i].reshape(-1, p["num_classes"])).sum(1))
        positives = [j for j, g in enumerate(matches[i].get(-1, [])) if g > -1]
        assert sorted(rows.tolist()) == sorted(positives + negatives[i])
        assert len(negatives[i]) <= int(F(len(positives)) * F(1.5))


def test_without_ground_truth_the_loss_is_zero_with_mining():
    """No gt in the batch (one item_id -1 row): no match, no negative, loss 0 and zero
    diffs; without mining every prior is a background prior over a normaliser of 1."""
    p = dict(DEFAULTS)
    loc, conf, prior, _ = make_case(0, p)
    label = np.full((1, 1, 1, 8), -1, F)
    loss, dloc, dconf = run_layer(p, loc, conf, prior, label)
    assert loss == 0 and not dloc.any() and not dconf.any()
    p = dict(DEFAULTS, mining=False)
    loss, dloc, dconf = run_layer(p, loc, conf, prior, label)
    want, _, want_conf, _, _ = multibox_loss(loc, conf, prior, label, p)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(dconf, want_conf, rtol=1e-4, atol=1e-7)
    assert not dloc.any()


def test_legacy_normalize_and_do_neg_mining():
    """loss_param.normalize: false is BATCH_SIZE; do_neg_mining: true agrees with the
    default mining_type MAX_NEGATIVE."""
    p = dict(DEFAULTS, normalization=BATCH_SIZE)
    case = make_case(2, p)
    want = multibox_loss(*case, p)[0]
    text = layer_text(p).replace("normalization: BATCH_SIZE", "normalize: false")
    text = text.replace("mining_type: MAX_NEGATIVE", "do_neg_mining: true")
    layer = layer_from_text(text, [x.shape for x in case])
    (loss,) = layer(*map(torch.tensor, case))
    np.testing.assert_allclose(loss.item(), want, rtol=1e-5)


# ---- HARD_EXAMPLE by hand ----------------------------------------------------------------

# A and B overlap by IoU 0.905 and both match the gt (A exactly); C and D are background.
HAND_PRIORS = [[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.6, 0.6, 0.9, 0.9], [0.0, 0.6, 0.3, 0.9]]
A, B, C, D = range(4)
LN1E, LC, LN1E_1 = math.log(1 + math.e), math.log(1 + math.exp(0.5)), math.log(1 + 1 / math.e)


def hand_case(param, loc_b=(0, 0, 0, 0)):
    """Two classes, background 0, variances 0.1, CORNER codes. Losses: A ln(1 + e) (conf
    [1, 0], label 1) + 0.005 (its target is 0, it predicts (0.1, 0, 0, 0)); B ln(1 + e)
    (conf [1, 0], label 1) + 0.04 (its target is (-0.2, 0, -0.2, 0), it predicts 0);
    C ln(1 + e^0.5) (conf [0, 0.5], background); D ln(1 + 1/e) (conf [1, 0], background):
    B > A > C > D. (loss, priors with a loc gradient, with a conf gradient, loc gradient)."""
    prior = np.array([sum(HAND_PRIORS, []), [0.1] * 16], F)[None]
    label = np.array([0, 1, 0, 0.1, 0.1, 0.5, 0.5, 0], F).reshape(1, 1, 1, 8)
    loc = np.zeros((1, 16), F)
    loc[0, 4 * A] = 0.1
    loc[0, 4 * B:4 * B + 4] = loc_b
    conf = np.array([[1, 0, 1, 0, 0, 0.5, 1, 0]], F)
    text = ('name: "mbox_loss" type: "MultiBoxLoss" propagate_down: true propagate_down: true '
            'propagate_down: false propagate_down: false multibox_loss_param { num_classes: 2 '
            f'code_type: CORNER mining_type: HARD_EXAMPLE {param} }}')
    layer = layer_from_text(text, [loc.shape, conf.shape, prior.shape, label.shape])
    loc_t, conf_t = torch.tensor(loc, requires_grad=True), torch.tensor(conf, requires_grad=True)
    (loss,) = layer(loc_t, conf_t, torch.tensor(prior), torch.tensor(label))
    loss.backward()
    rows = lambda g: sorted(np.flatnonzero(np.abs(g.numpy().reshape(4, -1)).sum(1)).tolist())
    return loss.item(), rows(loc_t.grad), rows(conf_t.grad), loc_t.grad.numpy().reshape(4, 4)


def test_hard_example_without_nms_by_hand():
    """No nms_param: the 2 largest losses, B and A, both positives; no negative; VALID
    normalises by 2."""
    loss, loc_rows, conf_rows, dloc = hand_case("sample_size: 2")
    assert loc_rows == [A, B] and conf_rows == [A, B]
    np.testing.assert_allclose(loss, (0.045 + 2 * LN1E) / 2, rtol=1e-6)
    np.testing.assert_allclose(dloc[B], [0.1, 0, 0.1, 0], rtol=1e-5, atol=1e-7)


def test_hard_example_nms_over_priors_by_hand():
    """sample_size 2 after NMS over the priors at 0.5: B (largest loss) suppresses A, so B
    and C are picked; A loses its match (neither positive nor negative), C is a negative;
    VALID normalises by the one match left."""
    loss, loc_rows, conf_rows, dloc = hand_case(
        "sample_size: 2 use_prior_for_nms: true nms_param { nms_threshold: 0.5 top_k: -1 }")
    assert loc_rows == [B] and conf_rows == [B, C]
    np.testing.assert_allclose(loss, 0.04 + LN1E + LC, rtol=1e-6)
    np.testing.assert_allclose(dloc[B], [0.2, 0, 0.2, 0], rtol=1e-5, atol=1e-7)
    # a third pick reaches past the suppressed A to D
    loss, loc_rows, conf_rows, _ = hand_case(
        "sample_size: 3 use_prior_for_nms: true nms_param { nms_threshold: 0.5 top_k: -1 }")
    assert loc_rows == [B] and conf_rows == [B, C, D]
    np.testing.assert_allclose(loss, 0.04 + LN1E + LC + LN1E_1, rtol=1e-6)
    # top_k 2 cuts the candidates to B and A before NMS, which drops A: B alone
    loss, loc_rows, conf_rows, _ = hand_case(
        "sample_size: 3 use_prior_for_nms: true nms_param { nms_threshold: 0.5 top_k: 2 }")
    assert loc_rows == [B] and conf_rows == [B]
    np.testing.assert_allclose(loss, 0.04 + LN1E, rtol=1e-6)
    # an NMS threshold above their overlap keeps A; eta does not apply to mining
    _, loc_rows, conf_rows, _ = hand_case("sample_size: 3 use_prior_for_nms: true "
                                          "nms_param { nms_threshold: 0.95 top_k: -1 eta: 0.1 }")
    assert loc_rows == [A, B] and conf_rows == [A, B, C]


def test_hard_example_nms_over_decoded_predictions_by_hand():
    """B predicts (3, 0, 3, 0): decoded it moves right to IoU 0.11 with A, so NMS over the
    predictions keeps A (picked: B, A, C), while NMS over the priors still drops it (B, C,
    D). B's smooth L1 loss is 2 * (3.2 - 0.5)."""
    param = "sample_size: 3 nms_param {{ nms_threshold: 0.5 top_k: -1 }} use_prior_for_nms: {}"
    loss, loc_rows, conf_rows, _ = hand_case(param.format("false"), loc_b=(3, 0, 3, 0))
    assert loc_rows == [A, B] and conf_rows == [A, B, C]
    np.testing.assert_allclose(loss, (5.405 + 2 * LN1E + LC) / 2, rtol=1e-6)
    loss, loc_rows, conf_rows, _ = hand_case(param.format("true"), loc_b=(3, 0, 3, 0))
    assert loc_rows == [B] and conf_rows == [B, C, D]
    np.testing.assert_allclose(loss, 5.4 + LN1E + LC + LN1E_1, rtol=1e-6)


def test_hard_example_mining_weighs_the_location_loss():
    """A and B have the same confidence loss: the location loss ranks them. B (0.04)
    outranks A (0.005); predicting its target exactly (loss 0), B falls behind A and,
    unpicked, loses its match."""
    assert hand_case("sample_size: 1")[2] == [B]
    loss, loc_rows, conf_rows, _ = hand_case("sample_size: 1", loc_b=(-0.2, 0, -0.2, 0))
    assert loc_rows == [A] and conf_rows == [A]
    np.testing.assert_allclose(loss, 0.005 + LN1E, rtol=1e-6)


@pytest.mark.parametrize("mining, kept", [("HARD_EXAMPLE", "no prior"), ("MAX_NEGATIVE", "no negative")])
def test_nms_param_without_top_k_keeps_nothing_as_in_the_fork(mining, kept):
    """The fork's top_k is 0 when unset, and GetTopKScoreIndex cuts the candidates to 0:
    HARD_EXAMPLE then unmatches every positive (loss 0), MAX_NEGATIVE picks no negative.
    Setting the layer up warns."""
    p = dict(DEFAULTS, hard=mining == "HARD_EXAMPLE", nms=dict(nms_threshold=0.3))
    case = make_case(4, p)
    with pytest.warns(UserWarning, match=rf"layer 'mbox_loss': nms_param .* top_k 0 .* keeps {kept}"):
        loss, dloc, dconf = run_layer(p, *case)
    want, want_loc, want_conf, matches, negatives = multibox_loss(*case, p)
    assert not any(negatives)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(dloc, want_loc, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(dconf, want_conf, rtol=1e-4, atol=1e-7)
    if mining == "HARD_EXAMPLE":
        assert loss == 0 and not dloc.any() and not dconf.any()
    else:
        assert loss > 0 and any(g > -1 for d in matches for v in d.values() for g in v)


def test_hard_example_needs_share_location():
    text = ('name: "mbox_loss" type: "MultiBoxLoss" multibox_loss_param { num_classes: 3 '
            'share_location: false mining_type: HARD_EXAMPLE }')
    with pytest.raises(ValueError, match=r"layer 'mbox_loss': negative mining needs share_location"):
        layer_from_text(text, [(2, 72), (2, 18), (1, 2, 24), (1, 1, 2, 8)])


def test_hard_example_ignores_neg_pos_ratio():
    """neg_pos_ratio is MAX_NEGATIVE's: HARD_EXAMPLE takes an infinite one, as the fork."""
    text = ('name: "mbox_loss" type: "MultiBoxLoss" multibox_loss_param {{ num_classes: 3 '
            'neg_pos_ratio: inf mining_type: {} }}')
    layer_from_text(text.format("HARD_EXAMPLE"), [(2, 24), (2, 18), (1, 2, 24), (1, 1, 2, 8)])
    with pytest.raises(ValueError, match=r"layer 'mbox_loss': neg_pos_ratio must be finite"):
        layer_from_text(text.format("MAX_NEGATIVE"), [(2, 24), (2, 18), (1, 2, 24), (1, 1, 2, 8)])


# ---- std::sort ties -------------------------------------------------------------------

SORT_CPP = r"""
#include <algorithm>
#include <cstdio>
#include <utility>
#include <vector>
bool desc(const std::pair<float, int>& a, const std::pair<float, int>& b) { return a.first > b.first; }
int main() {
  int n;
  while (scanf("%d", &n) == 1) {
    std::vector<std::pair<float, int> > v;
    for (int i = 0; i < n; ++i) { float f; scanf("%f", &f); v.push_back(std::make_pair(f, i)); }
    std::sort(v.begin(), v.end(), desc);
    for (int i = 0; i < n; ++i) printf("%d ", v[i].second);
    printf("\n");
  }
}
"""


@pytest.fixture(scope="module")
def std_sort(tmp_path_factory):
    """A function giving g++'s std::sort order (SortScorePairDescend) of float lists."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed")
    folder = tmp_path_factory.mktemp("sort")
    (folder / "sort.cpp").write_text(SORT_CPP)
    subprocess.run([compiler, "-O1", "-o", str(folder / "sort"), str(folder / "sort.cpp")], check=True)

    def run(lists):
        text = "".join(f"{len(v)} " + " ".join(f"{x:.9g}" for x in v) + "\n" for v in lists)
        out = subprocess.run([str(folder / "sort")], input=text, capture_output=True, text=True,
                             check=True).stdout.splitlines()
        return [[int(x) for x in line.split()] for line in out]
    return run


def test_sort_order_with_ties_without_a_compiler():
    """Ties across an introsort partition (20 values, above the 16 left to insertion sort),
    in the order libstdc++'s std::sort left them when built with g++ 12 (Debian 12); the
    test below compares many more lists with g++ itself where it is installed."""
    keys = [1, 0, 1, 1, 0, 2, 1, 0, 0, 1, 2, 1, 0, 1, 1, 0, 2, 0, 1, 1]
    assert std_sort_order(keys) == [16, 5, 10, 19, 0, 18, 14, 13, 11, 9, 6, 3, 2, 8, 7, 12, 4, 15, 17, 1]
    assert std_sort_order([1] * 20) == [10, 19, 18, 17, 16, 15, 14, 13, 12, 11, 0, 9, 8, 7, 6, 5, 4, 3, 2, 1]


def test_sort_order_with_ties_is_libstdcxx(std_sort):
    rng = np.random.default_rng(0)
    lists = [rng.integers(0, k, n).astype(F) for n in (0, 1, 2, 16, 17, 40, 300, 3000) for k in (1, 2, 7)]
    lists.append(np.zeros(8732, F))
    assert [std_sort_order(v) for v in lists] == std_sort(lists)


def test_tied_negatives_are_the_ones_std_sort_keeps(std_sort):
    """Equal confidences give every unmatched prior the same loss: the negatives are the
    first ones the fork's std::sort leaves, not the lowest indices."""
    p = dict(DEFAULTS)
    loc, _, prior, label = make_case(3, p, num=2, images_without_gt=())
    conf = np.zeros((2, prior.shape[2] // 4 * p["num_classes"]), F)
    _, _, dconf = run_layer(p, loc, conf, prior, label)
    _, _, _, matches, _ = multibox_loss(loc, conf, prior, label, dict(p, mining=False))
    ties = 0
    for i in range(2):
        indices = matches[i][-1]
        eligible = [m for m, g in enumerate(indices) if g == -1]  # every overlap < 0.5 here
        num_sel = min(3 * sum(g > -1 for g in indices), len(eligible))
        order = std_sort([np.zeros(len(eligible), F)])[0]
        want = sorted(eligible[k] for k in order[:num_sel])
        rows = np.flatnonzero(np.abs(dconf[i].reshape(-1, p["num_classes"])).sum(1)).tolist()
        got = sorted(set(rows) - {m for m, g in enumerate(indices) if g > -1})
        assert got == want
        ties += want != eligible[:num_sel]
    assert ties, "std::sort kept the lowest indices: the case does not tell the orders apart"


# ---- a tiny SSD training net ----------------------------------------------------------

def ssd_head(feature, min_size, max_size):
    """SSD's heads on one feature map: loc (4 priors x 4) and conf (4 priors x 3 classes)
    convolutions, each permuted to N, H, W, C and flattened; its PriorBox."""
    text = f"""
layer {{ name: "{feature}_priorbox" type: "PriorBox" bottom: "{feature}" bottom: "data"
  top: "{feature}_priorbox" prior_box_param {{ min_size: {min_size} max_size: {max_size}
    aspect_ratio: 2 flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }} }}"""
    for head, outputs in (("loc", 16), ("conf", 12)):
        name = f"{feature}_{head}"
        text += f"""
layer {{ name: "{name}" type: "Convolution" bottom: "{feature}" top: "{name}"
  convolution_param {{ num_output: {outputs} kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "{name}_perm" type: "Permute" bottom: "{name}" top: "{name}_perm"
  permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{name}_flat" type: "Flatten" bottom: "{name}_perm" top: "{name}_flat" }}"""
    return text


SSD_NET = """
name: "tiny_ssd"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 32 dim: 32 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
""" + ssd_head("conv2", 8, 16) + ssd_head("conv3", 16, 28) + """
layer { name: "mbox_loc" type: "Concat" bottom: "conv2_loc_flat" bottom: "conv3_loc_flat"
  top: "mbox_loc" }
layer { name: "mbox_conf" type: "Concat" bottom: "conv2_conf_flat" bottom: "conv3_conf_flat"
  top: "mbox_conf" }
layer { name: "mbox_priorbox" type: "Concat" bottom: "conv2_priorbox" bottom: "conv3_priorbox"
  top: "mbox_priorbox" concat_param { axis: 2 } }
layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "mbox_loc" bottom: "mbox_conf"
  bottom: "mbox_priorbox" bottom: "label" top: "mbox_loss"
  propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  loss_param { normalization: VALID }
  multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1 num_classes: 3
    share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true
    background_label_id: 0 use_difficult_gt: true neg_pos_ratio: 3 neg_overlap: 0.5
    code_type: CENTER_SIZE ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE } }
"""


def test_tiny_ssd_net_trains(tmp_path):
    (tmp_path / "ssd.prototxt").write_text(SSD_NET)
    net = Net(tmp_path / "ssd.prototxt", phase="TRAIN")
    assert net.blob_shapes["mbox_loss"] == ()
    assert net.blob_shapes["mbox_priorbox"] == (1, 2, (8 * 8 + 4 * 4) * 4 * 4)
    gen = torch.Generator().manual_seed(0)
    data = torch.rand(2, 3, 32, 32, generator=gen)
    data[0, 0, 4:20, 6:18] += 1.0    # a bright object in each image
    data[1, 2, 12:30, 10:30] += 1.0
    label = torch.tensor([[0, 1, 0, 6 / 32, 4 / 32, 18 / 32, 20 / 32, 0],
                          [1, 2, 0, 10 / 32, 12 / 32, 30 / 32, 30 / 32, 0],
                          [1, 1, 1, 0.1, 0.6, 0.3, 0.9, 1],
                          [-1, -1, -1, -1, -1, -1, -1, -1]]).reshape(1, 1, 4, 8)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(50):
        loss = net.objective(net({"data": data, "label": label}))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.3 * losses[0], losses


# ---- errors --------------------------------------------------------------------------

def loss_net(tmp_path, param="num_classes: 3", label_shape=(1, 1, 2, 8), priors=6):
    text = f"""
layer {{ name: "loc" type: "Input" top: "loc" input_param {{ shape {{ dim: 2 dim: {priors * 4} }} }} }}
layer {{ name: "conf" type: "Input" top: "conf" input_param {{ shape {{ dim: 2 dim: {priors * 3} }} }} }}
layer {{ name: "prior" type: "Input" top: "prior"
  input_param {{ shape {{ dim: 1 dim: 2 dim: {priors * 4} }} }} }}
layer {{ name: "label" type: "Input" top: "label"
  input_param {{ shape {{ {" ".join(f"dim: {d}" for d in label_shape)} }} }} }}
layer {{ name: "mbox_loss" type: "MultiBoxLoss" bottom: "loc" bottom: "conf" bottom: "prior"
  bottom: "label" top: "loss" multibox_loss_param {{ {param} }} }}
"""
    (tmp_path / "net.prototxt").write_text(text)
    return Net(tmp_path / "net.prototxt", phase="TRAIN")


def loss_inputs(rows, priors=6):
    boxes = np.array([[0.1 * k, 0.1 * k, 0.1 * k + 0.3, 0.1 * k + 0.3] for k in range(priors)])
    prior = np.stack([boxes.reshape(-1), np.tile([0.1, 0.1, 0.2, 0.2], priors)])[None]
    return {"loc": torch.zeros(2, priors * 4), "conf": torch.zeros(2, priors * 3),
            "prior": torch.tensor(prior, dtype=torch.float32),
            "label": torch.tensor(rows, dtype=torch.float32).reshape(1, 1, -1, 8)}


@pytest.mark.parametrize("label_shape", [(1, 1, 2, 7), (2, 8), (1, 2, 2, 8)])
def test_a_label_of_the_wrong_shape_is_refused(tmp_path, label_shape):
    with pytest.raises(ValueError,
                       match=r"layer 'mbox_loss'.*label bottom must have shape \(1, 1, boxes, 8\)"):
        loss_net(tmp_path, label_shape=label_shape)


@pytest.mark.parametrize("param, message", [
    ("", r"num_classes is required"),
    ("num_classes: 0", r"num_classes must be at least 1"),
    ("num_classes: 4", r"conf bottom \[2, 18\] needs 24 channels"),
    ("num_classes: 3 mining_type: HARD_EXAMPLE sample_size: 0",
     r"sample_size must be positive for mining_type HARD_EXAMPLE, got 0"),
    ("num_classes: 3 mining_type: HARD_EXAMPLE sample_size: -3 nms_param { top_k: 5 }",
     r"sample_size must be positive for mining_type HARD_EXAMPLE, got -3"),
    ("num_classes: 3 do_neg_mining: false", r"do_neg_mining: false contradicts mining_type MAX_NEGATIVE"),
    ("num_classes: 3 background_label_id: 3", r"background_label_id 3 must be within \[0, 3\)"),
    ("num_classes: 3 share_location: false", r"loc bottom \[2, 24\] needs 72 channels"),
])
def test_bad_parameters_are_refused_naming_the_layer(tmp_path, param, message):
    with pytest.raises(ValueError, match=r"layer 'mbox_loss'.*" + message):
        loss_net(tmp_path, param=param)


@pytest.mark.parametrize("row, error, message", [
    ([2, 1, 0, 0.1, 0.1, 0.4, 0.4, 0], BlobValueError, r"row 0 has item_id 2, outside the batch of 2"),
    ([-3, 1, 0, 0.1, 0.1, 0.4, 0.4, 0], BlobValueError, r"row 0 has item_id -3"),
    ([1, 0, 0, 0.1, 0.1, 0.4, 0.4, 0], BlobValueError, r"row 0 has the background label 0"),
    ([1, 3, 0, 0.1, 0.1, 0.4, 0.4, 0], LabelError, r"row 0 has label 3, outside \[0, 3\)"),
])
def test_bad_ground_truth_is_refused_naming_the_layer(tmp_path, row, error, message):
    net = loss_net(tmp_path, label_shape=(1, 1, 2, 8))
    with pytest.raises(error, match=r"layer 'mbox_loss': ground truth " + message):
        net(loss_inputs([row, [0, 1, 0, 0.1, 0.1, 0.4, 0.4, 0]]))


def test_an_item_id_minus_one_row_is_skipped(tmp_path):
    net = loss_net(tmp_path, label_shape=(1, 1, 2, 8))
    blobs = net(loss_inputs([[-1] * 8, [1, 2, 0, 0.1, 0.1, 0.4, 0.4, 0]]))
    assert blobs["loss"].item() > 0
