"""snapshot_diff: true writes each blob's diff next to its data, as Caffe's Net::ToProto
and Net::ToHDF5 with write_diff do. After ApplyUpdate a Caffe diff holds the update just
subtracted from the weights (SGD copies its history there), so the snapshot's diffs are
those updates; a blob shared by several layers shows its owner's diff in each of them.
Asking for diffs never changes the trajectory, and without the field no diff is written."""
import h5py
import numpy as np
import pytest

from runner.proto import blob_to_array, read_caffemodel, read_solverstate

from solver_helpers import classifier_net, make_lmdb, make_solver

SHARED = '''
layer { name: "a" type: "InnerProduct" bottom: "pool1" top: "a"
  param { name: "w" } param { name: "ba" }
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "b" type: "InnerProduct" bottom: "pool1" top: "b"
  param { name: "w" } param { name: "bb" }
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "ab" }
layer { name: "loss2" type: "SoftmaxWithLoss" bottom: "ab" bottom: "label" top: "loss2" }'''


@pytest.fixture(scope="module")
def lmdb_dir(tmp_path_factory):
    return make_lmdb(tmp_path_factory.mktemp("diffsnap") / "train_lmdb", 24, side=9)


def _train(lmdb_dir, root, solver_type="SGD", **fields):
    net = classifier_net(lmdb_dir, batch=4) + SHARED
    solver = make_solver(net, root / "s", type=f'"{solver_type}"', max_iter=6, snapshot=3,
                         momentum=0.9, **fields)
    solver.solve()
    return solver


def _blobs(model):
    return {(layer.name, j): blob for layer in model.layer for j, blob in enumerate(layer.blobs)}


def test_sgd_diffs_are_the_last_update_and_the_weights_are_unchanged(lmdb_dir, tmp_path):
    _train(lmdb_dir, tmp_path / "plain")
    _train(lmdb_dir, tmp_path / "diff", snapshot_diff="true")
    plain = _blobs(read_caffemodel(tmp_path / "plain" / "s_iter_6.caffemodel"))
    with_diff = _blobs(read_caffemodel(tmp_path / "diff" / "s_iter_6.caffemodel"))
    before = _blobs(read_caffemodel(tmp_path / "diff" / "s_iter_3.caffemodel"))
    history = read_solverstate(tmp_path / "diff" / "s_iter_6.solverstate").history
    assert plain.keys() == with_diff.keys()
    for key, blob in with_diff.items():
        np.testing.assert_array_equal(blob_to_array(blob), blob_to_array(plain[key]))
        assert len(plain[key].diff) == 0
        assert len(blob.diff) == len(blob.data) and len(before[key].diff) == len(blob.data)
    # SGD's update is its momentum history: learnable order conv1 w, b; ip w, b; a's w
    # (shared with b), a's bias, b's bias
    owners = [("conv1", 0), ("conv1", 1), ("ip", 0), ("ip", 1), ("a", 0), ("a", 1), ("b", 1)]
    assert len(history) == len(owners)
    for key, state in zip(owners, history):
        diff = np.asarray(with_diff[key].diff, np.float32)
        np.testing.assert_array_equal(diff, blob_to_array(state).reshape(-1))
        assert np.abs(diff).max() > 0
    np.testing.assert_array_equal(with_diff[("b", 0)].diff, with_diff[("a", 0)].diff)


def test_adam_diffs_are_its_step(lmdb_dir, tmp_path):
    """Adam's diff is lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta), from the
    moments the solver state holds (a numpy transcription of adam_solver.cpp)."""
    _train(lmdb_dir, tmp_path, "Adam", snapshot_diff="true", base_lr=0.01, momentum2=0.999,
           delta=1e-8, weight_decay=0)
    model = _blobs(read_caffemodel(tmp_path / "s_iter_6.caffemodel"))
    history = read_solverstate(tmp_path / "s_iter_6.solverstate").history
    n = len(history) // 2
    t = 6
    correction = np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
    owners = [("conv1", 0), ("conv1", 1), ("ip", 0), ("ip", 1), ("a", 0), ("a", 1), ("b", 1)]
    lr_mult = [1, 1, 1, 2, 1, 1, 1]
    for i, key in enumerate(owners):
        m, v = (blob_to_array(history[i]).astype(np.float64),
                blob_to_array(history[n + i]).astype(np.float64))
        expected = 0.01 * lr_mult[i] * correction * m / (np.sqrt(v) + 1e-8)
        np.testing.assert_allclose(np.asarray(model[key].diff).reshape(m.shape), expected,
                                   rtol=1e-5, atol=1e-9)


