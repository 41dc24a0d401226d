"""Snapshots as Caffe writes them: `<prefix>_iter_<N>.caffemodel` + `.solverstate`, or with
snapshot_format: HDF5 `.caffemodel.h5` + `.solverstate.h5`.

The solver state is Caffe's SolverState (iter, learned_net, history blobs in the update
rule's order, current_step); in HDF5 the datasets iter, learned_net and current_step and a
history group of datasets named 0, 1, ... (SGDSolver::SnapshotSolverStateToHDF5). Both
files are written atomically, the weights first, so a state file never points at a
missing or half-written model.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np

from runner.atomic import atomic_write_bytes
from runner.hdf5_files import H5PY_ERRORS, stored_array
from runner.proto import array_to_blob, blob_to_array, caffe_pb2, read_solverstate, write_binary
from runner.shapes import INT_MAX
from runner.solver.errors import SolverConfigError
from runner.weights import save_hdf5


@dataclass
class SnapshotPaths:
    model: str
    state: str


WEIGHTS_EXTENSIONS = (".caffemodel.h5", ".caffemodel")


def weights_base(path: str | os.PathLike) -> str:
    """`path` without its .caffemodel or .caffemodel.h5 extension (`<prefix>_iter_<N>` for a
    snapshot); unchanged when it has neither."""
    path = os.fspath(path)
    for ext in WEIGHTS_EXTENSIONS:
        if path.endswith(ext):
            return path[:-len(ext)]
    return path


def snapshot_paths(prefix: str, it: int, hdf5: bool = False) -> SnapshotPaths:
    base, ext = f"{prefix}_iter_{it}", ".h5" if hdf5 else ""
    return SnapshotPaths(f"{base}.caffemodel{ext}", f"{base}.solverstate{ext}")


def write_snapshot(net, history, it: int, current_step: int, prefix: str,
                   log=None, hdf5: bool = False, diffs: bool = False) -> SnapshotPaths:
    """Write the weights of `net` and the solver state at iteration `it` (binary protos,
    or HDF5 when `hdf5`); with `diffs` (snapshot_diff) the weights' diffs too."""
    paths = snapshot_paths(prefix, it, hdf5)
    arrays = [h.detach().float().cpu().numpy() for h in history]
    if hdf5:
        if log:
            log.info("solver.cpp:464", f"Snapshotting to HDF5 file {paths.model}")
        save_hdf5(net, paths.model, with_diffs=diffs)
        if log:
            log.info("sgd_solver.cpp:293", f"Snapshotting solver state to HDF5 file {paths.state}")
        _write_hdf5_state(paths.state, it, paths.model, current_step, arrays)
        return paths
    if log:
        log.info("solver.cpp:454", f"Snapshotting to binary proto file {paths.model}")
    write_binary(net.to_net_parameter(with_diffs=diffs), paths.model)
    state = caffe_pb2.SolverState(iter=it, learned_net=paths.model, current_step=current_step)
    state.history.extend(array_to_blob(a) for a in arrays)
    if log:
        log.info("sgd_solver.cpp:284",
                 f"Snapshotting solver state to binary proto file {paths.state}")
    write_binary(state, paths.state)
    return paths


def _write_hdf5_state(path: str, it: int, learned_net: str, current_step: int,
                      history: list[np.ndarray]) -> None:
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("iter", data=np.int32(it))
        name = learned_net.encode()   # NUL-terminated, as H5LTmake_dataset_string stores it
        f.create_dataset("learned_net", data=np.array(name, dtype=f"S{len(name) + 1}"))
        f.create_dataset("current_step", data=np.int32(current_step))
        group = f.create_group("history")
        for i, h in enumerate(history):
            group.create_dataset(str(i), data=h)
    atomic_write_bytes(path, buffer.getvalue())


@dataclass
class RestoredState:
    iter: int
    current_step: int
    learned_net: str
    history: list[np.ndarray]


