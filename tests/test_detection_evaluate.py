"""SSD's evaluation path (weiliu89/caffe): DetectionEvaluate against a loop transcription of
DetectionEvaluateLayer::Forward_cpu and OutputBBox (FIT_SMALL_SIZE's scales and
FIT_LARGE_SIZE_AND_PAD's projection included),
ComputeAP against a transcription of bbox_util.cpp's, and a solver with eval_type
"detection" whose logged and recorded mAP is the one its DetectionEvaluate rows give
(Solver::TestDetection)."""
import re

import numpy as np
import pytest
import torch

from runner.layers.cxx_sort import std_sort_order
from runner.layers.detection_evaluate import output_boxes, unpad_boxes
from runner.solver.detection_eval import compute_ap
from runner.solver import SolverConfigError
from runner.solver.caffe_log import cfloat
from runner.solver import command_results

from layer_helpers import layer_from_text
from solver_helpers import make_solver
from test_ssd_training import BODY, LOSS, _dataset

F = np.float32


# ---- transcriptions of the fork -------------------------------------------------------------
def ref_size(b, normalized=True):
    """BBoxSize."""
    if b[2] < b[0] or b[3] < b[1]:
        return F(0)
    w, h = F(b[2] - b[0]), F(b[3] - b[1])
    return F(w * h) if normalized else F(F(w + F(1)) * F(h + F(1)))


def ref_jaccard(b1, s1, b2, s2, normalized):
    """IntersectBBox + JaccardOverlap (NormalizedBBox form, stored sizes)."""
    if b2[0] > b1[2] or b2[2] < b1[0] or b2[1] > b1[3] or b2[3] < b1[1]:
        inter = [F(0)] * 4
    else:
        inter = [max(b1[0], b2[0]), max(b1[1], b2[1]), min(b1[2], b2[2]), min(b1[3], b2[3])]
    w, h = F(inter[2] - inter[0]), F(inter[3] - inter[1])
    if not normalized:
        w, h = F(w + F(1)), F(h + F(1))
    if w > 0 and h > 0:
        i = F(w * h)
        return F(i / F(F(s1 + s2) - i))
    return F(0)


def ref_output(b, height, width, scales=None):
    """OutputBBox without resize (WARP, FIT_SMALL_SIZE without both scales): ClipBBox, then
    ScaleBBox. FIT_SMALL_SIZE with `scales` (height_scale, width_scale): ScaleBBox by the
    scales, then ClipBBox(bbox, height, width), which stores BBoxSize (normalized)."""
    if scales:
        hs, ws = F(scales[0]), F(scales[1])
        s = [F(b[0] * ws), F(b[1] * hs), F(b[2] * ws), F(b[3] * hs)]
        c = [max(min(v, F(lim)), F(0)) for v, lim in zip(s, (width, height, width, height))]
        return c, ref_size(c)
    c = [max(min(v, F(1)), F(0)) for v in b]
    s = [F(c[0] * F(width)), F(c[1] * F(height)), F(c[2] * F(width)), F(c[3] * F(height))]
    return s, ref_size(s, not (width > 1 or height > 1))


def ref_unpad(b, height, width, resize_h, resize_w):
    """OutputBBox's FIT_LARGE_SIZE_AND_PAD branch up to ClipBBox: the padding's source box,
    then ProjectBBox, whose refusal the fork ignores (the box stays as it was when disjoint;
    when the projection is empty it keeps the clipped projection)."""
    rh, rw = F(resize_h), F(resize_w)
    aspect = F(F(width) / F(height))
    if aspect > F(rw / rh):
        padding = F(F(rh - F(rw / aspect)) / F(2))
        src = [F(0), F(padding / rh), F(1), F(1.0 - float(F(padding / rh)))]
    else:
        padding = F(F(rw - F(rh * aspect)) / F(2))
        src = [F(padding / rw), F(0), F(1.0 - float(F(padding / rw))), F(1)]
    if b[0] >= src[2] or b[2] <= src[0] or b[1] >= src[3] or b[3] <= src[1]:
        return list(b)
    sw, sh = F(src[2] - src[0]), F(src[3] - src[1])
    proj = [F(F(b[0] - src[0]) / sw), F(F(b[1] - src[1]) / sh),
            F(F(b[2] - src[0]) / sw), F(F(b[3] - src[1]) / sh)]
    return [max(min(v, F(1)), F(0)) for v in proj]


