"""HDF5Data (list file, dataset per top, batches across files, wrap, shuffle, rank shares)
against a transcription of hdf5_data_layer.cpp on files written here; HDF5Output's file;
and Caffe's brewing-logreg example (HDF5Data + InnerProduct + SoftmaxWithLoss) trained with
`python runner/solve.py`."""
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from runner import Net
from runner.proto import caffe_pb2

REPO = Path(__file__).resolve().parents[1]


def write_h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, values in datasets.items():
            f.create_dataset(name, data=values)
    return str(path)


def hdf5_layer(source, batch, tops=("data", "label"), extra=""):
    top_text = " ".join(f'top: "{t}"' for t in tops)
    return (f'layer {{ name: "h5" type: "HDF5Data" {top_text} '
            f'hdf5_data_param {{ source: "{source}" batch_size: {batch} {extra} }} }}')


def caffe_rows(files, batch, batches):
    """hdf5_data_layer.cpp without shuffle: Forward_cpu copies row current_row_, Next()
    moves to the next file (wrapping) when the rows run out."""
    current_file, current_row, out = 0, 0, []
    data = files[0]
    for _ in range(batches):
        rows = []
        for _ in range(batch):
            rows.append(data[current_row])
            current_row += 1
            if current_row == len(data):
                if len(files) > 1:
                    current_file = (current_file + 1) % len(files)
                    data = files[current_file]
                current_row = 0
        out.append(np.stack(rows))
    return out


@pytest.fixture
def two_files(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 2, 3)).astype(np.float32)
    b = rng.normal(size=(3, 2, 3)).astype(np.float32)
    write_h5(tmp_path / "a.h5", data=a, label=np.arange(5, dtype=np.float64))
    write_h5(tmp_path / "b.h5", data=b, label=np.arange(10, 13, dtype=np.float64))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n  {tmp_path / 'b.h5'}\n")
    return tmp_path, a, b


def net_of(text, phase="TRAIN", **kwargs):
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase=phase, **kwargs)


def test_hdf5_data_batches_across_files_and_wraps_as_caffe(two_files):
    root, a, b = two_files
    net = net_of(hdf5_layer(root / "list.txt", 3))
    (source,) = net.sources
    assert source.top_shapes == {"data": (3, 2, 3), "label": (3,)}
    assert source.num_records == 8
    batches = [next(it) for it in [iter(source)] for _ in range(6)]
    want = caffe_rows([a, b], 3, 6)
    labels = caffe_rows([np.arange(5.0), np.arange(10.0, 13.0)], 3, 6)
    for got, data, label in zip(batches, want, labels):
        assert got["data"].dtype == torch.float32
        np.testing.assert_array_equal(got["data"].numpy(), data)
        np.testing.assert_array_equal(got["label"].numpy(), label)


def test_hdf5_data_shuffle_permutes_rows_and_files_each_pass(two_files):
    root, a, b = two_files
    net = net_of(hdf5_layer(root / "list.txt", 4, tops=("label",), extra="shuffle: true"),
                 source_kwargs={"seed": 3})
    it = iter(net.sources[0])
    passes = [np.concatenate([next(it)["label"].numpy() for _ in range(2)]) for _ in range(3)]
    for labels in passes:   # each pass: one file's rows, then the other's, each set complete
        assert sorted(labels) == [0, 1, 2, 3, 4, 10, 11, 12]
        first = set(labels[:5]) if labels[0] < 10 else set(labels[:3])
        assert first in ({0, 1, 2, 3, 4}, {10, 11, 12})
    assert any(list(p) != sorted(p) for p in passes)


def test_hdf5_data_rank_shares_in_train_and_everything_in_test(two_files):
    root, a, b = two_files
    text = hdf5_layer(root / "list.txt", 2, tops=("label",))
    shares = [next(iter(net_of(text, source_kwargs={"rank": r, "world_size": 2}).sources[0]))["label"]
              for r in (0, 1)]
    assert shares[0].tolist() == [0, 2] and shares[1].tolist() == [1, 3]
    test = next(iter(net_of(text, phase="TEST", source_kwargs={"rank": 1, "world_size": 2}).sources[0]))
    assert test["label"].tolist() == [0, 1]


def test_hdf5_data_errors_name_the_file_and_what_is_wrong(two_files, tmp_path):
    root, _, _ = two_files
    with pytest.raises(ValueError, match=r"layer 'h5' \(HDF5Data\).*a.h5' has no dataset 'pixels'"):
        net_of(hdf5_layer(root / "list.txt", 2, tops=("pixels",)))
    with pytest.raises(ValueError, match="cannot read the source list .*missing.txt"):
        net_of(hdf5_layer(root / "missing.txt", 2))
    with pytest.raises(ValueError, match="does not transform data"):
        net_of(hdf5_layer(root / "list.txt", 2).replace("hdf5_data_param",
                                                         "transform_param { scale: 2 } hdf5_data_param"))
    write_h5(tmp_path / "odd.h5", data=np.zeros((4, 3)), label=np.zeros(3))
    (tmp_path / "odd.txt").write_text(str(tmp_path / "odd.h5"))
    with pytest.raises(ValueError, match="same, non-zero number of rows, got \\[4, 3\\]"):
        net_of(hdf5_layer(tmp_path / "odd.txt", 2))


