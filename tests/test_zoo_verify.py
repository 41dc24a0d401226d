"""verify: a published folder passes; each kind of damage fails with one clear line."""
import shutil
import subprocess
import sys

import pytest

from runner.proto import read_caffemodel
from runner.zoo.frontmatter import read_readme, render_readme, sha1_of_file
from runner.zoo.__main__ import main as zoo_cli
from runner.zoo.verify import verify
from zoo_helpers import REPO, publish_fixture


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return publish_fixture(tmp_path_factory.mktemp("verify"))[0]


@pytest.fixture
def folder(pristine, tmp_path):
    copy = tmp_path / pristine.name
    shutil.copytree(pristine, copy)
    return copy


def cli_verify(folder, capsys):
    """`python -m runner.zoo verify folder`, in process: (exit status, stdout, stderr)."""
    status = zoo_cli(["verify", str(folder)])
    out, err = capsys.readouterr()
    return status, out, err


def set_front(folder, **changes):
    front, body = read_readme(folder)
    front.update(changes)
    (folder / "readme.md").write_text(render_readme(front, body))


def assert_fails(folder, capsys, *fragments):
    status, out, err = cli_verify(folder, capsys)
    assert status != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_published_folder_verifies(folder):
    run = subprocess.run([sys.executable, "-m", "runner.zoo", "verify", str(folder)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    checked = verify(folder)
    assert checked.prototxts == ["deploy.prototxt", "solver.prototxt", "train_val.prototxt"]
    assert checked.sha1 == sha1_of_file(folder / "fashion-mnist-cnds8.caffemodel")
    assert checked.layers_with_blobs > 0 and checked.unused_layers == []
    assert run.stdout.strip() == checked.summary()


def test_one_changed_byte_fails(folder, capsys):
    weights = folder / "fashion-mnist-cnds8.caffemodel"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    assert_fails(folder, capsys, "fashion-mnist-cnds8.caffemodel", "does not match readme.md")


def test_wrong_sha1_fails(folder, capsys):
    set_front(folder, sha1="0" * 40)
    assert_fails(folder, capsys, "sha1", "0" * 40)


def test_malformed_sha1_fails(folder, capsys):
    set_front(folder, sha1="abc")
    assert_fails(folder, capsys, "sha1 'abc' is not 40 hex digits")


def test_unparseable_prototxt_fails_naming_file_and_line(folder, capsys):
    path = folder / "train_val.prototxt"
    path.write_text(path.read_text() + "\nlayer { name: \"x\" type: \n")
    assert_fails(folder, capsys, "train_val.prototxt:")


def test_solver_with_unknown_field_fails(folder, capsys):
    path = folder / "solver.prototxt"
    path.write_text("base_lr: 0.01\nbase_lr_typo: 3\n")
    assert_fails(folder, capsys, "solver.prototxt:2", "base_lr_typo")


@pytest.mark.parametrize("value", ["../x.caffemodel", "/tmp/x.caffemodel", "sub/x.caffemodel"])
def test_caffemodel_field_leaving_the_folder_is_refused(folder, value, capsys):
    outside = folder.parent / "x.caffemodel"
    shutil.copyfile(folder / "fashion-mnist-cnds8.caffemodel", outside)
    set_front(folder, caffemodel=value, sha1=sha1_of_file(outside))
    assert_fails(folder, capsys, f"caffemodel: {value}", "refusing it")


def test_missing_caffemodel_fails(folder, capsys):
    (folder / "fashion-mnist-cnds8.caffemodel").unlink()
    assert_fails(folder, capsys, "fashion-mnist-cnds8.caffemodel", "missing")


def test_blobs_that_do_not_fit_deploy_fail(folder, capsys):
    weights = folder / "fashion-mnist-cnds8.caffemodel"
    net = read_caffemodel(weights)
    layer = next(lp for lp in net.layer if lp.type == "InnerProduct" and lp.blobs)
    layer.blobs[1].shape.dim[0] += 1
    layer.blobs[1].data.append(0.0)
    weights.write_bytes(net.SerializeToString())
    set_front(folder, sha1=sha1_of_file(weights))
    assert_fails(folder, capsys, "blobs do not fit deploy.prototxt", layer.name)
