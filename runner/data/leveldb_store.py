"""LevelDB databases of Datum records (Caffe's default Data backend), through plyvel: a
reader with LmdbReader's interface (records in key order, LevelDB's bytewise order as
Caffe's), and a writer that fills a temporary directory and renames it into place.

LevelDB lets one process open a database at a time (its LOCK file); within a process the
readers of one database share a handle. A database another process holds is a DataError
that says so.
"""
from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Iterable, Iterator

import plyvel
from tqdm import tqdm

from runner.data.datum import DataError
from runner.data.lmdb_store import COMMIT_EVERY, write_dir_atomically
from runner.data.record_reader import RecordReader, key_bytes

# (pid, resolved path) -> [plyvel.DB, readers using it]
_SHARED: dict[tuple[int, str], list] = {}


def _reason(exc: Exception) -> str:
    """plyvel's message (it carries LevelDB's status as bytes)."""
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


def _open(path: Path) -> tuple[tuple[int, str], plyvel.DB]:
    """This process's handle on the LevelDB at `path`, one more reader counted on it."""
    if not path.is_dir():
        raise DataError(f"LevelDB database '{path}' does not exist (cwd: {Path.cwd()})")
    if not (path / "CURRENT").is_file():
        if (path / "data.mdb").is_file():
            raise DataError(f"'{path}' is an LMDB database, not a LevelDB: set `backend: LMDB` "
                            "in data_param (LEVELDB is Caffe's default), or --backend lmdb")
        raise DataError(f"'{path}' is not a LevelDB database (no CURRENT file in it)")
    for inherited in [k for k in _SHARED if k[0] != os.getpid()]:
        _SHARED.pop(inherited)   # a forked child must not use (or close) its parent's handle
    key = (os.getpid(), str(path.resolve()))
    if key not in _SHARED:
        try:
            _SHARED[key] = [plyvel.DB(str(path), create_if_missing=False), 0]
        except plyvel.Error as exc:
            reason = _reason(exc)
            if isinstance(exc, plyvel.IOError) and "lock" in reason:
                raise DataError(f"LevelDB database '{path}' is open in another process: LevelDB "
                                "lets one process open a database (read it from one process, "
                                "or convert it to LMDB: python -m runner.tools.convert_db "
                                f"{path} {path}_lmdb)") from None
            raise DataError(f"'{path}' cannot be opened as a LevelDB database: {reason}") from None
    _SHARED[key][1] += 1
    return key, _SHARED[key][0]


def _release(key: tuple[int, str]) -> None:
    entry = _SHARED.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        _SHARED.pop(key)[0].close()


def _end_read(snapshot, key: tuple[int, str]) -> None:
    snapshot.close()
    _release(key)


class LeveldbReader(RecordReader):
    """Read-only view of a LevelDB: `len`, iteration in key order, and `record(i)`, the i-th
    record in key order, reached by stepping an iterator (cheap when i grows steadily)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        key, db = _open(self.path)
        self._snapshot = db.snapshot()   # one consistent view, as LMDB's read transaction
        # closed by close() or, at the latest, when the reader is collected
        self._finalizer = weakref.finalize(self, _end_read, self._snapshot, key)
        self._cursor, self._position, self._current = None, -1, None
        try:
            self.length = sum(1 for _ in self._snapshot.iterator(include_value=False))
        except plyvel.Error as exc:
            self.close()
            raise DataError(f"LevelDB database '{self.path}' cannot be read: {_reason(exc)}") from None
        if self.length == 0:
            self.close()
            raise DataError(f"LevelDB database '{self.path}' holds no records")

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        try:
            yield from self._snapshot.iterator()
        except plyvel.Error as exc:
            raise DataError(f"LevelDB database '{self.path}' cannot be read: {_reason(exc)}") from None

    def record_view(self, index: int) -> tuple[str, bytes]:
        """The index-th record in key order (plyvel hands out bytes, there is no map to view)."""
        if index < self._position or self._cursor is None:
            self._cursor, self._position = self._snapshot.iterator(), -1
        try:
            while self._position < index:
                self._current = next(self._cursor)
                self._position += 1
        except StopIteration:
            raise DataError(f"LevelDB database '{self.path}' has no record {index}") from None
        except plyvel.Error as exc:
            raise DataError(f"LevelDB database '{self.path}' cannot be read at record {index}: "
                            f"{_reason(exc)}") from None
        key, value = self._current
        return key.decode("utf-8", "replace"), value


def write_leveldb(path: str | os.PathLike, records: Iterable[tuple[str | bytes, bytes]], *,
                  total: int | None = None, overwrite: bool = False, desc: str = "") -> int:
    """Write (key, serialized Datum) records to a new LevelDB at `path`; return how many.
    As write_lmdb: batches of COMMIT_EVERY, into a directory written atomically."""
    def fill(tmp: Path) -> int:
        db = plyvel.DB(str(tmp), create_if_missing=True)
        count = 0
        try:
            batch = db.write_batch()
            for key, value in tqdm(records, total=total, desc=desc or Path(path).name, unit="rec"):
                batch.put(key_bytes(key), value)
                count += 1
                if count % COMMIT_EVERY == 0:
                    batch.write()
                    batch = db.write_batch()
            batch.write()
        finally:
            db.close()
        return count
    return write_dir_atomically(path, fill, overwrite)
