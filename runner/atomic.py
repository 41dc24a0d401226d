"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Temporaries live beside their target as `.<name>.<pid>-<random><suffix>`. A process killed
mid-write (kill -9, power loss) leaves its temporary behind; the next write to the same
target removes those whose writing process is gone, and nothing else.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's live process
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike, suffixes=(".tmp", ".old")) -> list[Path]:
    """Remove the temporaries of `target` left by writers that no longer run; return them.

    Only names of the form `.<target name>.<pid>-<random><suffix>` whose pid is not a
    live process are touched (files or directories).
    """
    target = Path(target)
    pattern = re.compile(re.escape(f".{target.name}.") + r"(\d+)-[^/]*("
                         + "|".join(re.escape(s) for s in suffixes) + r")\Z")
    removed = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or _process_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def temporary_dir_beside(target: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A new private directory beside `target` for staging it (stale ones removed first)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    return Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=suffix, dir=target.parent))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename over `path`.

    The file gets the permissions a plain open() would give (0666 less the umask). An
    OSError that would name the temporary names `path` instead ("[Errno 21] Is a
    directory: 'out'").
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        if err.errno is None or not Path(str(err.filename)).name.startswith(_prefix(path)):
            raise
        raise type(err)(err.errno, err.strerror, str(path)) from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
