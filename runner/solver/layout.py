"""`--channels-last` on the CPU: train in the memory format that runs this net faster,
chosen for the whole net or convolution by convolution.

oneDNN's CPU convolutions are not faster in channels_last everywhere: on an AVX2 CPU (AMD
EPYC, 2 threads) the ImageNet CNDS-8 forward+backward at batch 8 was no faster in
channels_last (0.97-1.13 of NCHW's time: its convolutions' backward 3-10% slower, its
first convolution and poolings faster), while the Fashion-MNIST CNDS-8 was 17% faster and
another CPU ran both 7-13% faster in it on one core. Within one net it differs by layer: on
an Intel Xeon with AVX-512 the CNDS-8's convolutions at 56x56 and 28x28 ran forward +
backward in 0.64-0.87 of their NCHW time in channels_last and those at 7x7 in 1.2-1.6.
So on the CPU the solver times each 2-D convolution alone in both formats, picks the
faster per layer (NCHW unless channels_last wins by `MARGIN`), and then times a copy of
the whole net on a synthetic batch of its input shapes in NCHW, in channels_last and, when
the per-layer choice is a mix, in that mix (each convolution converts its bottom to its
format; the layers after it run in what they get); it trains in the fastest, NCHW
(Caffe's layout) unless another wins by `MARGIN`: the candidates are often within noise
of each other, and a choice that flips between runs helps no one. Every format computes
the same function (tests/test_training_cpu_paths.py).
"""
from __future__ import annotations

import copy
import statistics
import time

import torch

FORMATS = {"channels_last": torch.channels_last, "NCHW": torch.contiguous_format}
MARGIN = 0.05   # another format must take at most 95% of NCHW's time
PER_LAYER = "per-layer formats"   # each convolution in the format its own timing chose
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


def conv_layers(net) -> dict[str, tuple[torch.nn.Module, tuple[int, ...], bool]]:
    """{name: (layer, bottom shape, whether its bottom needs a gradient)} of the net's 2-D
    convolutions (the layers whose format can be chosen)."""
    out = {}
    for (name, layer), (bottoms, _, _) in zip(net.layers.items(), net._steps):
        if layer.type == "Convolution" and layer.axis == 1 and len(net.blob_shapes[bottoms[0]]) == 4:
            out[name] = (layer, tuple(net.blob_shapes[bottoms[0]]), bottoms[0] not in net.input_names)
    return out


def conv_pass_seconds(layer, shape, input_grad: bool, device, rounds: int = 5) -> dict[str, float]:
    """Median seconds of one forward + backward of a copy of the convolution `layer` on a
    random bottom of `shape`, per format, after `WARMUP_ROUNDS` untimed rounds."""
    trial = copy.deepcopy(layer).to(device)
    x = torch.randn(shape, device=device)
    times: dict[str, list[float]] = {name: [] for name in FORMATS}
    for r in range(WARMUP_ROUNDS + rounds):
        for name in (list(FORMATS) if r % 2 else list(FORMATS)[::-1]):
            trial.to(memory_format=FORMATS[name])
            bottom = x.contiguous(memory_format=FORMATS[name]).requires_grad_(input_grad)
            start = time.perf_counter()
            (top,) = trial(bottom)
            top.backward(torch.ones_like(top))
            if r >= WARMUP_ROUNDS:
                times[name].append(time.perf_counter() - start)
            trial.zero_grad(set_to_none=True)
    return {name: statistics.median(t) for name, t in times.items()}


def conv_seconds(net, device, rounds: int = 5) -> dict[str, dict[str, float]]:
    """{convolution: conv_pass_seconds of it}, for each of the net's 2-D convolutions; `choose`
    on each gives the per-layer mix."""
    return {name: conv_pass_seconds(layer, shape, grad, device, rounds)
            for name, (layer, shape, grad) in conv_layers(net).items()}


def apply_conv_formats(net, formats: dict[str, str]) -> None:
    """Convolve each named layer of `net` in its format (its weights stored in it)."""
    for name, format_name in formats.items():
        layer, fmt = net.layers[name], FORMATS[format_name]
        layer.memory_format = fmt
        with torch.no_grad():
            for blob in layer.blobs:
                if blob.dim() == 4:
                    blob.data = blob.data.contiguous(memory_format=fmt)


def training_pass_seconds(net, device, rounds: int = 5,
                          mix: dict[str, str] | None = None) -> dict[str, float]:
    """Median seconds of a training pass of `net` on `device` in NCHW, in channels_last and,
    where `mix` ({convolution: format}) has both formats, in that mix (PER_LAYER): timed on a copy
    (the net's weights and BatchNorm statistics stay as they are), after `WARMUP_ROUNDS`
    untimed rounds, in rounds that alternate the order. `choose` picks from them."""
    trial = copy.deepcopy(net, memo={id(s): s for s in net.sources}).to(device)  # sources shared
    batch = synthetic_batch(net, device)
    convs = list(conv_layers(trial))
    candidates = {name: dict.fromkeys(convs, name) for name in FORMATS}
    if mix and len(set(mix.values())) > 1:
        candidates[PER_LAYER] = mix
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for r in range(WARMUP_ROUNDS + rounds):
        for name in (list(candidates) if r % 2 else list(candidates)[::-1]):
            fmt = FORMATS.get(name, torch.contiguous_format)
            trial.to(memory_format=fmt)
            apply_conv_formats(trial, candidates[name])
            seconds = time_training_pass(trial, {k: v.contiguous(memory_format=fmt) if v.dim() == 4
                                                 else v for k, v in batch.items()})
            if r >= WARMUP_ROUNDS:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def choose(seconds: dict[str, float]) -> str:
    """The fastest candidate where it took at most (1 - MARGIN) of NCHW's time, else NCHW."""
    fastest = min(seconds, key=seconds.get)
    return fastest if seconds[fastest] <= (1 - MARGIN) * seconds["NCHW"] else "NCHW"
