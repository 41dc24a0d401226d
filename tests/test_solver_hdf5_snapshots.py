"""snapshot_format: HDF5 writes `<prefix>_iter_N.caffemodel.h5` and `.solverstate.h5` in
Caffe's layout (Net::ToHDF5; SGDSolver::SnapshotSolverStateToHDF5: scalar int datasets
iter and current_step, a NUL-terminated string learned_net, history/0, history/1, ...),
holding exactly what the binary snapshot of the same iteration holds, and resuming from
the .solverstate.h5 continues the trajectory bit for bit. A malformed HDF5 state is an
error naming the file and what is wrong."""
import h5py
import numpy as np
import pytest

from runner.proto import blob_to_array, read_caffemodel, read_solverstate
from runner.solver import SolverOptions
from runner.solver.errors import SolverConfigError
from runner.solver.snapshot import load_solverstate

from solver_helpers import classifier_net, make_lmdb, make_solver


@pytest.fixture(scope="module")
def lmdb_dir(tmp_path_factory):
    return make_lmdb(tmp_path_factory.mktemp("h5snap") / "train_lmdb", 30, side=9)


def _fields(solver_type, **more):
    return dict(type=f'"{solver_type}"', lr_policy='"multistep"', stepvalue=[4, 13], gamma=0.5,
                max_iter=20, snapshot=10, iter_size=2, momentum=0.9, test_interval=0, **more)


@pytest.mark.parametrize("solver_type", ["SGD", "Adam"])
def test_hdf5_snapshots_hold_the_binary_ones_values_and_resume_bit_identically(lmdb_dir, tmp_path,
                                                                               solver_type):
    net = classifier_net(lmdb_dir, batch=4, crop=7, mirror=True, dropout=0.4)
    make_solver(net, tmp_path / "straight" / "s", **_fields(solver_type)).solve()
    h5 = _fields(solver_type, snapshot_format="HDF5")
    make_solver(net, tmp_path / "resumed" / "s", **{**h5, "max_iter": 10}).solve()
    state_path = tmp_path / "resumed" / "s_iter_10.solverstate.h5"
    model_path = tmp_path / "resumed" / "s_iter_10.caffemodel.h5"
    assert not (tmp_path / "resumed" / "s_iter_10.caffemodel").exists()

    binary_state = read_solverstate(tmp_path / "straight" / "s_iter_10.solverstate")
    binary_model = read_caffemodel(tmp_path / "straight" / "s_iter_10.caffemodel")
    with h5py.File(state_path) as f:
        assert f["iter"].shape == () and f["iter"].dtype == np.int32 and f["iter"][()] == 10
        assert f["current_step"][()] == binary_state.current_step == 1
        assert f["learned_net"].dtype.itemsize == len(str(model_path)) + 1   # the NUL
        assert f["learned_net"][()] == str(model_path).encode()
        assert sorted(f["history"], key=int) == [str(i) for i in range(len(binary_state.history))]
        for i, blob in enumerate(binary_state.history):
            np.testing.assert_array_equal(f["history"][str(i)][()], blob_to_array(blob))
    with h5py.File(model_path) as f:
        for layer in binary_model.layer:
            for j, blob in enumerate(layer.blobs):
                np.testing.assert_array_equal(f[f"data/{layer.name}/{j}"][()], blob_to_array(blob))

    resumed = make_solver(net, tmp_path / "resumed" / "s",
                          SolverOptions(progress=False, append_log=True), **h5)
    resumed.solve(str(state_path))
    assert resumed.iter == 20 and resumed.lr_policy.current_step == 2
    straight = read_caffemodel(tmp_path / "straight" / "s_iter_20.caffemodel")
    with h5py.File(tmp_path / "resumed" / "s_iter_20.caffemodel.h5") as f:
        for layer in straight.layer:
            for j, blob in enumerate(layer.blobs):
                np.testing.assert_array_equal(f[f"data/{layer.name}/{j}"][()], blob_to_array(blob))
    log = (tmp_path / "resumed" / "s.log").read_text()
    assert f"Snapshotting to HDF5 file {model_path}" in log
    assert f"Snapshotting solver state to HDF5 file {state_path}" in log


