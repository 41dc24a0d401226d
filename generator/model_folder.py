"""Write a model folder so that an error leaves nothing half written."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from runner.atomic import atomic_write_text


def write_model_folder(folder: str | os.PathLike, files: dict[str, str]) -> None:
    """Write `files` (name -> text) into `folder` via a temporary folder beside it.

    A new folder appears by one rename. An existing one keeps what else it holds
    (snapshots, a Model Zoo readme) and has each file replaced by one rename.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name, text in files.items():
            atomic_write_text(staging / name, text)
        try:
            os.rename(staging, folder)
            return
        except OSError:
            if not folder.is_dir():
                raise
        for name in files:
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
