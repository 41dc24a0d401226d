"""Publishing a trained fashion-mnist-cnds8 as a Model Zoo folder: contents, the cut
auxiliary branches, atomicity, and the CLI."""
import hashlib
import math
import os
import shutil
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest

from runner.proto import blob_to_array, read_blobproto, read_caffemodel, read_net, write_text
from runner.zoo.frontmatter import ZooError, read_readme
from runner.deep_supervision import is_aux
from runner.zoo.publish import publish
from runner.zoo.verify import verify
from zoo_helpers import LABELS, REPO, publish_fixture


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return publish_fixture(tmp_path_factory.mktemp("publish"))


def test_folder_holds_the_zoo_files_with_a_true_sha1(published):
    folder, model, _ = published
    assert folder.name == model.name == "fashion-mnist-cnds8"
    front, _ = read_readme(folder)
    assert list(front) == ["name", "caffemodel", "caffemodel_url", "license", "sha1",
                           "caffe_commit", "gist_id"]
    assert front["caffemodel"] == "fashion-mnist-cnds8.caffemodel"
    assert front["license"] == "CC-BY-4.0"
    data = (folder / front["caffemodel"]).read_bytes()
    assert front["sha1"] == hashlib.sha1(data).hexdigest()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert front["caffe_commit"] == (head or "unknown")
    for name in ("train_val.prototxt", "solver.prototxt"):
        assert (folder / name).read_bytes() == (model / name).read_bytes()
    assert (folder / "labels.txt").read_text().splitlines() == LABELS
    mean = blob_to_array(read_blobproto(folder / "mean.binaryproto"))
    assert mean.shape == (1, 1, 28, 28) and 0 < mean.mean() < 255
    assert cv2.imread(str(folder / "training_curve.png")) is not None
    umask = os.umask(0o22)
    os.umask(umask)
    assert (folder / "readme.md").stat().st_mode & 0o777 == 0o666 & ~umask
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["readme.md", "deploy.prototxt", "train_val.prototxt", "solver.prototxt",
         "fashion-mnist-cnds8.caffemodel", "mean.binaryproto", "labels.txt",
         "training_curve.png"])


def test_readme_reports_last_test_architecture_and_settings(published):
    folder, model, _ = published
    _, body = read_readme(folder)
    assert "iteration 200" in body and "| accuracy | 0.7871 |" in body
    assert "0.6532" not in body  # an earlier test, not the last one
    assert "![training curve](training_curve.png)" in body
    solver = (model / "solver.prototxt").read_text()
    base_lr = next(line.split(":")[1].strip() for line in solver.splitlines()
                   if line.startswith("base_lr"))
    assert f"| base_lr | {float(base_lr):.6g} |" in body
    blobs = read_caffemodel(folder / "fashion-mnist-cnds8.caffemodel")
    params = sum(math.prod(blob_to_array(b).shape) for lp in blobs.layer for b in lp.blobs)
    assert f"| **total** | | | **{params:,}** |" in body
    for lp in read_net(folder / "deploy.prototxt").layer:
        assert f"| {lp.name} | {lp.type} |" in body


def test_deploy_caffemodel_holds_no_auxiliary_blobs(published):
    folder, _, weights = published
    trained = read_caffemodel(weights)
    aux = [lp.name for lp in trained.layer if is_aux(lp.name) and lp.blobs]
    assert aux, "the train_val snapshot should carry auxiliary branch blobs"
    deploy_blobs = read_caffemodel(folder / "fashion-mnist-cnds8.caffemodel")
    assert not [lp.name for lp in deploy_blobs.layer if is_aux(lp.name)]
    with_blobs = {lp.name for lp in deploy_blobs.layer if lp.blobs}
    assert with_blobs == {lp.name for lp in trained.layer if lp.blobs} - set(aux)
    for lp in deploy_blobs.layer:  # bytes carried over unchanged
        src = next(t for t in trained.layer if t.name == lp.name)
        assert [b.SerializeToString() for b in lp.blobs] == \
               [b.SerializeToString() for b in src.blobs]
    assert not [lp.name for lp in read_net(folder / "deploy.prototxt").layer
                if is_aux(lp.name)]


