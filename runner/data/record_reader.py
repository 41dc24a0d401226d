"""What every database reader of Datum records offers (LmdbReader, LeveldbReader): `len`,
iteration in key order, `record(i)`, and `close()`, also as a context manager."""
from __future__ import annotations

from pathlib import Path


class RecordReader:
    """Subclasses set `path`, `length` and `_finalizer` (a weakref.finalize that ends the
    read) and define `__iter__` and `record_view`."""

    path: Path
    length: int

    def __len__(self) -> int:
        return self.length

    def record(self, index: int) -> tuple[str, bytes]:
        """The index-th record in key order (0 <= index < len)."""
        key, value = self.record_view(index)
        return key, bytes(value)

    def close(self) -> None:
        """End the read (the process keeps its handle while other readers use it)."""
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
