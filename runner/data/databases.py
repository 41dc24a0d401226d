"""The database backends of Caffe's Data layer and tools, by name: LMDB, and LevelDB (the
default of data_param.backend). Both hold (key, serialized Datum) records read in key order."""
from __future__ import annotations

import os
from typing import Iterable

from runner.data.leveldb_store import LeveldbReader, write_leveldb
from runner.data.lmdb_store import LmdbReader, write_lmdb
from runner.proto import caffe_pb2

READERS = {"lmdb": LmdbReader, "leveldb": LeveldbReader}
WRITERS = {"lmdb": write_lmdb, "leveldb": write_leveldb}
LABELS = {"lmdb": "LMDB", "leveldb": "LevelDB"}


def backend_name(value: int) -> str:
    """'lmdb' or 'leveldb', the READERS/WRITERS key of a data_param.backend value."""
    return caffe_pb2.DataParameter.DB.Name(value).lower()


def open_reader(path: str | os.PathLike, backend: str = "lmdb"):
    """A reader (len, key-order iteration, record(i), close) on the database at `path`."""
    return READERS[backend](path)


def write_records(path: str | os.PathLike, records: Iterable[tuple[str, bytes]],
                  backend: str = "lmdb", **kwargs) -> int:
    """Write (key, value) records to a new database at `path`, atomically; how many."""
    return WRITERS[backend](path, records, **kwargs)
