"""Your own images to a published model, as the README walks it: a folder of generated
images in 3 classes -> convert_imageset (folder form) -> make net DATA=... -> solve.py ->
publish -> classify.py, which answers one of the 3 class names."""
import re

import cv2
import numpy as np
import pytest

from generator import cli as generator_cli
from runner import Net
from runner.classify import main as classify_main
from runner.proto import read_net, read_solver
from runner.solve import main as solve_main
from runner.tools import convert_imageset
from runner.zoo.frontmatter import read_readme
from runner.zoo.publish import publish

CLASSES = ["circle", "square", "triangle"]

pytestmark = pytest.mark.usefixtures("forget_registered_datasets")


def draw(shape: str, rng, side: int) -> np.ndarray:
    """A coloured shape on a noisy background (BGR, side x side)."""
    image = rng.integers(0, 60, (side, side, 3), dtype=np.uint8)
    colour = tuple(int(c) for c in rng.integers(120, 256, 3))
    c, r = side // 2 + int(rng.integers(-2, 3)), side // 3
    if shape == "circle":
        cv2.circle(image, (c, c), r, colour, -1)
    elif shape == "square":
        cv2.rectangle(image, (c - r, c - r), (c + r, c + r), colour, -1)
    else:
        points = np.array([[c, c - r], [c - r, c + r], [c + r, c + r]], np.int32)
        cv2.fillPoly(image, [points], colour)
    return image


def image_tree(root, per_class: int, rng, side: int) -> None:
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / name / f"{i:03d}.png"), draw(name, rng, side))


def test_folder_to_lmdb_to_net_to_training_to_zoo_to_classify(tmp_path, capsys):
    rng = np.random.default_rng(0)
    image_tree(tmp_path / "images" / "train", 8, rng, 24)
    image_tree(tmp_path / "images" / "val", 3, rng, 24)
    data = tmp_path / "shapes"
    for split, db in (("train", "train_lmdb"), ("val", "val_lmdb")):
        assert convert_imageset.main(["--shuffle", str(tmp_path / "images" / split), str(data / db)]) == 0
    assert (data / "labels.txt").read_text().split() == CLASSES

    models = tmp_path / "models"
    assert generator_cli.main(["DEPTH=8", f"DATA={data}", "--out", str(models)]) == 0
    out = capsys.readouterr().out
    assert "shapes-cnds8: deploy net, one 3x24x24 image" in out
    folder = models / "shapes-cnds8"
    assert (data / "mean.binaryproto").is_file()          # computed: there was none
    train_val, deploy = read_net(folder / "train_val.prototxt"), read_net(folder / "deploy.prototxt")
    assert deploy.layer[0].input_param.shape[0].dim == [1, 3, 24, 24]
    fc8 = {lp.name: lp for lp in deploy.layer}["fc8"]
    assert fc8.inner_product_param.num_output == 3
    train_data = [lp for lp in train_val.layer if lp.type == "Data"][0]
    assert train_data.data_param.source == str(data / "train_lmdb")
    assert train_data.data_param.batch_size == 24 and not train_data.transform_param.crop_size
    solver = read_solver(folder / "solver.prototxt")
    assert solver.test_iter == [1] and solver.test_interval == 1 and solver.max_iter == 50
    assert Net(folder / "deploy.prototxt").blob_shapes["prob"] == (1, 3)

    assert solve_main([str(folder / "solver.prototxt"), "--iterations", "3"]) == 0
    snapshot = folder / "snapshots" / "shapes-cnds8_iter_3.caffemodel"
    assert snapshot.is_file()
    capsys.readouterr()

    zoo = publish(folder, snapshot, tmp_path / "zoo")
    _, body = read_readme(zoo)
    assert re.search(r"\| accuracy \| [\d.]+ \|", body)       # scored on val_lmdb
    assert (zoo / "labels.txt").read_text().split() == CLASSES

    image = tmp_path / "query.png"
    cv2.imwrite(str(image), draw("square", rng, 24))
    assert classify_main([str(zoo), str(image), "--top", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{image}:"
    assert printed[1].split()[-1] in CLASSES
