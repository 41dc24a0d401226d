"""`make reproduce` end to end on a tiny protocol: both variants and the gradient probe
run through the real command lines on Fashion-MNIST LMDBs, the report's table holds the
numbers the runs' logs hold, and a second call skips the finished runs."""
import contextlib
import json
import re
from pathlib import Path

import pytest

from reproduce.report import format_seconds
from reproduce.run import main
from reproduce_helpers import fashion_data, logged_accuracies, table_rows, write_config

pytestmark = pytest.mark.slow

TINY = {"epochs": 0.08, "batch": 4, "test_interval": 2, "test_iter": 1, "final_test_iter": 2,
        "probe": {"net": "CNN-8", "iters": 1, "batch": 2, "threshold": 1.0e-7}}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    kind = fashion_data(root, limit=100)
    config = write_config(root / "tiny.yaml", "fashion-mnist", TINY)
    with contextlib.chdir(root):
        status = main(["--config", str(config), "--report", "reports/fm.md"])
    assert status == 0
    return root, kind


def run_dir(root: Path, slug: str) -> Path:
    return root / "runs" / "fashion-mnist" / "tiny" / slug / "seed1"


def test_table_holds_the_numbers_of_the_test_logs(reproduced):
    root, _ = reproduced
    report = (root / "reports" / "fm.md").read_text()
    rows = table_rows(report)
    assert set(rows) == {"CNN-8", "CNDS-8"}
    for label, slug in (("CNN-8", "cnn-8"), ("CNDS-8", "cnds-8")):
        logged = logged_accuracies(run_dir(root, slug) / "test.log")
        cells = rows[label]
        assert cells[3] == f"{100 * (1 - logged['accuracy']):.2f}"          # top-1 error
        assert cells[4] == f"{100 * (1 - logged['accuracy_top5']):.2f}"     # top-5 error
        solver_log = next((run_dir(root, slug)).glob("*/snapshots/*.log")).read_text()
        last = max(int(n) for n in re.findall(r"\] Iteration (\d+)", solver_log))
        assert cells[6] == f"{last:,}"                                      # iterations run
        assert "Optimization Done." in solver_log


def test_report_is_built_from_the_commands_json_results(reproduced):
    root, _ = reproduced
    rows = table_rows((root / "reports" / "fm.md").read_text())
    for label, slug in (("CNN-8", "cnn-8"), ("CNDS-8", "cnds-8")):
        folder = run_dir(root, slug)
        tested = json.loads((folder / "test_result.json").read_text())
        trained = json.loads(next(folder.glob("*/snapshots/*_result.json")).read_text())
        cells = rows[label]
        assert cells[3] == f"{100 * (1 - tested['outputs']['accuracy']):.2f}"
        assert cells[6] == f"{trained['iterations']:,}" and trained["status"] == "done"
        assert cells[7] == format_seconds(trained["wall_seconds"])
        assert cells[8] == format_seconds(trained["cpu_seconds"])
    probe = json.loads((root / "runs" / "fashion-mnist" / "tiny" / "probe" / "probe.json").read_text())
    report = (root / "reports" / "fm.md").read_text()
    assert f"{format_seconds(probe['wall_seconds'])}. Mean |dE/dW| per layer" in report
    low = ", ".join(probe["rounds"][0]["vanishing"]) or "none"
    assert f"below 1e-07: {low}" in report


def test_quick_preset_plan_renders_in_process_without_files(tmp_path, monkeypatch):
    """The run plan of the quick preset: schedules and rendered texts, nothing written."""
    from generator.make import prepare
    from reproduce.config import load_protocol
    from reproduce.plan import plan_runs, run_config, run_overrides, run_schedule

    monkeypatch.chdir(tmp_path)                     # no LMDB here: nominal 60,000 / 10,000
    protocol = load_protocol("fashion-mnist", "quick")
    runs = plan_runs(protocol, Path("runs"))
    assert len(runs) == 6 and {r.seed for r in runs} == {1}
    for run in runs:
        s = run_schedule(run, protocol)
        # ceil(0.25 x 60,000 / 32) = 469, rounded up to test_interval 100
        assert (s.max_iter, s.stepsize, s.snapshot, s.test_interval, s.test_iter, s.display,
                s.train_batch, s.test_batch) == (500, 335, 200, 100, 10, 20, 32, 32)
        made = prepare(run_config(run, protocol), str(run.root), run_overrides(run, protocol, None))
        solver = made.texts["solver.prototxt"]
        assert "max_iter: 500" in solver and "random_seed: 1" in solver
        assert f'snapshot_prefix: "{run.prefix}"' in solver
        assert made.texts["train_val.prototxt"].count("batch_size: 32") == 2
    assert run_schedule(runs[0], protocol, max_iter_cap=7).max_iter == 7
    assert list(tmp_path.iterdir()) == []


