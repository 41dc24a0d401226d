"""Train a net for a few iterations with Caffe's solver rules (the Solver's own training
step) and record, per iteration and per learnable layer, the mean absolute gradient of its
weight blob.

The statistic for layer l at iteration t is mean_i |dE/dW_i| over the elements of l's
weight blob (blob 0), where E is Caffe's objective (sum over tops of loss_weight * top,
auxiliary losses included when present), taken after backward and before the update,
that is before weight decay is added to the diff.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from runner.net import Net
from runner.proto import caffe_pb2
from runner.solver.batches import BatchStream
from runner.solver.errors import SolverDiverged
from runner.solver.step import TrainingStep


@dataclass
class GradientRecord:
    """Mean absolute weight gradients: `values[t, l]` for iteration t and layer `layers[l]`."""
    layers: list[str]
    values: np.ndarray
    losses: list[float]
    seconds: float

    def mean_over_iterations(self) -> dict[str, float]:
        """Each layer's statistic averaged over the recorded iterations."""
        return dict(zip(self.layers, self.values.mean(axis=0).tolist()))


def weight_blobs(net: Net) -> list[tuple[str, torch.nn.Parameter]]:
    """(layer name, weight blob) for each layer whose first blob is learned (lr_mult > 0),
    in net order; a blob shared with an earlier layer counts for its owner only."""
    seen, out = set(), []
    for layer in net.layers.values():
        if not len(layer.blobs):
            continue
        blob = layer.blobs[0]
        if isinstance(blob, torch.nn.Parameter) and blob.requires_grad and id(blob) not in seen:
            seen.add(id(blob))
            out.append((layer.name, blob))
    return out


def mean_abs_gradient(blob: torch.Tensor) -> float:
    """mean_i |grad_i| of one blob in float64; a blob no loss reaches has Caffe's zero diff."""
    if blob.grad is None:
        return 0.0
    return blob.grad.detach().double().abs().mean().item()


def initial_blobs(train: caffe_pb2.NetParameter, seed: int = 0) -> dict[str, list[torch.Tensor]]:
    """Each layer's blobs as its fillers draw them after torch.manual_seed(seed)."""
    net = probe_net(train, seed)
    return {layer.name: [b.detach().clone() for b in layer.blobs]
            for layer in net.layers.values() if len(layer.blobs)}


def _start_from(net: Net, blobs: dict[str, list[torch.Tensor]]) -> None:
    """Copy `blobs` into the layers of `net` with the same names."""
    with torch.no_grad():
        for layer in net.layers.values():
            for mine, given in zip(layer.blobs, blobs.get(layer.name, ())):
                if mine.shape != given.shape:
                    raise ValueError(f"layer '{layer.name}': start blob of shape "
                                     f"{list(given.shape)}, the layer has {list(mine.shape)}")
                mine.copy_(given)


def probe_net(train: caffe_pb2.NetParameter, seed: int = 0,
              start: dict[str, list[torch.Tensor]] | None = None) -> Net:
    """The TRAIN net `train`, fillers drawn after torch.manual_seed(seed) (as the Solver
    draws them with random_seed `seed`), then the layers named in `start` set to those blobs."""
    torch.manual_seed(seed)
    net = Net(train, phase="TRAIN", source_kwargs={"seed": seed})
    if start is not None:
        _start_from(net, start)
    return net


def record_training(net: Net, solver: caffe_pb2.SolverParameter, iters: int,
                    batches: Iterator[dict], *, seed: int = 0, amp: bool = False,
                    desc: str = "probe") -> GradientRecord:
    """Run `iters` iterations of the Solver's training step on `net` with `seed` as
    random_seed (the solver's `type`, lr policy, iter_size, clipping, momentum and weight
    decay, per-iteration reseed, bf16 autocast when `amp`), recording the statistic."""
    blobs = weight_blobs(net)
    if not blobs:
        raise ValueError(f"net '{net.name}': no layer with a learned weight blob to probe")
    step = TrainingStep(net, solver, seed=seed, amp=amp)
    values = np.zeros((iters, len(blobs)))
    losses = []

    def record(loss: float, _blobs: dict) -> None:
        """The statistic of iteration len(losses), after backward and before the update."""
        if not math.isfinite(loss):
            raise SolverDiverged(f"net '{net.name}': the loss is {loss} at probe iteration "
                                 f"{len(losses)}")
        values[len(losses)] = [mean_abs_gradient(w) / solver.iter_size for _, w in blobs]
        losses.append(loss)

    began = time.perf_counter()
    for it in tqdm(range(iters), desc=desc, unit="iter", leave=False):
        step(batches, it, before_update=record)
    return GradientRecord([name for name, _ in blobs], values, losses,
                          time.perf_counter() - began)


def record_gradients(train: caffe_pb2.NetParameter, solver: caffe_pb2.SolverParameter,
                     iters: int, *, inputs: Callable[[Net], Iterator[dict]] | None = None,
                     seed: int = 0, start: dict[str, list[torch.Tensor]] | None = None,
                     amp: bool = False, desc: str = "probe") -> GradientRecord:
    """`record_training` on `probe_net(train, seed, start)`. `inputs(net)` yields the
    batches of a net whose data layer is an Input layer; without it the net's own data
    layers are read."""
    net = probe_net(train, seed, start)
    batches = BatchStream(net.sources, torch.device("cpu")) if inputs is None else inputs(net)
    return record_training(net, solver, iters, batches, seed=seed, amp=amp, desc=desc)
