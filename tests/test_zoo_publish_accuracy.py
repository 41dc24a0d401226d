"""A published model states the accuracy of the weights it ships: the readme's figure is
what `solve.py test` reports on the same weights, never a training-log test of other
weights; without test data it says plainly that it has no score."""
import re
from pathlib import Path

import pytest
import torch
from solver_helpers import classifier_net, make_lmdb

from runner import Net
from runner.solve import main as solve_main
from runner.zoo.frontmatter import read_readme
from runner.zoo.publish import publish

DEPLOY = '''name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
'''
# The log's last test was taken at iteration 0, before training: not the shipped weights.
EARLY_LOG = """\
I0101 10:00:00.000001  4242 solver.cpp:330] Iteration 0, Testing net (#0)
I0101 10:00:01.000001  4242 solver.cpp:397]     Test net output #0: accuracy = 0.131
I0101 10:00:01.000002  4242 solver.cpp:397]     Test net output #1: loss = 2.30259 (* 1 = 2.30259 loss)
"""


@pytest.fixture
def small_model(tmp_path) -> tuple[Path, Path]:
    """A model folder over small LMDBs and a trained-looking snapshot (random weights) of iteration 300."""
    data = tmp_path / "data"
    train = make_lmdb(data / "train_lmdb", count=24, seed=1)
    test = make_lmdb(data / "val_lmdb", count=30, seed=2)
    model = tmp_path / "models" / "small"
    model.mkdir(parents=True)
    (model / "train_val.prototxt").write_text(classifier_net(train, 8, test_source=test, test_batch=10))
    (model / "deploy.prototxt").write_text(DEPLOY)
    (model / "solver.prototxt").write_text(
        'net: "train_val.prototxt"\ntest_iter: 3\ntest_interval: 100\nbase_lr: 0.01\n'
        'lr_policy: "fixed"\nmax_iter: 300\nsnapshot_prefix: "small"\n')
    torch.manual_seed(4)
    run = tmp_path / "run"
    run.mkdir()
    weights = run / "small_iter_300.caffemodel"
    Net(model / "train_val.prototxt", phase="TRAIN").save_caffemodel(weights)
    (run / "small.log").write_text(EARLY_LOG)
    return model, weights


def solve_test(model: Path, weights: Path, iterations: int, capsys) -> dict[str, float]:
    assert solve_main(["test", "--model", str(model / "train_val.prototxt"), "--weights", str(weights),
                       "--iterations", str(iterations)]) == 0
    err = capsys.readouterr().err
    return {name: float(value) for name, value in re.findall(r"\] (accuracy|loss) = ([\d.e+-]+)", err)}


def test_stated_accuracy_is_solve_test_of_the_shipped_weights(small_model, tmp_path, capsys):
    model, weights = small_model
    folder = publish(model, weights, tmp_path / "zoo")
    _, body = read_readme(folder)
    stated = dict(re.findall(r"\| (accuracy|loss) \| ([\d.]+) \|", body))
    expected = solve_test(model, weights, 3, capsys)  # the solver's test_iter
    assert set(stated) == {"accuracy", "loss"}
    for name, value in expected.items():
        assert stated[name] == f"{value:.4f}", name
    assert "3 batches of 10 images" in body and weights.name in body
    assert "0.1310" not in body  # the log's iteration-0 test is of other weights


def test_test_iterations_can_be_chosen(small_model, tmp_path, capsys):
    model, weights = small_model
    folder = publish(model, weights, tmp_path / "zoo", test_iterations=2)
    _, body = read_readme(folder)
    accuracy = re.search(r"\| accuracy \| ([\d.]+) \|", body).group(1)
    assert accuracy == f"{solve_test(model, weights, 2, capsys)['accuracy']:.4f}"
    assert "2 batches of 10 images" in body


def test_without_test_data_it_says_it_has_no_score(small_model, tmp_path):
    model, weights = small_model
    for db in (tmp_path / "data").iterdir():
        db.rename(db.with_name(db.name + ".moved"))
    folder = publish(model, weights, tmp_path / "zoo")
    _, body = read_readme(folder)
    section = body.split("## Measured accuracy")[1].split("##")[0]
    assert "Not measured on the shipped weights (small_iter_300.caffemodel)" in section
    assert "val_lmdb" in section and "| accuracy |" not in section


def test_no_score_says_so(small_model, tmp_path):
    model, weights = small_model
    folder = publish(model, weights, tmp_path / "zoo", score=False)
    _, body = read_readme(folder)
    assert "Not measured on the shipped weights (small_iter_300.caffemodel): scoring was not asked for." in body
