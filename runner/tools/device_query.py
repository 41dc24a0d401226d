"""Show the GPU's properties, as `caffe device_query -gpu N` does, read through torch.cuda.

Usage: python -m runner.tools.device_query [-gpu N[,M...]|all]   (default: all)
Caffe's labels and order; properties torch does not expose (memory pitch, texture
alignment, grid sizes, ...) are left out. Without a CUDA device it says so and exits 2.
"""
from __future__ import annotations

import argparse
import sys

import torch

from runner import console
from runner.solver.caffe_log import CaffeLog
from runner.solver.distributed import parse_gpus

# (Caffe's label, torch.cuda device property), in the order Caffe::DeviceQuery prints them
FIELDS = [
    ("Major revision number", "major"),
    ("Minor revision number", "minor"),
    ("Name", "name"),
    ("Total global memory", "total_memory"),
    ("Total shared memory per block", "shared_memory_per_block"),
    ("Total registers per block", "regs_per_block"),
    ("Warp size", "warp_size"),
    ("Maximum threads per block", "max_threads_per_block"),
    ("Clock rate", "clock_rate"),
    ("Number of multiprocessors", "multi_processor_count"),
]


def device_lines(device: int, props) -> list[str]:
    """Caffe's `Label:<padding>value` lines for one device (30-column labels)."""
    lines = [f"{'Device id:':31s}{device}"]
    for label, attr in FIELDS:
        value = getattr(props, attr, None)
        if value is not None:
            lines.append(f"{label + ':':31s}{value}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=console.prog(f"python -m {__spec__.name}"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-gpu", "--gpu", default="all", help="device id(s), comma-separated, or 'all'")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("No cuda device present (torch.cuda sees no GPU: a CPU-only torch build, no "
              "driver, or CUDA_VISIBLE_DEVICES hides them).", file=sys.stderr)
        return 2
    try:
        gpus, _ = parse_gpus(args.gpu)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log = CaffeLog()
    for gpu in gpus:
        log.info("device_query.py", f"Querying GPUs {gpu}")
        for line in device_lines(gpu, torch.cuda.get_device_properties(gpu)):
            log.info("device_query.py", line)
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
