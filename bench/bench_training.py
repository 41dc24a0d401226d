"""CPU training paths on the ImageNet CNDS-8 train net, batch 8: forward + backward of the
converted net in fp32 NCHW, fp32 channels_last and bf16 autocast + channels_last (--amp
--channels-last: InnerProducts stay fp32), against a hand-written eager fp32 NCHW module
of the same architecture (bench/bench_converter.py's).

All run in one process, interleaved in rounds; each figure is the median step time. The
converted net runs as the solver trains it: InnerProducts on oneDNN
(runner/layers/onednn_linear.py) and freed memory kept for reuse (runner/memory.py, which
the solver turns on for CPU training); the hand-written module runs as a plain PyTorch
process does (F.linear, glibc's malloc settings restored and its freed memory returned
before each of its steps). A hand-written step with freed memory kept is printed too, to
show how much of the gain is the allocator's.

The solver's --channels-last trains on the CPU in the format its own timing of the net
found faster (runner/solver/layout.py); that choice is made here too, and the
--channels-last row is the chosen format's time over NCHW's (1 when it chose NCHW).
Targets: the fastest fp32 path that keeps Caffe's numbers (below) / hand-written <= 0.8,
bf16 / hand-written <= 0.5, --channels-last / NCHW <= 1.0. On a CPU where oneDNN has no
bf16 the bf16 step is not run (its convolutions would take PyTorch's reference path) and
its row says so.

The numbers check trains, with the solver's SGD (TrainingStep: base_lr 0.001, momentum
0.9, weight decay 5e-4) from the same weights on one repeated batch, the reference (NCHW,
InnerProducts on F.linear, the sgemm Caffe calls), the fp32 paths in channels_last and in
NCHW (oneDNN inner products), and the reference started from weights perturbed by 1e-7
(relative, seeded), on each of --sgd-batches seeded batches. A path keeps Caffe's numbers
when, on every batch, the loss it reports at each of the 10 iterations is within 1e-5
(relative) of the reference's and its weights after the first are within 1e-5 of the
reference's (largest difference over the blob's largest weight). The weights after 10
iterations are reported beside the perturbed reference's: this net amplifies any
rounding-sized change (another convolution algorithm, summation order or BLAS, or the
1e-7 perturbation) to 4e-6..1e-4 of the weights in 10 iterations, depending on the batch,
so no implementation that is not bit-identical to the reference, Caffe's own included,
holds 1e-5 there. At base_lr 0.01 the randomly initialised net diverges.

    python -m bench.bench_training [--iters 12] [--warmup 2] [--threads N] [--batch 8]
        [--sgd-iters 10] [--sgd-batches 3]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import os
import statistics
import time

import torch

from bench.bench_converter import CASES, HandWrittenCNDS8, converted_net, copy_weights, step_hand
from runner.layers import onednn_linear
from runner.memory import keep_freed_memory
from runner.precision import cpu_bf16_supported, inner_products_in_fp32_under_cpu_autocast
from runner.proto import caffe_pb2
from runner.solver.layout import choose, training_pass_seconds
from runner.solver.step import TrainingStep

CL = torch.channels_last
SGD = caffe_pb2.SolverParameter(base_lr=0.001, lr_policy="fixed", momentum=0.9,
                                weight_decay=0.0005, type="SGD")
TOLERANCE = 1e-5   # of the numbers check (module docstring)
BF16_CASE, BF16_TARGET = "bf16 autocast + channels_last / hand-written", "<= 0.5"


def channels_last_net(net):
    """The channels_last form of `net`, a copy."""
    return copy.deepcopy(net).to(memory_format=CL)


def step(net, inputs, amp: bool = False) -> None:
    """One forward + backward of the converted net (bf16 autocast when `amp`)."""
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        objective = net.objective(net(inputs))
    objective.backward()


def weights_gap(reference, other) -> float:
    """max over blobs of max |other - reference| / max |reference|."""
    gap = 0.0
    for (_, a, _, _), (_, b, _, _) in zip(reference.learnable_params(), other.learnable_params()):
        gap = max(gap, float((b.detach() - a.detach()).abs().max() / a.detach().abs().max()))
    return gap


def perturbed(net, scale: float = 1e-7, seed: int = 0):
    """A copy of `net` with every learned weight w changed to w * (1 + scale * N(0, 1))."""
    out = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, w, _, _ in out.learnable_params():
            w.add_(w * scale * torch.randn(w.shape, generator=gen).to(w))
    return out


def sgd_trajectories(runs, iters: int) -> tuple[list[list[float]], list[list[float]]]:
    """Train each (net, batch, plain) of `runs` in step for `iters` SGD iterations
    (TrainingStep, `SGD`, the batch repeated; `plain`: InnerProducts on F.linear); returns
    (gaps, losses): gaps[i][k] is weights_gap(runs[0] net, runs[k + 1] net) and losses[i][k]
    the loss of runs[k], both at iteration i + 1."""
    steps = [(TrainingStep(net, SGD, seed=1), itertools.repeat(batch), plain)
             for net, batch, plain in runs]
    gaps, losses = [], []
    for it in range(iters):
        step_losses = []
        for train, batches, plain in steps:
            with onednn_linear.disabled() if plain else contextlib.nullcontext():
                step_losses.append(train(batches, it))
        losses.append(step_losses)
        gaps.append([weights_gap(runs[0][0], net) for net, _, _ in runs[1:]])
    return gaps, losses


def loss_gaps(losses: list[list[float]]) -> list[float]:
    """For each run after the first: max over iterations of |loss - first's| / |first's|."""
    return [max(abs(row[k] - row[0]) / abs(row[0]) for row in losses)
            for k in range(1, len(losses[0]))]


def emit(case: str, ratio: float | None, figure: str, target: str | None,
         not_applicable: str = "") -> None:
    """One row for bench/run_all.py (`target` None: a figure reported without one);
    `not_applicable` (and no ratio): why it did not run here."""
    shown = f"n/a: {not_applicable}" if not_applicable else f"{figure:52s} ratio {ratio:.3g}"
    print(f"{case:44s} {shown}" + (f"  (target {target})" if target else ""))
    record = {"case": case, "ratio": None if not_applicable else float(f"{ratio:.6g}"),
              "figure": figure, "target": target}
    if not_applicable:
        record["not_applicable"] = not_applicable
    print("BENCH " + json.dumps(record), flush=True)


def numbers_check(nchw, channels: int, side: int, classes: int, args) -> list[str]:
    """Run the numbers check (module docstring) on `args.sgd_batches` seeded batches, print
    its rows; returns the fp32 paths ("NCHW fp32", "channels_last fp32") that kept the
    reference's numbers on every batch."""
    paths = ("channels_last", "NCHW")
    first, last, loss = ({p: [] for p in paths} for _ in range(3))
    noise = []
    for seed in range(args.sgd_batches):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(args.batch, channels, side, side, generator=gen)
        label = torch.randint(0, classes, (args.batch,), generator=gen).float()
        batch = {"data": x, "label": label}
        cl_batch = {"data": x.contiguous(memory_format=CL), "label": label}
        gaps, losses = sgd_trajectories(
            [(copy.deepcopy(nchw), batch, True), (channels_last_net(nchw), cl_batch, False),
             (copy.deepcopy(nchw), batch, False), (perturbed(nchw), batch, True)], args.sgd_iters)
        loss_gap = loss_gaps(losses)
        for k, path in enumerate(paths):
            first[path].append(gaps[0][k])
            last[path].append(gaps[-1][k])
            loss[path].append(loss_gap[k])
        noise.append(gaps[-1][-1])
        print(f"numbers check, batch {seed}: reference (NCHW, F.linear) loss {losses[0][0]:.3g} -> "
              f"{losses[-1][0]:.3g} in {args.sgd_iters} SGD iterations (base_lr {SGD.base_lr:g}); "
              "channels_last / NCHW (oneDNN inner products) / reference perturbed by 1e-7: "
              "largest relative loss difference " + "/".join(f"{g:.2g}" for g in loss_gap)
              + ", weight gaps per iteration "
              + ", ".join("/".join(f"{g:.2g}" for g in row) for row in gaps), flush=True)
    batches = f"{args.sgd_batches} batches"
    kept = []
    for path in paths:
        emit(f"{path} fp32 vs reference loss, each of {args.sgd_iters} SGD iterations",
             max(loss[path]), f"largest relative difference, {batches}", f"<= {TOLERANCE:g}")
        emit(f"{path} fp32 vs reference weights after 1 SGD iteration", max(first[path]),
             f"largest difference / largest weight, {batches}", f"<= {TOLERANCE:g}")
        emit(f"{path} fp32 vs reference weights after {args.sgd_iters} SGD iterations",
             max(last[path]), f"{_span(last[path])}; reference vs itself perturbed by 1e-7: "
             f"{_span(noise)}", None)
        if max(loss[path]) <= TOLERANCE and max(first[path]) <= TOLERANCE:
            kept.append(f"{path} fp32")
    return kept


