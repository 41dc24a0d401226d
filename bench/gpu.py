"""The GPU benchmarks in one run (under 10 minutes on one GPU), printed and written as a table.

    python -m bench.gpu [--gpu 0] [--batch 128] [--seconds 20] [--out reports/bench_gpu.md]

1. the GPU's measured matmul rate (8192^3, fp32 with TF32 off, and bf16), the yardstick;
2. ImageNet CNDS-8 training throughput at batch 128 (forward, backward and Caffe's SGD
   update on an in-memory batch): fp32 (TF32 off), bf16 autocast + channels_last, and that
   + torch.compile (the solver's --amp --channels-last --compile); FLOPs per image are 6x the forward MACs
   of runner/shapes.py (forward 1x, backward 2x, 2 FLOPs per MAC), shown as a fraction
   of the matmul rate of the same precision;
3. the converter's forward+backward ratio against hand-written torch on CUDA
   (python -m bench.bench_converter --device cuda);
4. the Data source's images/s into the GPU on a 256x256 JPEG LMDB (crop 227, mirror), as
   it feeds a GPU (cropped bytes sent by DMA from the page-locked ring, float32 made on
   the GPU) and, for
   comparison, with float32 batches made by the workers and moved by the caller.
A measurement that raises (a torch.compile failure, say) becomes a "failed" row naming
the error, and the others still run. Without CUDA it says so and exits with status 2.
"""
from __future__ import annotations

import argparse
import io
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_converter import converted_net
from bench.run_all import parse_output
from generator.summary import shape_table
from runner.atomic import atomic_write_text
from runner.precision import use_caffe_precision
from runner.proto import caffe_pb2, read_net
from runner.solver.step import TrainingStep

ROOT = Path(__file__).resolve().parents[1]

MODEL = "models/imagenet-cnds8/train_val.prototxt"
CHANNELS, SIDE = 3, 227


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 8192, seconds: float = 3.0) -> float:
    """Sustained n x n x n matmul rate in TFLOP/s (TF32 off for fp32)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(5):
            a @ b
        _sync(device)
        count += 5
    return 2 * n ** 3 * count / (time.perf_counter() - start) / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_macs_per_image(model: str = MODEL, channels: int = CHANNELS, side: int = SIDE) -> int:
    """Multiply-adds of one image through the TRAIN net (main and auxiliary heads)."""
    net = read_net(str(ROOT / model))
    rows = shape_table(net, "TRAIN", {"data": (1, channels, side, side), "label": (1,)})
    return sum(r.macs for r in rows)


def train_throughput(device: torch.device, batch: int, seconds: float, amp: bool = False,
                     channels_last: bool = False, compile: bool = False,
                     model: str = MODEL, channels: int = CHANNELS, side: int = SIDE,
                     min_iters: int = 3) -> dict:
    """Images/s of the Solver's training step (forward, backward, Caffe SGD update) on one
    in-memory batch."""
    torch.manual_seed(0)
    net = converted_net(model, batch, channels, side).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    x = torch.randn(batch, channels, side, side, device=device).contiguous(memory_format=memory_format)
    classes = net.blob_shapes[next(lp.bottom[0] for lp in net.net_param.layer
                                   if lp.type == "SoftmaxWithLoss")][1]
    inputs = {"data": x, "label": torch.randint(0, classes, (batch,), device=device).float()}
    param = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", momentum=0.9,
                                      weight_decay=0.0005)
    forward = torch.compile(net) if compile else net
    train_step = TrainingStep(net, param, seed=0, model=forward, amp=amp)
    batches = itertools.repeat(inputs)
    start = time.perf_counter()
    for it in range(2):       # warm-up (and compilation)
        train_step(batches, it)
    _sync(device)
    warmup = time.perf_counter() - start
    count, start = 0, time.perf_counter()
    while count < min_iters or time.perf_counter() - start < seconds:
        train_step(batches, count)
        count += 1
        if count % 5 == 0 or count == min_iters:
            _sync(device)
    _sync(device)
    elapsed = time.perf_counter() - start
    return {"images_per_s": count * batch / elapsed, "iters": count, "warmup_s": warmup}


def converter_ratio(timeout: float = 240) -> tuple[float | None, str]:
    """bench_converter.py on CUDA: (ImageNet CNDS-8 ratio or None, its output)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.bench_converter", "--device", "cuda",
                               "--iters", "20"], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"bench_converter.py --device cuda ran past {timeout:.0f} s"
    rows = parse_output("converter", proc.stdout, None) if proc.returncode == 0 else []
    ratio = next((r.ratio for r in rows if "imagenet" in r.case.lower()), None)
    return ratio, proc.stdout + proc.stderr[-2000:]


