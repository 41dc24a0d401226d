"""Caffe's global mode (CPU or GPU, and which GPU), its random seed, and whether it has NCCL."""
from __future__ import annotations

import torch

from runner.precision import use_caffe_precision

_mode = {"gpu": False, "device_id": 0}


def set_mode_cpu() -> None:
    """Nets run on the CPU from their next forward, backward or solver step on."""
    _mode["gpu"] = False


def set_mode_gpu() -> None:
    """Nets run on the selected GPU (set_device) from their next forward on."""
    if not torch.cuda.is_available():
        raise RuntimeError("set_mode_gpu: PyTorch sees no CUDA device (torch.cuda.is_available() "
                           "is False); use caffe.set_mode_cpu()")
    use_caffe_precision()
    _mode["gpu"] = True


def set_device(device_id: int) -> None:
    """The GPU that GPU mode uses (Caffe::SetDevice)."""
    if torch.cuda.is_available() and not 0 <= device_id < torch.cuda.device_count():
        raise ValueError(f"set_device: no GPU {device_id}; this machine has "
                         f"{torch.cuda.device_count()}")
    _mode["device_id"] = int(device_id)


def current_device() -> torch.device:
    return torch.device("cuda", _mode["device_id"]) if _mode["gpu"] else torch.device("cpu")


def set_random_seed(seed: int) -> None:
    """Seed the random numbers fillers, DummyData and Dropout draw (Caffe::set_random_seed)."""
    torch.manual_seed(seed)


def has_nccl() -> bool:
    """False: pycaffe's NCCL bindings are not provided (several GPUs train through
    torch.distributed: solve.py --gpu 0,1 or torchrun)."""
    return False
