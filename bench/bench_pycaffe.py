"""pycaffe facade overhead: `import caffe` against the runner it wraps, in one process.

  net:    caffe.Net forward() + backward() (Caffe's per-layer Backward filling every
          blob's diff) against runner.Net called as a module + objective().backward()
  solver: caffe.SGDSolver.step(N) against runner.solver.Solver.step(N) (solve.py's loop)
Both sides run the same train net, ImageNet CNDS-8 at batch 8 on the CPU by default, its
Data layers replaced by in-memory inputs (net) or DummyData (solver) so that no database
is read. Rounds are interleaved so that machine noise hits both alike; prints per-pass
medians and the median of the rounds' ratios (target <= 1.05).

    python bench/bench_pycaffe.py [--model M] [--batch 8] [--iters 3] [--rounds 5]
        [--solver-iters 10]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
from google.protobuf import text_format

import caffe
from runner import Net
from runner.proto import caffe_pb2, filter_net, read_net
from runner.solver import Solver, SolverOptions


def train_net(path: str, batch: int, data_type: str) -> caffe_pb2.NetParameter:
    """The TRAIN net with its Data layers as Input (or DummyData) tops of the same shapes."""
    net = filter_net(read_net(path), caffe_pb2.TRAIN, (), 0)
    first = net.layer[0]
    crop = first.transform_param.crop_size
    side = crop or 227
    channels = 1 if "mnist" in path else 3
    shapes = [(batch, channels, side, side), (batch,)]
    source = caffe_pb2.LayerParameter(name="data", type=data_type, top=["data", "label"])
    for shape in shapes:
        if data_type == "Input":
            source.input_param.shape.add(dim=shape)
        else:
            source.dummy_data_param.shape.add(dim=shape)
    if data_type == "DummyData":
        source.dummy_data_param.data_filler.add(type="gaussian")
        source.dummy_data_param.data_filler.add(type="constant", value=1)
    out = caffe_pb2.NetParameter(name=net.name)
    out.layer.append(source)
    out.layer.extend(lp for lp in net.layer if lp.type != "Data")
    return out


def interleaved(sides: dict, rounds: int, per_call: int) -> dict:
    """Per-call milliseconds of each side over rounds, alternating who goes first."""
    times = {name: [] for name in sides}
    order = list(sides.items())
    for fn in sides.values():
        fn()  # warm-up
    for r in range(rounds):
        for name, fn in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / per_call * 1e3)
    return times


def report(case: str, times: dict, facade: str, base: str) -> None:
    ratio = statistics.median(a / b for a, b in zip(times[facade], times[base]))
    figure = (f"{facade} {statistics.median(times[facade]):.1f} ms vs {base} "
              f"{statistics.median(times[base]):.1f} ms")
    print(f"{case}: {figure}, ratio {ratio:.3f} (target <= 1.05)")
    print("BENCH " + json.dumps({"case": case, "ratio": round(ratio, 4), "figure": figure,
                                 "target": "<= 1.05"}))


def bench_net(args, folder: str) -> None:
    param = train_net(args.model, args.batch, "Input")
    path = os.path.join(folder, "net.prototxt")
    with open(path, "w") as f:
        f.write(text_format.MessageToString(param))
    torch.manual_seed(1)
    facade = caffe.Net(path, caffe.TRAIN)
    torch.manual_seed(1)
    module = Net(param, phase="TRAIN")
    data = torch.randn(facade.blobs["data"].shape)
    label = torch.randint(0, int(facade.blobs["label"].shape[0]) or 1, (args.batch,)).float()
    facade.blobs["data"].data[...] = data.numpy()
    facade.blobs["label"].data[...] = label.numpy()
    inputs = {"data": data, "label": label}

    # Both sides do Caffe's work: each Backward adds into the parameter diffs, which
    # nothing clears between passes (autograd accumulates into .grad in place).
    def run_facade():
        for _ in range(args.iters):
            facade.forward()
            facade.backward()

    def run_module():
        for _ in range(args.iters):
            module.objective(module(inputs)).backward()

    times = interleaved({"caffe.Net": run_facade, "runner.Net": run_module}, args.rounds, args.iters)
    report(f"{param.name} batch {args.batch} forward+backward", times, "caffe.Net", "runner.Net")


def bench_solver(args, folder: str) -> None:
    solver_param = caffe_pb2.SolverParameter(
        base_lr=0.001, lr_policy="fixed", momentum=0.9, weight_decay=0.0005, max_iter=10**9,
        display=0, snapshot_after_train=False, random_seed=1,
        snapshot_prefix=os.path.join(folder, "s"))
    solver_param.net_param.CopyFrom(train_net(args.model, args.batch, "DummyData"))
    path = os.path.join(folder, "solver.prototxt")
    with open(path, "w") as f:
        f.write(text_format.MessageToString(solver_param))
    facade = caffe.SGDSolver(path)
    loop = Solver(solver_param, SolverOptions(progress=False, log_path=os.path.join(folder, "r.log")))
    n = args.solver_iters
    times = interleaved({"caffe.SGDSolver": lambda: facade.step(n),
                         "solve.py loop": lambda: loop.step(n)}, args.rounds, n)
    report(f"{solver_param.net_param.name} batch {args.batch} step({n})", times,
           "caffe.SGDSolver", "solve.py loop")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/imagenet-cnds8/train_val.prototxt")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3, help="forward+backward passes per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--solver-iters", type=int, default=10, help="N of step(N)")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} threads, {args.rounds} "
          "interleaved rounds")
    with tempfile.TemporaryDirectory(prefix="bench_pycaffe_") as folder:
        bench_net(args, folder)
        bench_solver(args, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