def test_train_val_derived_deploy_has_its_branches_cut(published, tmp_path):
    _, model, weights = published
    own = tmp_path / "derived"
    shutil.copytree(model, own)
    deploy, train_val = read_net(own / "deploy.prototxt"), read_net(own / "train_val.prototxt")
    branch = [lp for lp in train_val.layer if is_aux(lp.name)
              and lp.type not in ("SoftmaxWithLoss", "Accuracy")]
    assert branch
    deploy.layer.extend(branch)
    write_text(deploy, own / "deploy.prototxt")
    folder = publish(own, weights, tmp_path / "zoo", log=weights.parent / "fashion.log")
    cut = read_net(folder / "deploy.prototxt")
    assert [lp.name for lp in cut.layer] == [lp.name for lp in read_net(model / "deploy.prototxt").layer]
    _, body = read_readme(folder)
    assert f"`{branch[0].name}`" in body
    assert verify(folder).unused_layers == []


def test_failed_publish_leaves_nothing_behind(published, tmp_path, monkeypatch):
    _, model, weights = published
    zoo = tmp_path / "zoo"
    # A snapshot that lacks a deploy layer's blobs fails the final check, after every
    # file has been written.
    trained = read_caffemodel(weights)
    victim = next(lp for lp in trained.layer if lp.blobs and not is_aux(lp.name))
    del victim.blobs[:]
    broken = tmp_path / "broken.caffemodel"
    broken.write_bytes(trained.SerializeToString())
    with pytest.raises(ZooError, match=victim.name):
        publish(model, broken, zoo)
    assert list(zoo.iterdir()) == []

    import runner.zoo.publish as publishing
    monkeypatch.setattr(publishing, "render_readme", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        publish(model, weights, zoo)
    assert list(zoo.iterdir()) == []


def test_existing_folder_is_kept_unless_forced(published, tmp_path):
    _, model, weights = published
    first = publish(model, weights, tmp_path, license="MIT")
    with pytest.raises(ZooError, match="already exists"):
        publish(model, weights, tmp_path)
    assert read_readme(first)[0]["license"] == "MIT"
    publish(model, weights, tmp_path, force=True)
    assert read_readme(first)[0]["license"] == "CC-BY-4.0"
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_cli_publishes_and_verifies(published, tmp_path):
    _, model, weights = published
    zoo = tmp_path / "zoo"
    run = subprocess.run([sys.executable, "-m", "runner.zoo", "publish", str(model),
                          str(weights), str(zoo), "--name", "fm8", "--license", "MIT",
                          "--url", "https://example.org/fm8.caffemodel"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    front, _ = read_readme(zoo / "fm8")
    assert front["caffemodel"] == "fm8.caffemodel"
    assert front["caffemodel_url"] == "https://example.org/fm8.caffemodel"
    check = subprocess.run([sys.executable, "-m", "runner.zoo", "verify", str(zoo / "fm8")],
                           capture_output=True, text=True, cwd=REPO)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("OK fm8: fm8.caffemodel sha1 ")


def test_an_hdf5_snapshot_publishes_the_same_weights(published, tmp_path):
    """snapshot_format: HDF5 leaves <prefix>_iter_N.caffemodel.h5 beside <prefix>.log; written
    here with h5py in Caffe's layout from the binary snapshot's blobs."""
    folder, model, weights = published
    h5 = weights.parent / "fashion_iter_200.caffemodel.h5"
    with h5py.File(h5, "w") as f:
        for lp in read_caffemodel(weights).layer:
            for j, blob in enumerate(lp.blobs):
                f.create_dataset(f"data/{lp.name}/{j}", data=blob_to_array(blob))
    try:
        out = publish(model, h5, tmp_path / "zoo", score=False)
    finally:
        h5.unlink()
    ours = {lp.name: [blob_to_array(b) for b in lp.blobs]
            for lp in read_caffemodel(out / "fashion-mnist-cnds8.caffemodel").layer if lp.blobs}
    theirs = {lp.name: [blob_to_array(b) for b in lp.blobs]
              for lp in read_caffemodel(folder / "fashion-mnist-cnds8.caffemodel").layer if lp.blobs}
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        for a, b in zip(ours[name], theirs[name]):
            np.testing.assert_array_equal(a, b)
    assert (out / "training_curve.png").exists()      # found beside the .caffemodel.h5
    verify(out)
