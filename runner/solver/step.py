"""One iteration of Caffe's Solver::Step on a net: zero the diffs, reseed, iter_size
forward/backward passes (diffs accumulate, losses averaged), then ApplyUpdate (lr policy,
clip, normalise, regularise, update). The Solver loop, the gradient probe and the
benchmarks all train through it, so they follow the same rules.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterator

import torch

from runner.precision import NO_CPU_BF16, cpu_bf16_supported, inner_products_in_fp32_under_cpu_autocast
from runner.solver.lr_policy import LearningRatePolicy
from runner.solver.updates import make_update


def iteration_seed(seed: int, rank: int, it: int) -> int:
    """torch's RNG is reseeded from (random_seed, rank, iter) every iteration, so a resumed
    run draws the same dropout masks as an uninterrupted one."""
    return (seed * 1_000_003 + rank * 7_919 + it * 104_729) % (2**63)


class TrainingStep:
    """Caffe's per-iteration training step for `net` under SolverParameter `param`.

    `model` is what runs the forward (the net itself, or its DDP/compiled wrapper);
    `no_sync` (DDP's) defers the gradient all-reduce to the last of iter_size passes;
    `amp` runs forward and objective under bf16 autocast (on the CPU with InnerProducts
    in fp32, runner/precision.py; on a CPU without native bf16 it trains in fp32 and passes
    why to `on_warning`, a Python warning by default). `on_rate(it, rate)` is called
    before the update, where Caffe logs the rate.
    """

    def __init__(self, net, param, *, seed: int, rank: int = 0, model=None, amp: bool = False,
                 no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
                 on_rate: Callable[[int, float], None] | None = None,
                 on_warning: Callable[[str], None] | None = None):
        self.net = net
        self.model = net if model is None else model
        self.iter_size = param.iter_size
        self.seed, self.rank = seed, rank
        self.no_sync = no_sync
        self.on_rate = on_rate
        self.update = make_update(param.type, net.learnable_params(), param)
        self.lr_policy = LearningRatePolicy(param)
        if amp and self.device().type == "cpu" and not cpu_bf16_supported():
            (on_warning or warnings.warn)(f"--amp: {NO_CPU_BF16}; training in fp32")
            amp = False
        self.amp = amp
        if amp:
            inner_products_in_fp32_under_cpu_autocast(net)

    def __call__(self, batches: Iterator[dict], it: int,
                 before_update: Callable[[float, dict], None] | None = None) -> float:
        """Iteration `it` (updates done so far) on `batches`; returns its mean loss.
        `before_update(loss, blobs)` sees the accumulated diffs before clipping and the
        update (and may raise to stop before it)."""
        self.zero_diffs()
        torch.manual_seed(iteration_seed(self.seed, self.rank, it))
        loss, blobs = self.forward_backward(batches)
        if before_update is not None:
            before_update(loss, blobs)
        self.apply_update(it)
        return loss

    def zero_diffs(self) -> None:
        """Caffe's ClearParamDiffs (a None grad reads as Caffe's zero diff)."""
        for w in self.update.weights:
            w.grad = None

    def device(self) -> torch.device:
        """Where the trained weights are (the CPU for a net without any)."""
        return self.update.weights[0].device if self.update.weights else torch.device("cpu")

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the net's device when `amp`, else nothing."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device().type, dtype=torch.bfloat16)

    def forward_backward(self, batches: Iterator[dict]) -> tuple[float, dict]:
        """iter_size passes with accumulated diffs; returns (mean loss, last pass's blobs)."""
        n = self.iter_size
        total = 0.0
        for i in range(n):
            batch = next(batches)
            defer = self.no_sync is not None and i < n - 1
            with self.no_sync() if defer else contextlib.nullcontext():
                with self.autocast():
                    blobs = self.model(batch)
                    objective = self.net.objective(blobs)
                objective.backward()
            total += objective.detach()
        return float(total) / n, blobs

    def apply_update(self, it: int) -> None:
        """Caffe's ApplyUpdate after `it` finished updates."""
        rate = self.lr_policy.rate(it)
        if self.on_rate is not None:
            self.on_rate(it, rate)
        self.update.apply(rate, it)
