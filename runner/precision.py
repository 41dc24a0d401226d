"""Caffe's arithmetic on CUDA: IEEE fp32 everywhere.

PyTorch lets cuDNN convolutions run in TF32 on Ampere and later GPUs (10-bit mantissa,
about 1e-3 relative error), which Caffe never does. Everything here that puts a net on
a GPU calls `use_caffe_precision()` first; bf16 is only used when asked for (--amp), and
then on the CPU not for InnerProduct layers, and only where oneDNN has bf16 convolutions.
"""
import torch

NO_CPU_BF16 = ("this CPU has no native bf16 (oneDNN finds none of AVX512-BF16, AMX, "
               "AVX-NE-CONVERT), so bf16 convolutions would run on PyTorch's reference path, "
               "measured 10-18x slower than fp32 on an AVX2 CPU")


def cpu_bf16_supported() -> bool:
    """Whether oneDNN runs bf16 convolutions natively on this CPU (False where torch lacks
    the check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_caffe_precision() -> None:
    """Turn TF32 off for cuDNN convolutions and cuBLAS matrix products (process-wide)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def _fp32_inputs(module, args):
    """Forward pre-hook: under CPU autocast, run this layer in fp32 (autocast off inside)."""
    if not torch.is_autocast_enabled("cpu"):
        return None
    torch.set_autocast_enabled("cpu", False)
    module._autocast_paused = True
    return tuple(a.float() if a.is_floating_point() else a for a in args)


def _resume_autocast(module, args, output):
    if getattr(module, "_autocast_paused", False):
        module._autocast_paused = False
        torch.set_autocast_enabled("cpu", True)


def inner_products_in_fp32_under_cpu_autocast(net) -> None:
    """Under bf16 autocast on the CPU, InnerProduct layers run in fp32: at training batch
    sizes their products are bound by reading the weights, and autocast's cast of those
    weights to bf16 (and of their gradients back) costs more than bf16 saves (ImageNet
    CNDS-8, batch 8: 474 ms against 553 ms per step with them in bf16)."""
    for layer in net.layers.values():
        if getattr(layer, "type", None) == "InnerProduct":
            layer.register_forward_pre_hook(_fp32_inputs)
            layer.register_forward_hook(_resume_autocast)