def data_throughput(device: torch.device, batch: int, seconds: float, images: int = 512,
                    workers: int | None = None, bytes_to_device: bool = True) -> dict:
    """Data source images/s into `device` on a JPEG LMDB, with `workers` prefetch processes
    (None: the source's default): the source made for the device (bytes by DMA from the
    page-locked ring, float32 made there), or with `bytes_to_device` False float32 batches
    made by the workers and moved by the caller; and the main process's CPU time per image
    (what feeding the GPU costs the training process)."""
    from google.protobuf import text_format

    from bench.bench_data import make_images
    from runner.data.source import DataSource
    from runner.tools.convert_imageset import convert_imageset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        list_file = make_images(tmp, images)
        db = tmp / "jpeg_lmdb"
        convert_imageset(f"{tmp}/", str(list_file), str(db), encoded=True)
        lp = text_format.Parse(
            f'name: "data" type: "Data" top: "data" top: "label" '
            f'data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }} '
            f'transform_param {{ crop_size: {SIDE} mirror: true }}', caffe_pb2.LayerParameter())
        with DataSource(lp, "TRAIN", seed=0, workers=workers) as source:
            if bytes_to_device:
                source.to(device)
            next(source)
            count, start, cpu = 0, time.perf_counter(), time.process_time()
            while count < 2 or time.perf_counter() - start < seconds:
                for t in next(source).values():
                    t.to(device, non_blocking=True)
                count += 1
            _sync(device)
            elapsed = time.perf_counter() - start
            main_cpu = time.process_time() - cpu
            workers = source.workers
    return {"images_per_s": count * batch / elapsed, "workers": workers,
            "main_cpu_us": main_cpu / (count * batch) * 1e6}


def measured_row(case: str, measure, describe) -> tuple[str, str, str]:
    """(case, figure, detail) from `describe(measure())`; a measurement that raises (a
    torch.compile bug, say) gives (case, "failed", the error) and the run goes on."""
    try:
        result = measure()
    except Exception as exc:
        return case, "failed", failure(exc)
    return (case, *describe(result))


def failure(exc: Exception) -> str:
    """The first line of an exception, for a table cell."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:160]


def table(rows: list[tuple[str, str, str]]) -> str:
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    out = io.StringIO()
    for i, r in enumerate(rows):
        out.write("| " + " | ".join(c.ljust(w) for c, w in zip(r, width)) + " |\n")
        if i == 0:
            out.write("|" + "|".join("-" * (w + 2) for w in width) + "|\n")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per measurement")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench_gpu.md"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("python -m bench.gpu: no CUDA device (torch.cuda.is_available() is False, torch "
              f"{torch.__version__}); the GPU benchmarks need one. The CPU ones: make bench",
              file=sys.stderr)
        return 2
    device = torch.device(f"cuda:{args.gpu}")
    torch.cuda.set_device(device)
    use_caffe_precision()   # "fp32" below is IEEE fp32 (TF32 off), as Caffe computes
    start = time.perf_counter()
    name = torch.cuda.get_device_name(device)
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    fp32 = matmul_tflops(device, torch.float32)
    bf16 = matmul_tflops(device, torch.bfloat16)
    print(f"matmul: fp32 {fp32:.1f} TFLOP/s, bf16 {bf16:.1f} TFLOP/s", flush=True)
    flops = 6 * forward_macs_per_image()
    rows = [("measurement", "figure", "detail"),
            ("matmul fp32 (TF32 off)", f"{fp32:.1f} TFLOP/s", "8192^3"),
            ("matmul bf16", f"{bf16:.1f} TFLOP/s", "8192^3")]
    for label, kw, peak in (("fp32", {}, fp32),
                            ("amp + channels_last", {"amp": True, "channels_last": True}, bf16),
                            ("amp + channels_last + compile",
                             {"amp": True, "channels_last": True, "compile": True}, bf16)):
        def describe(r, peak=peak):
            achieved = r["images_per_s"] * flops / 1e12
            return (f"{r['images_per_s']:.0f} images/s",
                    f"{flops / 1e9:.1f} GFLOP/image, {achieved:.1f} TFLOP/s = "
                    f"{achieved / peak:.0%} of matmul; warm-up {r['warmup_s']:.0f} s")
        rows.append(measured_row(f"ImageNet CNDS-8 train, batch {args.batch}, {label}",
                                 lambda kw=kw: train_throughput(device, args.batch,
                                                                args.seconds, **kw),
                                 describe))
        print(rows[-1], flush=True)
    ratio, output = converter_ratio()
    rows.append(("converter / hand-written fwd+bwd (CUDA)",
                 f"{ratio:.3f}" if ratio is not None else "failed", "target <= 1.05; bench_converter.py"))
    print(rows[-1], flush=True)
    workers = max(1, min(8, (os.cpu_count() or 2) - 2))
    for bytes_to_device, how in ((True, "bytes by DMA from the page-locked ring, float32 on the GPU"),
                                 (False, "float32 made by the workers, moved by the caller")):
        rows.append(measured_row(
            "Data source, JPEG 256 -> crop 227" + ("" if bytes_to_device else ", floats"),
            lambda b=bytes_to_device: data_throughput(device, args.batch, args.seconds / 4,
                                                      workers=workers, bytes_to_device=b),
            lambda d, how=how: (f"{d['images_per_s']:.0f} images/s",
                                f"{d['workers']} workers; {how}; main process "
                                f"{d['main_cpu_us']:.0f} us CPU per image")))
        print(rows[-1], flush=True)
    text = (f"# GPU benchmarks\n\n`python -m bench.gpu` on {name} (torch {torch.__version__}), "
            f"{time.perf_counter() - start:.0f} s.\n\n{table(rows)}\n"
            f"## bench_converter.py --device cuda\n\n```\n{output.rstrip()}\n```\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, text)
    print(table(rows))
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