@pytest.fixture(scope="module")
def good_state(lmdb_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("h5state")
    make_solver(classifier_net(lmdb_dir, batch=4), root / "s", max_iter=2, snapshot=2,
                snapshot_format="HDF5").solve()
    return root / "s_iter_2.solverstate.h5"


def _mutated(good, tmp_path, change):
    bad = tmp_path / "bad.solverstate.h5"
    with h5py.File(good) as source, h5py.File(bad, "w") as f:
        for name in source:
            source.copy(name, f)
        change(f)
    return str(bad)


def _replace(name, value):
    def change(f):
        del f[name]
        f[name] = value
    return change


def _odd_float(name):
    """A float dataset whose type has an exponent bias numpy cannot represent (h5py raises
    ValueError for its dtype; found by `make fuzz`)."""
    def change(f):
        del f[name]
        odd = h5py.h5t.IEEE_F32LE.copy()
        odd.set_ebias(33554559)
        h5py.h5d.create(f.id, name.encode(), odd, h5py.h5s.create_simple((2,)))
    return change


def _declare(name, shape):
    """A float dataset of `shape` declared in `name`'s place, its 4 bytes per element never
    written (a file of a few KiB that would read as terabytes)."""
    def change(f):
        del f[name]
        f.create_dataset(name, shape=shape, dtype="f4", chunks=True)
    return change


@pytest.mark.parametrize("change, message", [
    (lambda f: f.__delitem__("iter"), r"dataset 'iter' is missing or not an integer dataset"),
    (_replace("iter", np.float32(2.5)), r"dataset 'iter' is missing or not an integer dataset"),
    (_replace("iter", np.int64(2**40)), r"'iter' is 1099511627776, beyond Caffe's int"),
    (_replace("current_step", np.arange(3)), r"'current_step' holds 3 values, expected one"),
    (_replace("iter", np.int32(-1)), r"iter is -1; a solver state's iteration must be >= 0"),
    (_replace("learned_net", np.arange(3)), r"'learned_net' is not a string dataset"),
    (_replace("learned_net", np.bytes_(b"\xff\xfe")), r"'learned_net' is not UTF-8 text"),
    (_replace("learned_net", np.bytes_(b"s_iter\x002.caffemodel.h5")),   # found by `make fuzz`
     r"learned_net 's_iter\\x002.caffemodel.h5' holds a NUL byte"),
    (_declare("learned_net", (2**40,)), r"'learned_net' is not a string dataset"),   # never read
    (_odd_float("history/1"), r"cannot read HDF5 solver state: Insufficient precision"),
    (_declare("history/0", (2**40,)), r"history blob 0 has shape \[1099511627776\], expected"),
    (lambda f: f.__delitem__("history"), r"no history group"),
    (lambda f: f["history"].move("0", "x"), r"history holds .*expected datasets named 0, 1"),
    (lambda f: f["history"].__delitem__("3"), r"3 history blobs, this net and solver type need 4"),
    (_replace("history/0", np.zeros(5, np.float32)), r"history blob 0 has shape \[5\], expected"),
    (_replace("history/1", np.array([b"x"])), r"history blob '1' is missing or not a numeric"),
    (_replace("history/2", np.full((2,), np.nan, np.float32)), None),
])
def test_a_malformed_hdf5_state_names_the_file_and_the_field(lmdb_dir, good_state, tmp_path,
                                                             change, message):
    bad = _mutated(good_state, tmp_path, change)
    solver = make_solver(classifier_net(lmdb_dir, batch=4), tmp_path / "r", max_iter=4)
    if message is None:   # a NaN history blob, after its shape is found wrong or right
        shapes = [tuple(h.shape) for h in solver.update.history]
        with h5py.File(bad, "a") as f:
            del f["history/2"]
            f["history/2"] = np.full(shapes[2], np.nan, np.float32)
        message = r"history blob 2 holds NaN or inf values"
    with pytest.raises(SolverConfigError, match=rf"^{bad}: {message}"):
        solver.solve(bad)


def test_a_file_that_is_not_hdf5_is_a_clear_error(tmp_path):
    bad = tmp_path / "s_iter_2.solverstate.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(SolverConfigError, match=rf"^{bad}: cannot read HDF5 solver state: "):
        load_solverstate(str(bad))
