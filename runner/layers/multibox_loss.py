"""SSD's MultiBoxLoss (weiliu89/caffe multibox_loss_layer.cpp and util/bbox_util.cpp).

Each image's ground truth boxes are matched to the priors, then mined: MAX_NEGATIVE picks
hard negatives among the unmatched priors by their confidence loss; HARD_EXAMPLE (online
hard example mining) keeps the sample_size priors of largest location plus confidence
loss, matched or not, unmatching the positives it leaves out; either optionally after the
fork's NMS over the losses (nms_param). The loss is then smooth L1 (or L2) on the matched
location predictions plus softmax (or logistic) loss on the matched and picked
confidences, each over the fork's normaliser. Matching and mining run in numpy float32
on the CPU, as the fork's Forward_cpu; the losses are torch ops on the entries picked, so
autograd gives the fork's Backward_cpu.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from runner.layers.base import Layer, register
from runner.layers.bbox import (box_size, cross_boundary, decode_boxes, encode_boxes, jaccard,
                                nms_fast)
from runner.layers.common import (FLT_MIN, BlobValueError, LabelError, clip_value_keep_grad,
                                  loss_normalizer, normalization_mode)
from runner.layers.cxx_sort import std_sort_order
from runner.proto import caffe_pb2
from runner.shapes_detection import prediction_counts

_F32 = np.float32
MB = caffe_pb2.MultiBoxLossParameter
CodeType = caffe_pb2.PriorBoxParameter


def _as_f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _int32(value: int) -> int:
    """A uint32 proto field as the fork's int member holds it."""
    return value - 2**32 if value >= 2**31 else value


# ---- matching ------------------------------------------------------------------------

def match_boxes(gt_boxes: np.ndarray, boxes: np.ndarray, match_type: int,
                overlap_threshold: float, ignore_cross_boundary: bool):
    """MatchBBox: (gt position or -1 per box, or -2 for a box ignored as crossing the image
    border; the overlap with that gt, else the box's best overlap above 1e-6, else 0).

    BIPARTITE takes the best remaining (box, gt) pair until every gt is used, the first
    such pair in (box, gt) order on ties; PER_PREDICTION then gives each box left its best
    gt overlapping by at least the threshold."""
    num_boxes, num_gt = len(boxes), len(gt_boxes)
    indices = np.full(num_boxes, -1, np.int64)
    overlaps = np.zeros(num_boxes, _F32)
    if num_gt == 0:
        return indices, overlaps
    iou = jaccard(boxes, box_size(boxes), gt_boxes, box_size(gt_boxes))     # (boxes, gt)
    present = iou.astype(np.float64) > 1e-6
    if ignore_cross_boundary:
        crossing = cross_boundary(boxes)
        indices[crossing] = -2
        present[crossing] = False
    overlaps = np.where(present, iou, _F32(0)).max(axis=1)
    pairs = np.where(present, iou, _F32(-1))
    for _ in range(num_gt):
        flat = int(pairs.argmax())
        if pairs.flat[flat] < 0:
            break
        box, gt = divmod(flat, num_gt)
        indices[box], overlaps[box] = gt, iou[box, gt]
        pairs[box, :] = -1
        pairs[:, gt] = -1
    if match_type == MB.PER_PREDICTION:
        left = (indices == -1) & present.any(axis=1)
        candidates = np.where(present & (iou >= _F32(overlap_threshold)), iou, _F32(-1))
        best = candidates.argmax(axis=1)
        take = left & (candidates.max(axis=1) >= 0)
        indices[take] = best[take]
        overlaps[take] = iou[take, best[take]]
    return indices, overlaps


# ---- mining --------------------------------------------------------------------------

def prior_conf_loss(conf: np.ndarray, labels: np.ndarray, conf_loss_type: int) -> np.ndarray:
    """ComputeConfLoss: the float loss of each (..., C) row against its label (..., ): the
    matched gt's label, else the background; summed in the fork's order (softmax in float,
    log in double)."""
    if conf_loss_type == MB.SOFTMAX:
        shifted = conf - conf.max(axis=-1, keepdims=True)
        exps = np.exp(shifted.astype(np.float64)).astype(_F32)   # std::exp of a float
        total = np.zeros(conf.shape[:-1], _F32)
        for c in range(conf.shape[-1]):
            total = total + exps[..., c]
        prob = np.take_along_axis(exps, labels[..., None], axis=-1)[..., 0] / total
        return (-np.log(np.maximum(prob, _F32(FLT_MIN)).astype(np.float64))).astype(_F32)
    loss = np.zeros(conf.shape[:-1], _F32)
    for c in range(conf.shape[-1]):
        x = conf[..., c]
        positive = (x >= 0).astype(_F32)
        term = x * ((labels == c).astype(_F32) - positive)
        log_term = np.log(1 + np.exp((x - 2 * x * positive).astype(np.float64)))
        loss = (loss - (term - log_term)).astype(_F32)
    return loss