def ref_forward(det, gt, num_classes, bg, thr, eval_difficult, sizes=(), count=0, scales=None,
                pad=None):
    """DetectionEvaluateLayer::Reshape + Forward_cpu, one row at a time."""
    dets = {}
    for r in det:
        if int(r[0]) == -1:
            continue
        dets.setdefault(int(r[0]), {}).setdefault(int(r[1]), []).append(
            {"score": r[2], "box": list(r[3:7]), "size": ref_size(r[3:7])})
    gts = {}
    for r in gt:
        if int(r[0]) == -1:
            break
        gts.setdefault(int(r[0]), {}).setdefault(int(r[1]), []).append(
            {"box": list(r[3:7]), "size": ref_size(r[3:7]), "difficult": bool(r[7])})
    n_pos_classes = num_classes if bg == -1 else num_classes - 1
    top = np.zeros((n_pos_classes + sum(r[1] != -1 for r in det), 5), F)
    num_pos = {}
    for labels in gts.values():
        for c, boxes in labels.items():
            n = len(boxes) if eval_difficult else sum(not b["difficult"] for b in boxes)
            num_pos[c] = num_pos.get(c, 0) + n
    k = 0
    for c in range(num_classes):
        if c != bg:
            top[k] = [-1, c, num_pos.get(c, 0), -1, -1]
            k += 1
    for image in sorted(dets):
        for c in sorted(dets[image]):
            if c == -1:
                continue
            boxes = dets[image][c]
            if image not in gts or c not in gts[image]:
                for b in boxes:
                    top[k] = [image, c, b["score"], 0, 1]
                    k += 1
                continue
            gt_boxes = [dict(g) for g in gts[image][c]]
            if sizes:
                for g in gt_boxes:
                    if pad:
                        g["box"] = ref_unpad(g["box"], *sizes[count], *pad)
                    g["box"], g["size"] = ref_output(g["box"], *sizes[count], scales)
            visited = [False] * len(gt_boxes)
            for i in std_sort_order([b["score"] for b in boxes]):
                b = dict(boxes[i])
                top[k, :3] = [image, c, b["score"]]
                if sizes:
                    if pad:
                        b["box"] = ref_unpad(b["box"], *sizes[count], *pad)
                    b["box"], b["size"] = ref_output(b["box"], *sizes[count], scales)
                best, jmax = -1.0, -1
                for j, g in enumerate(gt_boxes):
                    o = ref_jaccard(b["box"], b["size"], g["box"], g["size"], not sizes)
                    if o > best:
                        best, jmax = o, j
                if best >= F(thr):
                    if eval_difficult or not gt_boxes[jmax]["difficult"]:
                        top[k, 3:] = [0, 1] if visited[jmax] else [1, 0]
                        visited[jmax] = True
                else:
                    top[k, 3:] = [0, 1]
                k += 1
        if sizes:
            count = (count + 1) % len(sizes)
    return top


