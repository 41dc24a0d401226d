"""runner.atomic: whole-file replacement with ordinary permissions."""
import os
import stat

import pytest

from runner.atomic import atomic_write_bytes, atomic_write_text


def test_replaces_file_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o644


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_an_unwritable_target_is_named_not_its_temporary(tmp_path):
    """A directory in the way: the error names the path the caller gave, not the
    temporary, and no temporary is left behind; a file in place of the folder is named as
    mkdir names it."""
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError, match=r"^\[Errno 21\] Is a directory: '[^']*/out'$"):
        atomic_write_bytes(tmp_path / "out", b"x")
    assert os.listdir(tmp_path) == ["out"] and os.listdir(tmp_path / "out") == []
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExistsError, match=r"File exists: '.*/file'$"):   # as mkdir says
        atomic_write_bytes(tmp_path / "file" / "w.onnx", b"x")
