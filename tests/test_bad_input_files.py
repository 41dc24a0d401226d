"""Regressions for hostile or careless files: each becomes one error naming the file and
what was expected; nothing hangs, reads without bound, leaks temporaries or leaves a zoo
folder. The seed files of the fuzz suite (tests/fuzz_targets.py) are the good inputs."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fuzz_targets import make_seeds
from runner.atomic import atomic_write_bytes, remove_stale_temporaries
from runner.classify import main as classify
from runner.data.datum import DataError
from runner.data.lmdb_store import write_lmdb
from runner.data.mean import load_mean
from runner.proto import ProtoError, array_to_blob, caffe_pb2, read_caffemodel, write_binary
from runner.solver.errors import SolverConfigError
from runner.solver.snapshot import load_solverstate
from runner.zoo import ZooError
from runner.zoo.frontmatter import read_readme
from runner.zoo.load import load
from runner.zoo.verify import verify

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seeds")
    make_seeds(folder)
    return folder


@pytest.fixture
def files(seed_dir, tmp_path, monkeypatch):
    """A fresh copy of the seeds, as the working directory."""
    shutil.copytree(seed_dir, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def set_front_matter(zoo: Path, yaml_text: str) -> None:
    body = (zoo / "readme.md").read_text().split("---", 2)[2]
    (zoo / "readme.md").write_text(f"---\n{yaml_text}---{body}")


# ---- zoo readme.md ---------------------------------------------------------------------

def test_alias_bomb_is_refused_at_once(files):
    bomb = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    set_front_matter(files / "zoo", "\n".join(bomb) + "\n")
    start = time.monotonic()
    with pytest.raises(ZooError, match=r"readme.md:3:\d+: .*aliases"):
        read_readme(files / "zoo")
    assert time.monotonic() - start < 1


def test_deep_nesting_and_size_are_limited(files):
    set_front_matter(files / "zoo", "name: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ZooError, match="nested deeper than"):
        read_readme(files / "zoo")
    set_front_matter(files / "zoo", "name: x\n" + "# padding\n" * 10000)
    with pytest.raises(ZooError, match="front matter is longer than"):
        read_readme(files / "zoo")


def test_non_utf8_readme_names_the_file(files):
    path = files / "zoo" / "readme.md"
    path.write_bytes(path.read_bytes().replace(b"fuzz", b"f\xffzz", 1))
    with pytest.raises(ZooError, match=r"zoo/readme.md: not UTF-8 text \(byte \d+\)"):
        read_readme(files / "zoo")


def test_duplicate_caffemodel_key_is_refused(files):
    readme = files / "zoo" / "readme.md"
    readme.write_text(readme.read_text().replace("caffemodel: fuzz.caffemodel\n",
                                                 "caffemodel: fuzz.caffemodel\ncaffemodel: x\n"))
    with pytest.raises(ZooError, match="duplicate or unusable key 'caffemodel'"):
        read_readme(files / "zoo")


def test_caffemodel_name_too_long_for_the_file_system_is_named(files):
    readme = files / "zoo" / "readme.md"
    long_name = "w" * 600 + ".caffemodel"
    readme.write_text(readme.read_text().replace("caffemodel: fuzz.caffemodel\n",
                                                 f"caffemodel: {long_name}\n"))
    for entry in (load, verify):
        with pytest.raises(ZooError, match=r"readme.md: front matter 'caffemodel' is a file "
                                           r"name of 611 bytes; this file system allows 255"):
            entry(files / "zoo")


def test_caffemodel_symlinked_outside_fails_verify_without_hashing_it(files, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "w.caffemodel"
    shutil.move(files / "zoo" / "fuzz.caffemodel", outside)
    (files / "zoo" / "fuzz.caffemodel").symlink_to(outside)
    with pytest.raises(ZooError, match="leads outside the folder"):
        verify(files / "zoo")
    (files / "zoo" / "fuzz.caffemodel").unlink()
    (files / "zoo" / "fuzz.caffemodel").symlink_to("/etc/passwd")
    with pytest.raises(ZooError, match="leads outside the folder") as err:
        verify(files / "zoo")
    assert "sha1" not in str(err.value)


def test_classify_refuses_a_deploy_symlinked_outside(files, capsys):
    (files / "zoo" / "deploy.prototxt").unlink()
    (files / "zoo" / "deploy.prototxt").symlink_to("/etc/passwd")
    assert classify(["zoo", "zoo/image.png"]) == 2
    err = capsys.readouterr().err
    assert "leads outside the folder" in err and "root:" not in err


def test_classify_checks_the_sha1_unless_told_not_to(files, capsys):
    readme = files / "zoo" / "readme.md"
    front, _ = read_readme(files / "zoo")
    readme.write_text(readme.read_text().replace(front["sha1"], "0" * 40))
    assert classify(["zoo", "zoo/image.png"]) == 2
    assert "does not match readme.md's" in capsys.readouterr().err
    with pytest.raises(ZooError, match="does not match"):
        load(files / "zoo")
    assert classify(["zoo", "zoo/image.png", "--no-verify-sha1"]) == 0


# ---- readers without bound -----------------------------------------------------------------

def test_device_files_are_refused_before_reading(files):
    start = time.monotonic()
    with pytest.raises(ProtoError, match="/dev/zero: cannot read: not a regular file"):
        read_caffemodel("/dev/zero")
    with pytest.raises(DataError, match="/dev/zero: cannot read: not a regular file"):
        load_mean("/dev/zero")
    assert time.monotonic() - start < 1


def test_a_path_with_a_nul_byte_is_refused_by_name():
    with pytest.raises(ProtoError, match=r"^'w\\x00.caffemodel': cannot read: embedded null byte"):
        read_caffemodel("w\0.caffemodel")


def test_a_directory_is_refused_by_name_without_leaking_its_descriptor(files):
    (files / "weights.caffemodel").mkdir()
    open_before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(ProtoError, match="weights.caffemodel: cannot read: not a regular file"):
            read_caffemodel(files / "weights.caffemodel")
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_cli_model_dev_zero_exits_2_at_once():
    start = time.monotonic()
    done = subprocess.run([sys.executable, "runner/solve.py", "time", "--model", "/dev/zero",
                           "--iterations", "1"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "/dev/zero: cannot read: not a regular file" in done.stderr
    assert time.monotonic() - start < 60


def test_non_finite_mean_and_datum_floats_are_named(files):
    write_binary(array_to_blob(np.full((1, 1, 2, 2), np.nan, np.float32)), "nan.binaryproto")
    with pytest.raises(DataError, match="'nan.binaryproto': 4 of its 4 values are NaN or inf"):
        load_mean("nan.binaryproto")
    datum = caffe_pb2.Datum(channels=1, height=8, width=8, label=0,
                            float_data=[1.0] * 63 + [float("inf")])
    shutil.rmtree("db")
    write_lmdb("db", [("00000000_bad", datum.SerializeToString())])
    from runner.data.mean import compute_image_mean
    with pytest.raises(DataError, match="key '00000000_bad': float_data holds 1 NaN or inf"):
        compute_image_mean("db")


# ---- .solverstate ---------------------------------------------------------------------------

def test_empty_solverstate_says_what_is_missing(files):
    Path("empty.solverstate").write_bytes(b"")
    with pytest.raises(SolverConfigError, match="empty.solverstate: learned_net is empty"):
        load_solverstate("empty.solverstate")


@pytest.mark.parametrize("change, expected", [
    (lambda s: setattr(s, "iter", -1), "iter is -1"),
    (lambda s: s.history[0].shape.dim.extend([2**62, 2**62]), "history blob 0: shape"),
    (lambda s: s.history[1].data.__setitem__(0, float("nan")), "history blob 1 holds NaN"),
])
def test_bad_solverstate_fields_are_named(files, change, expected):
    state = caffe_pb2.SolverState.FromString(Path("snap_iter_1.solverstate").read_bytes())
    change(state)
    Path("bad.solverstate").write_bytes(state.SerializeToString())
    with pytest.raises((SolverConfigError, ProtoError), match=expected):
        load_solverstate("bad.solverstate")


def test_learned_net_that_is_not_utf8_is_named(files):
    Path("bad.solverstate").write_bytes(b"\x08\x01\x12\x03\xff\xfe\xfd")
    with pytest.raises(ProtoError, match="string field learned_net is not UTF-8"):
        load_solverstate("bad.solverstate")


# ---- stale temporaries ------------------------------------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_next_write_removes_temporaries_of_dead_writers_only(tmp_path):
    target = tmp_path / "w.caffemodel"
    dead = tmp_path / f".w.caffemodel.{dead_pid()}-abc.tmp"
    dead.write_bytes(b"x" * 1000)
    dead_lmdb = tmp_path / f".w.caffemodel.{dead_pid()}-def.tmp"
    live = tmp_path / f".w.caffemodel.{os.getppid()}-ghi.tmp"
    other = tmp_path / f".x.caffemodel.{dead_pid()}-abc.tmp"
    for keep in (live, other, tmp_path / "w.caffemodel.tmp"):
        keep.write_bytes(b"keep")
    atomic_write_bytes(target, b"new")
    dead_lmdb.mkdir()
    (dead_lmdb / "data.mdb").write_bytes(b"x")
    assert remove_stale_temporaries(target) == [dead_lmdb]
    assert not dead.exists() and target.read_bytes() == b"new"
    assert live.exists() and other.exists() and (tmp_path / "w.caffemodel.tmp").exists()


def test_interrupted_lmdb_write_is_cleaned_by_the_next(tmp_path):
    stale = tmp_path / f".db.{dead_pid()}-xyz.tmp"
    stale.mkdir()
    (stale / "data.mdb").write_bytes(b"\0" * 4096)
    write_lmdb(tmp_path / "db", [("k", caffe_pb2.Datum(channels=1, height=1, width=1,
                                                       data=b"\0").SerializeToString())])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


def test_handles_of_removed_databases_are_closed(tmp_path):
    from runner.data import lmdb_store

    datum = caffe_pb2.Datum(channels=1, height=1, width=1, data=b"\0").SerializeToString()
    for i in range(3):
        write_lmdb(tmp_path / f"db{i}", [("k", datum)])
        with lmdb_store.LmdbReader(tmp_path / f"db{i}") as reader:
            assert len(reader) == 1
        shutil.rmtree(tmp_path / f"db{i}")
    write_lmdb(tmp_path / "last", [("k", datum)])
    lmdb_store.LmdbReader(tmp_path / "last").close()
    mine = [key for key in lmdb_store._SHARED if str(tmp_path) in key[1]]
    assert [Path(key[1]).name for key in mine] == ["last"]