def ref_ap(tp, num_pos, fp, version):
    """CumSum + ComputeAP, scalar by scalar (C's double fabs)."""
    ap = F(0)
    if not tp or num_pos == 0:
        return ap
    def cumsum(pairs):
        order = sorted(range(len(pairs)), key=lambda i: -pairs[i][0])
        out, total = [], 0
        for i in order:
            total += pairs[i][1]
            out.append(total)
        return out
    tc, fc = cumsum(tp), cumsum(fp)
    n = len(tp)
    prec = [F(F(tc[i]) / F(tc[i] + fc[i])) for i in range(n)]
    rec = [F(F(tc[i]) / F(num_pos)) for i in range(n)]
    eps = float(F(1e-6))
    if version == "11point":
        mp = [F(0)] * 11
        start = n - 1
        for j in range(10, -1, -1):
            for i in range(start, -1, -1):
                if rec[i] < j / 10.:
                    start = i
                    if j > 0:
                        mp[j - 1] = mp[j]
                    break
                if mp[j] < prec[i]:
                    mp[j] = prec[i]
        for j in range(10, -1, -1):
            ap = F(ap + F(mp[j] / F(11)))
    elif version == "MaxIntegral":
        cr, cp = rec[-1], prec[-1]
        for i in range(n - 2, -1, -1):
            cp = max(prec[i], cp)
            d = abs(float(F(cr - rec[i])))
            if d > eps:
                ap = F(float(ap) + float(cp) * d)
            cr = rec[i]
        ap = F(ap + F(cr * cp))
    else:
        pr = F(0)
        for i in range(n):
            d = abs(float(F(rec[i] - pr)))
            if d > eps:
                ap = F(float(ap) + float(prec[i]) * d)
            pr = rec[i]
    return ap


def ref_map(all_rows):
    """Solver::TestDetection's tally and mean for one output, over the rows of each pass."""
    num_pos, tps, fps = {}, {}, {}
    for rows in all_rows:
        for r in rows:
            item, label = int(r[0]), int(r[1])
            if item == -1:
                num_pos[label] = num_pos.get(label, 0) + int(r[2])
            elif int(r[3]) or int(r[4]):
                tps.setdefault(label, []).append((float(r[2]), int(r[3])))
                fps.setdefault(label, []).append((float(r[2]), int(r[4])))
    total = F(0)
    for label in sorted(num_pos):
        if label in tps:
            total = F(total + ref_ap(tps[label], num_pos[label], fps[label], "11point"))
    return F(total / F(len(num_pos))), tps


# ---- the layer ------------------------------------------------------------------------------
def _random_case(rng, images=5, classes=4, gt_per_image=4, det_per_image=12):
    gt, det = [], []
    for image in range(images):
        if image == 3:   # an image without ground truth
            boxes = []
        else:
            boxes = []
            for _ in range(gt_per_image):
                x, y = rng.uniform(0, 0.7, 2)
                w, h = rng.uniform(0.1, 0.4, 2)
                boxes.append([image, rng.integers(1, classes), 0, x, y, x + w, y + h, rng.random() < 0.3])
        gt += boxes
        for _ in range(det_per_image):
            if boxes and rng.random() < 0.6:   # near a ground truth box
                g = boxes[rng.integers(len(boxes))]
                box = np.array(g[3:7]) + rng.normal(0, 0.04, 4)
                label = g[1] if rng.random() < 0.8 else rng.integers(1, classes)
            else:
                x, y = rng.uniform(-0.1, 0.8, 2)
                box = [x, y, x + rng.uniform(0.05, 0.4), y + rng.uniform(0.05, 0.4)]
                label = rng.integers(1, classes)
            score = rng.choice([0.5, 0.9]) if rng.random() < 0.3 else rng.random()   # ties
            det.append([image, label, score, *box])
    det.append([5, -1, -1, -1, -1, -1, -1])   # an image without detections
    gt.append([-1, -1, -1, -1, -1, -1, -1, -1])   # the fork stops reading here
    gt.append([4, 1, 0, 0.1, 0.1, 0.5, 0.5, 0])
    return np.array(det, F), np.array(gt, F)


def _layer(num_classes=4, extra=""):
    return layer_from_text(f'name: "eval" type: "DetectionEvaluate" bottom: "d" bottom: "g" '
                           f'detection_evaluate_param {{ num_classes: {num_classes} {extra} }}',
                           [(1, 1, 1, 7), (1, 1, 1, 8)])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("difficult", [True, False])
def test_detection_evaluate_equals_the_forks_forward(seed, difficult):
    det, gt = _random_case(np.random.default_rng(seed))
    extra = f"evaluate_difficult_gt: {str(difficult).lower()} overlap_threshold: 0.4"
    layer = _layer(extra=extra)
    top, = layer(torch.from_numpy(det)[None, None], torch.from_numpy(gt)[None, None])
    expected = ref_forward(det, gt, 4, 0, 0.4, difficult)
    assert top.shape == (1, 1, len(expected), 5)
    np.testing.assert_array_equal(top[0, 0].numpy(), expected)
    rows = expected[3:]
    assert (rows[:, 3] == 1).any() and (rows[:, 4] == 1).any()
    assert difficult or ((rows[:, 3] == 0) & (rows[:, 4] == 0)).any()


