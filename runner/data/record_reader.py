"""What every database reader of Datum records offers (LmdbReader, LeveldbReader): `len`,
iteration in key order, `record(i)`, and `close()`, also as a context manager."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator


def key_bytes(key: str | bytes) -> bytes:
    """A record key as the database stores it (str keys in UTF-8)."""
    return key if isinstance(key, bytes) else key.encode("utf-8")


class RecordReader:
    """Subclasses set `path`, `length` and `_finalizer` (a weakref.finalize that ends the
    read) and define `record_view` and `raw_items`: (key, value) pairs in key order, both as
    stored, on a cursor of their own."""

    path: Path
    length: int

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        """(key, value) pairs in key order, the key as text."""
        for key, value in self.raw_items():
            yield key.decode("utf-8", "replace"), value

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