def prior_loc_loss(diff: np.ndarray, loc_loss_type: int) -> np.ndarray:
    """ComputeLocLoss: per row of (rows, 4) float differences prediction - target, the sum
    over the 4 coordinates of 0.5 d^2 (L2; smooth L1 below |d| 1, else |d| - 0.5), each
    term in double added to a float."""
    loss = np.zeros(len(diff), _F32)
    for k in range(4):
        d = diff[:, k].astype(np.float64)
        term = 0.5 * d * d
        if loc_loss_type == MB.SMOOTH_L1:
            term = np.where(np.abs(d) < 1, term, np.abs(d) - 0.5)
        loss = (loss + term).astype(_F32)
    return loss


def nms_by_loss(boxes: np.ndarray, losses: np.ndarray, threshold: float, top_k: int) -> np.ndarray:
    """The plain ApplyNMS MineHardExamples calls (no score threshold, no eta): positions by
    loss, largest first (stable on ties), cut to top_k (-1: all; the fork's unset top_k
    is 0: none); a box smaller than 1e-5 is dropped, any other kept unless it overlaps a
    kept one by more than the threshold. Positions kept, in that order."""
    order = np.argsort(-losses, kind="stable")
    if top_k > -1:
        order = order[:top_k]
    areas = box_size(boxes)
    order = order[areas[order].astype(np.float64) >= 1e-5]
    kept = nms_fast(boxes[order], areas[order], losses[order], -np.inf, threshold, 1.0, -1)
    return order[np.asarray(kept, np.int64)]


def top_positions(values: np.ndarray, count: int) -> np.ndarray:
    """Positions of the `count` largest values, ascending, as the fork's std::sort then
    the first `count` picks them; std_sort_order settles a tie across the cut."""
    if count <= 0:
        return np.zeros(0, np.int64)
    if count >= len(values):
        return np.arange(len(values))
    order = np.argsort(-values, kind="stable")
    if values[order[count - 1]] == values[order[count]]:
        order = np.array(std_sort_order(values))
    return np.sort(order[:count])


# ---- the layer -----------------------------------------------------------------------