def test_detection_evaluate_in_image_pixels_with_a_name_size_file(tmp_path):
    det, gt = _random_case(np.random.default_rng(7))
    sizes = [(375, 500), (333, 500), (500, 281)]
    (tmp_path / "sizes.txt").write_text("".join(f"img{i} {h} {w}\n" for i, (h, w) in enumerate(sizes)))
    layer = _layer(extra=f'name_size_file: "{tmp_path}/sizes.txt"')
    count = 0
    for _ in range(2):   # the image count carries over between forwards
        top, = layer(torch.from_numpy(det)[None, None], torch.from_numpy(gt)[None, None])
        np.testing.assert_array_equal(top[0, 0].numpy(), ref_forward(det, gt, 4, 0, 0.5, True, sizes, count))
        count = (count + len(set(det[:, 0].astype(int)))) % len(sizes)
    assert layer.count == count


def test_output_bbox_as_the_forks_own_test():
    """test_bbox_util.cpp's TestOutputBBox: a 500 x 300 image (height 300), resize 300 x 300."""
    box = np.array([[-0.1, 0.3, 0.3, 0.5]], F)
    out, size = output_boxes(box, 300, 500)   # WARP, or FIT_SMALL_SIZE without both scales
    np.testing.assert_array_equal(out, [[0, 90, 150, 150]])
    assert size[0] == F(151) * F(61)
    out, size = output_boxes(box, 300, 500, (300, 300))
    np.testing.assert_array_equal(out, [[0, 90, 90, 150]])
    assert size[0] == F(90) * F(60)   # ClipBBox's normalized size, no + 1
    out, _ = output_boxes(unpad_boxes(box, 300, 500, 300, 300), 300, 500)   # FIT_LARGE_SIZE_AND_PAD
    np.testing.assert_array_equal(out, [[0, 50, 150, 150]])
    out, _ = output_boxes(unpad_boxes(box, 500, 300, 300, 300), 500, 300)
    np.testing.assert_array_equal(out, [[0, 150, 50, 250]])


def test_detection_evaluate_fit_large_size_and_pad_as_the_fork(tmp_path):
    """FIT_LARGE_SIZE_AND_PAD: boxes leave the padding (ProjectBBox), then clip and scale;
    landscape, portrait and square images, with boxes inside, across and outside the padding."""
    det, gt = _random_case(np.random.default_rng(12))
    det[::3, 4], det[::3, 6] = 0.01, 0.05      # some detections wholly in the top padding
    sizes = [(300, 500), (500, 300), (400, 400)]
    (tmp_path / "sizes.txt").write_text("".join(f"img{i} {h} {w}\n" for i, (h, w) in enumerate(sizes)))
    layer = _layer(extra=f'name_size_file: "{tmp_path}/sizes.txt" resize_param {{ '
                         f"resize_mode: FIT_LARGE_SIZE_AND_PAD height: 300 width: 300 }}")
    count = 0
    for _ in range(2):
        top, = layer(torch.from_numpy(det)[None, None], torch.from_numpy(gt)[None, None])
        expected = ref_forward(det, gt, 4, 0, 0.5, True, sizes, count, pad=(300, 300))
        np.testing.assert_array_equal(top[0, 0].numpy(), expected)
        count = (count + len(set(det[:, 0].astype(int)))) % len(sizes)
    # By hand, a 300 x 500 image padded to 300 x 300 (rows 0-0.2 and 0.8-1 are padding): the
    # gt (0.3, 0.2, 0.5, 0.3) projects to y 0-0.167; the detection (0.3, 0.02, 0.5, 0.16)
    # lies wholly in the padding, so the fork leaves it there, where it now overlaps the gt
    # (IoU 0.84 in pixels): a true positive, where WARP would find none.
    (tmp_path / "one.txt").write_text("img 300 500\n")
    one_gt = np.array([[0, 1, 0, 0.3, 0.2, 0.5, 0.3, 0]], F)
    one_det = np.array([[0, 1, 0.9, 0.3, 0.02, 0.5, 0.16]], F)
    for mode, tp in (("FIT_LARGE_SIZE_AND_PAD", 1), ("WARP", 0)):
        layer = _layer(extra=f'name_size_file: "{tmp_path}/one.txt" resize_param {{ '
                             f"resize_mode: {mode} height: 300 width: 300 }}")
        top, = layer(torch.from_numpy(one_det)[None, None], torch.from_numpy(one_gt)[None, None])
        assert top[0, 0, -1, 3:].tolist() == [tp, 1 - tp]


