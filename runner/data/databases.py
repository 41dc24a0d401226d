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


class ProcessReader:
    """A database read through a reader of this process's own (a read transaction must not
    cross a fork): set `path` and `backend`; pickles without the open reader."""

    path: str | os.PathLike
    backend: str
    _reader = None
    _pid = None

    def __getstate__(self):
        return {**self.__dict__, "_reader": None, "_pid": None}

    def reader(self):
        if self._pid != os.getpid():
            self._reader, self._pid = open_reader(self.path, self.backend), os.getpid()
        return self._reader

    def close(self) -> None:
        """End this process's read transaction (reopened on demand)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = self._pid = None


def write_records(path: str | os.PathLike, records: Iterable[tuple[str, bytes]],
                  backend: str = "lmdb", **kwargs) -> int:
    """Write (key, value) records to a new database at `path`, atomically; how many."""
    return WRITERS[backend](path, records, **kwargs)