def load_solverstate(path: str, history_shapes: list[tuple[int, ...]] | None = None) -> RestoredState:
    """Parse a solver state, HDF5 when its name ends in .h5 (as Caffe's Solver::Restore
    decides); `learned_net` is used as written (relative to the working directory, as Caffe
    does), else looked up beside the state file. An HDF5 state's history datasets are
    checked against `history_shapes` (the solver's, in order) before they are read."""
    if path.endswith(".h5"):
        state = _read_hdf5_state(path, history_shapes)
    else:
        proto = read_solverstate(path)
        history = [blob_to_array(b, f"{path} history blob {i}") for i, b in enumerate(proto.history)]
        state = RestoredState(proto.iter, proto.current_step, proto.learned_net, history)
    if state.iter < 0:
        raise SolverConfigError(f"{path}: iter is {state.iter}; a solver state's iteration "
                                "must be >= 0")
    if state.current_step < 0:
        raise SolverConfigError(f"{path}: current_step is {state.current_step}; it must be >= 0")
    if not state.learned_net:
        raise SolverConfigError(f"{path}: learned_net is empty; a solver state names the "
                                ".caffemodel of its weights")
    if "\0" in state.learned_net:
        raise SolverConfigError(f"{path}: learned_net {state.learned_net!r} holds a NUL byte; it "
                                "names the .caffemodel of the state's weights")
    if not os.path.exists(state.learned_net):
        beside = os.path.join(os.path.dirname(path), os.path.basename(state.learned_net))
        if os.path.exists(beside):
            state.learned_net = beside
    for i, h in enumerate(state.history):
        if not np.isfinite(h).all():
            raise SolverConfigError(f"{path}: history blob {i} holds NaN or inf values; "
                                    "resume from an earlier snapshot")
    return state


def _read_hdf5_state(path: str, history_shapes) -> RestoredState:
    """SGDSolver::RestoreSolverStateFromHDF5's reads, each checked."""
    import h5py

    def dataset(group, name: str, kinds: str, what: str):
        d = group.get(name)
        if not isinstance(d, h5py.Dataset) or d.dtype.kind not in kinds:
            raise SolverConfigError(f"{path}: {what} '{name}' is missing or not "
                                    f"{'an integer' if kinds == 'iu' else 'a numeric'} dataset")
        return d

    def integer(f, name: str) -> int:
        d = dataset(f, name, "iu", "dataset")
        if d.size != 1:
            raise SolverConfigError(f"{path}: '{name}' holds {d.size} values, expected one")
        value = int(np.asarray(d).reshape(-1)[0])
        if not -INT_MAX - 1 <= value <= INT_MAX:
            raise SolverConfigError(f"{path}: '{name}' is {value}, beyond Caffe's int")
        return value

    try:
        with h5py.File(path, "r") as f:
            learned = ""
            if "learned_net" in f:
                d = f["learned_net"]
                raw = d[()] if isinstance(d, h5py.Dataset) and d.size == 1 and d.ndim == 0 else None
                if not isinstance(raw, (bytes, str)):
                    raise SolverConfigError(f"{path}: 'learned_net' is not a string dataset")
                try:
                    learned = (raw.decode() if isinstance(raw, bytes) else raw).rstrip("\0")
                except UnicodeDecodeError:
                    raise SolverConfigError(f"{path}: 'learned_net' is not UTF-8 text") from None
            group = f.get("history")
            if not isinstance(group, h5py.Group):
                raise SolverConfigError(f"{path}: no history group")
            names = [str(i) for i in range(len(group))]
            if sorted(group) != sorted(names):
                raise SolverConfigError(f"{path}: history holds {sorted(group)[:5]}..., expected "
                                        "datasets named 0, 1, ...")
            if history_shapes is not None and len(names) != len(history_shapes):
                raise SolverConfigError(
                    f"{path}: {len(names)} history blobs, this net and solver type need "
                    f"{len(history_shapes)} (incorrect length of history blobs)")
            history = []
            for i, name in enumerate(names):
                d = dataset(group, name, "fiu", "history blob")
                if history_shapes is not None and tuple(d.shape) != tuple(history_shapes[i]):
                    raise SolverConfigError(f"{path}: history blob {i} has shape {list(d.shape)}, "
                                            f"expected {list(history_shapes[i])}")
                history.append(stored_array(d, f"{path}: history blob {i}", SolverConfigError))
            return RestoredState(integer(f, "iter"), integer(f, "current_step"), learned, history)
    except SolverConfigError:
        raise
    except H5PY_ERRORS as err:
        raise SolverConfigError(f"{path}: cannot read HDF5 solver state: {err}") from None
