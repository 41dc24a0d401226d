"""LevelDB, Caffe's default Data backend: a database written here with plyvel directly feeds
the Data layer the same batches as an LMDB of the same records; convert_imageset and
compute_image_mean take --backend leveldb; LevelDB's one-process lock and a database of the
other kind are clear errors."""
import subprocess
import sys

import cv2
import numpy as np
import plyvel
import pytest
import torch
from google.protobuf import text_format

import runner.data  # noqa: F401  (registers the sources)
from runner import Net
from runner.data.datum import DataError, image_to_datum
from runner.data.leveldb_store import LeveldbReader
from runner.data.lmdb_store import LmdbReader, write_lmdb
from runner.proto import caffe_pb2, read_blobproto
from runner.sources import source_factory
from runner.tools import compute_image_mean as mean_tool
from runner.tools import convert_imageset as convert_tool

N = 7


@pytest.fixture
def twin_dbs(tmp_path):
    """The same records (12 x 13 colour images, labels i % 3) as an LMDB and a LevelDB."""
    rng = np.random.default_rng(0)
    records = [(f"{i:08d}_{i}.png",
                image_to_datum(rng.integers(0, 256, (12, 13, 3), dtype=np.uint8), i % 3)
                .SerializeToString()) for i in range(N)]
    write_lmdb(tmp_path / "lmdb", records)
    db = plyvel.DB(str(tmp_path / "leveldb"), create_if_missing=True)
    for key, value in reversed(records):           # LevelDB keeps them in key order
        db.put(key.encode(), value)
    db.close()
    return tmp_path / "lmdb", tmp_path / "leveldb"


def data_layer(source, backend, batch_size=3, name="data"):
    return text_format.Parse(
        f'name: "{name}" type: "Data" top: "data" top: "label" '
        f'data_param {{ source: "{source}" batch_size: {batch_size} backend: {backend} }} '
        'transform_param { crop_size: 9 mirror: true scale: 0.5 }', caffe_pb2.LayerParameter())


def test_the_data_layer_reads_leveldb_as_it_reads_the_same_lmdb(twin_dbs):
    lmdb_path, leveldb_path = twin_dbs
    make = source_factory("Data")
    from_lmdb = make(data_layer(lmdb_path, "LMDB"), "TRAIN", seed=4, workers=0)
    from_leveldb = make(data_layer(leveldb_path, "LEVELDB"), "TRAIN", seed=4, workers=2)
    assert from_leveldb.num_records == from_lmdb.num_records == N
    assert from_leveldb.top_shapes == from_lmdb.top_shapes == {"data": (3, 3, 9, 9), "label": (3,)}
    assert from_leveldb.workers == 0      # read in this process: LevelDB allows one
    for _ in range(5):                    # past the end: both wrap around
        a, b = next(from_lmdb), next(from_leveldb)
        assert torch.equal(a["data"], b["data"]) and torch.equal(a["label"], b["label"])
    from_lmdb.close()
    from_leveldb.close()


def test_train_and_test_nets_in_one_process_share_a_leveldb(twin_dbs):
    _, leveldb_path = twin_dbs
    text = (f'layer {{ name: "data" type: "Data" top: "data" top: "label" data_param {{ source: '
            f'"{leveldb_path}" batch_size: 2 }} }}\n'   # backend: Caffe's default, LEVELDB
            'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
            'inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }')
    train = Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TRAIN")
    test = Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TEST")
    for net in (train, test, train):
        loss = net.objective(net(next(iter(net.sources[0]))))
        assert torch.isfinite(loss)
    for net in (train, test):
        net.sources[0].close()


def test_a_leveldb_another_process_holds_is_a_clear_error(twin_dbs):
    _, leveldb_path = twin_dbs
    holder = subprocess.Popen([sys.executable, "-c", "import plyvel, sys; "
                               f"db = plyvel.DB({str(leveldb_path)!r}); print('open', flush=True); "
                               "sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(DataError, match=rf"LevelDB database '{leveldb_path}' is open in "
                                            r"another process: LevelDB lets one process open"):
            LeveldbReader(leveldb_path)
    finally:
        holder.communicate("")
    with LeveldbReader(leveldb_path) as reader:          # free again once it closed
        assert len(reader) == N


def test_wrong_kind_empty_and_missing_databases_are_named(twin_dbs, tmp_path):
    lmdb_path, leveldb_path = twin_dbs
    make = source_factory("Data")
    with pytest.raises(DataError, match=r"is a LevelDB database, not an LMDB: set "
                                        r"`backend: LEVELDB`"):
        make(data_layer(leveldb_path, "LMDB"), "TRAIN", workers=0)
    plyvel.DB(str(tmp_path / "empty"), create_if_missing=True).close()
    with pytest.raises(DataError, match=r"LevelDB database '.*empty' holds no records"):
        LeveldbReader(tmp_path / "empty")
    with pytest.raises(DataError, match=r"LevelDB database '.*nowhere' does not exist"):
        LeveldbReader(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"'.*plain' is not a LevelDB database \(no CURRENT file"):
        LeveldbReader(tmp_path / "plain")


def test_convert_imageset_and_compute_image_mean_take_leveldb(twin_dbs, tmp_path, capsys):
    rng = np.random.default_rng(1)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 256, (5, 6, 3), dtype=np.uint8))
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i % 2}\n" for i in range(4)))
    for backend in ("lmdb", "leveldb"):
        assert convert_tool.main(["--backend", backend, f"{images}/", str(tmp_path / "list.txt"),
                                  str(tmp_path / f"out_{backend}")]) == 0
        assert mean_tool.main(["--backend", backend, str(tmp_path / f"out_{backend}"),
                               str(tmp_path / f"mean_{backend}.binaryproto")]) == 0
    db = plyvel.DB(str(tmp_path / "out_leveldb"))
    written = [(k.decode(), v) for k, v in db]
    db.close()
    with LmdbReader(tmp_path / "out_lmdb") as reader:
        assert written == list(reader)
    assert [k for k, _ in written] == [f"{i:08d}_{i}.png" for i in range(4)]
    a, b = (read_blobproto(tmp_path / f"mean_{x}.binaryproto") for x in ("lmdb", "leveldb"))
    assert a.SerializeToString() == b.SerializeToString()
