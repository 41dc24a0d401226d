"""Caffe's weight fillers (filler.hpp): constant, uniform, gaussian, xavier, msra, bilinear,
positive_unitball, and FlowNet 2.0's diagonal.

Each filler draws from torch's CPU RNG (the global one unless a `torch.Generator` is
given), so `torch.manual_seed` makes initialisation reproducible. Values are drawn in
float32 on the CPU and then copied into the blob, wherever it lives.
"""
from __future__ import annotations

import math

import numpy as np

import torch

from runner.proto import caffe_pb2

FillerParameter = caffe_pb2.FillerParameter


class FillerError(ValueError):
    """A FillerParameter that Caffe would reject for this blob."""


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Caffe's fan_in = count / shape[0] and fan_out = count / shape[1] (count for 1-D)."""
    count = math.prod(shape)
    fan_in = count // shape[0]
    fan_out = count // shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _variance_n(p, shape) -> float:
    fan_in, fan_out = _fans(shape)
    if p.variance_norm == FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if p.variance_norm == FillerParameter.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def _uniform(shape, low, high, gen) -> torch.Tensor:
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise FillerError(f"uniform filler needs finite min <= max, got min={low}, max={high}")
    return torch.empty(shape).uniform_(low, high, generator=gen)


def _gaussian(shape, mean, std, gen) -> torch.Tensor:
    if not (std > 0 and math.isfinite(std) and math.isfinite(mean)):
        raise FillerError(f"gaussian filler needs a finite mean and a finite std > 0, got "
                          f"mean={mean}, std={std}")
    return torch.empty(shape).normal_(mean, std, generator=gen)


def _bilinear(shape) -> torch.Tensor:
    if len(shape) != 4 or shape[2] != shape[3]:
        raise FillerError(f"bilinear filler needs a 4-D blob with square kernels, got {list(shape)}")
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    taps = 1 - (torch.arange(k, dtype=torch.float64) / f - c).abs()
    return (taps[:, None] * taps[None, :]).float().expand(shape).clone()


def _diagonal(shape, diag_val) -> torch.Tensor:
    """FlowNet 2.0's DiagonalFiller: zeros but, for n < min(num, channels), the kernel of
    output n on input n, each tap diag_val[n] (1 when not given) / kernel area."""
    if len(shape) > 4:
        raise FillerError(f"diagonal filler needs a blob of at most 4 axes, got {list(shape)}")
    num, channels, height, width = tuple(shape) + (1,) * (4 - len(shape))
    data = torch.zeros(num, channels, height * width)
    for n in range(min(num, channels)):
        value = np.float32(diag_val[n] if n < len(diag_val) else 1.0)
        data[n, n] = float(value / np.float32(height * width))
    return data.reshape(shape)


def sample(shape: tuple[int, ...], p: FillerParameter,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """A new float32 CPU tensor of `shape` filled as Caffe's GetFiller(p) would."""
    shape = tuple(int(d) for d in shape)
    if math.prod(shape) == 0:
        raise FillerError(f"cannot fill an empty blob of shape {list(shape)}")
    if p.sparse != -1 and p.type != "gaussian":
        raise FillerError(f"sparsity is only supported by the gaussian filler, not '{p.type}'")
    if p.type == "constant":
        return torch.full(shape, p.value)
    if p.type == "uniform":
        return _uniform(shape, p.min, p.max, generator)
    if p.type == "gaussian":
        data = _gaussian(shape, p.mean, p.std, generator)
        if p.sparse < -1:
            raise FillerError(f"gaussian filler sparse must be >= -1, got {p.sparse}")
        if p.sparse >= 0:
            keep = p.sparse / shape[0]  # Caffe: sparse / num_outputs
            if keep > 1:
                raise FillerError(f"gaussian filler sparse={p.sparse} exceeds the "
                                  f"{shape[0]} outputs of blob {list(shape)}")
            data *= torch.bernoulli(torch.full(shape, keep), generator=generator)
        return data
    if p.type == "xavier":
        scale = math.sqrt(3.0 / _variance_n(p, shape))
        return _uniform(shape, -scale, scale, generator)
    if p.type == "msra":
        return _gaussian(shape, 0.0, math.sqrt(2.0 / _variance_n(p, shape)), generator)
    if p.type == "bilinear":
        return _bilinear(shape)
    if p.type == "diagonal":
        return _diagonal(shape, p.diag_val)
    if p.type == "positive_unitball":
        data = _uniform(shape, 0.0, 1.0, generator)
        rows = data.view(shape[0], -1)
        rows /= rows.sum(dim=1, keepdim=True)
        return data
    raise FillerError(f"unknown filler type '{p.type}' (known: constant, uniform, gaussian, "
                      "xavier, msra, bilinear, positive_unitball, diagonal)")


@torch.no_grad()
def fill_(blob: torch.Tensor, p: FillerParameter,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill `blob` in place as Caffe's filler `p` would; returns the blob."""
    blob.copy_(sample(tuple(blob.shape), p, generator))
    return blob
