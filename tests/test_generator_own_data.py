"""make net DATA=<folder>: the documented rules that turn a user's LMDBs into the paper's
nets (image size and channels from the first Datum, classes from labels.txt or the
labels present, the mean computed when missing, crop/layout by image size, epochs by
data size), and one-line errors for what does not fit."""
from dataclasses import replace

import numpy as np
import pytest

from generator import cli as generator_cli
from generator.datasets import DATASETS
from generator.own_data import epochs_for, folder_dataset
from generator.schedule import own_data_schedule
from runner.data.datum import image_to_datum
from runner.data.lmdb_store import write_lmdb
from runner.proto import read_net, read_solver

pytestmark = pytest.mark.usefixtures("forget_registered_datasets")


def lmdb_of(path, count: int, shape: tuple, labels, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    write_lmdb(path, [(f"{i:08d}", image_to_datum(rng.integers(0, 256, shape, dtype=np.uint8),
                                                  labels[i % len(labels)]).SerializeToString())
                      for i in range(count)])


def test_large_colour_images_get_the_imagenet_layout(tmp_path, capsys):
    data = tmp_path / "My Photos"
    lmdb_of(data / "train_lmdb", 40, (100, 120, 3), [0, 1, 2, 6])   # no labels.txt: 7 classes
    lmdb_of(data / "val_lmdb", 10, (100, 120, 3), [0, 6])
    assert generator_cli.main(["DEPTH=8", "VARIANT=cnn", f"DATA={data}", "--out", str(tmp_path / "m")]) == 0
    assert "my-photos-cnn8: deploy net, one 3x88x88 image" in capsys.readouterr().out
    folder = tmp_path / "m" / "my-photos-cnn8"
    deploy, train_val = read_net(folder / "deploy.prototxt"), read_net(folder / "train_val.prototxt")
    layers = {lp.name: lp for lp in deploy.layer}
    assert layers["conv1"].convolution_param.kernel_size == [7] and layers["conv1"].convolution_param.stride == [2]
    assert layers["fc8"].inner_product_param.num_output == 7
    assert layers["conv2"].convolution_param.num_output == 128          # WIDTH 1 for large images
    train = [lp for lp in train_val.layer if lp.type == "Data" and lp.include[0].phase == 0][0]
    assert train.transform_param.crop_size == 88 and train.transform_param.mirror
    assert not train.transform_param.HasField("scale")
    assert "accuracy_top5" in {lp.name for lp in train_val.layer}
    assert (data / "mean.binaryproto").is_file()
    solver = read_solver(folder / "solver.prototxt")
    # 40 images at batch 32: 2 iterations an epoch, 50 epochs (the most)
    assert (solver.max_iter, solver.test_interval, solver.test_iter[0]) == (100, 2, 1)


def test_small_grey_images_follow_the_fashion_mnist_rules(tmp_path):
    data = tmp_path / "digits"
    data.mkdir()
    (data / "labels.txt").write_text("zero\none\ntwo\nthree\n")
    lmdb_of(data / "train_lmdb", 20, (16, 16), [0, 1])
    lmdb_of(data / "val_lmdb", 8, (16, 16), [1])
    ds = folder_dataset(str(data))
    assert (ds.num_classes, ds.channels, ds.crop, ds.crop_size, ds.small, ds.mirror) == (4, 1, 16, None, True, False)
    assert (ds.train_batch, ds.test_batch, ds.scale, ds.default_width) == (20, 8, 0.00390625, 0.25)


def test_non_square_small_images_are_cropped_square(tmp_path):
    data = tmp_path / "wide"
    lmdb_of(data / "train_lmdb", 4, (20, 30, 3), [0, 1])
    lmdb_of(data / "val_lmdb", 2, (20, 30, 3), [0, 1])
    ds = folder_dataset(str(data))
    assert (ds.crop, ds.crop_size, ds.small) == (20, 20, True)


def test_epochs_follow_the_data_size():
    assert [epochs_for(n) for n in (100, 6_000, 60_000, 1_281_167)] == [50, 50, 5, 5]
    assert epochs_for(20_000) == 15
    ds = DATASETS["fashion-mnist"]
    s = own_data_schedule(replace(ds, epochs=5))
    assert (s.max_iter, s.test_interval, s.stepsize, s.snapshot, s.display, s.test_iter) == (4690, 938, 3127, 938, 50, 100)


def test_bad_data_folders_are_one_line_errors(tmp_path, capsys):
    data = tmp_path / "half"
    lmdb_of(data / "train_lmdb", 4, (8, 8), [0, 1])
    capsys.readouterr()   # the LMDB writer's progress
    assert generator_cli.main(["DEPTH=8", f"DATA={data}", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "val_lmdb is missing" in err
    lmdb_of(data / "val_lmdb", 2, (8, 8), [0, 1])
    assert generator_cli.main(["DATASET=imagenet", f"DATA={data}", "--out", str(tmp_path / "m")]) == 2
    assert "not both" in capsys.readouterr().err
    one = tmp_path / "one"
    lmdb_of(one / "train_lmdb", 4, (8, 8), [0])
    lmdb_of(one / "val_lmdb", 2, (8, 8), [0])
    capsys.readouterr()
    assert generator_cli.main([f"DATA={one}", "--out", str(tmp_path / "m")]) == 2
    assert "a classifier needs at least 2" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
