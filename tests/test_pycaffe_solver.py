"""pycaffe's solvers: the runner's loop and update rules behind Caffe's Python interface, so
a pycaffe run and runner/solve.py on the same files give the same weights."""

import numpy as np
import pytest

import caffe
from runner.proto import read_caffemodel
from runner.solve import main as solve_main
from solver_helpers import classifier_net, make_lmdb

@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = make_lmdb(tmp_path / "train_lmdb", 24)
    test = make_lmdb(tmp_path / "test_lmdb", 8, seed=1)
    # dropout draws and a decaying auxiliary loss (loss_ds1) go through the loop too
    net = classifier_net(train, 4, dropout=0.5, aux=0.3, test_source=test)
    (tmp_path / "net.prototxt").write_text(net)
    return tmp_path


def write_solver(folder, prefix, **fields):
    """A solver file for net.prototxt; a field given as None is left out."""
    settings = {**dict(base_lr=0.05, lr_policy='"step"', gamma=0.5, stepsize=7, momentum=0.9,
                       weight_decay=0.0005, max_iter=20, display=5, test_iter=2, test_interval=10,
                       random_seed=7), **fields}
    body = " ".join(f"{k}: {v}" for k, v in settings.items() if v is not None)
    path = folder / f"{prefix}_solver.prototxt"
    path.write_text(f'net: "net.prototxt" snapshot_prefix: "{prefix}" {body}')
    return str(path)


def caffemodel_arrays(path):
    return {lp.name: [np.array(b.data, np.float32).reshape(tuple(b.shape.dim)) for b in lp.blobs]
            for lp in read_caffemodel(path).layer if lp.blobs}


def test_pycaffe_solver_weights_equal_solve_py_weights_after_20_iterations(folder):
    assert solve_main([write_solver(folder, "runner")]) == 0
    expected = caffemodel_arrays("runner_iter_20.caffemodel")
    solver = caffe.SGDSolver(write_solver(folder, "pycaffe"))
    solver.step(20)
    assert solver.iter == 20
    assert set(expected) == set(solver.net.params)
    for name, blobs in expected.items():
        for ours, theirs in zip(solver.net.params[name], blobs):
            np.testing.assert_array_equal(ours.data, theirs)
    # the blobs hold the last iteration's pass
    assert solver.net.blobs["data"].data.shape == (4, 1, 8, 8) and solver.net.blobs["loss"].data > 0


@pytest.mark.parametrize("solver_type", ["Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_every_rule_matches_solve_py(folder, solver_type):
    fields = {"type": f'"{solver_type}"', "max_iter": 3, "test_interval": None, "test_iter": None}
    if solver_type in ("AdaGrad", "RMSProp"):
        fields["momentum"] = 0
    assert solve_main([write_solver(folder, "runner", **fields)]) == 0
    solver = caffe.get_solver(write_solver(folder, "pycaffe", **fields))
    assert type(solver).__name__ == f"{solver_type}Solver"
    solver.step(3)
    expected = caffemodel_arrays("runner_iter_3.caffemodel")
    np.testing.assert_array_equal(solver.net.params["ip"][0].data, expected["ip"][0])


def test_typed_solver_classes_use_their_own_rule(folder):
    path = write_solver(folder, "p", type='"Adam"', max_iter=1, test_interval=None, test_iter=None)
    assert caffe.SGDSolver(path).param.type == "SGD"
    assert caffe.get_solver(path).param.type == "Adam"


def test_apply_update_is_one_sgd_step_on_the_current_diffs(folder):
    solver = caffe.SGDSolver(write_solver(folder, "p", test_interval=None, test_iter=None))
    weights = solver.net.params["ip"][0].data   # held: the update writes into it
    weights[...] = 2.0
    for blobs in solver.net.params.values():
        for blob in blobs:
            blob.diff[...] = 0
    solver.net.params["ip"][0].diff[...] = 1.0
    solver.apply_update()
    # v = lr * (diff + decay * w); w -= v  (lr_mult 1, decay_mult 1)
    np.testing.assert_allclose(weights, 2.0 - 0.05 * (1.0 + 0.0005 * 2.0), rtol=1e-6)
    assert solver.iter == 0 and solver.lr == pytest.approx(0.05)


def test_snapshot_and_restore_continue_the_same_run(folder):
    path = write_solver(folder, "p", test_interval=None, test_iter=None)
    solver = caffe.SGDSolver(path)
    solver.step(5)
    solver.snapshot()
    solver.step(5)
    solver2 = caffe.SGDSolver(path)
    solver2.restore("p_iter_5.solverstate")
    assert solver2.iter == 5
    solver2.step(5)
    for a, b in zip(solver.net.params["conv1"], solver2.net.params["conv1"]):
        np.testing.assert_array_equal(a.data, b.data)


def test_solve_tests_through_the_test_net_views(folder):
    solver = caffe.SGDSolver(write_solver(folder, "p", max_iter=10))
    test_net = solver.test_nets[0]
    solver.solve()
    assert solver.iter == 10
    assert 0 <= float(test_net.blobs["accuracy"].data) <= 1   # filled by the last test pass
    assert (test_net.params["ip"][0].data == solver.net.params["ip"][0].data).all()


def test_backward_after_an_update_uses_the_updated_weights(folder):
    solver = caffe.SGDSolver(write_solver(folder, "p", test_interval=None, test_iter=None))
    net = solver.net
    net.forward()
    net.backward()
    before = net.params["ip"][0].data.copy()
    solver.apply_update()              # the weights change in place after the forward
    net.backward()                     # as Caffe's Backward, with the current weights
    after = net.params["ip"][0].data
    assert not np.array_equal(before, after)
    top_diff = net.blobs["ip"].diff.reshape(4, -1)
    np.testing.assert_allclose(net.blobs["drop1"].diff.reshape(4, -1), top_diff @ after,
                               rtol=1e-5, atol=1e-7)
