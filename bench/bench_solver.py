"""Solver overhead: our Caffe solver's iteration against a bare torch loop.

Both run the same net (a Net built from the prototxt) on the same in-memory batches,
in one process, interleaved in rounds so that machine noise hits both alike:
  solver: Solver.step (zero grads, per-iteration RNG seed, forward, objective,
          backward, loss check, Caffe's lr policy and SGD update over lr/decay groups)
  bare:   forward, objective, backward, torch.optim.SGD (foreach) with the same groups
Each round times both sides back to back; prints per-iteration medians and the median over
rounds of the solver/bare ratio (target <= 1.05), which a noisy round does not pull.

    python bench/bench_solver.py [--model models/fashion-mnist-cnds8/train_val.prototxt]
        [--iters 10] [--rounds 5] [--batch N] [--gpu 0]
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time

import torch

from runner.proto import caffe_pb2, read_net
from runner.solver import Solver, SolverOptions
from runner.solver.distributed import DistContext


def solver_param(net, prefix: str) -> caffe_pb2.SolverParameter:
    param = caffe_pb2.SolverParameter(
        base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=100000, momentum=0.9,
        weight_decay=0.0005, max_iter=10**9, display=0, snapshot_after_train=False,
        random_seed=1, snapshot_prefix=prefix)
    param.net_param.CopyFrom(net)
    return param


def set_batch(net, batch: int | None) -> None:
    if batch:
        for lp in net.layer:
            if lp.type == "Data":
                lp.data_param.batch_size = batch


def bare_optimizer(net, base_lr, momentum, weight_decay):
    """torch.optim.SGD with one group per (lr_mult, decay_mult), as the bare baseline."""
    groups = {}
    for _, p, lr_mult, decay_mult in net.learnable_params():
        groups.setdefault((lr_mult, decay_mult), []).append(p)
    return torch.optim.SGD(
        [{"params": ps, "lr": base_lr * lr, "weight_decay": weight_decay * d}
         for (lr, d), ps in groups.items()], lr=base_lr, momentum=momentum, foreach=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/fashion-mnist-cnds8/train_val.prototxt")
    ap.add_argument("--iters", type=int, default=10, help="iterations per round and side")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batch", type=int, help="override data_param.batch_size")
    ap.add_argument("--gpu", help="CUDA device id (default: the CPU)")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.gpu is None else f"cuda:{args.gpu}")

    net_param = read_net(args.model)
    set_batch(net_param, args.batch)
    solver = Solver(solver_param(net_param, "/tmp/bench_solver/s"),
                    SolverOptions(progress=False, log_path="/tmp/bench_solver/s.log"),
                    DistContext(device=device))
    net = solver.net
    batches = [next(solver.train_batches) for _ in range(args.iters)]
    for source in net.sources:
        if hasattr(source, "close"):
            source.close()
    solver.train_batches = itertools.cycle(batches)
    opt = bare_optimizer(net, 0.01, 0.9, 0.0005)
    params = [p for _, p, _, _ in net.learnable_params()]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run_solver():
        solver.step(args.iters)

    def run_bare():
        for batch in batches:
            for p in params:
                p.grad = None
            blobs = net(batch)
            net.objective(blobs).backward()
            opt.step()

    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    times = {(side, clock): [] for side in ("solver", "bare") for clock in clocks}
    for fn in (run_solver, run_bare):  # warm-up
        fn()
    order = [("solver", run_solver), ("bare", run_bare)]
    for r in range(args.rounds):
        for side, fn in order if r % 2 == 0 else order[::-1]:  # alternate who goes first
            sync()
            start = {clock: read() for clock, read in clocks.items()}
            fn()
            sync()
            for clock, read in clocks.items():
                times[side, clock].append((read() - start[clock]) / args.iters * 1e3)
    batch = next(iter(batches[0].values())).shape[0]
    print(f"net {net.name}, batch {batch}, {device}, {args.rounds} rounds x {args.iters} "
          "iterations, interleaved; per-iteration medians, median of the rounds' ratios")
    for clock in clocks:
        solver_ms = statistics.median(times["solver", clock])
        bare_ms = statistics.median(times["bare", clock])
        ratio = statistics.median(a / b for a, b in zip(times["solver", clock],
                                                         times["bare", clock]))
        figure = f"solver {solver_ms:.2f} ms vs bare torch loop {bare_ms:.2f} ms per iteration"
        print(f"{clock:>4} time: {figure}, ratio solver/bare {ratio:.3f} (target <= 1.05)")
        print("BENCH " + json.dumps({"case": f"{net.name} batch {batch} {device} {clock} time",
                                     "ratio": round(ratio, 4), "figure": figure,
                                     "target": "<= 1.05"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
