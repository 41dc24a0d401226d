"""Resuming from a snapshot continues the very same trajectory: 20 iterations straight
equal 10, then a new process-like Solver restored from the 10-iteration snapshot, then
10 more, bit for bit on the CPU. The net reads a real LMDB through the Data source with
random crops and mirrors, and has Dropout (torch's RNG)."""
import numpy as np
import pytest

from runner.proto import read_caffemodel, read_solverstate, blob_to_array
from runner.solver import SolverOptions

from solver_helpers import classifier_net, make_lmdb, make_solver


@pytest.fixture(scope="module")
def lmdb_dir(tmp_path_factory):
    return make_lmdb(tmp_path_factory.mktemp("resume") / "train_lmdb", 30, side=9)


def blobs(path):
    return [blob_to_array(b) for layer in read_caffemodel(path).layer for b in layer.blobs]


@pytest.mark.parametrize("solver_type", ["SGD", "Adam"])
def test_resume_is_bit_identical(lmdb_dir, tmp_path, solver_type):
    net = classifier_net(lmdb_dir, batch=4, crop=7, mirror=True, dropout=0.4)
    fields = dict(type=f'"{solver_type}"', lr_policy='"multistep"', stepvalue=[4, 13],
                  gamma=0.5, max_iter=20, snapshot=10, iter_size=2, momentum=0.9,
                  test_interval=0)
    make_solver(net, tmp_path / "straight" / "s", **fields).solve()
    interrupted = make_solver(net, tmp_path / "resumed" / "s", **{**fields, "max_iter": 10})
    interrupted.solve()
    resumed = make_solver(net, tmp_path / "resumed" / "s", SolverOptions(progress=False, append_log=True),
                          **fields)
    resumed.solve(str(tmp_path / "resumed" / "s_iter_10.solverstate"))
    assert resumed.iter == 20
    assert resumed.lr_policy.current_step == 2

    straight = blobs(tmp_path / "straight" / "s_iter_20.caffemodel")
    again = blobs(tmp_path / "resumed" / "s_iter_20.caffemodel")
    start = blobs(tmp_path / "resumed" / "s_iter_10.caffemodel")
    assert len(straight) == len(again) == 4
    for a, b, s in zip(straight, again, start):
        assert not np.array_equal(a, s)          # training moved the weights after the resume
        assert np.array_equal(a, b)              # ... exactly as the uninterrupted run did
    state_a = read_solverstate(tmp_path / "straight" / "s_iter_20.solverstate")
    state_b = read_solverstate(tmp_path / "resumed" / "s_iter_20.solverstate")
    assert state_a.iter == state_b.iter == 20 and state_a.current_step == state_b.current_step == 2
    assert len(state_a.history) == (8 if solver_type == "Adam" else 4)
    for ha, hb in zip(state_a.history, state_b.history):
        assert np.array_equal(blob_to_array(ha), blob_to_array(hb))
    assert state_b.learned_net == str(tmp_path / "resumed" / "s_iter_20.caffemodel")


def test_restoring_the_state_of_another_solver_type_is_refused(lmdb_dir, tmp_path):
    net = classifier_net(lmdb_dir, batch=4)
    make_solver(net, tmp_path / "a", max_iter=2).solve()
    other = make_solver(net, tmp_path / "b", type='"Adam"', max_iter=4)
    with pytest.raises(ValueError, match="4 history blobs, this net and solver type need 8"):
        other.solve(str(tmp_path / "a_iter_2.solverstate"))
