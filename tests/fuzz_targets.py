"""The fuzz suite's formats: seed files (a small net, solver, weights, snapshot, mean, LMDB
and LevelDB of Datums, zoo folder; weights, snapshot and HDF5Data rows in HDF5 too), how each is
mutated, and the public entry point that reads it.

`make_seeds(folder)` writes the seeds once; each input then runs in a copy of them with one
file replaced (for Datums, one record of the LMDB), through `run(format, folder)`.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
import plyvel
import torch

from fuzz_mutators import BYTE_MUTATORS, TEXT_MUTATORS, YAML_MUTATORS, hdf5_edit, message_mutator
from runner import Net
from runner.data.datum import encoded_datum, image_to_datum
from runner.data.lmdb_store import LmdbReader, write_lmdb
from runner.data.mean import compute_image_mean, load_mean
from runner.matfile import write_blob
from runner.proto import array_to_blob, caffe_pb2, write_binary
from runner.solver import Solver, SolverOptions, load_solver_param
from runner.tools.convert_annoset import main as convert_annoset

SIDE, CLASSES, BATCH = 8, 3, 2
MAX_BLOB_BYTES = 64 << 20   # inputs whose blobs would be larger are built, not run
QUIET = SolverOptions(progress=False, log_path=os.devnull)   # no log file, so no plot

TRAIN_VAL = f"""name: "fuzz"
layer {{ name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param {{ shape {{ dim: {BATCH} dim: 1 dim: {SIDE} dim: {SIDE} }} shape {{ dim: {BATCH} }}
    data_filler {{ type: "gaussian" std: 1 }} data_filler {{ type: "constant" value: 1 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param {{ lr_mult: 1 }} param {{ lr_mult: 2 }}
  convolution_param {{ num_output: 2 kernel_size: 3 pad: 1 stride: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip"
  inner_product_param {{ num_output: {CLASSES} weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy"
  include {{ phase: TEST }} }}
"""

DEPLOY = f"""name: "fuzz"
layer {{ name: "data" type: "Input" top: "data"
  input_param {{ shape {{ dim: 1 dim: 1 dim: {SIDE} dim: {SIDE} }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 2 kernel_size: 3 pad: 1 }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip"
  inner_product_param {{ num_output: {CLASSES} }} }}
layer {{ name: "prob" type: "Softmax" bottom: "ip" top: "prob" }}
"""

# Every fork layer that runs on plain blobs, small, ending in a loss so that `solve.py time`
# takes a backward through them all.
ONNX_NET = """name: "to_onnx"
layer { name: "data" type: "Input" top: "a" top: "b" top: "seq"
  input_param { shape { dim: 2 dim: 3 dim: 12 dim: 16 } shape { dim: 2 dim: 3 dim: 12 dim: 16 }
                shape { dim: 5 dim: 2 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "a" bottom: "b" top: "fa" top: "fb"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "pool" type: "Pooling" bottom: "fa" top: "pool" top: "mask"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "unpool" type: "Upsample" bottom: "pool" bottom: "mask" top: "unpool"
  upsample_param { upsample_h: 6 upsample_w: 8 } }
layer { name: "ave" type: "Pooling" bottom: "fb" top: "ave" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "corr" type: "Correlation" bottom: "fa" bottom: "unpool" top: "corr"
  correlation_param { pad: 2 kernel_size: 1 max_displacement: 2 stride_2: 2 } }
layer { name: "neg" type: "NegReLU" bottom: "corr" top: "neg" relu_param { negative_slope: 0.2 } }
layer { name: "norm" type: "ChannelNorm" bottom: "neg" top: "norm" }
layer { name: "acc" type: "Accum" bottom: "norm" bottom: "ave" top: "acc" accum_param { top_height: 9 top_width: 11 } }
layer { name: "up" type: "Resample" bottom: "acc" top: "up" resample_param { type: LINEAR width: 13 height: 7 } }
layer { name: "interp" type: "Interp" bottom: "fb" top: "interp" interp_param { zoom_factor: 2 } }
layer { name: "lrn" type: "LRN" bottom: "interp" top: "lrn" lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL } }
layer { name: "flow" type: "Convolution" bottom: "fa" top: "flow" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "warp" type: "FlowWarp" bottom: "fb" bottom: "flow" top: "warp" }
layer { name: "cont" type: "ContinuationIndicator" bottom: "seq" top: "cont"
  continuation_indicator_param { time_step: 5 axis: 1 } }
layer { name: "lstm" type: "LSTM" bottom: "seq" bottom: "cont" top: "lstm" recurrent_param { num_output: 3 } }
layer { name: "back" type: "Reverse" bottom: "lstm" top: "back" }
layer { name: "ip" type: "InnerProduct" bottom: "back" top: "ip" inner_product_param { num_output: 4 axis: 2 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" softmax_param { axis: 2 } }
"""

FORK_NET = """name: "forks"
layer { name: "data" type: "DummyData" top: "data" top: "rois"
  dummy_data_param { shape { dim: 2 dim: 8 dim: 8 dim: 8 } shape { dim: 3 dim: 5 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "uniform" min: 0 max: 1 } } }
layer { name: "shuffle" type: "ShuffleChannel" bottom: "data" top: "shuffle" shuffle_channel_param { group: 2 } }
layer { name: "blocks" type: "Reorg" bottom: "shuffle" top: "blocks" reorg_param { stride: 2 } }
layer { name: "spread" type: "Reorg" bottom: "blocks" top: "spread" reorg_param { stride: 2 reverse: true } }
layer { name: "bn" type: "BN" bottom: "spread" top: "bn" top: "bn_mean" top: "bn_var"
  bn_param { scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" value: 0.001 } } }
layer { name: "zoom" type: "Interp" bottom: "bn" top: "zoom" interp_param { zoom_factor: 2 pad_beg: -1 } }
layer { name: "near" type: "Upsample" bottom: "bn" top: "near" upsample_param { scale: 2 } }
layer { name: "pool" type: "Pooling" bottom: "bn" top: "pool" top: "mask" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "unpool" type: "Upsample" bottom: "pool" bottom: "mask" top: "unpool" upsample_param { scale: 2 } }
layer { name: "roi" type: "ROIPooling" bottom: "unpool" bottom: "rois" top: "roi"
  roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 4 } }
layer { name: "psroi" type: "PSROIPooling" bottom: "bn" bottom: "rois" top: "psroi"
  psroi_pooling_param { spatial_scale: 4 output_dim: 2 group_size: 2 } }
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "bn" top: "dw"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "gap" type: "Pooling" bottom: "data" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "axpy" type: "Axpy" bottom: "gap" bottom: "dw" bottom: "unpool" top: "axpy" }
layer { name: "loss" type: "SmoothL1Loss" bottom: "axpy" bottom: "data" top: "loss" smooth_l1_loss_param { sigma: 3 } }
layer { name: "seq" type: "DummyData" top: "seq" top: "seq_label"
  dummy_data_param { shape { dim: 4 dim: 2 dim: 3 } shape { dim: 2 dim: 2 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "cont" type: "ContinuationIndicator" bottom: "seq" top: "cont"
  continuation_indicator_param { time_step: 4 axis: 1 } }
layer { name: "ctc" type: "CtcLoss" bottom: "seq" bottom: "seq_label" top: "ctc"
  ctc_loss_param { alphabet_size: 3 time_step: 4 blank_label: 0 } }
layer { name: "seq_nt" type: "Permute" bottom: "seq" top: "seq_nt" permute_param { order: 1 order: 0 order: 2 } }
layer { name: "seq_acc" type: "LabelsequenceAccuracy" bottom: "seq_nt" bottom: "seq_label" top: "seq_acc" }
layer { name: "corr" type: "Correlation" bottom: "bn" bottom: "dw" top: "corr"
  correlation_param { pad: 2 kernel_size: 1 max_displacement: 2 stride_1: 1 stride_2: 2 } }
layer { name: "corr1d" type: "Correlation1D" bottom: "bn" bottom: "dw" top: "corr1d"
  correlation_param { pad: 2 kernel_size: 3 max_displacement: 2 correlation_type: SUBTRACT } }
layer { name: "flow" type: "Convolution" bottom: "corr" top: "flow"
  convolution_param { num_output: 2 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "warp" type: "FlowWarp" bottom: "bn" bottom: "flow" top: "warp" }
layer { name: "cnorm" type: "ChannelNorm" bottom: "warp" top: "cnorm" }
layer { name: "acc" type: "Accum" bottom: "flow" bottom: "zoom" top: "acc" accum_param { have_reference: true } }
layer { name: "resample" type: "Resample" bottom: "cnorm" top: "resample" resample_param { width: 5 height: 7 type: CUBIC } }
layer { name: "negrelu" type: "NegReLU" bottom: "corr1d" top: "negrelu" relu_param { negative_slope: 0.1 } }
layer { name: "aug" type: "DataAugmentation" bottom: "data" top: "aug"
  augmentation_param { recompute_mean: 10 mean_per_pixel: false } }
layer { name: "l1" type: "L1Loss" bottom: "warp" bottom: "bn" top: "l1" l1_loss_param { plateau: 0.1 } }
layer { name: "timeseq" type: "DummyData" top: "timeseq" top: "seq_ind" top: "seq_labels"
  dummy_data_param { shape { dim: 5 dim: 2 dim: 4 } shape { dim: 5 dim: 2 } shape { dim: 5 dim: 2 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 }
    data_filler { type: "constant" value: 2 } } }
layer { name: "back" type: "Reverse" bottom: "timeseq" top: "back" }
layer { name: "chwick" type: "CTCLoss" bottom: "back" bottom: "seq_ind" bottom: "seq_labels" top: "chwick"
  ctc_loss_param { blank_index: 0 ctc_merge_repeated: false } }
layer { name: "decode" type: "CTCGreedyDecoder" bottom: "back" bottom: "seq_ind" bottom: "seq_labels"
  top: "decoded" top: "edit_acc" }
layer { name: "crf_image" type: "DummyData" top: "crf_image"
  dummy_data_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } data_filler { type: "uniform" min: 0 max: 255 } } }
layer { name: "crf" type: "MultiStageMeanfield" bottom: "bn" bottom: "bn" bottom: "crf_image" top: "crf"
  multi_stage_meanfield_param { num_iterations: 2 theta_alpha: 4 theta_beta: 30 theta_gamma: 2
    spatial_filter_weight: 3 bilateral_filter_weight: 5 } }
layer { name: "silence" type: "Silence" bottom: "zoom" bottom: "near" bottom: "roi" bottom: "psroi"
  bottom: "bn_mean" bottom: "bn_var" bottom: "cont" bottom: "seq_acc" bottom: "acc" bottom: "resample"
  bottom: "negrelu" bottom: "aug" bottom: "decoded" bottom: "edit_acc" bottom: "crf" }
"""

# SegNet's data layer on image and label-image pairs, into a class-weighted loss.
DENSE_NET = f"""name: "fuzz-dense"
layer {{ name: "data" type: "DenseImageData" top: "data" top: "label"
  transform_param {{ scale: 0.00390625 mean_value: 128 }}
  dense_image_data_param {{ source: "pairs.txt" batch_size: 2 shuffle: true mirror: true
    crop_height: 6 crop_width: 6 }} }}
layer {{ name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param {{ num_output: {CLASSES} kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param {{ weight_by_label_freqs: true class_weighting: 0.5 class_weighting: 1 class_weighting: 2 }} }}
"""

# The SSD fork's VideoData on a short MJPG clip, with its transform and noise, into a
# convolution and a loss.
VIDEO_NET = """name: "fuzz-video"
layer { name: "data" type: "VideoData" top: "data" top: "label"
  transform_param { crop_size: 8 mirror: true mean_value: 100 scale: 0.01
    noise_param { inverse: true saltpepper: true saltpepper_param { fraction: 0.1 value: 255 } } }
  data_param { batch_size: 2 } video_data_param { video_type: VIDEO video_file: "clip.avi" } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "conv" bottom: "conv" top: "loss" }
layer { name: "quiet" type: "Silence" bottom: "label" }
"""

# DeepLab's MatRead of a .mat file (written by scipy, as MatWrite writes them), into a
# convolution and a loss.
MAT_NET = """name: "fuzz-mat"
layer { name: "read" type: "MatRead" top: "scores"
  mat_read_param { prefix: "" source: "mat_ids.txt" batch_size: 1 } }
layer { name: "conv" type: "Convolution" bottom: "scores" top: "conv"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "conv" bottom: "conv" top: "loss" }
"""

# SSD training on AnnotatedDatum records (written per input from anno.bin, mutated, between
# two intact ones) with every augmentation the layer implements, into MultiBoxLoss; and the
# same net with FIT_SMALL_SIZE (batch_size 1, an image size per batch) and the other noise.
SSD_NET = """name: "fuzz-ssd"
layer { name: "data" type: "AnnotatedData" top: "data" top: "label"
  transform_param { mirror: true mean_value: 104 mean_value: 117 mean_value: 123
    resize_param { prob: 1 resize_mode: WARP height: 16 width: 16 interp_mode: LINEAR interp_mode: AREA }
    emit_constraint { emit_type: CENTER }
    distort_param { brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 contrast_lower: 0.5
      contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18 saturation_prob: 0.5 saturation_lower: 0.5
      saturation_upper: 1.5 random_order_prob: 0.5 }
    expand_param { prob: 0.5 max_expand_ratio: 2 }
    noise_param { gauss_blur: true hist_eq: true jpeg: 70 erode: true saltpepper: true
      saltpepper_param { fraction: 0.02 value: 0 value: 255 value: 128 } } }
  data_param { source: "ssd_db" batch_size: 2 backend: LMDB }
  annotated_data_param { batch_sampler { max_sample: 1 max_trials: 1 }
    batch_sampler { sampler { min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5 max_aspect_ratio: 2 }
      sample_constraint { min_jaccard_overlap: 0.3 } max_sample: 1 max_trials: 20 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 4 weight_filler { type: "xavier" } } }
layer { name: "loc" type: "Convolution" bottom: "conv" top: "loc"
  convolution_param { num_output: 12 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc" top: "loc_flat" }
layer { name: "conf" type: "Convolution" bottom: "conv" top: "conf"
  convolution_param { num_output: 9 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf" top: "conf_flat" }
layer { name: "priorbox" type: "PriorBox" bottom: "conv" bottom: "data" top: "priorbox"
  prior_box_param { min_size: 6 aspect_ratio: 2 variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "loss" type: "MultiBoxLoss" bottom: "loc_flat" bottom: "conf_flat" bottom: "priorbox" bottom: "label"
  top: "loss" propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  multibox_loss_param { num_classes: 3 overlap_threshold: 0.5 neg_pos_ratio: 3 code_type: CENTER_SIZE } }
"""

SSD_SMALL_NET = SSD_NET.replace("resize_mode: WARP", "resize_mode: FIT_SMALL_SIZE").replace(
    "batch_size: 2", "batch_size: 1").replace(
    "noise_param { gauss_blur: true hist_eq: true jpeg: 70 erode: true saltpepper: true\n"
    "      saltpepper_param { fraction: 0.02 value: 0 value: 255 value: 128 } }",
    "noise_param { prob: 0.5 clahe: true posterize: true inverse: true convert_to_hsv: true }")

LABEL_MAP = """item { name: "none_of_the_above" label: 0 }
item { name: "a" label: 1 }
item { name: "b" label: 2 }
"""

VOC_XML = """<annotation><size><width>16</width><height>12</height></size>
<object><name>a</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>9</xmax><ymax>10</ymax></bndbox></object>
<object><name>b</name><difficult>1</difficult><bndbox><xmin>5</xmin><ymin>0</ymin><xmax>15</xmax><ymax>6</ymax></bndbox></object>
</annotation>
"""

SOLVER = """net: "train_val.prototxt"
test_iter: 1
test_interval: 1
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "step"
gamma: 0.1
stepsize: 1
display: 1
max_iter: 2
snapshot: 1
snapshot_prefix: "snap"
type: "SGD"
random_seed: 1
"""

DATA_NET = f"""name: "fuzz-data"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ mean_file: "mean.binaryproto" crop_size: 6 mirror: true scale: 0.0039 }}
  data_param {{ source: "db" batch_size: 4 backend: LMDB }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: {CLASSES} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""

LEVELDB_NET = DATA_NET.replace('source: "db" batch_size: 4 backend: LMDB',
                               'source: "ldb" batch_size: 4 backend: LEVELDB')
LEVELDB_TABLE_NET = LEVELDB_NET.replace('source: "ldb"', 'source: "ldbt"')

HDF5_NET = f"""name: "fuzz-hdf5"
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param {{ source: "h5list.txt" batch_size: 4 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: {CLASSES} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""

README = """---
name: fuzz
caffemodel: fuzz.caffemodel
caffemodel_url: http://example.org/fuzz.caffemodel
license: CC-BY-4.0
sha1: {sha1}
caffe_commit: 0123456789abcdef0123456789abcdef01234567
gist_id: ''
---

# fuzz

A small net for the fuzz suite.
"""


@dataclass
class Format:
    """A file format: the seed file it mutates, the mutators, the entry point."""
    seed: str
    mutators: list
    run: object


# ---- seeds --------------------------------------------------------------------------------

def _datum_records() -> list[tuple[str, bytes]]:
    """Raw, float_data and PNG-encoded Datums of one size, labels in range."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(6):
        image = rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
        if i % 3 == 0:
            datum = image_to_datum(image, i % CLASSES)
        elif i % 3 == 1:
            datum = caffe_pb2.Datum(channels=1, height=SIDE, width=SIDE, label=i % CLASSES,
                                    float_data=image.ravel().astype(float).tolist())
        else:
            datum = encoded_datum(cv2.imencode(".png", image)[1].tobytes(), i % CLASSES)
        records.append((f"{i:08d}_img{i}.png", datum.SerializeToString()))
    return records


def make_seeds(folder: Path) -> None:
    """Every seed file, consistent with each other (a snapshot of the net, its zoo folder)."""
    from runner.zoo.frontmatter import sha1_of_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_val.prototxt").write_text(TRAIN_VAL)
    (folder / "deploy.prototxt").write_text(DEPLOY)
    (folder / "solver.prototxt").write_text(SOLVER)
    (folder / "data_net.prototxt").write_text(DATA_NET)
    (folder / "fork_net.prototxt").write_text(FORK_NET)
    (folder / "onnx_net.prototxt").write_text(ONNX_NET)
    (folder / "dense_net.prototxt").write_text(DENSE_NET)
    (folder / "ssd_net.prototxt").write_text(SSD_NET)
    (folder / "ssd_small_net.prototxt").write_text(SSD_SMALL_NET)
    (folder / "labelmap.prototxt").write_text(LABEL_MAP)
    (folder / "anno.xml").write_text(VOC_XML)
    cv2.imwrite(str(folder / "box.png"), np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8))
    (folder / "annoset.txt").write_text("box.png anno.xml\n")
    with _inside(folder):
        convert_annoset(["./", "annoset.txt", "ssd_db", "--anno_type", "detection", "--encoded",
                         "--label_map_file", "labelmap.prototxt"])
    with LmdbReader(folder / "ssd_db") as reader:
        (folder / "anno.bin").write_bytes(next(iter(reader.raw_items()))[1])
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(folder / f"img{i}.png"), rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))
        cv2.imwrite(str(folder / f"lab{i}.png"), rng.integers(0, CLASSES, (SIDE, SIDE), dtype=np.uint8))
    (folder / "pairs.txt").write_text("".join(f"img{i}.png lab{i}.png\n" for i in range(3)))
    (folder / "video_net.prototxt").write_text(VIDEO_NET)
    (folder / "mat_net.prototxt").write_text(MAT_NET)
    (folder / "mat_ids.txt").write_text("seg\n")
    write_blob(str(folder / "seg_blob_0.mat"), rng.normal(size=(1, 3, 4, 5)).astype(np.float32), "seed")
    video = cv2.VideoWriter(str(folder / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (16, 12))
    for i in range(6):
        video.write(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    video.release()
    torch.manual_seed(0)
    Net(folder / "deploy.prototxt").save_caffemodel(folder / "deploy.caffemodel")
    with _inside(folder):
        param = load_solver_param("solver.prototxt")
        param.max_iter, param.test_interval = 1, 0
        param.ClearField("test_iter")
        Solver(param, SolverOptions(progress=False)).solve()
        param.snapshot_format, param.snapshot_prefix = caffe_pb2.SolverParameter.HDF5, "snap_h5"
        Solver(param, SolverOptions(progress=False)).solve()   # snap_h5_iter_1.*.h5
    records = _datum_records()
    (folder / "records.bin").write_bytes(b"".join(len(v).to_bytes(4, "little") + v
                                                  for _, v in records))
    write_lmdb(folder / "db", records)
    leveldb = plyvel.DB(str(folder / "ldb"), create_if_missing=True)   # its records in ldb/000003.log
    for key, value in records:
        leveldb.put(key.encode(), value)
    leveldb.close()
    (folder / "leveldb_net.prototxt").write_text(LEVELDB_NET)
    leveldb = plyvel.DB(str(folder / "ldbt"), create_if_missing=True)
    for key, value in records:
        leveldb.put(key.encode(), value)
    leveldb.compact_range()   # the records move into a table file, ldbt/000005.ldb
    leveldb.close()
    if not (folder / "ldbt" / "000005.ldb").is_file():
        raise RuntimeError(f"LevelDB wrote no ldbt/000005.ldb table: {sorted(os.listdir(folder / 'ldbt'))}")
    (folder / "leveldb_table_net.prototxt").write_text(LEVELDB_TABLE_NET)
    rng = np.random.default_rng(0)
    with h5py.File(folder / "rows.h5", "w") as f:
        f.create_dataset("data", data=rng.normal(size=(6, 1, SIDE, SIDE)).astype(np.float32))
        f.create_dataset("label", data=np.arange(6) % CLASSES, dtype=np.float32)
    (folder / "h5list.txt").write_text("rows.h5\n")
    (folder / "hdf5_net.prototxt").write_text(HDF5_NET)
    mean = np.full((1, 1, SIDE, SIDE), 127.5, np.float32)
    write_binary(array_to_blob(mean), folder / "mean.binaryproto")
    zoo = folder / "zoo"
    zoo.mkdir()
    shutil.copyfile(folder / "deploy.prototxt", zoo / "deploy.prototxt")
    shutil.copyfile(folder / "deploy.caffemodel", zoo / "fuzz.caffemodel")
    (zoo / "labels.txt").write_text("".join(f"class{i}\n" for i in range(CLASSES)))
    (zoo / "readme.md").write_text(README.format(sha1=sha1_of_file(zoo / "fuzz.caffemodel")))
    (zoo / "image.png").write_bytes(cv2.imencode(".png", np.zeros((SIDE, SIDE), np.uint8))[1])


@contextlib.contextmanager
def _inside(folder: Path):
    """Run with `folder` as the working directory (Caffe's paths are relative to it)."""
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


# ---- entry points ---------------------------------------------------------------------------

def _forward(net: Net) -> None:
    """One forward (and the objective) from the net's sources, when the blobs are small."""
    if 4 * sum(int(np.prod(s)) for s in net.blob_shapes.values()) > MAX_BLOB_BYTES:
        return
    batch = {}
    for source in net.sources:
        batch.update(next(iter(source)))
    net.objective(net(batch))


def run_net(folder: Path, net_file: str = "train_val.prototxt") -> str | None:
    """The TEST net through the API, the TRAIN net through `solve.py time` (2: its error exit)."""
    from runner.solve import main as solve

    _forward(Net(net_file, phase="TEST"))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = solve(["time", "--model", net_file, "--iterations", "1"])
    if code not in (0, 2):
        raise RuntimeError(f"solve.py time exited {code}: expected 0 or 2")
    return "ours" if code == 2 else None


def run_fork_net(folder: Path) -> str | None:
    return run_net(folder, "fork_net.prototxt")


def run_onnx_net(folder: Path) -> None:
    """The net exported to ONNX (its weights random, as the Net's fillers make them) and run
    by ONNX Runtime on seeded inputs: every blob finite where ours is and there within 1e-3
    of the largest of ours (where ours overflowed, garbage in, the two may differ); a
    mismatch is a failure."""
    import onnxruntime as ort

    torch.manual_seed(0)
    net = Net("onnx_net.prototxt", phase="TEST")
    model = net.export_onnx("net.onnx", [b for b in net.blob_shapes if b not in net.input_names])
    if 4 * sum(int(np.prod(s)) for s in net.blob_shapes.values()) > MAX_BLOB_BYTES:
        return
    gen = torch.Generator().manual_seed(1)
    inputs = {name: torch.randn(net.blob_shapes[name], generator=gen) for name in net.input_names}
    with torch.no_grad():
        ours = net(inputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}   # those the outputs need
    for name, theirs in zip(names, session.run(names, feed)):
        expected = ours[name].detach().numpy()
        if theirs.shape != expected.shape:
            raise RuntimeError(f"ONNX blob '{name}': shape {theirs.shape}, ours {expected.shape}")
        finite = np.isfinite(expected)   # where ours overflowed, the two may disagree
        if not np.isfinite(theirs[finite]).all():
            raise RuntimeError(f"ONNX blob '{name}' is not finite where ours is")
        gap = float(np.abs(theirs[finite] - expected[finite]).max(initial=0))
        if gap > 1e-3 * float(np.abs(expected[finite]).max(initial=0)) + 1e-6:
            raise RuntimeError(f"ONNX blob '{name}' differs from ours by {gap:.3g}")


def run_annotated_datum(folder: Path) -> None:
    """The SSD net on an LMDB of the intact record, the mutated one and the intact one again:
    two batches through AnnotatedData's augmentation and MultiBoxLoss, with backward."""
    good = next(iter(LmdbReader("ssd_db").raw_items()))[1]
    shutil.rmtree("ssd_db")
    write_lmdb("ssd_db", [("0", good), ("1", Path("anno.bin").read_bytes()), ("2", good)])
    for net_file, batches in (("ssd_net.prototxt", 2), ("ssd_small_net.prototxt", 3)):
        _train_ssd(net_file, batches)


def _train_ssd(net_file: str, batches: int) -> None:
    """`batches` batches of an SSD net through MultiBoxLoss and backward."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # noise_param.prob is ignored, as in the fork
        net = Net(net_file, phase="TRAIN", source_kwargs={"seed": 0, "workers": 0})
    source = net.sources[0]
    for _ in range(batches):
        net.objective(net(next(source))).backward()
    source.close()


def run_voc_xml(folder: Path) -> str | None:
    """convert_annoset on the annotation (2: its error exit), then the SSD net on the result."""
    shutil.rmtree("ssd_db")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = convert_annoset(["./", "annoset.txt", "ssd_db", "--anno_type", "detection",
                                "--encoded", "--label_map_file", "labelmap.prototxt"])
    if code not in (0, 2):
        raise RuntimeError(f"convert_annoset exited {code}: expected 0 or 2")
    if code == 2:
        return "ours"
    _train_ssd("ssd_net.prototxt", 1)
    _train_ssd("ssd_small_net.prototxt", 1)
    return None


def run_dense(folder: Path) -> None:
    """Two batches of the DenseImageData net, through its loss and backward."""
    net = Net("dense_net.prototxt", phase="TRAIN", source_kwargs={"seed": 0, "workers": 0})
    source = net.sources[0]
    for _ in range(2):
        net.objective(net(next(source))).backward()
    source.close()


def run_video(folder: Path) -> None:
    """Two batches of the VideoData net from the clip, with backward."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # noise_param.prob is ignored, as in the fork
        net = Net("video_net.prototxt", phase="TRAIN", source_kwargs={"seed": 0})
    source = net.sources[0]
    for _ in range(2):
        net.objective(net(next(source))).backward()
    source.close()


def run_mat(folder: Path) -> None:
    """Two forwards of the MatRead net (the file read each time), with backward."""
    net = Net("mat_net.prototxt", phase="TRAIN")
    for _ in range(2):
        net.objective(net({})).backward()


def run_solver(folder: Path) -> None:
    param = load_solver_param("solver.prototxt")
    param.max_iter = min(param.max_iter, 2)      # a long run is not a hang
    param.test_iter[:] = [min(n, 2) for n in param.test_iter]
    param.snapshot_prefix = "out/snap"
    Solver(param, QUIET).solve()


def run_caffemodel(folder: Path) -> None:
    _forward(Net("deploy.prototxt", phase="TEST", weights="deploy.caffemodel"))


def run_solverstate(folder: Path) -> None:
    param = load_solver_param("solver.prototxt")
    param.snapshot_prefix = "out/snap"
    Solver(param, QUIET).solve("snap_iter_1.solverstate")


def run_caffemodel_h5(folder: Path) -> None:
    _forward(Net("deploy.prototxt", phase="TEST", weights="snap_h5_iter_1.caffemodel.h5",
                 allow_missing=True))


def run_solverstate_h5(folder: Path) -> None:
    param = load_solver_param("solver.prototxt")
    param.snapshot_prefix, param.snapshot_format = "out/snap", caffe_pb2.SolverParameter.HDF5
    Solver(param, QUIET).solve("snap_h5_iter_1.solverstate.h5")


def run_hdf5_data(folder: Path) -> None:
    net = Net("hdf5_net.prototxt", phase="TRAIN", source_kwargs={"seed": 0})
    for _ in range(2):
        _forward(net)


def run_mean(folder: Path) -> None:
    load_mean("mean.binaryproto")
    net = Net("data_net.prototxt", phase="TRAIN", source_kwargs={"seed": 0, "workers": 0})
    _forward(net)
    net.sources[0].close()


def run_datum(folder: Path) -> None:
    data = Path("records.bin").read_bytes()
    records, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at:at + 4], "little")
        records.append((f"{len(records):08d}", data[at + 4:at + 4 + size]))
        at += 4 + size
    shutil.rmtree("db")
    write_lmdb("db", records)
    with LmdbReader("db"):
        pass
    compute_image_mean("db")
    net = Net("data_net.prototxt", phase="TRAIN", source_kwargs={"seed": 0, "workers": 0})
    for _ in range(2):
        _forward(net)
    net.sources[0].close()


def run_leveldb(folder: Path, net_file: str = "leveldb_net.prototxt") -> None:
    net = Net(net_file, phase="TRAIN", source_kwargs={"seed": 0})
    for _ in range(2):
        _forward(net)
    net.sources[0].close()


def run_leveldb_table(folder: Path) -> None:
    run_leveldb(folder, "leveldb_table_net.prototxt")


def run_zoo(folder: Path) -> str | None:
    """`python -m runner.zoo verify` and `classify.py` on the folder: "ours" when either
    exits 2, their error exit."""
    from runner.classify import main as classify
    from runner.zoo.__main__ import main as zoo

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        codes = [zoo(["verify", "zoo"]), classify(["zoo", "zoo/image.png"])]
    if any(code not in (0, 2) for code in codes):
        raise RuntimeError(f"exit codes {codes}: expected 0 or 2")
    return "ours" if 2 in codes else None


FORMATS = {
    "net prototxt": Format("train_val.prototxt", BYTE_MUTATORS + TEXT_MUTATORS * 2, run_net),
    "fork net prototxt": Format("fork_net.prototxt", BYTE_MUTATORS + TEXT_MUTATORS * 2, run_fork_net),
    "net prototxt to onnx": Format("onnx_net.prototxt", BYTE_MUTATORS + TEXT_MUTATORS * 2, run_onnx_net),
    "dense image pairs": Format("pairs.txt", BYTE_MUTATORS + TEXT_MUTATORS, run_dense),
    "label image": Format("lab1.png", BYTE_MUTATORS, run_dense),
    "annotated datum": Format("anno.bin", BYTE_MUTATORS + [message_mutator(caffe_pb2.AnnotatedDatum)] * 6,
                              run_annotated_datum),
    "voc xml": Format("anno.xml", BYTE_MUTATORS + TEXT_MUTATORS, run_voc_xml),
    "video": Format("clip.avi", BYTE_MUTATORS, run_video),
    "mat file": Format("seg_blob_0.mat", BYTE_MUTATORS, run_mat),
    "solver prototxt": Format("solver.prototxt", BYTE_MUTATORS + TEXT_MUTATORS * 2, run_solver),
    "caffemodel": Format("deploy.caffemodel",
                         BYTE_MUTATORS + [message_mutator(caffe_pb2.NetParameter)] * 6,
                         run_caffemodel),
    "solverstate": Format("snap_iter_1.solverstate",
                          BYTE_MUTATORS + [message_mutator(caffe_pb2.SolverState)] * 6,
                          run_solverstate),
    "caffemodel.h5": Format("snap_h5_iter_1.caffemodel.h5", BYTE_MUTATORS + [hdf5_edit] * 6,
                            run_caffemodel_h5),
    "solverstate.h5": Format("snap_h5_iter_1.solverstate.h5", BYTE_MUTATORS + [hdf5_edit] * 6,
                             run_solverstate_h5),
    "hdf5 data": Format("rows.h5", BYTE_MUTATORS + [hdf5_edit] * 6, run_hdf5_data),
    "mean binaryproto": Format("mean.binaryproto",
                               BYTE_MUTATORS + [message_mutator(caffe_pb2.BlobProto)] * 6,
                               run_mean),
    "datum": Format("records.bin", None, run_datum),   # see `datum_input`
    "leveldb": Format("ldb/000003.log", BYTE_MUTATORS, run_leveldb),
    "leveldb manifest": Format("ldb/MANIFEST-000002", BYTE_MUTATORS, run_leveldb),
    "leveldb table": Format("ldbt/000005.ldb", BYTE_MUTATORS, run_leveldb_table),
    "zoo readme.md": Format("zoo/readme.md",
                            BYTE_MUTATORS + TEXT_MUTATORS + YAML_MUTATORS * 3, run_zoo),
}
DATUM_MUTATORS = BYTE_MUTATORS + [message_mutator(caffe_pb2.Datum)] * 6


def datum_input(seed: bytes, rng, mutate) -> tuple[bytes, str]:
    """records.bin with one record mutated (length-prefixed records)."""
    records, at = [], 0
    while at < len(seed):
        size = int.from_bytes(seed[at:at + 4], "little")
        records.append(seed[at + 4:at + 4 + size])
        at += 4 + size
    i = int(rng.integers(len(records)))
    records[i], names = mutate(records[i], DATUM_MUTATORS, rng)
    return b"".join(len(r).to_bytes(4, "little") + r for r in records), f"record {i}: {names}"


def run(name: str, folder: Path) -> str | None:
    """The entry point of format `name`, run in `folder` (a copy of the seeds); "ours" when
    a command line reported an error, else None (exceptions propagate)."""
    with _inside(folder):
        return FORMATS[name].run(folder)
