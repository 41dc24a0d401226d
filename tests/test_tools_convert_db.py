"""convert_db copies a LevelDB into a new LMDB (and back), every key and value byte for
byte in key order, keys that are not UTF-8 included; the Data layer then reads the LMDB
with workers, which a LevelDB does not allow. Bad paths are errors that name them, and a
failed copy leaves nothing behind."""
import subprocess
import sys

import lmdb
import numpy as np
import plyvel
import pytest
import torch
from google.protobuf import text_format

import runner.data  # noqa: F401  (registers the sources)
from runner.data.datum import DataError, image_to_datum
from runner.proto import caffe_pb2
from runner.sources import source_factory
from runner.tools.convert_db import convert_db, database_kind, main

N = 9


@pytest.fixture
def leveldb(tmp_path):
    """N Datums (10 x 11 colour images) plus a record whose key is not UTF-8."""
    rng = np.random.default_rng(1)
    records = {f"{i:08d}_{i}.jpg".encode(): image_to_datum(
        rng.integers(0, 256, (10, 11, 3), dtype=np.uint8), i % 4).SerializeToString()
        for i in range(N)}
    db = plyvel.DB(str(tmp_path / "ldb"), create_if_missing=True)
    for key, value in records.items():
        db.put(key, value)
    db.close()
    return tmp_path / "ldb", records


def leveldb_items(path):
    db = plyvel.DB(str(path))
    try:
        return list(db.iterator())
    finally:
        db.close()


def lmdb_items(path):
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    finally:
        env.close()


def test_leveldb_to_lmdb_and_back_byte_for_byte(leveldb, tmp_path):
    path, records = leveldb
    db = plyvel.DB(str(path))
    db.put(b"\xff\xfe-not-utf8", b"\x00\x01 raw value")
    db.close()
    expected = leveldb_items(path)
    assert len(expected) == N + 1
    assert convert_db(path, tmp_path / "as_lmdb") == ("leveldb", "lmdb", N + 1)
    assert lmdb_items(tmp_path / "as_lmdb") == expected
    assert convert_db(tmp_path / "as_lmdb", tmp_path / "back") == ("lmdb", "leveldb", N + 1)
    assert leveldb_items(tmp_path / "back") == expected
    assert convert_db(path, tmp_path / "copy", to="leveldb")[1:] == ("leveldb", N + 1)
    assert leveldb_items(tmp_path / "copy") == expected


def test_the_data_layer_reads_the_converted_lmdb_with_workers(leveldb, tmp_path):
    path, _ = leveldb
    convert_db(path, tmp_path / "lmdb")

    def layer(source, backend):
        return text_format.Parse(
            f'name: "data" type: "Data" top: "data" top: "label" data_param {{ source: "{source}" '
            f'batch_size: 4 backend: {backend} }} transform_param {{ crop_size: 7 mirror: true }}',
            caffe_pb2.LayerParameter())
    make = source_factory("Data")
    from_leveldb = make(layer(path, "LEVELDB"), "TRAIN", seed=2, workers=0)
    from_lmdb = make(layer(tmp_path / "lmdb", "LMDB"), "TRAIN", seed=2, workers=2)
    assert from_lmdb.workers == 2
    for _ in range(4):
        a, b = next(from_leveldb), next(from_lmdb)
        assert torch.equal(a["data"], b["data"]) and torch.equal(a["label"], b["label"])


def test_bad_paths_are_errors_that_name_them(leveldb, tmp_path, capsys):
    path, _ = leveldb
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="'.*plain' is neither a LevelDB .* nor an LMDB"):
        database_kind(tmp_path / "plain")
    with pytest.raises(DataError, match="'.*missing' is not a database directory"):
        convert_db(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(DataError, match="is the source database itself"):
        convert_db(path, path, to="leveldb", overwrite=True)
    convert_db(path, tmp_path / "out")
    assert main([str(path), str(tmp_path / "out")]) == 2
    assert "already exists; remove it or ask to overwrite it" in capsys.readouterr().err
    assert main([str(path), str(tmp_path / "out"), "--overwrite"]) == 0
    assert f"Copied {N} records from the LevelDB {path} to the LMDB" in capsys.readouterr().out
    (tmp_path / "afile").write_text("")
    assert main([str(path), str(tmp_path / "afile" / "db")]) == 2
    assert f"convert_db: [Errno 17] File exists: '{tmp_path / 'afile'}'" in capsys.readouterr().err


def test_a_failed_copy_leaves_nothing(leveldb, tmp_path, monkeypatch):
    path, _ = leveldb
    from runner.data import leveldb_store

    def broken(self):
        yield b"00000000_0.jpg", b"a first record"
        raise DataError("simulated read failure")
    monkeypatch.setattr(leveldb_store.LeveldbReader, "raw_items", broken)
    with pytest.raises(DataError, match="simulated"):
        convert_db(path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ldb"]


def test_the_command_line_runs_as_a_module(leveldb, tmp_path):
    path, _ = leveldb
    done = subprocess.run([sys.executable, "-m", "runner.tools.convert_db", str(path),
                           str(tmp_path / "lmdb")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert database_kind(tmp_path / "lmdb") == "lmdb"
