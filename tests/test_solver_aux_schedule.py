"""The deep-supervision schedule (Wang et al. 2015, Eq. 2): auxiliary loss weights per
epoch under eq2, linear and none, and the solver applying, logging and resuming it."""
import re

import pytest

from runner.solver import SolverOptions
from runner.solver.aux_weight_schedule import AuxWeightSchedule, aux_weight

from solver_helpers import classifier_net, make_lmdb, make_solver


def test_eq2_is_the_running_product_of_one_minus_t_over_n():
    n = 5.0
    expected, alpha = [0.3], 0.3
    for t in range(1, 8):
        alpha *= max(0.0, 1 - t / n)
        expected.append(alpha)
    got = [aux_weight(0.3, t, n, "eq2") for t in range(8)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[:4] == pytest.approx([0.3, 0.24, 0.144, 0.0576])
    assert got[5:] == [0.0, 0.0, 0.0]                 # t >= N: the branch is switched off


def test_linear_and_none():
    assert [aux_weight(0.3, t, 4.0, "linear") for t in range(6)] == pytest.approx(
        [0.3, 0.225, 0.15, 0.075, 0.0, 0.0])
    assert [aux_weight(0.3, t, 4.0, "none") for t in range(6)] == [0.3] * 6


def test_schedule_counts_epochs_from_samples_seen():
    weights = {"loss": 1.0, "loss_ds1": 0.3, "loss_ds2": 0.5, "accuracy_ds1": 0.0}
    aux = AuxWeightSchedule.find_aux(weights)
    assert aux == ["loss_ds1", "loss_ds2"]            # weighted _ds tops only
    # batch 8, iter_size 2, 2 ranks: 32 samples per iteration; 100 records
    schedule = AuxWeightSchedule(weights, aux, "eq2", samples_per_iter=32, train_size=100,
                                 max_iter=25)
    assert schedule.total_epochs == 8.0
    assert [schedule.epoch_of(i) for i in (0, 3, 4, 6, 7, 25)] == [0, 0, 1, 1, 2, 8]
    assert schedule.update(0) == {"loss_ds1": 0.3, "loss_ds2": 0.5}
    assert schedule.update(3) is None                 # same epoch: nothing to log
    assert schedule.update(4) == pytest.approx({"loss_ds1": 0.3 * 7 / 8, "loss_ds2": 0.5 * 7 / 8})
    assert weights["loss"] == 1.0                     # the main loss never decays
    assert schedule.update(7) == pytest.approx({"loss_ds1": 0.3 * 7 / 8 * 6 / 8,
                                                "loss_ds2": 0.5 * 7 / 8 * 6 / 8})
    assert weights["loss_ds1"] == pytest.approx(0.3 * 7 / 8 * 6 / 8)


def test_unknown_aux_name_is_refused():
    with pytest.raises(ValueError, match="auxiliary loss loss_x is not a loss top"):
        AuxWeightSchedule({"loss": 1.0}, ["loss_x"], "eq2", 1, 10, 10)


@pytest.fixture(scope="module")
def lmdb_dir(tmp_path_factory):
    return make_lmdb(tmp_path_factory.mktemp("aux") / "train_lmdb", 24)


def logged_weights(log_text, name="loss_ds1"):
    return {int(i): float(w) for i, w in
            re.findall(rf"Iteration (\d+), aux {name} weight = ([\d.e+-]+)", log_text)}


@pytest.mark.parametrize("mode", ["eq2", "linear", "none"])
def test_solver_applies_and_logs_the_schedule(lmdb_dir, tmp_path, mode):
    """24 records, batch 4: an epoch every 6 iterations, N = 24 * 4 / 24 = 4 epochs."""
    solver = make_solver(classifier_net(lmdb_dir, batch=4, aux=0.4), tmp_path / "s",
                         SolverOptions(progress=False, aux_decay=mode), max_iter=24,
                         snapshot=12, display=6)
    solver.solve()
    want = {6 * t: aux_weight(0.4, t, 4.0, mode) for t in range(4)}
    got = logged_weights((tmp_path / "s.log").read_text())
    if mode == "none":
        assert got == {0: pytest.approx(0.4)}
    else:
        assert got == pytest.approx(want, rel=1e-5)
    assert solver.net.loss_weights["loss"] == 1.0
    assert solver.net.loss_weights["loss_ds1"] == pytest.approx(want[18])
    # the display lines weigh the aux loss by its current weight
    text = (tmp_path / "s.log").read_text()
    assert re.search(rf"loss_ds1 = [\d.e+-]+ \(\* {want[18]:.6g} = ", text)


def test_resumed_run_recomputes_the_weight_from_the_iteration(lmdb_dir, tmp_path):
    net = classifier_net(lmdb_dir, batch=4, aux=0.4)
    make_solver(net, tmp_path / "s", max_iter=24, snapshot=14).solve()
    resumed = make_solver(net, tmp_path / "r", max_iter=24)
    resumed.restore(str(tmp_path / "s_iter_14.solverstate"))
    resumed.step(1)
    assert resumed.net.loss_weights["loss_ds1"] == pytest.approx(aux_weight(0.4, 2, 4.0, "eq2"))


def test_aux_loss_flag_names_other_tops(lmdb_dir, tmp_path):
    """--aux-loss: a net whose auxiliary top is not called *_ds<k>."""
    net = classifier_net(lmdb_dir, batch=4, aux=0.4).replace('"loss_ds1"', '"side_loss"')
    solver = make_solver(net, tmp_path / "s", SolverOptions(progress=False, aux_loss=["side_loss"]),
                         max_iter=12)
    solver.solve()
    # 12 iterations of 4 from 24 records: N = 2 epochs; iteration 11 is in epoch 1
    assert solver.net.loss_weights["side_loss"] == pytest.approx(0.4 * (1 - 1 / 2))
