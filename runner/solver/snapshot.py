"""Snapshots as Caffe writes them: `<prefix>_iter_<N>.caffemodel` + `.solverstate`.

The .solverstate is Caffe's SolverState (iter, learned_net, history blobs in the
update rule's order, current_step); both files are written atomically, the weights
first, so a state file never points at a missing or half-written model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from runner.proto import array_to_blob, blob_to_array, caffe_pb2, read_solverstate, write_binary
from runner.solver.errors import SolverConfigError


@dataclass
class SnapshotPaths:
    model: str
    state: str


def snapshot_paths(prefix: str, it: int) -> SnapshotPaths:
    base = f"{prefix}_iter_{it}"
    return SnapshotPaths(base + ".caffemodel", base + ".solverstate")


def write_snapshot(net, history, it: int, current_step: int, prefix: str,
                   log=None) -> SnapshotPaths:
    """Write the weights of `net` and the solver state at iteration `it`."""
    paths = snapshot_paths(prefix, it)
    if log:
        log.info("solver.cpp:454", f"Snapshotting to binary proto file {paths.model}")
    write_binary(net.to_net_parameter(), paths.model)
    state = caffe_pb2.SolverState()
    state.iter = it
    state.learned_net = paths.model
    state.current_step = current_step
    for h in history:
        state.history.append(array_to_blob(h.detach().float().cpu().numpy()))
    if log:
        log.info("sgd_solver.cpp:284",
                 f"Snapshotting solver state to binary proto file {paths.state}")
    write_binary(state, paths.state)
    return paths


@dataclass
class RestoredState:
    iter: int
    current_step: int
    learned_net: str
    history: list[np.ndarray]


def load_solverstate(path: str) -> RestoredState:
    """Parse a .solverstate; `learned_net` is used as written (relative to the working
    directory, as Caffe does), else looked up beside the state file."""
    if path.endswith(".h5"):
        raise SolverConfigError(
            f"{path}: HDF5 solver states are not supported; snapshot with "
            "snapshot_format: BINARYPROTO")
    state = read_solverstate(path)
    if state.iter < 0:
        raise SolverConfigError(f"{path}: iter is {state.iter}; a solver state's iteration "
                                "must be >= 0")
    if state.current_step < 0:
        raise SolverConfigError(f"{path}: current_step is {state.current_step}; it must be >= 0")
    learned = state.learned_net
    if not learned:
        raise SolverConfigError(f"{path}: learned_net is empty; a solver state names the "
                                ".caffemodel of its weights")
    if not os.path.exists(learned):
        beside = os.path.join(os.path.dirname(path), os.path.basename(learned))
        if os.path.exists(beside):
            learned = beside
    history = [blob_to_array(b, f"{path} history blob {i}") for i, b in enumerate(state.history)]
    for i, h in enumerate(history):
        if not np.isfinite(h).all():
            raise SolverConfigError(f"{path}: history blob {i} holds NaN or inf values; "
                                    "resume from an earlier snapshot")
    return RestoredState(state.iter, state.current_step, learned, history)
