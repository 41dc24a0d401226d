"""`make reproduce DATASET=imagenet` on a handful of random 3x256x256 Datums where the
generated nets read data/imagenet/...: the paper-scale CNDS-8 trains its first two
iterations at batch 2 (crop 227, mean file), is scored, and gets a report row."""
import contextlib
import json
from pathlib import Path

import pytest

from reproduce.config import load_protocol
from reproduce.plan import plan_runs, run_schedule
from reproduce.run import main
from reproduce_helpers import imagenet_data, table_rows, write_config
from runner.proto import read_solver

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_first_iterations_of_the_imagenet_protocol(tmp_path):
    imagenet_data(tmp_path)
    config = write_config(tmp_path / "tiny.yaml", "imagenet", {},
                          nets=[{"label": "CNDS-8", "variant": "cnds", "depth": 8}])
    with contextlib.chdir(tmp_path):
        assert main(["--dataset", "imagenet", "--config", str(config), "--iterations", "2",
                     "--report", "reports/imagenet.md"]) == 0
    run = tmp_path / "runs" / "imagenet" / "tiny" / "cnds-8" / "seed1"
    result = json.loads((run / "result.json").read_text())
    assert result["max_iter"] == 2 and result["train_batch"] == 2
    assert set(result["outputs"]) >= {"accuracy", "accuracy_top5", "accuracy_ds1"}
    log = (run / "imagenet-cnds8" / "snapshots" / "imagenet-cnds8.log").read_text()
    assert "Iteration 1, lr = 0.01" in log and "Optimization Done." in log
    assert (run / "imagenet-cnds8" / "snapshots" / "imagenet-cnds8_iter_2.caffemodel").exists()
    # the paper's schedule stays in the solver, only max_iter is capped
    solver = read_solver(str(run / "imagenet-cnds8" / "solver.prototxt"))
    assert (solver.stepsize, solver.solver_mode) == (200_000, solver.CPU)
    rows = table_rows((tmp_path / "reports" / "imagenet.md").read_text())
    assert rows["CNDS-8"][3] == f"{result['top1_error']:.2f}"


def test_missing_lmdbs_are_named_before_anything_runs(tmp_path, capsys):
    with contextlib.chdir(tmp_path):
        assert main(["--dataset", "places205"]) == 1
    err = capsys.readouterr().err
    assert "data/places205/places205_train_lmdb" in err and "convert_imageset" in err
    assert not (tmp_path / "runs").exists()


def test_committed_protocols_of_the_large_datasets_keep_the_paper_schedules(tmp_path, monkeypatch):
    """Without LMDBs the plan still resolves: paper lengths from the generated solvers."""
    monkeypatch.chdir(tmp_path)
    for dataset in ("imagenet", "places205"):
        protocol = load_protocol(dataset)
        assert protocol.epochs is None and protocol.seeds == (1,)
        runs = plan_runs(protocol, tmp_path)
        assert [r.row.label for r in runs][:2] == ["CNN-8", "CNDS-8"]
    generated = read_solver(str(REPO / "models/places205-cnds8/solver.prototxt"))
    protocol = load_protocol("places205")
    sched = run_schedule(plan_runs(protocol, tmp_path)[1], protocol)     # CNDS-8
    assert (sched.max_iter, sched.stepsize) == (190_000, generated.stepsize)
    assert sched.full_test_iter == 205   # 20,500 validation images at batch 100
