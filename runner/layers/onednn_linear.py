"""InnerProduct's y = x W^T + b and its gradients as oneDNN inner products on the CPU.

F.linear runs MKL's sgemm forward and backward. For the skinny products of training
batches (a few to a few hundred rows against a weight of millions) oneDNN's inner product
is the faster kernel for y and for the input gradient, and on some CPUs for the weight
gradient taken as an inner product over the batch (grad^T x: fc6's in 7 against MKL's 18
ms on an AMD EPYC; on an Intel Xeon with AVX-512 and AMX MKL's took 15 against oneDNN's 40
ms). So the weight gradient runs on whichever of the two was faster for its shape at its
first use in the process, and only where both give the same bits (they sum the batch in
the same order; a kernel that does not is never chosen): the choice never changes a
number. Forward +
backward took 0.43-0.86 of F.linear's time at batch 8 to 256 on weights of 1M to 44M
elements (AMD EPYC with AVX-512, 2 threads; the ImageNet CNDS-8's fc6, 4096 x 8192 at
batch 8: 26 against 54 ms), within 2e-6 (relative) of it: the same fp32 arithmetic summed
in another order. With both libraries held to AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2,
MKL_ENABLE_INSTRUCTIONS=AVX2) it took 0.52-0.82 on weights of 4M elements and more, and
0.7-1.1 (within the noise) on 1M-element ones. At batch 1 and on small weights oneDNN's
fixed cost per call (about 0.2 ms) loses, so those stay on F.linear, as does anything not
float32 on the CPU, a torch without the ops, a torch told to let oneDNN round fp32
products (torch.backends.mkldnn.fp32_precision and matmul's), and code being traced by
torch.compile (whose CPU backend packs its own oneDNN inner products).
"""
from __future__ import annotations

import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

MIN_ROWS = 8
MIN_WEIGHT_ELEMENTS = 1 << 20

_MKLDNN = getattr(torch.ops, "mkldnn", None)
_ATEN = torch.ops.aten


def _ops_available() -> bool:
    return (torch.backends.mkldnn.is_available() and _MKLDNN is not None
            and hasattr(_MKLDNN, "_linear_pointwise")
            and hasattr(_ATEN, "mkldnn_linear_backward_input"))


_AVAILABLE = _ops_available()
_enabled = True


@contextlib.contextmanager
def disabled():
    """Within the block every InnerProduct runs on F.linear (MKL), the reference path."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def _fp32_kept_exact() -> bool:
    """Whether oneDNN's fp32 matrix products are IEEE fp32: the first fp32_precision set
    (not "none") of matmul's, oneDNN's and torch's own is "ieee", or none is set."""
    for level in (getattr(torch.backends.mkldnn, "matmul", None), torch.backends.mkldnn,
                  torch.backends):
        precision = getattr(level, "fp32_precision", "none")
        if precision != "none":
            return precision == "ieee"
    return True


def uses_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether linear(x, weight, bias) runs on oneDNN: a 2-D float32 CPU x of at least
    MIN_ROWS rows, a contiguous float32 weight of at least MIN_WEIGHT_ELEMENTS, outside
    torch.compile's tracing and `disabled()`."""
    return (_AVAILABLE and _enabled and x.dim() == 2 and x.shape[0] >= MIN_ROWS
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.device.type == "cpu" and weight.device.type == "cpu"
            and weight.is_contiguous() and weight.numel() >= MIN_WEIGHT_ELEMENTS
            and (bias is None or (bias.dtype == torch.float32 and bias.device.type == "cpu"))
            and not torch.compiler.is_compiling() and _fp32_kept_exact())


def _weight_gradient_onednn(grad, x):
    """grad^T x as a oneDNN inner product over the batch."""
    return _MKLDNN._linear_pointwise(grad.t().contiguous(), x.t().contiguous(), None, "none", [], "")


def _weight_gradient_mkl(grad, x):
    """grad^T x as MKL's sgemm."""
    return grad.t().mm(x)


WEIGHT_GRADIENT_KERNELS = {"oneDNN": _weight_gradient_onednn, "MKL": _weight_gradient_mkl}
TIMING_ROUNDS = 3
_weight_gradient_choice: dict[tuple, str] = {}


def _faster_kernel_with_the_same_bits(grad, x) -> tuple[str, torch.Tensor]:
    """(name, result): the fastest of WEIGHT_GRADIENT_KERNELS (median of TIMING_ROUNDS
    interleaved calls) among those whose result equals oneDNN's bit for bit."""
    first = {name: kernel(grad, x) for name, kernel in WEIGHT_GRADIENT_KERNELS.items()}
    same = [name for name, result in first.items() if torch.equal(result, first["oneDNN"])]
    seconds = {name: [] for name in same}
    for _ in range(TIMING_ROUNDS):
        for name in same:
            start = time.perf_counter()
            WEIGHT_GRADIENT_KERNELS[name](grad, x)
            seconds[name].append(time.perf_counter() - start)
    fastest = min(same, key=lambda name: statistics.median(seconds[name]))
    return fastest, first["oneDNN"]


def weight_gradient(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad^T x (the weight gradient), by the kernel that was fastest for this shape and
    thread count at its first use in this process, among those giving oneDNN's exact bits:
    which library runs never changes a number."""
    key = (tuple(grad.shape), tuple(x.shape), torch.get_num_threads())
    name = _weight_gradient_choice.get(key)
    if name is None:
        name, result = _faster_kernel_with_the_same_bits(grad, x)
        _weight_gradient_choice[key] = name
        return result
    return WEIGHT_GRADIENT_KERNELS[name](grad, x)


class _OneDnnLinear(torch.autograd.Function):
    """y and the input and weight gradients by oneDNN (dense weight, not prepacked: it
    changes every iteration); the bias gradient is a sum over the batch."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x = x.contiguous()
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _MKLDNN._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _ATEN.mkldnn_linear_backward_input(
                list(x.shape), grad.to_mkldnn(), weight).to_dense()
        if ctx.needs_input_grad[1]:
            grad_weight = weight_gradient(grad, x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias), on oneDNN where `uses_onednn` says it pays."""
    if uses_onednn(x, weight, bias):
        return _OneDnnLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)