def test_both_variants_ran_with_their_own_nets(reproduced):
    root, _ = reproduced
    cnn = json.loads((run_dir(root, "cnn-8") / "result.json").read_text())
    cnds = json.loads((run_dir(root, "cnds-8") / "result.json").read_text())
    assert "accuracy_ds1" in cnds["outputs"] and "accuracy_ds1" not in cnn["outputs"]
    # the same deploy net: auxiliary branches are training-only
    assert (cnn["params"], cnn["macs"]) == (cnds["params"], cnds["macs"])
    solver = (run_dir(root, "cnds-8") / "fashion-mnist-cnds8" / "solver.prototxt").read_text()
    assert "random_seed: 1" in solver and "max_iter: 2" in solver
    assert "runs/fashion-mnist/tiny/cnds-8/seed1" in solver      # not the committed models/


def test_verdicts_follow_the_rules_from_the_table(reproduced):
    root, _ = reproduced
    report = (root / "reports" / "fm.md").read_text()
    rows = table_rows(report)
    cnn, cnds = float(rows["CNN-8"][3]), float(rows["CNDS-8"][3])
    poor = cnn >= 90.0 - 10.0
    assert f"**{'held' if poor else 'did not hold'}** - (a) CNN-8 from the standard" in report
    if cnn >= 80.0 and cnds >= 80.0:
        status = "inconclusive"                                    # both near chance
    else:
        status = "held" if cnn - cnds > 0.5 and cnds < 80.0 else "did not hold"
    assert f"**{status}** - (b) deep supervision fixes CNN-8" in report
    assert "**not tested** - (c) deeper is better" in report       # no CNDS-13 row here


def test_curves_and_probe_plots_are_written(reproduced):
    root, _ = reproduced
    report = (root / "reports" / "fm.md").read_text()
    for name in ("fm_curves_depth8.png", "fm_probe.png"):
        assert f"]({name})" in report
        assert (root / "reports" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "gradients vanish in the lower layers of the plain CNN-8" in report


def test_a_second_call_skips_finished_runs(reproduced, capsys):
    root, _ = reproduced
    stamp = (run_dir(root, "cnn-8") / "result.json").stat().st_mtime_ns
    with contextlib.chdir(root):
        assert main(["--config", "tiny.yaml", "--report", "reports/again.md"]) == 0
    err = capsys.readouterr().err
    assert err.count("done before, skipped") == 2
    assert (run_dir(root, "cnn-8") / "result.json").stat().st_mtime_ns == stamp
    first = table_rows((root / "reports" / "fm.md").read_text())
    again = table_rows((root / "reports" / "again.md").read_text())
    assert {k: v[3:5] for k, v in first.items()} == {k: v[3:5] for k, v in again.items()}



def test_runs_trained_at_once_give_the_same_numbers(reproduced):
    root, _ = reproduced
    with contextlib.chdir(root):
        assert main(["--config", "tiny.yaml", "--runs", "runs_at_once", "--jobs", "2",
                     "--report", "reports/at_once.md"]) == 0
    report = (root / "reports" / "at_once.md").read_text()
    sequential = table_rows((root / "reports" / "fm.md").read_text())
    at_once = table_rows(report)
    assert {k: v[3:5] for k, v in sequential.items()} == {k: v[3:5] for k, v in at_once.items()}
    assert "up to 2 runs trained at once" in report
    result = json.loads((root / "runs_at_once" / "fashion-mnist" / "tiny" / "cnds-8" / "seed1"
                         / "result.json").read_text())
    assert result["jobs"] == 2 and result["train_cpu_seconds"] > 0


def test_a_run_from_another_runs_weights_waits_for_it():
    from reproduce.config import load_protocol
    from reproduce.plan import plan_runs
    from reproduce.run import chains

    runs = plan_runs(load_protocol("fashion-mnist", "full"), Path("runs"))
    groups = chains(runs)
    assert sorted(len(g) for g in groups) == [1] * 8 + [2, 2]
    for group in groups:
        if len(group) == 2:
            assert group[0].row.label == "CNN-6" and group[1].row.init_from == "CNN-6"
            assert group[0].seed == group[1].seed
