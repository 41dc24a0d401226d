"""SSD training end to end, as weiliu89/caffe's ssd_pascal.py sets it up, on generated images:
convert_annoset writes Pascal VOC boxes into an LMDB, AnnotatedData reads it with SSD's
batch sampler, resize and mirror, a small SSD net (PriorBox, Permute/Flatten/Concat heads,
MultiBoxLoss with hard negative mining) trains with solve.py's solver, and its deploy net's
DetectionOutput finds the boxes."""
import cv2
import numpy as np
import torch

from runner import Net
from runner.proto import parse_net_text

from solver_helpers import make_solver

LABEL_MAP = '''item { name: "none_of_the_above" label: 0 display_name: "background" }
item { name: "square" label: 1 display_name: "square" }
'''

BODY = '''
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 32 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "loc" type: "Convolution" bottom: "conv2" top: "loc"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc_perm" top: "loc_flat" flatten_param { axis: 1 } }
layer { name: "conf" type: "Convolution" bottom: "conv2" top: "conf"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf_perm" top: "conf_flat" flatten_param { axis: 1 } }
layer { name: "priorbox" type: "PriorBox" bottom: "conv2" bottom: "data" top: "priorbox"
  prior_box_param { min_size: 10 max_size: 20 aspect_ratio: 2 flip: true clip: false
    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 4 offset: 0.5 } }
'''

TRAIN_DATA = '''name: "ssd-tiny"
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
  transform_param {{ mirror: true mean_value: 127 mean_value: 127 mean_value: 127 scale: 0.0078125
    resize_param {{ prob: 1 resize_mode: WARP height: 32 width: 32 interp_mode: LINEAR }} }}
  data_param {{ source: "{root}/db" batch_size: 4 backend: LMDB }}
  annotated_data_param {{ batch_sampler {{ max_sample: 1 max_trials: 1 }} label_map_file: "{root}/labelmap.prototxt" }} }}
'''

LOSS = '''
layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "loc_flat" bottom: "conf_flat" bottom: "priorbox" bottom: "label"
  top: "mbox_loss" propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  loss_param { normalization: VALID }
  multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1 num_classes: 2
    share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true
    background_label_id: 0 use_difficult_gt: true neg_pos_ratio: 3 neg_overlap: 0.5 code_type: CENTER_SIZE
    ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE } }
'''

DEPLOY = '''name: "ssd-tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
''' + BODY + '''
layer { name: "conf_reshape" type: "Reshape" bottom: "conf_flat" top: "conf_reshape"
  reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }
layer { name: "conf_softmax" type: "Softmax" bottom: "conf_reshape" top: "conf_softmax" softmax_param { axis: 2 } }
layer { name: "conf_out" type: "Flatten" bottom: "conf_softmax" top: "conf_out" }
layer { name: "detection_out" type: "DetectionOutput" bottom: "loc_flat" bottom: "conf_out" bottom: "priorbox"
  top: "detection_out" include { phase: TEST }
  detection_output_param { num_classes: 2 share_location: true background_label_id: 0
    nms_param { nms_threshold: 0.45 top_k: 100 } code_type: CENTER_SIZE keep_top_k: 10 confidence_threshold: 0.01 } }
'''


def _train(root) -> str:
    return TRAIN_DATA.format(root=root) + BODY + LOSS


def _dataset(root, count=16, side=32):
    """Grey images, each with one bright square of side 8-14 somewhere; VOC XML boxes."""
    rng = np.random.default_rng(0)
    lines, boxes = [], []
    for i in range(count):
        image = np.full((side, side, 3), 60, np.uint8)
        size = int(rng.integers(8, 15))
        x, y = (int(v) for v in rng.integers(0, side - size, 2))
        image[y:y + size, x:x + size] = 220
        cv2.imwrite(str(root / f"{i}.png"), image)
        (root / f"{i}.xml").write_text(
            f"<annotation><size><width>{side}</width><height>{side}</height></size><object><name>square"
            f"</name><difficult>0</difficult><bndbox><xmin>{x}</xmin><ymin>{y}</ymin><xmax>{x + size}</xmax>"
            f"<ymax>{y + size}</ymax></bndbox></object></annotation>")
        lines.append(f"{i}.png {i}.xml")
        boxes.append((x / side, y / side, (x + size) / side, (y + size) / side))
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    (root / "labelmap.prototxt").write_text(LABEL_MAP)
    return boxes


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_a_small_ssd_learns_to_find_squares(tmp_path):
    from runner.tools.convert_annoset import main as convert_annoset

    boxes = _dataset(tmp_path)
    assert convert_annoset([f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db"),
                            "--anno_type", "detection", "--encoded",
                            "--label_map_file", str(tmp_path / "labelmap.prototxt")]) == 0
    losses = []
    solver = make_solver(_train(tmp_path), tmp_path / "ssd", base_lr=0.01, max_iter=300,
                         weight_decay=0.0005, type='"Adam"', momentum=0.9, random_seed=3)
    solver.solve()
    weights = tmp_path / "ssd_iter_300.caffemodel"
    assert weights.is_file()
    train = Net(parse_net_text(_train(tmp_path)), phase="TRAIN", weights=weights,
                source_kwargs={"workers": 0, "seed": 0})
    source = train.sources[0]
    for _ in range(4):
        losses.append(float(train.objective(train(next(source))).detach()))
    source.close()
    fresh = Net(parse_net_text(_train(tmp_path)), phase="TRAIN", source_kwargs={"workers": 0, "seed": 0})
    source = fresh.sources[0]
    untrained = [float(fresh.objective(fresh(next(source))).detach()) for _ in range(4)]
    source.close()
    assert np.mean(losses) < 0.5 * np.mean(untrained), (losses, untrained)

    deploy = Net(parse_net_text(DEPLOY), phase="TEST", weights=weights)
    hits = 0
    for i in range(8):
        image = cv2.imread(str(tmp_path / f"{i}.png")).astype(np.float32)
        x = torch.from_numpy(((image - 127) * 0.0078125).transpose(2, 0, 1).copy())[None]
        rows = deploy({"data": x})["detection_out"][0, 0]
        best = rows[rows[:, 2].argmax()].tolist()
        hits += best[1] == 1 and _iou(best[3:7], boxes[i]) > 0.5
    assert hits >= 6, hits