def _span(values: list[float]) -> str:
    return f"{min(values):.2g}-{max(values):.2g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sgd-iters", type=int, default=10, help="iterations of the numbers check")
    ap.add_argument("--sgd-batches", type=int, default=3, help="batches of the numbers check")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name, train_val, _, channels, side, *arch = CASES[1]
    torch.manual_seed(0)
    nchw = converted_net(train_val, args.batch, channels, side)
    hand = HandWrittenCNDS8(channels, side, *arch).train()
    copy_weights(nchw, hand)
    nhwc = channels_last_net(nchw)
    bf16 = cpu_bf16_supported()
    if bf16:
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
            "hand-written, kept": lambda: step_hand(hand, x, label, aux_weight),
            "NCHW fp32": lambda: step(nchw, inputs),
            "channels_last fp32": lambda: step(nhwc, cl_inputs)}
    if bf16:
        runs["channels_last bf16"] = lambda: step(amp, cl_inputs, amp=True)
    times = {k: [] for k in runs}
    for i in range(args.warmup + args.iters):
        for key in (list(runs) if i % 2 else list(runs)[::-1]):
            keep_freed_memory(key != "hand-written fp32")
            start = time.perf_counter()
            runs[key]()
            if i >= args.warmup:
                times[key].append(time.perf_counter() - start)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    hand_ms = ms["hand-written fp32"]
    for key in runs:
        print(f"  {key:20s} {ms[key]:8.1f} ms")
    keep_freed_memory(True)
    layout_seconds = training_pass_seconds(nchw, torch.device("cpu"))
    chosen = choose(layout_seconds)
    print(f"  --channels-last chose {chosen} (its own timing of the net: "
          + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in layout_seconds.items()) + ")")
    print(f"  hand-written with freed memory kept / as a plain process: "
          f"{ms['hand-written, kept'] / hand_ms:.3f}")

    kept_numbers = numbers_check(nchw, channels, side, arch[-1], args)

    for key, case in (("NCHW fp32", "converted NCHW / hand-written fp32"),
                      ("channels_last fp32", "converted channels_last / hand-written fp32")):
        emit(case, ms[key] / hand_ms, f"{ms[key]:.0f} / {hand_ms:.0f} ms", "<= 1.05")
    if kept_numbers:
        fastest = min(kept_numbers, key=ms.get)
        emit(f"fastest fp32 keeping the reference's numbers ({fastest}) / hand-written",
             ms[fastest] / hand_ms, f"{ms[fastest]:.0f} / {hand_ms:.0f} ms", "<= 0.8")
    else:
        emit("fastest fp32 keeping the reference's numbers / hand-written", None, "none did",
             "<= 0.8", f"no fp32 path stayed within {TOLERANCE:g}")
    if bf16:
        emit(BF16_CASE, ms["channels_last bf16"] / hand_ms,
             f"{ms['channels_last bf16']:.0f} / {hand_ms:.0f} ms", BF16_TARGET)
    else:
        emit(BF16_CASE, None, "not run", BF16_TARGET, "this CPU has no native bf16")
    flag_ms = ms["channels_last fp32" if chosen == "channels_last" else "NCHW fp32"]
    emit(f"--channels-last (trains in {chosen}) / NCHW fp32", flag_ms / ms["NCHW fp32"],
         f"{flag_ms:.0f} / {ms['NCHW fp32']:.0f} ms", "<= 1.0")


if __name__ == "__main__":
    main()
