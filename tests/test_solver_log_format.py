"""Our solver log reads as a Caffe log: a reader written against Caffe's
tools/extra/parse_log.py and extract_seconds.py (their regexes and their line
handling) recovers the iterations, learning rates, train outputs and test outputs."""
import datetime
import math
import re
from collections import OrderedDict

import pytest

from solver_helpers import classifier_net, make_lmdb, make_solver

# The format spec: Caffe's tools/extra/parse_log.py regexes.
REGEX_ITERATION = re.compile(r"Iteration (\d+)")
REGEX_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
REGEX_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
REGEX_LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def line_datetime(line, year):
    """extract_seconds.extract_datetime_from_line: 'I0210 13:39:22.381027 ...'."""
    fields = line.strip().split()
    month, day = int(fields[0][1:3]), int(fields[0][3:5])
    stamp = fields[1]
    dot = stamp.rfind(".")
    hour, minute, second = (int(x) for x in stamp[:dot].split(":"))
    return datetime.datetime(year, month, day, hour, minute, second, int(stamp[dot + 1:]))


def parse_log(path):
    """parse_log.parse_log: (train rows, test rows), each row an OrderedDict."""
    year = datetime.date.today().year
    lines = path.read_text().splitlines()
    start = next(line_datetime(l, year) for l in lines if "Solving" in l)
    iteration, lr = -1, math.nan
    train, test, rows = [], [], {"train": None, "test": None}

    def take(regex, kind, table, line, seconds):
        row = rows[kind]
        m = regex.search(line)
        if m:
            if not row or row["NumIters"] != iteration:
                if row:
                    table.append(row)
                row = OrderedDict(NumIters=iteration, Seconds=seconds, LearningRate=lr)
            row[m.group(2)] = float(m.group(3))
        if row and table and len(row) == len(table[0]):
            table.append(row)
            row = None
        rows[kind] = row

    for line in lines:
        m = REGEX_ITERATION.search(line)
        if m:
            iteration = float(m.group(1))
        if iteration == -1:
            continue
        seconds = (line_datetime(line, year) - start).total_seconds()
        m = REGEX_LEARNING_RATE.search(line)
        if m:
            lr = float(m.group(1))
        take(REGEX_TRAIN_OUTPUT, "train", train, line, seconds)
        take(REGEX_TEST_OUTPUT, "test", test, line, seconds)
    for table in (train, test):
        if len(table) > 1:
            table[0]["LearningRate"] = table[1]["LearningRate"]
    return train, test


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("log")
    train_db = make_lmdb(root / "train_lmdb", 24)
    test_db = make_lmdb(root / "test_lmdb", 12, seed=1)
    solver = make_solver(
        classifier_net(train_db, batch=4, test_source=test_db, aux=0.5), root / "snap" / "s",
        base_lr=0.01, lr_policy='"step"', stepsize=10, gamma=0.1, display=5, max_iter=20,
        test_iter=3, test_interval=10, snapshot=10, average_loss=2, test_compute_loss="true")
    solver.solve()
    return root / "snap"


def test_parse_log_reads_train_and_test_rows(trained):
    train, test = parse_log(trained / "s.log")
    assert [r["NumIters"] for r in train] == [0, 5, 10, 15]
    # As in Caffe's own logs, a row carries the rate printed before its outputs: the
    # "Iteration 10, lr = 0.001" line follows the iteration-10 output lines.
    assert [r["LearningRate"] for r in train] == [0.01, 0.01, 0.01, 0.001]
    for row in train:
        assert set(row) == {"NumIters", "Seconds", "LearningRate", "loss", "loss_ds1"}
        assert row["loss"] > 0 and row["Seconds"] >= 0
    assert [r["NumIters"] for r in test] == [0, 10, 20]
    for row in test:
        assert set(row) == {"NumIters", "Seconds", "LearningRate", "accuracy", "loss", "loss_ds1"}
        assert 0 <= row["accuracy"] <= 1


def test_every_line_after_the_first_iteration_has_a_glog_prefix(trained):
    lines = (trained / "s.log").read_text().splitlines()
    first = next(i for i, l in enumerate(lines) if REGEX_ITERATION.search(l))
    prefix = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ")
    for line in lines[first:]:
        assert prefix.match(line), line


def test_caffe_lines_appear_as_solver_cpp_prints_them(trained):
    text = (trained / "s.log").read_text()
    assert re.search(r"\] Iteration 5 \([\d.e+-]+ iter/s, [\d.e+-]+s/5 iters\), loss = [\d.e+-]+\n", text)
    assert re.search(r"\]     Train net output #0: loss = [\d.e+-]+ \(\* 1 = [\d.e+-]+ loss\)\n", text)
    assert re.search(r"\]     Train net output #1: loss_ds1 = [\d.e+-]+ \(\* 0.5 = [\d.e+-]+ loss\)\n", text)
    assert "] Iteration 10, lr = 0.001\n" in text
    assert "] Iteration 10, Testing net (#0)\n" in text
    assert re.search(r"\] Test loss: [\d.e+-]+\n", text)
    assert re.search(r"\]     Test net output #0: accuracy = [\d.e+-]+\n", text)
    assert f"] Snapshotting to binary proto file {trained}/s_iter_10.caffemodel\n" in text
    assert f"] Snapshotting solver state to binary proto file {trained}/s_iter_10.solverstate\n" in text
    assert re.search(r"\] Iteration 20, loss = [\d.e+-]+\n", text)
    assert text.rstrip().endswith("Optimization Done.")


def test_smoothed_loss_is_the_mean_of_the_last_average_loss(trained):
    """display prints the mean of the last `average_loss` (2) losses; the train output
    lines print the last pass's own values."""
    text = (trained / "s.log").read_text()
    smoothed = [float(v) for v in re.findall(r"iters\), loss = ([\d.e+-]+)", text)]
    outputs = re.findall(r"Train net output #0: loss = ([\d.e+-]+).*\n.*#1: loss_ds1 = ([\d.e+-]+)", text)
    objective = [float(a) + 0.5 * float(b) for a, b in outputs]
    assert smoothed[0] == pytest.approx(objective[0], rel=1e-5)   # one loss so far
    assert all(s != pytest.approx(o, rel=1e-9) for s, o in zip(smoothed[1:], objective[1:]))


def test_training_plot_is_written(trained):
    png = trained / "s_training.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_our_log_reader_agrees_with_parse_log(trained, tmp_path):
    from runner.solver.log_reader import TAIL_BYTES, last_iteration, read_history
    history = read_history(trained / "s.log")
    train, test = parse_log(trained / "s.log")
    assert history.test["accuracy"] == [(r["NumIters"], pytest.approx(r["accuracy"])) for r in test]
    assert [it for it, _ in history.train_loss][:4] == [r["NumIters"] for r in train]
    assert last_iteration(trained / "s.log") == 20
    assert last_iteration(tmp_path / "absent.log") == 0
    log = tmp_path / "long.log"     # only the tail is read: the last mention counts
    log.write_text("I1127 10:00:00.000000 1 solver.cpp:218] Iteration 7, loss = 1\n"
                   + "x" * (2 * TAIL_BYTES) + "\nI1127 10:00:01.000000 1 solver.cpp:330] "
                   "Iteration 9, Testing net (#0)\n")
    assert last_iteration(log) == 9
