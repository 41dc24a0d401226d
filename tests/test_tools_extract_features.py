"""extract_features (Caffe's tools/extract_features): blobs over N mini-batches into an
LMDB or LevelDB of Datums (10-digit keys, float_data, the blob's legacy C/H/W) or .npy, read back
equal to the blobs of a direct forward over the same batches."""
from pathlib import Path

import numpy as np
import plyvel
import pytest
import torch
from solver_helpers import make_lmdb

from runner import Net
from runner.data.lmdb_store import LmdbReader
from runner.proto import caffe_pb2
from runner.solver.batches import BatchStream
from runner.tools import extract_features


def feature_net(source: Path) -> str:
    return f'''name: "features"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ scale: 0.00390625 }} data_param {{ source: "{source}" batch_size: 4 backend: LMDB }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 3 kernel_size: 3 weight_filler {{ type: "gaussian" std: 0.3 }}
    bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param {{ num_output: 5 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
'''


def run_tool(capsys, *args) -> tuple[int, str]:
    """The command in this process: (exit status, stderr)."""
    try:
        status = extract_features.main([str(a) for a in args])
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    return status, capsys.readouterr().err


def direct_blobs(prototxt: Path, weights: Path, names, batches: int) -> dict:
    net = Net(prototxt, phase="TEST", weights=weights)
    stream = BatchStream(net.sources, torch.device("cpu"))
    out = {name: [] for name in names}
    with torch.no_grad():
        for _ in range(batches):
            blobs = net(next(stream))
            for name in names:
                out[name].append(blobs[name].numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}


def setup_net(tmp_path: Path) -> tuple[Path, Path]:
    source = make_lmdb(tmp_path / "images_lmdb", count=10, side=6)
    prototxt = tmp_path / "features.prototxt"
    prototxt.write_text(feature_net(source))
    torch.manual_seed(3)
    weights = tmp_path / "w.caffemodel"
    Net(prototxt, phase="TEST").save_caffemodel(weights)
    return prototxt, weights


@pytest.mark.parametrize("db_type", ["lmdb", "leveldb"])
def test_database_features_equal_a_direct_forward(tmp_path, capsys, db_type):
    prototxt, weights = setup_net(tmp_path)
    status, err = run_tool(capsys, weights, prototxt, "conv1,fc",
                           f"{tmp_path / 'conv_db'},{tmp_path / 'fc_db'}", 3, db_type)
    assert status == 0, err
    expected = direct_blobs(prototxt, weights, ["conv1", "fc"], 3)  # 12 items: wraps past the 10 images
    for name, db in (("conv1", "conv_db"), ("fc", "fc_db")):
        if db_type == "lmdb":
            with LmdbReader(tmp_path / db) as reader:
                records = list(reader)
        else:                            # read with plyvel itself
            leveldb = plyvel.DB(str(tmp_path / db))
            records = [(key.decode(), value) for key, value in leveldb]
            leveldb.close()
        assert [key for key, _ in records] == [f"{i:010d}" for i in range(12)]
        for (_, value), item in zip(records, expected[name]):
            datum = caffe_pb2.Datum.FromString(value)
            legacy = (list(item.shape) + [1, 1])[:3]
            assert [datum.channels, datum.height, datum.width] == legacy
            assert not datum.data
            np.testing.assert_array_equal(np.array(datum.float_data, dtype=np.float32), item.reshape(-1))
    assert np.abs(expected["fc"]).max() > 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary left


def test_npy_features_equal_a_direct_forward(tmp_path, capsys):
    prototxt, weights = setup_net(tmp_path)
    status, err = run_tool(capsys, weights, prototxt, "fc", tmp_path / "fc.npy", 2, "npy")
    assert status == 0, err
    got = np.load(tmp_path / "fc.npy")
    np.testing.assert_array_equal(got, direct_blobs(prototxt, weights, ["fc"], 2)["fc"])
    assert got.shape == (8, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fc.npy", "features.prototxt", "images_lmdb", "w.caffemodel"]


def test_unknown_blob_and_mismatched_lists_are_clear_errors(tmp_path, capsys):
    prototxt, weights = setup_net(tmp_path)
    status, err = run_tool(capsys, weights, prototxt, "fc7", tmp_path / "x_db", 1, "lmdb")
    assert status == 2 and "unknown feature blob name(s) ['fc7']" in err
    assert not (tmp_path / "x_db").exists()
    status, err = run_tool(capsys, weights, prototxt, "fc,conv1", tmp_path / "x_db", 1, "lmdb")
    assert status == 2 and "2 blob names but 1 outputs" in err
    (tmp_path / "taken_db").mkdir()
    status, err = run_tool(capsys, weights, prototxt, "fc", tmp_path / "taken_db", 1, "lmdb")
    assert status == 2 and "already exists" in err
