"""The SSD fork's detection test (weiliu89/caffe Solver::TestDetection, eval_type
"detection"): every test net output is a DetectionEvaluate top; its rows are gathered over
the test_iter passes and each output scores the mean over classes of ComputeAP."""
from __future__ import annotations

import numpy as np

from runner.layers.detection_evaluate import compute_ap


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
