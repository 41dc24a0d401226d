"""solve.py --tensorboard DIR: the run's loss and lr per iteration, every test output and
the auxiliary weights as TensorBoard scalars, equal to what the Caffe log says; the log
and its PNG are still written."""
import re
import sys

import pytest
from solver_helpers import classifier_net, make_lmdb, make_solver
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.solver import SolverOptions
from runner.solver.errors import SolverConfigError
from runner.solver.aux_weight_schedule import aux_weight
from runner.solver.tensorboard import TensorBoardScalars


def scalars(folder) -> dict[str, dict[int, float]]:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_scalars_mirror_the_caffe_log(tmp_path):
    train = make_lmdb(tmp_path / "train_lmdb", 24)
    test = make_lmdb(tmp_path / "test_lmdb", 12, seed=1)
    board = tmp_path / "board"
    solver = make_solver(classifier_net(train, batch=4, aux=0.4, test_source=test, test_batch=4),
                         tmp_path / "s", SolverOptions(progress=False, tensorboard=str(board)),
                         max_iter=12, display=6, test_interval=6, test_iter=3, lr_policy='"step"',
                         stepsize=5, gamma=0.5)
    solver.solve()
    got = scalars(board)
    log = (tmp_path / "s.log").read_text()
    assert (tmp_path / "s_training.png").is_file()
    assert sorted(got["train/loss"]) == list(range(12))
    shown = {int(i): float(v) for i, v in re.findall(r"\] Iteration (\d+) \(.*loss = ([\d.e+-]+)", log)}
    for it, value in shown.items():
        assert got["train/loss"][it] == pytest.approx(value, rel=1e-5)
    assert got["train/lr"] == pytest.approx({it: 0.05 * 0.5 ** (it // 5) for it in range(12)})
    tests = re.findall(r"Iteration (\d+), Testing net \(#0\)\n(?:.*\n)*?.*Test net output #0: accuracy = ([\d.e+-]+)", log)
    assert [int(i) for i, _ in tests] == [0, 6, 12]
    assert got["test0/accuracy"] == pytest.approx({int(i): float(v) for i, v in tests}, rel=1e-5)
    assert set(got["test0/loss"]) == {0, 6, 12}
    # 24 records, batch 4: an epoch every 6 iterations, N = 12 * 4 / 24 = 2 epochs
    assert got["aux_weight/loss_ds1"] == pytest.approx({0: aux_weight(0.4, 0, 2.0, "eq2"),
                                                        6: aux_weight(0.4, 1, 2.0, "eq2")})


def test_without_the_package_the_flag_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(SolverConfigError, match=r"--tensorboard needs the tensorboard package"):
        TensorBoardScalars(str(tmp_path / "board"))
