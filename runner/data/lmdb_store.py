"""LMDB databases of Datum records, as Caffe keeps them: a reader that walks records in key
order and wraps around, and a writer that commits every 1000 records into a temporary
directory and renames it into place, so a failed or interrupted write leaves nothing behind."""
from __future__ import annotations

import os
import shutil
import weakref
from pathlib import Path
from typing import Iterable, Iterator

import lmdb
from tqdm import tqdm

from runner.atomic import temporary_dir_beside
from runner.data.datum import DataError
from runner.data.record_reader import RecordReader, key_bytes

COMMIT_EVERY = 1000          # records per transaction, as convert_imageset
_INITIAL_MAP_SIZE = 1 << 30  # grows by doubling when full


def open_env(path: str | os.PathLike, readonly: bool = True, **kwargs) -> lmdb.Environment:
    """Open an LMDB directory; a missing or non-LMDB path is a DataError naming it."""
    path = Path(path)
    try:
        return lmdb.open(str(path), readonly=readonly, lock=not readonly, **kwargs)
    except lmdb.Error as exc:
        raise DataError(f"'{path}' cannot be opened as an LMDB database: {exc}") from None


# (pid, resolved path, inode of data.mdb) -> [environment, readers using it]
_SHARED: dict[tuple[int, str, int], list] = {}


def _current(key: tuple[int, str, int]) -> bool:
    """Whether the database a handle was opened on is still the one at its path."""
    try:
        return (Path(key[1]) / "data.mdb").stat().st_ino == key[2]
    except OSError:
        return False


def shared_env(path: Path) -> tuple[tuple[int, str, int], lmdb.Environment]:
    """This process's read-only handle on the LMDB at `path` and its key, one more reader
    counted on it (py-lmdb allows one per process; a database replaced on disk gets a new
    handle). Pass the key to `release_env` when done."""
    if not path.exists():
        raise DataError(f"LMDB database '{path}' does not exist (cwd: {Path.cwd()})")
    try:
        inode = (path / "data.mdb").stat().st_ino
    except OSError:
        if (path / "CURRENT").is_file():
            raise DataError(f"'{path}' is a LevelDB database, not an LMDB: set `backend: LEVELDB` "
                            "in data_param, or --backend leveldb") from None
        raise DataError(f"'{path}' is not an LMDB database (no data.mdb in it)") from None
    for inherited in [k for k in _SHARED if k[0] != os.getpid()]:
        _SHARED.pop(inherited)[0].close()   # a forked child must not use its parent's handles
    for unused in [k for k, (_, readers) in _SHARED.items() if readers <= 0 and not _current(k)]:
        _SHARED.pop(unused)[0].close()      # its database was removed or replaced
    key = (os.getpid(), str(path.resolve()), inode)
    if key not in _SHARED:
        _SHARED[key] = [open_env(path), 0]
    _SHARED[key][1] += 1
    return key, _SHARED[key][0]


def release_env(key: tuple[int, str, int]) -> None:
    """One reader less on a handle. A handle without readers whose database was removed or
    replaced is closed, now or at the next `shared_env` (its memory map would otherwise
    stay for the life of the process)."""
    entry = _SHARED.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0 and not _current(key):
        _SHARED.pop(key)[0].close()


def _end_read(txn: lmdb.Transaction, key: tuple[int, str, int]) -> None:
    txn.abort()
    release_env(key)


class LmdbReader(RecordReader):
    """Read-only view of an LMDB: `len`, iteration in key order, and `record(i)`, the i-th
    record in key order, reached by stepping a cursor (cheap when i grows steadily)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        key, env = shared_env(self.path)
        self._txn = env.begin(buffers=True)   # values as views of the map
        # closed by close() or, at the latest, when the reader is collected
        self._finalizer = weakref.finalize(self, _end_read, self._txn, key)
        self._cursor = self._txn.cursor()
        self._position = -1
        self.length = self._txn.stat()["entries"]
        if self.length == 0:
            self.close()
            raise DataError(f"LMDB database '{self.path}' holds no records")

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._txn.cursor():
            yield bytes(key), bytes(value)

    def record_view(self, index: int) -> tuple[str, memoryview]:
        """Like `record`, with the value a view of the database's memory map (no copy), valid
        until `close()`."""
        if index < self._position or self._position < 0:
            self._cursor.first()
            self._position = 0
        while self._position < index:
            self._cursor.next()
            self._position += 1
        return bytes(self._cursor.key()).decode("utf-8", "replace"), self._cursor.value()


class _Writer:
    """Puts records into an open LMDB in transactions of COMMIT_EVERY records."""

    def __init__(self, env: lmdb.Environment):
        self._env = env
        self._pending: list[tuple[bytes, bytes]] = []
        self.count = 0

    def put(self, key: str | bytes, value: bytes) -> None:
        self._pending.append((key_bytes(key), value))
        self.count += 1
        if len(self._pending) >= COMMIT_EVERY:
            self.commit()

    def commit(self) -> None:
        while self._pending:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in self._pending:
                        txn.put(key, value)
                self._pending = []
            except lmdb.MapFullError:
                self._env.set_mapsize(2 * self._env.info()["map_size"])


def write_lmdb(path: str | os.PathLike, records: Iterable[tuple[str | bytes, bytes]], *,
               total: int | None = None, overwrite: bool = False, desc: str = "") -> int:
    """Write (key, serialized Datum) records to a new LMDB at `path`; return how many.
    Records are committed every COMMIT_EVERY puts, into a directory written atomically
    (`write_dir_atomically`)."""
    def fill(tmp: Path) -> int:
        env = open_env(tmp, readonly=False, map_size=_INITIAL_MAP_SIZE, sync=False)
        try:
            writer = _Writer(env)
            for key, value in tqdm(records, total=total, desc=desc or Path(path).name, unit="rec"):
                writer.put(key, value)
            writer.commit()
            env.sync(True)
        finally:
            env.close()
        return writer.count
    return write_dir_atomically(path, fill, overwrite)


def write_dir_atomically(path: str | os.PathLike, fill, overwrite: bool = False):
    """`fill(tmp)` on a new temporary directory beside `path`, renamed to `path` only once
    it returns (removed if it raises); returns what `fill` returns. An existing `path` is an
    error unless `overwrite` (Caffe refuses to open an existing database for writing)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise DataError(f"'{path}' already exists; remove it or ask to overwrite it")
    tmp = temporary_dir_beside(path)
    try:
        result = fill(tmp)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def replace_dir(new: Path, target: Path) -> None:
    """Move directory `new` to `target`, replacing an existing `target`."""
    new.chmod(0o755)   # mkdtemp made it private
    old = None
    if target.exists():
        old = temporary_dir_beside(target, suffix=".old")
        os.replace(target, old / target.name)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
