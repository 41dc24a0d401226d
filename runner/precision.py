"""Caffe's arithmetic on CUDA: IEEE fp32 everywhere.

PyTorch lets cuDNN convolutions run in TF32 on Ampere and later GPUs (10-bit mantissa,
about 1e-3 relative error), which Caffe never does. Everything here that puts a net on
a GPU calls `use_caffe_precision()` first; bf16 is only used when asked for (--amp).
"""
import torch


def use_caffe_precision() -> None:
    """Turn TF32 off for cuDNN convolutions and cuBLAS matrix products (process-wide)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
