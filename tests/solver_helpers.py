"""Shared by the solver tests: a small LMDB of random images, a small classifier net
reading it, and a solver around that net."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runner.data.datum import image_to_datum
from runner.data.lmdb_store import write_lmdb
from runner.proto import parse_solver_text
from runner.solver import Solver, SolverOptions


def make_lmdb(path: Path, count: int, side: int = 8, classes: int = 3, seed: int = 0) -> Path:
    """`count` random grey side x side images labelled by their brightest third."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        image = rng.integers(0, 256, (side, side), dtype=np.uint8)
        label = int(image.mean() * classes // 256)
        records.append((f"{i:08d}_{i}.png", image_to_datum(image, label).SerializeToString()))
    write_lmdb(path, records, total=count)
    return path


def classifier_net(source: Path, batch: int, *, crop: int = 0, mirror: bool = False,
                   dropout: float = 0.0, aux: float = 0.0, test_source: Path | None = None,
                   test_batch: int = 4) -> str:
    """conv -> relu -> pool -> [dropout] -> ip (+ an aux ip loss_ds1) -> SoftmaxWithLoss."""
    transform = f"scale: 0.00390625 mirror: {str(mirror).lower()}" + (f" crop_size: {crop}" if crop else "")
    layers = [f'''
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ {transform} }}
  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}''']
    if test_source is not None:
        layers.append(f'''
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ scale: 0.00390625 {f"crop_size: {crop}" if crop else ""} }}
  data_param {{ source: "{test_source}" batch_size: {test_batch} backend: LMDB }} }}''')
    layers.append('''
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }''')
    top = "pool1"
    if dropout:
        layers.append(f'''
layer {{ name: "drop1" type: "Dropout" bottom: "pool1" top: "drop1"
  dropout_param {{ dropout_ratio: {dropout} }} }}''')
        top = "drop1"
    layers.append(f'''
layer {{ name: "ip" type: "InnerProduct" bottom: "{top}" top: "ip"
  param {{ lr_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy"
  include {{ phase: TEST }} }}''')
    if aux:
        layers.append(f'''
layer {{ name: "ip_ds1" type: "InnerProduct" bottom: "pool1" top: "ip_ds1"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss_ds1" type: "SoftmaxWithLoss" bottom: "ip_ds1" bottom: "label"
  top: "loss_ds1" loss_weight: {aux} }}''')
    return 'name: "small"\n' + "".join(layers)


def make_solver(net_text: str, prefix: Path, options: SolverOptions | None = None,
                **fields) -> Solver:
    """A Solver for `net_text` with solver fields given as keywords (Caffe's names)."""
    settings = {"base_lr": 0.05, "lr_policy": '"fixed"', "momentum": 0.9, "weight_decay": 0.0005,
                "display": 0, "max_iter": 10, "random_seed": 5, **fields}
    lines = [f"net_param {{ {net_text} }}", f'snapshot_prefix: "{prefix}"']
    for key, value in settings.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"{key}: {v}")
    param = parse_solver_text("\n".join(lines))
    return Solver(param, options or SolverOptions(progress=False))
