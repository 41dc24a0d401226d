"""CPU inference: Net.for_inference() against OpenCV's DNN module (cv2.dnn.readNetFromCaffe)
on the same prototxt and weights, target <= 0.8 (ours / OpenCV wall time).

Nets (bench/inference_nets.py): the ImageNet CNDS-8 deploy net and nets shaped like
GoogLeNet, ResNet-50 and SqueezeNet 1.1, seeded He-scaled random weights, batch 1 and 8.
Both libraries get the same thread count (torch.set_num_threads, cv2.setNumThreads) and
run interleaved in this process; each figure is the median of `--iters` forwards after
`--warmup`. Ours runs twice: at that fixed count, and with the default adaptive threads
(runner/threads.py), both against OpenCV at that count. Then all of it again with a
second process spinning on one core.

    python -m bench.bench_inference [--iters 15] [--warmup 3] [--threads N] [--nets ...]
        [--batches 1,8] [--no-busy] [--layers]

`--layers` also prints, per net and batch, each layer's median time in both (ours: each
step of the inference form timed alone; OpenCV: its own per-layer profile).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.inference_nets import NETS, build
from runner.threads import allowed_cpus


def spin(cpu: int) -> None:
    """Keep one core busy until killed."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    while True:
        pass


def interleaved(runs: dict, iters: int, warmup: int) -> dict[str, float]:
    """Median wall seconds per callable, alternating their order every round."""
    times = {k: [] for k in runs}
    order = list(runs)
    for i in range(warmup + iters):
        for key in (order if i % 2 else order[::-1]):
            start = time.perf_counter()
            runs[key]()
            if i >= warmup:
                times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def report(case: str, ours: float, theirs: float, extra: str = "") -> None:
    figure = f"ours {ours * 1e3:.1f} ms, OpenCV {theirs * 1e3:.1f} ms" + extra
    print(f"{case:48s} {figure:44s} ratio {ours / theirs:.3f}")
    print("BENCH " + json.dumps({"case": case, "ratio": round(ours / theirs, 4),
                                 "figure": figure, "target": "<= 0.8"}), flush=True)


def writer_of(net, blob: str) -> str:
    """The last layer that writes `blob` (OpenCV names a blob's value by that layer)."""
    return [lp.name for lp in net.net_param.layer if blob in lp.top][-1]


def bench_net(name: str, batch: int, threads: int, args, folder: Path) -> None:
    net, prototxt, weights = build(name, batch, folder)
    x = torch.randn(net.blob_shapes[net.input_names[0]], generator=torch.Generator().manual_seed(1))
    blob = x.numpy()
    output = net.output_names[0]
    softmax = next(lp for lp in net.net_param.layer if lp.top[0] == output)
    logits = softmax.bottom[0]          # compared too: random-weight probabilities saturate
    fixed = net.for_inference(outputs=[output, logits], threads=threads)
    opencv = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))

    def theirs():
        opencv.setInput(blob)
        return opencv.forward()

    def ours(model=fixed):
        return model({net.input_names[0]: x})[output]

    opencv.setInput(blob)
    expected = opencv.forward([softmax.name, writer_of(net, logits)])
    got = fixed({net.input_names[0]: x})
    gaps = [float(np.abs(got[n].numpy().reshape(-1) - e.reshape(-1)).max() / max(1.0, np.abs(e).max()))
            for n, e in zip((output, logits), expected)]
    note = f", largest difference from OpenCV {max(gaps):.1e} (relative)"
    label = f"{name} batch {batch}"
    adaptive = net.for_inference(outputs=[output], threads="auto")
    runs = {"ours": ours, "auto": lambda: ours(adaptive), "cv": theirs}
    medians = interleaved(runs, args.iters, args.warmup)
    report(label, medians["ours"], medians["cv"], note)
    report(f"{label}, adaptive threads", medians["auto"], medians["cv"],
           f" ({adaptive.threads.count} threads)")
    if args.layers:
        print_layers(label, *layer_times(fixed, opencv, {net.input_names[0]: x}, blob, args.iters))
    if not args.busy:
        return
    spinner = multiprocessing.get_context("spawn").Process(target=spin, args=(allowed_cpus()[0],),
                                                           daemon=True)
    spinner.start()
    try:
        time.sleep(0.5)
        medians = interleaved(runs, args.iters, args.warmup)
    finally:
        spinner.kill()
        spinner.join()
    report(f"{label}, 1 core busy, {threads} threads", medians["ours"], medians["cv"])
    report(f"{label}, 1 core busy, adaptive threads", medians["auto"], medians["cv"],
           f" ({adaptive.threads.count} threads)")


def layer_times(fixed, opencv, inputs: dict, blob, iters: int) -> tuple[dict, dict]:
    """Median ms per step of our inference form, and OpenCV's per-layer profile (ms)."""
    ours: dict[str, list[float]] = {}
    for _ in range(iters):
        blobs = fixed._check_inputs(inputs)
        with torch.no_grad(), fixed.threads.applied():
            for step in fixed.steps:
                start = time.perf_counter()
                blobs.update(zip(step.tops, step.layer(*[blobs[n] for n in step.bottoms])))
                ours.setdefault(step.key, []).append(time.perf_counter() - start)
        opencv.setInput(blob)
        opencv.forward()
    _, per_layer = opencv.getPerfProfile()
    ms = 1e3 / cv2.getTickFrequency()
    theirs = dict(zip(opencv.getLayerNames(), (float(t) * ms for t in per_layer.ravel())))
    return {k: statistics.median(v) * 1e3 for k, v in ours.items()}, theirs


def print_layers(label: str, ours: dict, theirs: dict, least_ms: float = 0.3) -> None:
    print(f"  {label}: layers over {least_ms} ms in either (ms, ours / OpenCV)")
    for name in dict.fromkeys([*ours, *theirs]):
        a, b = ours.get(name), theirs.get(name)
        if max(a or 0, b or 0) >= least_ms:
            print(f"    {name:24s} {'-' if a is None else f'{a:7.2f}':>7s} {'-' if b is None else f'{b:7.2f}':>7s}")
    print(f"    {'sum':24s} {sum(ours.values()):7.2f} {sum(theirs.values()):7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(allowed_cpus()),
                    help="threads for both libraries (default: the CPUs this process may use)")
    ap.add_argument("--nets", default=",".join(NETS), help=f"comma-separated, of: {', '.join(NETS)}")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--no-busy", dest="busy", action="store_false",
                    help="skip the runs with a second process busy on one core")
    ap.add_argument("--layers", action="store_true", help="also print per-layer times of both")
    args = ap.parse_args()
    names = args.nets.split(",")
    unknown = [n for n in names if n not in NETS]
    if unknown:
        ap.error(f"unknown nets {unknown}; known: {', '.join(NETS)}")
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, OpenCV {cv2.__version__}, {args.threads} threads each, "
          f"load average {load:.1f}; median of {args.iters} interleaved forwards after {args.warmup}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for batch in (int(b) for b in args.batches.split(",")):
                bench_net(name, batch, args.threads, args, Path(tmp))


if __name__ == "__main__":
    main()
