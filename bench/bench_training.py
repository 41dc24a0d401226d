"""CPU training paths on the ImageNet CNDS-8 train net, batch 8: forward + backward of the
converted net in fp32 NCHW, fp32 channels_last (the solver's --channels-last) and bf16
autocast + channels_last (--amp --channels-last: InnerProducts stay fp32), against a hand-written eager fp32 NCHW
module of the same architecture (bench/bench_converter.py's).

All run in one process, interleaved in rounds; each figure is the median step time.
Targets: fast fp32 path / hand-written <= 0.8, bf16 / hand-written <= 0.5,
channels_last / NCHW <= 1.0. The fp32 paths must keep Caffe's numbers: after 10 SGD
iterations (the solver's TrainingStep) from the same weights and batches, every weight
of the channels_last net is within 1e-5 (relative to the blob's largest) of the NCHW net's.

    python -m bench.bench_training [--iters 6] [--warmup 2] [--threads N] [--batch 8]
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import time

import torch

from bench.bench_converter import CASES, HandWrittenCNDS8, converted_net, copy_weights, step_hand
from runner.precision import inner_products_in_fp32_under_cpu_autocast
from runner.proto import caffe_pb2
from runner.solver.step import TrainingStep

CL = torch.channels_last


def step(net, inputs, amp: bool = False) -> None:
    """One forward + backward of the converted net (bf16 autocast when `amp`)."""
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        objective = net.objective(net(inputs))
    objective.backward()


def weights_gap_after_sgd(reference, fast, inputs, fast_inputs, iters: int = 10) -> float:
    """max over blobs of max |fast - reference| / max |reference| after `iters` of the
    solver's SGD iterations (lr 0.01, momentum 0.9, weight decay 5e-4) on both."""
    param = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", momentum=0.9,
                                      weight_decay=0.0005, type="SGD")
    for net, batch in ((reference, inputs), (fast, fast_inputs)):
        train = TrainingStep(net, param, seed=1)
        for it in range(iters):
            train(itertools.repeat(batch), it)
    gap = 0.0
    for (_, a, _, _), (_, b, _, _) in zip(reference.learnable_params(), fast.learnable_params()):
        gap = max(gap, float((b.detach() - a.detach()).abs().max() / a.detach().abs().max()))
    return gap


def emit(case: str, ratio: float, figure: str, target: str) -> None:
    print(f"{case:44s} {figure:52s} ratio {ratio:.3g}  (target {target})")
    print("BENCH " + json.dumps({"case": case, "ratio": round(ratio, 6), "figure": figure,
                                 "target": target}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sgd-iters", type=int, default=10, help="iterations of the numbers check")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name, train_val, _, channels, side, *arch = CASES[1]
    torch.manual_seed(0)
    nchw = converted_net(train_val, args.batch, channels, side)
    hand = HandWrittenCNDS8(channels, side, *arch).train()
    copy_weights(nchw, hand)
    nhwc = copy.deepcopy(nchw).to(memory_format=CL)
    amp = copy.deepcopy(nhwc)
    inner_products_in_fp32_under_cpu_autocast(amp)   # what the solver's --amp does on the CPU
    x = torch.randn(args.batch, channels, side, side)
    label = torch.randint(0, arch[-1], (args.batch,))
    inputs = {"data": x, "label": label.float()}
    cl_inputs = {"data": x.contiguous(memory_format=CL), "label": label.float()}
    aux_weight = nchw.loss_weights["loss_ds1"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{name} train net, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {load:.1f}; median of {args.iters} "
          f"interleaved forward+backward steps after {args.warmup}")
    runs = {"hand-written fp32": lambda: step_hand(hand, x, label, aux_weight),
            "NCHW fp32": lambda: step(nchw, inputs),
            "channels_last fp32": lambda: step(nhwc, cl_inputs),
            "channels_last bf16": lambda: step(amp, cl_inputs, amp=True)}
    times = {k: [] for k in runs}
    for i in range(args.warmup + args.iters):
        for key in (list(runs) if i % 2 else list(runs)[::-1]):
            start = time.perf_counter()
            runs[key]()
            if i >= args.warmup:
                times[key].append(time.perf_counter() - start)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    hand_ms = ms["hand-written fp32"]
    for key in runs:
        print(f"  {key:20s} {ms[key]:8.1f} ms")
    emit("fast fp32 (channels_last) / hand-written", ms["channels_last fp32"] / hand_ms,
         f"{ms['channels_last fp32']:.0f} / {hand_ms:.0f} ms", "<= 0.8")
    emit("bf16 autocast + channels_last / hand-written", ms["channels_last bf16"] / hand_ms,
         f"{ms['channels_last bf16']:.0f} / {hand_ms:.0f} ms", "<= 0.5")
    emit("channels_last / NCHW fp32", ms["channels_last fp32"] / ms["NCHW fp32"],
         f"{ms['channels_last fp32']:.0f} / {ms['NCHW fp32']:.0f} ms", "<= 1.0")
    emit("converted NCHW / hand-written fp32", ms["NCHW fp32"] / hand_ms,
         f"{ms['NCHW fp32']:.0f} / {hand_ms:.0f} ms", "<= 1.05")
    gap = weights_gap_after_sgd(nchw, nhwc, inputs, cl_inputs, args.sgd_iters)
    emit(f"channels_last vs NCHW weights after {args.sgd_iters} SGD iterations", gap,
         "max |difference| / max |weight|", "<= 1e-05")


if __name__ == "__main__":
    main()
