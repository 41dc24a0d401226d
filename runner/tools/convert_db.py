"""Copy a LevelDB or LMDB of records into a new database, keys and values byte for byte,
in key order (by default into the other kind).

    python -m runner.tools.convert_db SRC_DB DST_DB [--to lmdb|leveldb] [--overwrite]

A LevelDB can be open in one process at a time, so training in several processes
(torchrun) or with data workers needs the LMDB this writes. The source's kind is read
from its files; the new database is written atomically (nothing is left at DST_DB if
the copy fails).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner import console
from runner.data.databases import LABELS, READERS, write_records
from runner.data.datum import DataError


def database_kind(path: str | Path) -> str:
    """'leveldb' or 'lmdb', from the files of the database directory at `path`."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"'{path}' is not a database directory (it does not exist or is a file)")
    if (path / "CURRENT").is_file():
        return "leveldb"
    if (path / "data.mdb").is_file():
        return "lmdb"
    raise DataError(f"'{path}' is neither a LevelDB (no CURRENT file) nor an LMDB (no data.mdb)")


def convert_db(source: str | Path, target: str | Path, to: str | None = None,
               overwrite: bool = False) -> tuple[str, str, int]:
    """Copy every record of `source` into a new `to` database at `target` (default: the
    other kind); returns (source kind, target kind, records copied)."""
    kind = database_kind(source)
    to = to or ("lmdb" if kind == "leveldb" else "leveldb")
    if Path(source).resolve() == Path(target).resolve():
        raise DataError(f"'{target}' is the source database itself; give a new path")
    with READERS[kind](source) as reader:
        count = write_records(target, reader.raw_items(), to, total=len(reader),
                              overwrite=overwrite, desc=Path(target).name)
    return kind, to, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=console.prog("python -m runner.tools.convert_db"),
        description="Copy a LevelDB or LMDB of records into a new database (by default of "
                    "the other kind), keys and values byte for byte.")
    parser.add_argument("source", metavar="SRC_DB", help="LevelDB or LMDB directory")
    parser.add_argument("target", metavar="DST_DB", help="new database directory")
    parser.add_argument("--to", type=str.lower, choices=sorted(READERS),
                        help="the new database's kind (default: the other kind)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DST_DB")
    args = parser.parse_args(argv)
    try:
        kind, to, count = convert_db(args.source, args.target, args.to, args.overwrite)
    except (DataError, OSError) as exc:  # OSError: an output path that cannot be made
        print(f"convert_db: {exc}", file=sys.stderr)
        return 2
    print(f"Copied {count} records from the {LABELS[kind]} {args.source} to the "
          f"{LABELS[to]} {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
