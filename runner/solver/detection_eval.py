"""The SSD fork's detection test (weiliu89/caffe Solver::TestDetection, eval_type
"detection"): every test net output is a DetectionEvaluate top; its rows are gathered over
the test_iter passes and each output scores the mean over classes of ComputeAP
(util/bbox_util.cpp)."""
from __future__ import annotations

import numpy as np

_F32 = np.float32
_EPS = float(np.float32(1e-6))  # ComputeAP's `const float eps`
AP_VERSIONS = ("11point", "MaxIntegral", "Integral")


class DetectionTally:
    """Per output index: {label: positives} from the [-1, label, n, -1, -1] rows and
    {label: [(score, tp)]}, {label: [(score, fp)]} from the others (rows with tp = fp = 0,
    detections of difficult gt not evaluated, are skipped), in the order they come."""

    def __init__(self, names: list[str]):
        self.names = names
        self.num_pos: dict[int, dict[int, int]] = {}
        self.true_pos: dict[int, dict[int, list]] = {}
        self.false_pos: dict[int, dict[int, list]] = {}

    def add(self, blobs: dict) -> None:
        for j, name in enumerate(self.names):
            blob = blobs[name]
            if blob.dim() != 4 or blob.shape[3] != 5:
                raise ValueError(f"eval_type \"detection\": test net output '{name}' has shape "
                                 f"{list(blob.shape)}; every output must be a DetectionEvaluate "
                                 f"top (rows of 5), as Solver::TestDetection checks")
            for row in blob.detach().float().reshape(-1, 5).cpu().numpy():
                item, label = int(row[0]), int(row[1])
                if item == -1:
                    counts = self.num_pos.setdefault(j, {})
                    counts[label] = counts.get(label, 0) + int(row[2])
                    continue
                tp, fp = int(row[3]), int(row[4])
                if tp == 0 and fp == 0:
                    continue
                self.true_pos.setdefault(j, {}).setdefault(label, []).append((float(row[2]), tp))
                self.false_pos.setdefault(j, {}).setdefault(label, []).append((float(row[2]), fp))

    def mean_aps(self, ap_version: str) -> list[tuple[int, str, np.float32, dict]]:
        """(output index, name, mAP, {label: AP}) for outputs 0 .. n-1, n being the number
        of outputs with a detection row (the fork's loop bound: none when no output has one).
        A class without detections has AP None and counts in the mean as 0, as in the fork."""
        results = []
        for i in range(len(self.true_pos)):
            if i not in self.true_pos:
                raise ValueError(f"Missing output_blob true_pos: {i} (test net output "
                                 f"'{self.names[i]}' had no detection row; the fork stops here)")
            if i not in self.num_pos:
                raise ValueError(f"Missing output_blob num_pos: {i} (test net output "
                                 f"'{self.names[i]}')")
            aps = {}
            total = np.float32(0)
            for label, positives in sorted(self.num_pos[i].items()):
                if label not in self.true_pos[i]:
                    aps[label] = None
                    continue
                aps[label] = compute_ap(self.true_pos[i][label], positives,
                                        self.false_pos[i][label], ap_version)
                total = np.float32(total + aps[label])
            with np.errstate(divide="ignore", invalid="ignore"):
                results.append((i, self.names[i], total / np.float32(len(self.num_pos[i])), aps))
        return results


def _cumsum(pairs: list[tuple[float, int]]) -> np.ndarray:
    """CumSum: running sums of the flags, best score first (stable on ties)."""
    order = sorted(range(len(pairs)), key=lambda i: -pairs[i][0])
    return np.cumsum([pairs[i][1] for i in order])


def compute_ap(tp: list[tuple[float, int]], num_pos: int, fp: list[tuple[float, int]],
               ap_version: str) -> float:
    """ComputeAP: average precision of (score, flag) true/false positive lists against
    num_pos ground truth boxes, in the fork's float arithmetic (its `fabs` is C's double
    one); 0 without detections or positives."""
    if ap_version not in AP_VERSIONS:
        raise ValueError(f"Unknown ap_version: {ap_version} ({', '.join(AP_VERSIONS)})")
    if len(tp) != len(fp):
        raise ValueError(f"tp must have same size as fp ({len(tp)} vs {len(fp)})")
    for (s_tp, t), (s_fp, f) in zip(tp, fp):
        if abs(_F32(s_tp) - _F32(s_fp)) > _EPS or t != 1 - f:
            raise ValueError(f"tp ({s_tp}, {t}) and fp ({s_fp}, {f}) are not complements")
    ap = _F32(0)
    if not tp or num_pos == 0:
        return ap
    tp_sum, fp_sum = _cumsum(tp), _cumsum(fp)
    if tp_sum[-1] > num_pos:
        raise ValueError(f"{tp_sum[-1]} true positives for {num_pos} ground truth boxes")
    prec = tp_sum.astype(_F32) / (tp_sum + fp_sum).astype(_F32)
    rec = tp_sum.astype(_F32) / _F32(num_pos)
    num = len(tp)
    if ap_version == "11point":
        max_precs = [_F32(0)] * 11
        start = num - 1
        for j in range(10, -1, -1):
            for i in range(start, -1, -1):
                if float(rec[i]) < j / 10.0:
                    start = i
                    if j > 0:
                        max_precs[j - 1] = max_precs[j]
                    break
                max_precs[j] = max(max_precs[j], prec[i])
        for j in range(10, -1, -1):
            ap = _F32(ap + max_precs[j] / _F32(11))
    elif ap_version == "MaxIntegral":
        cur_rec, cur_prec = rec[-1], prec[-1]
        for i in range(num - 2, -1, -1):
            cur_prec = max(prec[i], cur_prec)
            step = abs(float(cur_rec - rec[i]))
            if step > _EPS:
                ap = _F32(float(ap) + float(cur_prec) * step)
            cur_rec = rec[i]
        ap = _F32(ap + cur_rec * cur_prec)
    else:
        prev_rec = _F32(0)
        for i in range(num):
            step = abs(float(rec[i] - prev_rec))
            if step > _EPS:
                ap = _F32(float(ap) + float(prec[i]) * step)
            prev_rec = rec[i]
    return ap