def _listed(tmp_path, name, build):
    with h5py.File(tmp_path / f"{name}.h5", "w") as f:
        build(f)
    (tmp_path / f"{name}.txt").write_text(str(tmp_path / f"{name}.h5"))
    return tmp_path / f"{name}.txt"


@pytest.mark.parametrize("build, message", [
    # 2**28 rows declared in a few KiB, never written: refused before anything is read
    (lambda f: (f.create_dataset("data", shape=(2**28, 2), dtype="f4", chunks=True),
                f.create_dataset("label", data=np.zeros(3))),
     r"dataset 'data' of '.*declared.h5': declares 2147483648 bytes of values but stores 0"),
    (lambda f: (f.create_dataset("data", shape=(2**31, 1), dtype="f4", chunks=True),
                f.create_dataset("label", data=np.zeros(3))),
     r"dataset 'data' of '.*declared.h5': 2147483648 values, more than Caffe's blob limit"),
    (lambda f: (f.create_group("data"), f.create_dataset("label", data=np.zeros(3))),
     r"HDF5 file '.*declared.h5' has no dataset 'data' \(one dataset per top; 'data' is a group or link\)"),
    (lambda f: (f.__setitem__("data", h5py.SoftLink("/data")), f.create_dataset("label", data=np.zeros(3))),
     r"cannot read HDF5 file '.*declared.h5': .*too many links"),
])
def test_hostile_hdf5_data_files_are_clear_errors(tmp_path, build, message):
    listed = _listed(tmp_path, "declared", build)
    with pytest.raises(ValueError, match=rf"layer 'h5' \(HDF5Data\): {message}"):
        net_of(hdf5_layer(listed, 2))


def test_hdf5_output_writes_caffes_datasets_atomically(tmp_path):
    out = tmp_path / "out.h5"
    text = f'''layer {{ name: "in" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: 3 dim: 2 dim: 2 }} shape {{ dim: 3 }} }} }}
      layer {{ name: "save" type: "HDF5Output" bottom: "data" bottom: "label"
        hdf5_output_param {{ file_name: "{out}" }} }}'''
    net = net_of(text, phase="TEST")
    data, label = torch.randn(3, 2, 2), torch.tensor([1.0, 0.0, 2.0])
    net({"data": data, "label": label})
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["data", "label"]
        assert f["data"].shape == (3, 2, 2, 1) and f["label"].shape == (3, 1, 1, 1)   # legacy 4-D
        assert f["data"].dtype == np.float32
        np.testing.assert_array_equal(f["data"][...].reshape(3, 2, 2), data.numpy())
        np.testing.assert_array_equal(f["label"][...].reshape(3), label.numpy())
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]
    with pytest.raises(ValueError, match="same batch size"):
        net.layers["save"](data, label[:2])


def logreg_files(root: Path, rows: int, seed: int) -> Path:
    """Two classes of 4 features split by a hyperplane, as brewing-logreg's make_classification."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    y = (x @ np.array([1.5, -2.0, 0.5, 1.0]) > 0).astype(np.float32)
    halves = [write_h5(root / f"part{seed}_{i}.h5", data=x[i::2], label=y[i::2]) for i in range(2)]
    listing = root / f"list{seed}.txt"
    listing.write_text("\n".join(halves) + "\n")
    return listing


def test_brewing_logreg_trains_with_solve_py(tmp_path):
    train, test = logreg_files(tmp_path, 200, 0), logreg_files(tmp_path, 40, 1)
    (tmp_path / "train_val.prototxt").write_text(f'''name: "LogisticRegressionNet"
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TRAIN }}
  hdf5_data_param {{ source: "{train}" batch_size: 10 }} }}
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TEST }}
  hdf5_data_param {{ source: "{test}" batch_size: 10 }} }}
layer {{ name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1"
  inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc1" bottom: "label" top: "loss" }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "fc1" bottom: "label" top: "accuracy"
  include {{ phase: TEST }} }}''')
    (tmp_path / "solver.prototxt").write_text(f'''net: "{tmp_path}/train_val.prototxt"
test_iter: 4
test_interval: 60
base_lr: 0.05
lr_policy: "fixed"
momentum: 0.9
display: 5
max_iter: 60
snapshot_prefix: "{tmp_path}/logreg"
random_seed: 1
solver_mode: CPU''')
    run = subprocess.run([sys.executable, "runner/solve.py", str(tmp_path / "solver.prototxt")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    log = (tmp_path / "logreg.log").read_text()
    losses = [float(v) for v in re.findall(r"Iteration \d+ \([^)]*\), loss = ([-\d.e+]+)", log)]
    assert len(losses) >= 10 and np.mean(losses[-3:]) < 0.5 * losses[0]
    accuracy = [float(v) for v in re.findall(r"Test net output #0: accuracy = ([\d.]+)", log)]
    assert accuracy[-1] > 0.85
    assert (tmp_path / "logreg_iter_60.caffemodel").exists()
