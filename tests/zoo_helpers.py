"""Shared by the zoo and classify tests: real Fashion-MNIST images, a randomly initialised
fashion-mnist-cnds8 with its run outputs, and a published folder made from it."""
from __future__ import annotations

import gzip
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from runner import Net
from runner.proto import array_to_blob, caffe_pb2, read_net, write_binary, write_text
from runner.solver.log_reader import read_history
from runner.solver.plot import plot_history

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
MODEL = REPO / "models" / "fashion-mnist-cnds8"
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
          "Sneaker", "Bag", "Ankle boot"]


def fashion_images(name: str, count: int) -> np.ndarray:
    """The first `count` images (count x 28 x 28 uint8) of an idx3 file, or skip."""
    path = FASHION / name
    if not path.is_file():
        pytest.skip(f"Fashion-MNIST is not installed ({path} is absent)")
    with gzip.open(path, "rb") as f:
        header = np.frombuffer(f.read(16), ">u4")
        assert header[0] == 2051, f"{path}: not an idx3 image file"
        rows, cols = int(header[2]), int(header[3])
        return np.frombuffer(f.read(count * rows * cols), np.uint8).reshape(count, rows, cols)


def write_test_pngs(folder: Path, count: int) -> list[Path]:
    """The first `count` Fashion-MNIST test images as grey PNG files."""
    paths = []
    for i, image in enumerate(fashion_images("t10k-images-idx3-ubyte.gz", count)):
        paths.append(folder / f"t10k_{i}.png")
        assert cv2.imwrite(str(paths[-1]), image)
    return paths


def with_inputs_for_data(net_param):
    """The train_val with each Data layer replaced by an Input layer of the same tops."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    for lp in out.layer:
        if lp.type == "Data":
            batch, channels = lp.data_param.batch_size, 1
            lp.type = "Input"
            lp.ClearField("data_param")
            lp.ClearField("transform_param")
            lp.input_param.shape.add().dim.extend([batch, channels, 28, 28])
            lp.input_param.shape.add().dim.extend([batch])
    return out


def make_model_copy(root: Path) -> Path:
    """models/fashion-mnist-cnds8 copied under `root`, its train_val pointing at a mean
    (of 2000 real training images) and a labels.txt beside the LMDB paths under `root`."""
    if not MODEL.is_dir():
        pytest.fail(f"{MODEL} is missing: the generator's fashion-mnist-cnds8 must be committed")
    model = root / "models" / MODEL.name
    shutil.copytree(MODEL, model)
    data = root / "data"
    data.mkdir()
    train = fashion_images("train-images-idx3-ubyte.gz", 2000).astype(np.float32)
    write_binary(array_to_blob(train.mean(0)[None, None]), data / "mean.binaryproto")
    (data / "labels.txt").write_text("\n".join(LABELS) + "\n")
    train_val = read_net(model / "train_val.prototxt")
    for lp in train_val.layer:
        if lp.type == "Data":
            lp.transform_param.mean_file = str(data / "mean.binaryproto")
            lp.data_param.source = str(data / Path(lp.data_param.source).name)
    write_text(train_val, model / "train_val.prototxt")
    return model


def random_snapshot(model: Path, run: Path) -> Path:
    """A train_val caffemodel with filler-initialised weights (auxiliary branches included),
    plus a solver log and training curve beside it, as a finished run leaves them."""
    run.mkdir(parents=True, exist_ok=True)
    net = Net(with_inputs_for_data(read_net(model / "train_val.prototxt")), phase="TRAIN")
    # The model's small gaussian fillers make every image score alike; He-scaled weights
    # keep the scores image-dependent, so comparisons of top-5 rankings mean something.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in net.layers.values():
            if layer.type in ("Convolution", "InnerProduct"):
                weight = layer.blobs[0]
                weight.copy_(torch.randn(weight.shape, generator=generator)
                             * math.sqrt(2.0 / weight[0].numel()))
    weights = run / "fashion_iter_200.caffemodel"
    net.save_caffemodel(str(weights))
    write_run_log(run / "fashion.log")
    write_curve(run / "fashion.log", run / "fashion_training.png")
    return weights


# Lines as Caffe's solver.cpp prints them; the last test (iteration 200) is the one to report.
RUN_LOG = """\
I0101 10:00:00.000001  4242 solver.cpp:330] Iteration 0, Testing net (#0)
I0101 10:00:01.000001  4242 solver.cpp:397]     Test net output #0: accuracy = 0.1
I0101 10:00:01.000002  4242 solver.cpp:397]     Test net output #1: loss = 2.30259 (* 1 = 2.30259 loss)
I0101 10:00:01.100000  4242 solver.cpp:218] Iteration 0 (0 iter/s, 1s/100 iters), loss = 2.30259
I0101 10:00:05.000001  4242 solver.cpp:330] Iteration 100, Testing net (#0)
I0101 10:00:06.000001  4242 solver.cpp:397]     Test net output #0: accuracy = 0.6532
I0101 10:00:06.000002  4242 solver.cpp:397]     Test net output #1: loss = 0.95 (* 1 = 0.95 loss)
I0101 10:00:09.000001  4242 solver.cpp:330] Iteration 200, Testing net (#0)
I0101 10:00:10.000001  4242 solver.cpp:397]     Test net output #0: accuracy = 0.7871
I0101 10:00:10.000002  4242 solver.cpp:397]     Test net output #1: loss = 0.61 (* 1 = 0.61 loss)
I0101 10:00:10.100000  4242 solver.cpp:464] Snapshotting to binary proto file fashion_iter_200.caffemodel
"""


def write_run_log(path: Path) -> None:
    path.write_text(RUN_LOG)


def write_curve(log: Path, path: Path) -> None:
    """The solver's training-curve PNG drawn from `log`."""
    plot_history(read_history(str(log)), str(path))


def publish_fixture(root: Path) -> tuple[Path, Path, Path]:
    """(zoo folder, model copy, train_val snapshot) published from random weights."""
    from runner.zoo.publish import publish
    model = make_model_copy(root)
    weights = random_snapshot(model, root / "run")
    folder = publish(model, weights, root / "zoo")
    return folder, model, weights
