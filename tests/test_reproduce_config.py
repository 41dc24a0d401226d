"""reproduce/config.yaml: presets merge over the defaults, bad files are refused with the
file and key named, and epochs become Caffe solver numbers as documented."""
import math

import pytest
import yaml

from generator.datasets import DATASETS
from reproduce.config import CONFIG, ProtocolError, load_protocol
from reproduce.plan import Run, plan_runs, run_schedule, source_of
from reproduce.run import forget_if_changed
from reproduce import execute
from reproduce_helpers import CLAIMS, write_config


def test_committed_presets_load():
    raw = yaml.safe_load(CONFIG.read_text())
    for dataset, entry in raw["datasets"].items():
        for preset in entry["presets"]:
            protocol = load_protocol(dataset, preset)
            labels = [r.label for r in protocol.nets]
            assert {"CNN-8", "CNDS-8", "CNN-13", "CNDS-13"} <= set(labels)
            assert protocol.row("CNN-8 (from CNN-6)").init_from == "CNN-6"
    quick = load_protocol("fashion-mnist", "quick")
    assert quick.seeds == (1,) and quick.epochs == 0.25 and quick.batch == 32
    full = load_protocol("fashion-mnist")          # the dataset's default preset
    assert full.preset == "full" and len(full.seeds) >= 2 and full.width is None
    wide = load_protocol("fashion-mnist", "wide")
    assert wide.width == 1.0
    assert full.report_name() == load_protocol("fashion-mnist", "full").report_name() \
        == "fashion-mnist"                         # make reproduce: reports/fashion-mnist.md
    assert wide.report_name() == "fashion-mnist-wide"


@pytest.mark.parametrize("change, words", [
    ({"inti": "released"}, "unknown key(s) inti"),
    ({"init": "xavier"}, "init: expected one of released, vanilla"),
    ({"seeds": [1, 1]}, "seeds: expected a list of distinct seeds"),
    ({"epochs": -1}, "epochs: expected a number > 0"),
    ({"lr_drop_at": 1.5}, "lr_drop_at: expected a fraction"),
    ({"nets": [{"label": "A", "variant": "cnn", "depth": 8, "init_from": "B"}]},
     "nets[0].init_from: 'B' is not the label of an earlier net"),
    ({"nets": [{"label": "A", "variant": "cnn", "depth": 4}]}, "depth 4 is not one"),
    ({"probe": {"net": "CNN-99", "iters": 1, "batch": 0, "threshold": 1e-7}}, "probe.net"),
])
def test_bad_presets_name_file_and_key(tmp_path, change, words):
    path = write_config(tmp_path / "bad.yaml", "fashion-mnist", change)
    with pytest.raises(ProtocolError) as err:
        load_protocol("fashion-mnist", None, path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_missing_preset_and_dataset(tmp_path):
    path = write_config(tmp_path / "c.yaml", "fashion-mnist", {})
    with pytest.raises(ProtocolError, match="no preset 'huge' \\(has tiny\\)"):
        load_protocol("fashion-mnist", "huge", path)
    with pytest.raises(ProtocolError, match="no entry for 'imagenet'"):
        load_protocol("imagenet", None, path)
    with pytest.raises(ProtocolError, match="cannot read"):
        load_protocol("fashion-mnist", None, tmp_path / "absent.yaml")


def test_epochs_become_iterations_rounded_to_test_interval(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                                # no LMDB: the nominal sizes
    path = write_config(tmp_path / "c.yaml", "fashion-mnist",
                        {"epochs": 3, "batch": 0, "test_interval": 500, "test_iter": 20})
    protocol = load_protocol("fashion-mnist", None, path)
    ds = DATASETS["fashion-mnist"]
    sched = run_schedule(plan_runs(protocol, tmp_path / "runs")[0], protocol)
    iters = math.ceil(3 * ds.train_images / 64)                # 2,813 at batch 64
    assert sched.max_iter == math.ceil(iters / 500) * 500 == 3000
    assert sched.stepsize == round(0.5 * 3000)                 # lr_drop_at of the file
    assert sched.test_iter == 20 and sched.display == 1
    assert sched.epochs == pytest.approx(3000 * 64 / ds.train_images)


def test_runs_in_row_order_and_pretraining_sources(tmp_path):
    nets = [{"label": "CNN-6", "variant": "cnn", "depth": 6, "pretrain_only": True},
            {"label": "CNN-8 (from CNN-6)", "variant": "cnn", "depth": 8, "init_from": "CNN-6"}]
    path = write_config(tmp_path / "c.yaml", "fashion-mnist", {"seeds": [3, 4]}, nets=nets)
    runs = plan_runs(load_protocol("fashion-mnist", None, path), tmp_path / "runs")
    assert [(r.row.slug, r.seed) for r in runs] == [
        ("cnn-6", 3), ("cnn-6", 4), ("cnn-8-from-cnn-6", 3), ("cnn-8-from-cnn-6", 4)]
    assert source_of(runs, runs[3]) == runs[1] and source_of(runs, runs[0]) is None
    assert runs[2].model == tmp_path / "runs/fashion-mnist/tiny/cnn-8-from-cnn-6/seed3/fashion-mnist-cnn8"


def _fake_run(tmp_path) -> Run:
    path = write_config(tmp_path / "c.yaml", "fashion-mnist", {})
    run = plan_runs(load_protocol("fashion-mnist", None, path), tmp_path)[0]
    run.model.mkdir(parents=True)
    run.solver.write_text('net: "n"\nmax_iter: 10\nsolver_mode: CPU\n')
    run.train_val.write_text('name: "n"\n')
    run.prefix.parent.mkdir()
    return run


def test_resume_picks_the_newest_snapshot_below_max_iter(tmp_path):
    run = _fake_run(tmp_path)
    for it in (2, 4, 10):
        run.snapshot(it, "solverstate").write_bytes(b"")
    assert execute.latest_state(run, 10) == (4, run.snapshot(4, "solverstate"))
    assert execute.latest_state(run, 2) is None


def test_changed_run_files_start_the_run_afresh(tmp_path):
    run = _fake_run(tmp_path)
    forget_if_changed(run, None)                     # first time: remembered as found
    run.snapshot(4, "solverstate").write_bytes(b"")
    (run.root / "result.json").write_text("{}")
    run.solver.write_text(run.solver.read_text().replace("CPU", "GPU"))
    forget_if_changed(run, None)                     # the device is not part of the run
    assert run.snapshot(4, "solverstate").exists()
    run.solver.write_text(run.solver.read_text().replace("max_iter: 10", "max_iter: 20"))
    forget_if_changed(run, None)
    assert not run.snapshot(4, "solverstate").exists() and not (run.root / "result.json").exists()


def test_claims_numbers_come_from_the_file(tmp_path):
    path = write_config(tmp_path / "c.yaml", "fashion-mnist", {"claims": {**CLAIMS, "margin": 2.0}})
    assert load_protocol("fashion-mnist", None, path).claims.margin == 2.0