@pytest.mark.parametrize("scales", [(300, 400), (120, 90)])
def test_detection_evaluate_fit_small_size_scales_as_the_fork(tmp_path, scales):
    """FIT_SMALL_SIZE with height_scale and width_scale: OutputBBox scales the boxes by them
    and clips to the name_size_file's pixels; one scale 0 is WARP's clip and scale."""
    det, gt = _random_case(np.random.default_rng(11))
    sizes = [(375, 500), (333, 500), (500, 281)]
    (tmp_path / "sizes.txt").write_text("".join(f"img{i} {h} {w}\n" for i, (h, w) in enumerate(sizes)))
    extra = (f'name_size_file: "{tmp_path}/sizes.txt" resize_param {{ resize_mode: FIT_SMALL_SIZE '
             f"height: 300 width: 300 height_scale: {scales[0]} width_scale: {scales[1]} }}")
    layer = _layer(extra=extra)
    count = 0
    for _ in range(2):
        top, = layer(torch.from_numpy(det)[None, None], torch.from_numpy(gt)[None, None])
        expected = ref_forward(det, gt, 4, 0, 0.5, True, sizes, count, scales)
        np.testing.assert_array_equal(top[0, 0].numpy(), expected)
        assert not np.array_equal(expected, ref_forward(det, gt, 4, 0, 0.5, True, sizes, count))
        rows = expected[3:]
        assert (rows[:, 3] == 1).any() and (rows[:, 4] == 1).any()
        count = (count + len(set(det[:, 0].astype(int)))) % len(sizes)
    one_scale = _layer(extra=extra.replace(f"width_scale: {scales[1]}", "width_scale: 0"))
    top, = one_scale(torch.from_numpy(det)[None, None], torch.from_numpy(gt)[None, None])
    np.testing.assert_array_equal(top[0, 0].numpy(), ref_forward(det, gt, 4, 0, 0.5, True, sizes))


def test_detection_evaluate_refuses_what_the_fork_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="num_classes is required"):
        layer_from_text('name: "e" type: "DetectionEvaluate" bottom: "d" bottom: "g"',
                        [(1, 1, 1, 7), (1, 1, 1, 8)])
    with pytest.raises(ValueError, match="background_label_id 4"):
        _layer(extra="background_label_id: 4")
    with pytest.raises(ValueError, match="Failed to open name size file"):
        _layer(extra=f'name_size_file: "{tmp_path}/none.txt"')
    (tmp_path / "s.txt").write_text("a 10 10\n")
    sizes = f'name_size_file: "{tmp_path}/s.txt"'
    with pytest.raises(ValueError, match="resize_param.height and width must be positive"):
        _layer(extra=f"{sizes} resize_param {{ resize_mode: FIT_LARGE_SIZE_AND_PAD height: 4 }}")
    with pytest.raises(ValueError, match="resize_param.height and width must be positive"):
        _layer(extra=f"{sizes} resize_param {{ resize_mode: FIT_SMALL_SIZE height_scale: 3 width_scale: 3 }}")
    _layer(extra="resize_param { resize_mode: FIT_LARGE_SIZE_AND_PAD }")   # unread without sizes
    layer = _layer()
    with pytest.raises(ValueError, match="background label 0"):
        layer(torch.tensor([[[[0, 0, 0.5, 0, 0, 1, 1]]]]), torch.tensor([[[[0, 1, 0, 0, 0, 1, 1, 0]]]]))