@register("MultiBoxLoss")
class MultiBoxLoss(Layer):
    """Bottoms: loc (N, priors * loc classes * 4), conf (N, priors * classes), the priors
    (1, 2, priors * 4) of PriorBox, and the ground truth (1, 1, boxes, 8) with rows
    [item_id, label, instance_id, xmin, ymin, xmax, ymax, difficult] (item_id -1: none).
    Top: loc_weight * loc loss / normaliser + conf loss / normaliser, the normaliser being
    loss_param's normalization (default VALID: the number of matched priors, after
    HARD_EXAMPLE mining has unmatched those it leaves out) at least 1. A term whose bottom
    has propagate_down: false is left out, as in the fork. Only the matched location
    predictions and the matched and mined confidences get a gradient."""

    is_loss = True
    bottom_count, top_count = (4, 4), (1, 1)
    force_backward_blocked = (2, 3)   # the priors and the ground truth

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p, name = lp.multibox_loss_param, lp.name
        self.num_classes = p.num_classes
        self.background = _int32(p.background_label_id)
        self.share_location = p.share_location
        self.num_priors, self.loc_classes = prediction_counts(p.num_classes, p.share_location,
                                                              bottom_shapes)
        self.mining = p.mining_type != MB.NONE
        if p.HasField("do_neg_mining") and p.do_neg_mining != self.mining:
            raise ValueError(f"layer '{name}': do_neg_mining: {str(p.do_neg_mining).lower()} "
                             f"contradicts mining_type {MB.MiningType.Name(p.mining_type)} (the "
                             f"fork checks they agree); do_neg_mining is deprecated, set mining_type")
        self.hard = p.mining_type == MB.HARD_EXAMPLE
        if self.hard and p.sample_size <= 0:
            raise ValueError(f"layer '{name}': sample_size must be positive for mining_type "
                             f"HARD_EXAMPLE, got {p.sample_size} (the fork checks it)")
        if self.mining and not p.share_location:
            raise ValueError(f"layer '{name}': negative mining needs share_location: true "
                             f"(as in the fork); set mining_type: NONE otherwise")
        if p.conf_loss_type == MB.SOFTMAX and not 0 <= self.background < p.num_classes:
            raise ValueError(f"layer '{name}': background_label_id {self.background} must be "
                             f"within [0, {p.num_classes}) for the SOFTMAX confidence loss")
        if (p.conf_loss_type == MB.LOGISTIC and self.mining
                and not self.background < p.num_classes):
            raise ValueError(f"layer '{name}': background_label_id {self.background} must be "
                             f"below num_classes {p.num_classes} for negative mining")
        if p.map_object_to_agnostic and p.num_classes != (2 if self.background >= 0 else 1):
            raise ValueError(f"layer '{name}': map_object_to_agnostic needs num_classes 2 "
                             f"with a background class (1 without), got {p.num_classes}")
        if p.map_object_to_agnostic and self.background + 1 >= p.num_classes:
            raise ValueError(f"layer '{name}': map_object_to_agnostic puts every object in "
                             f"class background_label_id + 1 = {self.background + 1}, which "
                             f"must be below num_classes {p.num_classes}")
        if p.mining_type == MB.MAX_NEGATIVE and not math.isfinite(p.neg_pos_ratio):
            raise ValueError(f"layer '{name}': neg_pos_ratio must be finite, got {p.neg_pos_ratio}")
        if (self.mining and p.HasField("nms_param") and p.nms_param.nms_threshold > 0
                and p.nms_param.top_k == 0):
            kept = "no negative" if p.mining_type == MB.MAX_NEGATIVE else \
                "no prior, matched or not, so the loss is 0"
            warnings.warn(f"layer '{name}': nms_param has nms_threshold {p.nms_param.nms_threshold:g} "
                          f"and top_k 0 (its default), with which the fork's mining keeps {kept}; "
                          f"set top_k (-1: no limit)")
        self.p = p
        self.mode = normalization_mode(lp, caffe_pb2.LossParameter.VALID)
        down = list(lp.propagate_down) or [True, True]
        self.with_loc, self.with_conf = down[0], down[1]

    # ---- reading the bottoms ---------------------------------------------------------

    def _ground_truth(self, label: torch.Tensor, num: int) -> dict[int, tuple]:
        """GetGroundTruth: {item: (boxes (G, 4), labels (G,))} in row order, difficult boxes
        left out unless use_difficult_gt; item_ids outside the batch and labels the
        confidence loss cannot index are refused."""
        rows = _as_f32(label).reshape(-1, 8)
        items, labels = np.trunc(rows[:, 0]), np.trunc(rows[:, 1])   # static_cast<int>
        kept = items != -1
        bad = kept & ~((items >= 0) & (items < num))
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise BlobValueError(f"layer '{self.name}': ground truth row {r} has item_id "
                                 f"{rows[r, 0]:g}, outside the batch of {num} images (-1 marks "
                                 f"no box)")
        bad = kept & (labels == self.background)
        if bad.any():
            raise BlobValueError(f"layer '{self.name}': ground truth row {int(np.flatnonzero(bad)[0])} "
                                 f"has the background label {self.background} (the fork stops: "
                                 f"'Found background label in the dataset.')")
        used = kept & (self.p.use_difficult_gt | (rows[:, 7] == 0))
        if not (self.p.map_object_to_agnostic and not self.mining):
            bad = used & ~((labels >= 0) & (labels < self.num_classes))
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise LabelError(f"layer '{self.name}': ground truth row {r} has label "
                                 f"{rows[r, 1]:g}, outside [0, {self.num_classes})")
        gt = {}
        for item in np.unique(items[used]).astype(int):
            which = used & (items == item)
            gt[int(item)] = (rows[which, 3:7], labels[which].astype(np.int64))
        return gt

    def _decode(self, priors, variances, loc) -> np.ndarray:
        try:
            return decode_boxes(priors, variances, loc, self.p.code_type,
                                self.p.encode_variance_in_target)
        except ValueError as err:
            raise BlobValueError(f"layer '{self.name}': {err}") from None

    def _find_matches(self, num, gt, priors, variances, loc) -> tuple[list[dict], list[dict]]:
        """FindMatches: per image, {location label: gt position per prior (-1 none, -2
        ignored)} and {location label: overlap per prior}; empty for an image without gt.
        The label is -1 with share_location, else each class but the background. Without
        use_prior_for_matching, each label's decoded predictions are matched to its gt."""
        p = self.p
        labels = [-1] if self.share_location else [c for c in range(self.loc_classes)
                                                    if c != self.background]
        all_indices, all_overlaps = [], []
        for i in range(num):
            indices, overlaps = {}, {}
            boxes, gt_labels = gt.get(i, (None, None))
            if boxes is not None and p.use_prior_for_matching:
                matched, overlap = match_boxes(boxes, priors, p.match_type, p.overlap_threshold,
                                               p.ignore_cross_boundary_bbox)
                for label in labels:
                    same = (matched > -1) & (gt_labels[matched.clip(0)] == label)
                    indices[label] = matched if label == -1 else np.where(same, matched, -1)
                    overlaps[label] = overlap
            elif boxes is not None:
                for label in labels:
                    subset = np.flatnonzero((gt_labels == label) | (label == -1))
                    decoded = self._decode(priors, variances, loc[i, :, max(label, 0)])
                    matched, overlaps[label] = match_boxes(boxes[subset], decoded, p.match_type,
                                                           p.overlap_threshold,
                                                           p.ignore_cross_boundary_bbox)
                    found = matched > -1
                    matched[found] = subset[matched[found]]
                    indices[label] = matched
            all_indices.append(indices)
            all_overlaps.append(overlaps)
        return all_indices, all_overlaps

    def _mine(self, conf, loc_np, matches, overlaps, gt, priors, variances) -> list[np.ndarray]:
        """MineHardExamples: per image, the negatives picked, ascending. Each prior's loss is
        its confidence loss against its matched label (else the background), plus with
        HARD_EXAMPLE its location loss while matched. MAX_NEGATIVE takes num_pos *
        neg_pos_ratio of the unmatched priors with overlap below neg_overlap; HARD_EXAMPLE
        takes sample_size of all priors and sets the matches it leaves out to -1 (in
        `matches`). The pick is by largest loss (std::sort's order on ties) or, with
        nms_param's nms_threshold above 0, the first of ApplyNMS over the priors' boxes (or
        decoded predictions, unless use_prior_for_nms) scored by the loss."""
        p = self.p
        labels = np.full(conf.shape[:2], self.background, np.int64)
        for i, indices in enumerate(matches):
            for _, matched in sorted(indices.items(), reverse=True):   # the first label wins
                js = np.flatnonzero(matched > -1)
                labels[i, js] = gt[i][1][matched[js]]
        losses = prior_conf_loss(conf, labels, p.conf_loss_type)
        if self.hard:
            losses = losses + self._mining_loc_loss(loc_np, matches, gt, priors, variances)
        use_nms = p.HasField("nms_param") and p.nms_param.nms_threshold > 0
        negatives = []
        for i, indices in enumerate(matches):
            chosen = []
            for label, matched in sorted(indices.items()):
                if self.hard:
                    eligible = np.arange(len(matched))
                    wanted = p.sample_size
                else:
                    eligible = np.flatnonzero((matched == -1)
                                              & (overlaps[i][label] < _F32(p.neg_overlap)))
                    wanted = int(_F32(np.count_nonzero(matched > -1)) * _F32(p.neg_pos_ratio))
                count = min(wanted, len(eligible))
                if use_nms:
                    boxes = priors if p.use_prior_for_nms else \
                        self._decode(priors, variances, loc_np[i, :, max(label, 0)])
                    kept = nms_by_loss(boxes[eligible], losses[i, eligible],
                                       p.nms_param.nms_threshold, p.nms_param.top_k)
                    picked = eligible[np.sort(kept[:max(count, 0)])]
                else:
                    picked = eligible[top_positions(losses[i, eligible], count)]
                chosen.append(picked[matched[picked] == -1])
                if self.hard:
                    left_out = np.ones(len(matched), bool)
                    left_out[picked] = False
                    matched[left_out & (matched > -1)] = -1
            negatives.append(np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64))
        return negatives

    # ---- the two losses --------------------------------------------------------------

    def _loc_rows(self, matches, gt, priors, variances):
        """EncodeLocPrediction's rows: (image, prior, location slot) of each matched
        prediction in the fork's order, and its encoded gt (not yet divided by the variance
        under encode_variance_in_target)."""
        p = self.p
        image, prior, slot, boxes = [], [], [], []
        for i, indices in enumerate(matches):
            for label, matched in sorted(indices.items()):
                js = np.flatnonzero(matched > -1)
                image += [i] * len(js)
                prior += js.tolist()
                slot += [0 if label == -1 else label] * len(js)
                boxes.append(gt[i][0][matched[js]])
        image, prior, slot = (np.array(v, np.int64) for v in (image, prior, slot))
        if (p.encode_variance_in_target or p.code_type != CodeType.CENTER_SIZE) \
                and not (variances[prior] > 0).all():
            raise BlobValueError(f"layer '{self.name}': a matched prior has a variance that is not "
                                 f"positive, which this code_type divides by")
        target = np.zeros((0, 4), _F32) if not len(image) else encode_boxes(
            priors[prior], variances[prior], np.concatenate(boxes), p.code_type,
            p.encode_variance_in_target)
        return image, prior, slot, target

    def _outside(self, priors, variances, loc_np, image, prior, slot) -> np.ndarray:
        """bp_inside: which corners of each matched box (the prior, or the decoded
        prediction when matching on those) lie outside [0, 1]."""
        box = priors[prior] if self.p.use_prior_for_matching else \
            self._decode(priors[prior], variances[prior], loc_np[image, prior, slot])
        return (box < 0) | (box > 1)

    def _mining_loc_loss(self, loc_np, matches, gt, priors, variances) -> np.ndarray:
        """ComputeLocLoss on EncodeLocPrediction's float rows: (images, priors), 0 where a
        prior is not matched."""
        p = self.p
        image, prior, slot, target = self._loc_rows(matches, gt, priors, variances)
        pred = loc_np[image, prior, slot]
        if p.bp_inside:
            pred = np.where(self._outside(priors, variances, loc_np, image, prior, slot),
                            target, pred)
        if p.encode_variance_in_target:
            pred, target = pred / variances[prior], target / variances[prior]
        losses = np.zeros(loc_np.shape[:2], _F32)
        losses[image, prior] = prior_loc_loss(pred - target, p.loc_loss_type)
        return losses

    def _loc_loss(self, loc, loc_np, matches, gt, priors, variances) -> torch.Tensor:
        """EncodeLocPrediction then SmoothL1Loss (or EuclideanLoss) over one row of all
        matched predictions. With encode_variance_in_target both sides are divided by the
        variance and the fork copies the diff back undivided: so does this gradient."""
        p = self.p
        image, prior, slot, target = self._loc_rows(matches, gt, priors, variances)
        device, dtype = loc.device, loc.dtype
        at = [torch.as_tensor(x, device=device) for x in (image, prior, slot)]
        pred = loc.reshape(len(loc), self.num_priors, self.loc_classes, 4)[at[0], at[1], at[2]]
        if p.bp_inside:
            # a corner of the matched box outside the image gets the target: no gradient
            outside = torch.as_tensor(self._outside(priors, variances, loc_np, image, prior, slot),
                                      device=device)
            pred = torch.where(outside, torch.as_tensor(target, device=device, dtype=dtype), pred)
        if p.encode_variance_in_target:
            target = target / variances[prior]
            scale = torch.as_tensor(variances[prior], device=device, dtype=dtype)
            pred = (pred / scale).detach() + (pred - pred.detach())
        target = torch.as_tensor(target, device=device, dtype=dtype)
        if p.loc_loss_type == MB.SMOOTH_L1:
            return F.smooth_l1_loss(pred, target, reduction="sum", beta=1.0)
        diff = pred - target
        return (diff * diff).sum() / 2

    def _conf_loss(self, conf, matches, negatives, gt) -> torch.Tensor | None:
        """EncodeConfPrediction then SoftmaxWithLoss (normalization NONE) or
        SigmoidCrossEntropyLoss: with mining over the matched priors then the negatives of
        each image, else over every prior of the batch; None where no row counts."""
        p, n, c, num_priors = self.p, len(conf), self.num_classes, self.num_priors
        image, prior, labels = [], [], []   # the matched priors, in the fork's order
        for i, indices in enumerate(matches):
            for _, matched in sorted(indices.items()):
                js = np.flatnonzero(matched > -1)
                image += [i] * len(js)
                prior += js.tolist()
                labels += ([self.background + 1] * len(js) if p.map_object_to_agnostic
                           else gt[i][1][matched[js]].tolist())
        image, prior, labels = (np.array(v, np.int64) for v in (image, prior, labels))
        if self.mining:
            neg_image = np.array([i for i, negs in enumerate(negatives) for _ in negs], np.int64)
            rows_image = np.concatenate([image, neg_image])
            rows_prior = np.concatenate([prior] + negatives).astype(np.int64)
            if not len(rows_image):
                return None
            at = [torch.as_tensor(v, device=conf.device) for v in (rows_image, rows_prior)]
            x = conf.reshape(n, num_priors, c)[at[0], at[1]]
            positive_rows = np.arange(len(image))
        else:
            x = conf.reshape(n * num_priors, c)
            positive_rows = image * num_priors + prior
        if p.conf_loss_type == MB.SOFTMAX:
            target = np.full(len(x), self.background, np.int64)
            # a prior matched for several labels keeps the last label written, as in the fork
            _, last = np.unique(positive_rows[::-1], return_index=True)
            keep = len(positive_rows) - 1 - last
            target[positive_rows[keep]] = labels[keep]
            index = torch.as_tensor(target, device=x.device).unsqueeze(1)
            picked = F.log_softmax(x, dim=1).gather(1, index).squeeze(1)
            return 0 - clip_value_keep_grad(picked, math.log(FLT_MIN)).sum()
        # LOGISTIC: every target starts as the background id (0 or 1 only where it is 0)
        target = np.full(x.numel(), self.background, _F32)
        if self.mining:
            target[positive_rows * c + labels] = 1
            if 0 <= self.background < c:
                target[np.arange(len(image), len(x)) * c + self.background] = 1
        else:
            # the fork's conf_gt advances by priors, not priors * classes, per image
            target[image * num_priors + prior * c + labels] = 1
        t = torch.as_tensor(target, device=x.device, dtype=x.dtype).reshape(x.shape)
        positive = (x >= 0).to(x.dtype).detach()
        return 0 - (x * (t - positive) - torch.log1p(torch.exp(x - 2 * x * positive))).sum()

    def forward(self, loc, conf, prior, label):
        num, p = loc.shape[0], self.p
        # Reshape: the prior count of these bottoms (a data layer's image size may change)
        try:
            self.num_priors, _ = prediction_counts(
                self.num_classes, self.share_location,
                [tuple(loc.shape), tuple(conf.shape), tuple(prior.shape)])
        except ValueError as err:
            raise ValueError(f"layer '{self.name}': {err}") from None
        boxes = _as_f32(prior).reshape(-1, 2, self.num_priors, 4)[0]
        priors, variances = boxes[0], boxes[1]
        gt = self._ground_truth(label, num)
        loc_np = None   # the predictions as numbers are needed only to match or mine on them
        if not p.use_prior_for_matching or self.hard or (
                self.mining and p.HasField("nms_param") and not p.use_prior_for_nms):
            loc_np = _as_f32(loc).reshape(num, self.num_priors, self.loc_classes, 4)
        matches, overlaps = self._find_matches(num, gt, priors, variances, loc_np)
        negatives = None
        if self.mining:
            conf_np = _as_f32(conf).reshape(num, self.num_priors, self.num_classes)
            negatives = self._mine(conf_np, loc_np, matches, overlaps, gt, priors, variances)
        # counted after mining: HARD_EXAMPLE unmatches the positives it leaves out
        num_matches = sum(int(np.count_nonzero(m > -1)) for per in matches for m in per.values())
        normalizer = float(loss_normalizer(self.mode, num, self.num_priors,
                                           torch.tensor(float(num_matches))))
        # 0 with a (zero) gradient to both predictions when no term counts
        loss = loc.reshape(-1)[:0].sum() + conf.reshape(-1)[:0].sum()
        if self.with_loc and num_matches:
            loc_loss = self._loc_loss(loc, loc_np, matches, gt, priors, variances)
            loss = loss + p.loc_weight * loc_loss / normalizer
        if self.with_conf:
            conf_loss = self._conf_loss(conf, matches, negatives, gt)
            if conf_loss is not None:
                loss = loss + conf_loss / normalizer
        return (loss,)
