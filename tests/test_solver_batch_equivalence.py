"""Gradient accumulation and data parallelism are Caffe's batch arithmetic:
iter_size 2 at batch B trains like iter_size 1 at batch 2B, and two DDP processes
(gloo, each batch B from its own half of the LMDB) train like one process at 2B."""
import numpy as np
import pytest

from runner.proto import blob_to_array, parse_solver_text, read_caffemodel
from runner.solve import train_rank
from runner.solver import SolverOptions
from runner.solver.distributed import spawn

from solver_helpers import classifier_net, make_lmdb, make_solver

FIELDS = dict(base_lr=0.1, lr_policy='"step"', stepsize=4, gamma=0.5, momentum=0.9,
              weight_decay=0.001, max_iter=8, test_interval=0)


@pytest.fixture(scope="module")
def lmdb_dir(tmp_path_factory):
    return make_lmdb(tmp_path_factory.mktemp("batches") / "train_lmdb", 40)


def weights(path):
    return [blob_to_array(b) for layer in read_caffemodel(path).layer for b in layer.blobs]


def assert_same_training(a, b, start):
    for x, y, s in zip(a, b, start):
        assert np.abs(x - s).max() > 1e-3          # both trained
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def initial_weights(net_text, tmp_path):
    solver = make_solver(net_text, tmp_path / "init" / "s", **FIELDS)
    return [w.detach().numpy().copy() for _, w, _, _ in solver.net.learnable_params()]


def test_iter_size_2_equals_double_batch(lmdb_dir, tmp_path):
    make_solver(classifier_net(lmdb_dir, batch=4), tmp_path / "acc" / "s",
                iter_size=2, **FIELDS).solve()
    make_solver(classifier_net(lmdb_dir, batch=8), tmp_path / "big" / "s",
                iter_size=1, **FIELDS).solve()
    assert_same_training(weights(tmp_path / "acc" / "s_iter_8.caffemodel"),
                         weights(tmp_path / "big" / "s_iter_8.caffemodel"),
                         initial_weights(classifier_net(lmdb_dir, batch=8), tmp_path))


def solver_param(net_text, prefix):
    lines = [f"net_param {{ {net_text} }}", f'snapshot_prefix: "{prefix}"', "random_seed: 5"]
    lines += [f"{k}: {v}" for k, v in FIELDS.items()]
    return parse_solver_text("\n".join(lines))


def test_two_gloo_ranks_equal_one_process_with_double_batch(lmdb_dir, tmp_path):
    ddp_prefix = tmp_path / "ddp" / "s"
    param = solver_param(classifier_net(lmdb_dir, batch=4), ddp_prefix)
    spawn(train_rank, 2, param.SerializeToString(), SolverOptions(progress=False), [], None)
    make_solver(classifier_net(lmdb_dir, batch=8), tmp_path / "one" / "s", **FIELDS).solve()
    assert_same_training(weights(tmp_path / "ddp" / "s_iter_8.caffemodel"),
                         weights(tmp_path / "one" / "s_iter_8.caffemodel"),
                         initial_weights(classifier_net(lmdb_dir, batch=8), tmp_path))
    log = (tmp_path / "ddp" / "s.log").read_text()
    assert "Optimization Done." in log                         # rank 0 logged ...
    assert not (tmp_path / "ddp" / "s_iter_8.solverstate.tmp").exists()
