"""Solver schedules: the paper's training lengths, and our choices where it gives none.

ImageNet lengths are epochs at the dataset's train batch (the paper: CNN-8 80 epochs,
CNDS-8 65, CNDS-13 67); Places205 lengths are iterations at batch 256 (CNN-8 240,000,
CNDS-8 190,000). docs/generator.md lists the choices for the other nets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from generator.architectures import Net


@dataclass(frozen=True)
class Schedule:
    """The per-net numbers of solver.prototxt (the rest is the paper's fixed recipe)."""
    max_iter: int
    stepsize: int
    test_iter: int
    test_interval: int
    display: int
    snapshot: int


def imagenet_epochs(variant: str, depth: int) -> int:
    """Paper: CNN-8 80, CNDS-8 65, CNDS-13 67; CNN-5 90 (CaffeNet); other CNNs 80,
    other CNDS nets the nearer paper figure (65 up to depth 10, 67 beyond)."""
    if variant == "cnn":
        return 90 if depth == 5 else 80
    return 65 if depth <= 10 else 67


def places_iterations(variant: str, depth: int) -> int:
    """Paper: CNN-8 240,000, CNDS-8 190,000; CNN-5 300,000 (Places-CNN); others alike."""
    if variant == "cnn":
        return 300_000 if depth == 5 else 240_000
    return 190_000


def schedule(net: Net) -> Schedule:
    """The solver numbers for `net` on its dataset."""
    ds, cfg = net.dataset, net.config
    test_iter = math.ceil(ds.test_images / ds.test_batch)
    if ds.epochs is not None:
        return own_data_schedule(ds, test_iter)
    if ds.name == "imagenet":
        max_iter = math.ceil(imagenet_epochs(cfg.variant, cfg.depth) * ds.train_images / ds.train_batch)
        return Schedule(max_iter, 200_000, test_iter, 10_000, 20, 10_000)
    if ds.name == "places205":
        return Schedule(places_iterations(cfg.variant, cfg.depth), 80_000, test_iter, 10_000, 20, 10_000)
    return Schedule(3_000, 2_000, test_iter, 500, 50, 1_000)


def own_data_schedule(ds, test_iter: int) -> Schedule:
    """A user's dataset: `ds.epochs` passes over its training set, a test every epoch, the
    lr step at two thirds of the run, five snapshots, a log line about 4 times an epoch."""
    per_epoch = math.ceil(ds.train_images / ds.train_batch)
    max_iter = ds.epochs * per_epoch
    return Schedule(max_iter, max(1, round(max_iter * 2 / 3)), test_iter, per_epoch,
                    max(1, min(50, per_epoch // 4)), max(1, math.ceil(max_iter / 5)))
