"""ONNX Runtime against our Net: CPU inference of the ImageNet CNDS-8 deploy net exported
with runner.onnx_export, batch 8, both in this process, interleaved after a warmup.

Prints the median forward time of each and the ratio ONNX Runtime / Net (below 1: ONNX
Runtime is faster); no target, the figure tells users which to deploy with. Both use the
same number of threads; the outputs are checked equal within 1e-4 first.

    python bench/bench_onnx.py [--iters 10] [--warmup 2] [--batch 8] [--side 227] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from runner import Net
from runner.proto import read_net

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "models" / "imagenet-cnds8" / "deploy.prototxt"


def deploy_net(batch: int, side: int) -> Net:
    """The deploy net with its Input reshaped to (batch, 3, side, side), random weights."""
    param = read_net(DEPLOY)
    dims = param.layer[0].input_param.shape[0].dim
    dims[0], dims[2], dims[3] = batch, side, side
    net = Net(param, phase="TEST").eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a deploy net has no fillers: He-scaled weights, small biases
        for layer in net.layers.values():
            for blob in layer.blobs:
                if blob.dim() >= 2:
                    fan_in = blob[0].numel()
                    blob.copy_(torch.randn(blob.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                else:
                    blob.copy_(torch.rand(blob.shape, generator=gen) * 0.1)
    return net


def session_for(net: Net, outputs: list[str], threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        net.export_onnx(path, outputs)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--side", type=int, default=227, help="input side (227: the net's own)")
    ap.add_argument("--threads", type=int, default=0, help="threads for both (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    net = deploy_net(args.batch, args.side)
    # the logits (last InnerProduct) are compared: the softmax of filler weights is near uniform
    logits = [tops[0] for layer, _, tops in net.layer_steps() if layer.type == "InnerProduct"][-1]
    outputs = [logits, *net.output_names]
    session = session_for(net, outputs, threads)
    x = torch.randn(net.blob_shapes["data"])
    feed = {"data": x.numpy()}

    def run_net():
        with torch.no_grad():
            blobs = net({"data": x})
        return [blobs[name].numpy() for name in outputs]

    def run_onnx():
        return session.run(outputs, feed)

    gap = max(float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))
              for got, expected in zip(run_onnx(), run_net()))
    if gap > 1e-4:
        raise SystemExit(f"ONNX Runtime differs from the Net by {gap:.2e} (relative)")
    times = {"net": [], "onnx": []}
    for i in range(args.warmup + args.iters):
        order = [("net", run_net), ("onnx", run_onnx)]
        for kind, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            if i >= args.warmup:
                times[kind].append(time.perf_counter() - start)
    t_net, t_onnx = statistics.median(times["net"]), statistics.median(times["onnx"])
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {threads} threads, "
          f"median of {args.iters} interleaved forwards after {args.warmup} warmup")
    figure = (f"Net {t_net * 1e3:.1f} ms, ONNX Runtime {t_onnx * 1e3:.1f} ms per batch "
              f"(outputs equal within {gap:.1e})")
    case = f"ImageNet CNDS-8 batch {args.batch} side {args.side}, ONNX Runtime / Net"
    print("BENCH " + json.dumps({"case": case, "ratio": round(t_onnx / t_net, 4), "figure": figure}))


if __name__ == "__main__":
    main()