def test_hdf5_snapshot_diffs_match_the_binary_ones(lmdb_dir, tmp_path):
    _train(lmdb_dir, tmp_path / "bin", snapshot_diff="true")
    _train(lmdb_dir, tmp_path / "h5", snapshot_diff="true", snapshot_format="HDF5")
    binary = read_caffemodel(tmp_path / "bin" / "s_iter_6.caffemodel")
    with h5py.File(tmp_path / "h5" / "s_iter_6.caffemodel.h5") as f:
        assert sorted(f["diff"]) == sorted(layer.name for layer in binary.layer)
        for layer in binary.layer:
            assert sorted(f[f"diff/{layer.name}"]) == [str(j) for j in range(len(layer.blobs))]
            for j, blob in enumerate(layer.blobs):
                np.testing.assert_array_equal(f[f"diff/{layer.name}/{j}"][()],
                                              np.asarray(blob.diff, np.float32).reshape(blob_to_array(blob).shape))
        assert "0" not in f["data/b"] and "1" in f["data/b"]   # data: owned blobs only
    _train(lmdb_dir, tmp_path / "h5plain", snapshot_format="HDF5")
    with h5py.File(tmp_path / "h5plain" / "s_iter_6.caffemodel.h5") as f:
        assert "diff" not in f


def test_pycaffe_shows_the_update_in_the_diff_after_a_step(lmdb_dir, tmp_path):
    import caffe

    net = classifier_net(lmdb_dir, batch=4)
    path = tmp_path / "solver.prototxt"
    path.write_text(f'net_param {{ {net} }}\nbase_lr: 0.05\nlr_policy: "fixed"\nmomentum: 0.9\n'
                    f'max_iter: 5\nsnapshot_prefix: "{tmp_path}/s"\nrandom_seed: 1\n')
    solver = caffe.SGDSolver(str(path))
    solver.step(2)
    before = solver.net.params["ip"][0].data.copy()
    solver.step(1)
    diff = solver.net.params["ip"][0].diff
    assert np.abs(diff).max() > 0
    np.testing.assert_allclose(before - solver.net.params["ip"][0].data, diff, rtol=0, atol=1e-6)


def test_stored_diffs_load_with_the_weights_and_leave_training_unchanged(lmdb_dir, tmp_path):
    """Blob::FromProto copies a stored diff with the data: pycaffe shows a snapshot_diff
    snapshot's diffs after loading it, and fine-tuning from it follows the same path as
    from the same weights without diffs (the solver clears diffs before each step)."""
    import caffe
    from runner.proto import write_binary
    from runner.solver import SolverOptions
    from runner.weights import WeightsError

    _train(lmdb_dir, tmp_path / "diff", snapshot_diff="true")
    with_diff = tmp_path / "diff" / "s_iter_6.caffemodel"
    model = read_caffemodel(with_diff)
    stored = _blobs(model)
    net_path = tmp_path / "net.prototxt"
    net_path.write_text(classifier_net(lmdb_dir, batch=4) + SHARED)
    net = caffe.Net(str(net_path), str(with_diff), caffe.TRAIN)
    for (name, j), blob in stored.items():
        np.testing.assert_array_equal(net.params[name][j].diff.ravel(), np.asarray(blob.diff, np.float32))
        assert np.abs(net.params[name][j].diff).max() > 0

    for layer in model.layer:
        for blob in layer.blobs:
            blob.ClearField("diff")
    plain = tmp_path / "plain.caffemodel"
    write_binary(model, plain)
    finals = []
    for weights in (with_diff, plain):
        solver = make_solver(classifier_net(lmdb_dir, batch=4) + SHARED, tmp_path / weights.stem,
                             SolverOptions(progress=False, weights=[str(weights)]), max_iter=2)
        solver.solve()
        finals.append([p.detach().clone() for p in solver.model.parameters()])
    for a, b in zip(*finals):
        assert np.array_equal(a.numpy(), b.numpy())

    next(layer for layer in model.layer if layer.name == "conv1").blobs[0].diff.extend([1.0, 2.0])
    write_binary(model, plain)
    with pytest.raises(WeightsError, match=r"plain.caffemodel: layer 'conv1' blob 0: shape .* holds \d+ values but diff has 2"):
        caffe.Net(str(net_path), str(plain), caffe.TRAIN)
