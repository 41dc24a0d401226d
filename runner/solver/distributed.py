"""Several processes, one solver: torch.distributed as Caffe's multi-GPU training.

Each rank runs the train net on its own `batch_size` from its own slice of the data;
DistributedDataParallel averages the gradients (Caffe divides the summed gradients by
the solver count), then every rank applies the same Caffe update. Rank 0 alone logs,
tests and snapshots. Started by torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the
environment) or by `spawn` for `--gpu 0,1`.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from runner.precision import use_caffe_precision


@dataclass
class DistContext:
    """Where this process stands: rank among world_size, and its device."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def pick_device(gpus: list[int], local_rank: int) -> torch.device:
    """cuda:<gpus[local_rank]> when GPUs were asked for, else the CPU."""
    if not gpus:
        return torch.device("cpu")
    use_caffe_precision()
    return torch.device("cuda", gpus[local_rank % len(gpus)])


def init_process_group(gpus: list[int]) -> DistContext:
    """Join the group described by the environment; gloo on CPU, nccl on CUDA."""
    if not launched_by_torchrun():
        return DistContext(device=pick_device(gpus, 0))
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    device = pick_device(gpus, int(os.environ.get("LOCAL_RANK", rank)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=rank, world_size=world)
    return DistContext(rank, world, device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(net: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DistributedDataParallel around the net (unused blobs such as frozen ones allowed)."""
    if not ctx.distributed:
        return net
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        net, device_ids=ids, find_unused_parameters=True)


def agree_max(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise max over ranks (stop requests, divergence flags)."""
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank: int, world_size: int, port: int, fn, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
                      LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size))
    fn(*args)


def spawn(fn, world_size: int, *args) -> None:
    """Run fn(*args) in `world_size` local processes that form one process group."""
    mp.spawn(_worker, args=(world_size, free_port(), fn, args), nprocs=world_size, join=True)


def parse_gpus(flag: str | None, solver_param=None) -> tuple[list[int], str | None]:
    """GPU ids from `--gpu 0|0,1|all` (or the solver's solver_mode/device_id when the
    flag is absent, as caffe.cpp does). Returns (ids, warning); ids is empty for the CPU,
    which is also what a missing CUDA gives."""
    if flag is None and solver_param is not None and solver_param.HasField("solver_mode") \
            and solver_param.solver_mode == solver_param.GPU:
        flag = str(solver_param.device_id)
    if not flag:
        return [], None
    if not torch.cuda.is_available():
        return [], f"GPU {flag} requested but CUDA is not available; using the CPU"
    count = torch.cuda.device_count()
    if flag == "all":
        return list(range(count)), None
    try:
        ids = [int(x) for x in flag.split(",")]
    except ValueError:
        raise ValueError(f"--gpu expects 'all' or comma-separated device ids, got '{flag}'") from None
    bad = [i for i in ids if not 0 <= i < count]
    if bad:
        raise ValueError(f"--gpu {flag}: no CUDA device {bad[0]} (this machine has {count})")
    return ids, None