# ---- ComputeAP ------------------------------------------------------------------------------
CASES = {
    "all true positives": ([(0.9, 1), (0.8, 1), (0.7, 1)], 3),
    "a mix with a tie": ([(0.9, 1), (0.8, 0), (0.8, 1), (0.6, 0), (0.5, 1), (0.1, 0)], 5),
    "unsorted": ([(0.3, 1), (0.95, 0), (0.6, 1), (0.7, 1)], 4),
    "all false positives": ([(0.9, 0), (0.2, 0)], 2),
    "no positives": ([(0.9, 0), (0.2, 0)], 0),
    "no detections": ([], 3),
}


@pytest.mark.parametrize("version", ["11point", "MaxIntegral", "Integral"])
@pytest.mark.parametrize("case", list(CASES))
def test_compute_ap_equals_the_forks(version, case):
    tp, num_pos = CASES[case]
    fp = [(s, 1 - t) for s, t in tp]
    ap = compute_ap(tp, num_pos, fp, version)
    assert ap == ref_ap(tp, num_pos, fp, version)
    assert isinstance(ap, np.float32)


def test_compute_ap_by_hand():
    tp = [(0.9, 1), (0.8, 0), (0.7, 1)]   # precision 1, 1/2, 2/3 at recall 1/4, 1/4, 1/2
    fp = [(s, 1 - t) for s, t in tp]
    assert compute_ap(tp, 4, fp, "Integral") == pytest.approx(0.25 + 0.25 * 2 / 3, rel=1e-6)
    assert compute_ap(tp, 4, fp, "MaxIntegral") == pytest.approx(0.25 + 0.25 * 2 / 3, rel=1e-6)
    assert compute_ap(tp, 4, fp, "11point") == pytest.approx((3 + 3 * 2 / 3) / 11, rel=1e-6)
    all_tp = [(0.9, 1), (0.5, 1)]
    for version in ("11point", "MaxIntegral", "Integral"):
        assert compute_ap(all_tp, 2, [(s, 0) for s, _ in all_tp], version) == pytest.approx(1, rel=1e-6)
    with pytest.raises(ValueError, match="Unknown ap_version"):
        compute_ap(tp, 4, fp, "VOC")
    with pytest.raises(ValueError, match="not complements"):
        compute_ap(tp, 4, tp, "Integral")


# ---- the solver's detection test ---------------------------------------------------------------
def _net(root):
    data = '''
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: {phase} }}
  transform_param {{ {mirror} mean_value: 127 mean_value: 127 mean_value: 127 scale: 0.0078125
    resize_param {{ prob: 1 resize_mode: WARP height: 32 width: 32 interp_mode: LINEAR }} }}
  data_param {{ source: "{root}/db" batch_size: 4 backend: LMDB }}
  annotated_data_param {{ {sampler} label_map_file: "{root}/labelmap.prototxt" }} }}'''
    train = data.format(phase="TRAIN", mirror="mirror: true", root=root,
                        sampler="batch_sampler { max_sample: 1 max_trials: 1 }")
    test = data.format(phase="TEST", mirror="", root=root, sampler="")
    evaluate = '''
layer { name: "conf_reshape" type: "Reshape" bottom: "conf_flat" top: "conf_reshape"
  reshape_param { shape { dim: 0 dim: -1 dim: 2 } } include { phase: TEST } }
layer { name: "conf_softmax" type: "Softmax" bottom: "conf_reshape" top: "conf_softmax"
  softmax_param { axis: 2 } include { phase: TEST } }
layer { name: "conf_out" type: "Flatten" bottom: "conf_softmax" top: "conf_out" include { phase: TEST } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "loc_flat" bottom: "conf_out" bottom: "priorbox"
  top: "detection_out" include { phase: TEST }
  detection_output_param { num_classes: 2 share_location: true background_label_id: 0
    nms_param { nms_threshold: 0.45 top_k: 100 } code_type: CENTER_SIZE keep_top_k: 10 confidence_threshold: 0.01 } }
layer { name: "detection_eval" type: "DetectionEvaluate" bottom: "detection_out" bottom: "label"
  top: "detection_eval" include { phase: TEST }
  detection_evaluate_param { num_classes: 2 background_label_id: 0 overlap_threshold: 0.5
    evaluate_difficult_gt: false } }'''
    loss = LOSS.replace('top: "mbox_loss"', 'top: "mbox_loss" include { phase: TRAIN }')
    return 'name: "ssd-eval"' + train + test + BODY + loss + evaluate


