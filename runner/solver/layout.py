"""`--channels-last` on the CPU: train in the memory format that runs this net faster.

oneDNN's CPU convolutions are not faster in channels_last everywhere: on an AVX2 CPU (AMD
EPYC, 2 threads) the ImageNet CNDS-8 forward+backward at batch 8 was no faster in
channels_last (0.97-1.13 of NCHW's time: its convolutions' backward 3-10% slower, its
first convolution and poolings faster), while the Fashion-MNIST CNDS-8 was 17% faster and
another CPU ran both 7-13% faster in it on one core. So on the CPU the solver times a copy of the
net in both formats on a synthetic batch of the net's input shapes and trains in the
faster, NCHW (Caffe's layout) unless channels_last wins by `MARGIN`: the two are often
within noise of each other, and a choice that flips between runs helps no one. Both
formats compute the same function (tests/test_training_cpu_paths.py).
"""
from __future__ import annotations

import copy
import statistics
import time

import torch

FORMATS = {"channels_last": torch.channels_last, "NCHW": torch.contiguous_format}
MARGIN = 0.05   # channels_last must take at most 95% of NCHW's time
WARMUP_ROUNDS = 2   # untimed: the allocator's heap grows over the first passes of each format


def synthetic_batch(net, device) -> dict[str, torch.Tensor]:
    """The net's inputs at their shapes: normal noise for 4-D blobs, zeros (a valid label
    for any loss) for the others."""
    return {name: (torch.randn if len(net.blob_shapes[name]) == 4 else torch.zeros)(
        net.blob_shapes[name], device=device) for name in net.input_names}


def time_training_pass(net, batch: dict) -> float:
    """Seconds of one forward + backward (gradients dropped afterwards)."""
    start = time.perf_counter()
    net.objective(net(batch)).backward()
    seconds = time.perf_counter() - start
    net.zero_grad(set_to_none=True)
    return seconds


def training_pass_seconds(net, device, rounds: int = 5) -> dict[str, float]:
    """Median seconds of a training pass of `net` on `device` per format: timed on a copy
    (the net's weights and BatchNorm statistics stay as they are), after `WARMUP_ROUNDS`
    untimed rounds, in rounds that alternate which format goes first. `choose` picks from
    them."""
    trial = copy.deepcopy(net, memo={id(s): s for s in net.sources}).to(device)  # sources shared
    batch = synthetic_batch(net, device)
    times: dict[str, list[float]] = {name: [] for name in FORMATS}
    for r in range(WARMUP_ROUNDS + rounds):
        for name in (list(FORMATS) if r % 2 else list(FORMATS)[::-1]):
            fmt = FORMATS[name]
            trial.to(memory_format=fmt)
            seconds = time_training_pass(trial, {k: v.contiguous(memory_format=fmt) if v.dim() == 4
                                                 else v for k, v in batch.items()})
            if r >= WARMUP_ROUNDS:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def choose(seconds: dict[str, float]) -> str:
    """channels_last where it took at most (1 - MARGIN) of NCHW's time, else NCHW."""
    return "channels_last" if seconds["channels_last"] <= (1 - MARGIN) * seconds["NCHW"] else "NCHW"