def test_the_solver_logs_and_records_the_forks_map(tmp_path):
    from runner.tools.convert_annoset import main as convert_annoset

    _dataset(tmp_path, count=8)
    assert convert_annoset([f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db"),
                            "--anno_type", "detection", "--encoded",
                            "--label_map_file", str(tmp_path / "labelmap.prototxt")]) == 0
    solver = make_solver(_net(tmp_path), tmp_path / "ssd", base_lr=0.01, max_iter=4, type='"Adam"',
                         test_iter=2, test_interval=2, eval_type='"detection"',
                         ap_version='"11point"', show_per_class_result="true", random_seed=3)
    passes = []
    forward = solver._test_forward

    def recording(k):
        blobs = forward(k)
        names = ("detection_out", "label", "detection_eval")
        passes.append({n: blobs[n].detach().clone() for n in names})
        return blobs

    solver._test_forward = recording
    solver.solve()
    assert len(passes) == 6   # tests at iterations 0, 2 and 4, two passes each
    expected = []
    for test in range(3):
        rows = []
        for p in passes[2 * test:2 * test + 2]:
            layer_rows = p["detection_eval"][0, 0].numpy()
            np.testing.assert_array_equal(layer_rows, ref_forward(
                p["detection_out"][0, 0].numpy(), p["label"][0, 0].numpy(), 2, 0, 0.5, False))
            rows.append(layer_rows)
        mean_ap, tps = ref_map(rows)
        assert set(tps) == {1}
        expected.append(float(mean_ap))
    assert [s for s in solver.scores] == [(it, 0, {"detection_eval": [v]})
                                         for it, v in zip((0, 2, 4), expected)]
    assert command_results.test_summaries(solver)[0]["final"] == {"detection_eval": expected[-1]}
    log = (tmp_path / "ssd.log").read_text()
    assert re.findall(r"Test net output #0: detection_eval = (\S+)", log) == [cfloat(v) for v in expected]
    assert re.findall(r"\] class1: (\S+)", log) == [cfloat(v) for v in expected]   # one class


def test_caffe_test_refuses_outputs_that_change_size(tmp_path):
    """`solve.py test` averages each output element over the batches (Caffe's `caffe test`,
    which indexes past its vector when an output grows); an output whose size changes
    between batches, as DetectionEvaluate's does, is an error naming it."""
    from runner.solver.caffe_log import CaffeLog
    from runner.solver.evaluate import score_net

    class GrowingNet(torch.nn.Module):
        origin, output_names, loss_weights, sources = "net 'growing'", ["rows"], {}, []

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, batch):
            self.calls += 1
            return {"rows": torch.zeros(1, 1, self.calls, 5)}

        def objective(self, blobs):
            return torch.zeros(())

    with pytest.raises(ValueError, match=r"net 'growing': output 'rows' has 10 values in batch 1 "
                                         r"but 5 before; `test` averages outputs of a fixed size"):
        score_net(GrowingNet(), 2, torch.device("cpu"), CaffeLog(None))


def test_an_unknown_eval_type_is_refused(tmp_path):
    from solver_helpers import classifier_net, make_lmdb

    net = classifier_net(make_lmdb(tmp_path / "db", 8), 4)
    with pytest.raises(SolverConfigError, match="Unknown evaluation type: segmentation"):
        make_solver(net, tmp_path / "s", eval_type='"segmentation"')
    with pytest.raises(SolverConfigError, match="Unknown ap_version: VOC"):
        make_solver(net, tmp_path / "s", eval_type='"detection"', ap_version='"VOC"')
