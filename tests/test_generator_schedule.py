"""Schedule overrides: rendered straight into solver.prototxt and the Data layers (no
file is edited afterwards), computed as docs/generator.md says, defaults untouched."""
from dataclasses import replace

import pytest

from generator.architectures import ConfigError, NetConfig, build
from generator.cli import main
from generator.make import make_net
from generator.schedule import ScheduleOverrides, default_schedule, schedule
from runner.proto import read_net, read_solver

IMAGENET_CNN8 = NetConfig(dataset="imagenet", variant="cnn", depth=8)


def test_no_overrides_is_the_default_schedule():
    for config in (IMAGENET_CNN8, NetConfig(dataset="fashion-mnist", variant="cnds", depth=13)):
        net = build(config)
        assert schedule(net) == schedule(net, ScheduleOverrides()) == default_schedule(net)


def test_epochs_step_point_and_snapshot_by_hand():
    net = build(IMAGENET_CNN8)
    s = schedule(net, ScheduleOverrides(epochs=0.01, step_at=0.5, test_interval=100, batch=32))
    # ceil(0.01 * 1,281,167 / 32) = 401 iterations, rounded up to a multiple of 100
    assert (s.max_iter, s.stepsize, s.snapshot) == (500, 250, 200)
    assert s.test_iter == 1563                                 # ceil(50,000 / 32)
    assert s.epochs == pytest.approx(500 * 32 / 1_281_167)
    # without step_at the step keeps the default's place (200,000 of 640,625 iterations)
    d = default_schedule(net)
    s2 = schedule(net, ScheduleOverrides(epochs=0.01, test_interval=100, batch=32))
    assert s2.stepsize == round(d.stepsize / d.max_iter * 500)


def test_max_iter_shortens_and_keeps_the_rest():
    net = build(IMAGENET_CNN8)
    full = schedule(net, ScheduleOverrides(epochs=1, train_images=1000, test_images=100, batch=10))
    short = schedule(net, ScheduleOverrides(epochs=1, train_images=1000, test_images=100, batch=10,
                                            max_iter=7))
    assert full.max_iter == 10_000 and short.max_iter == 7    # 100 rounded up to test_interval
    assert replace(short, max_iter=full.max_iter) == full
    assert short.test_iter == 10


def test_bad_overrides_name_the_setting():
    with pytest.raises(ConfigError, match="step_at 0"):
        ScheduleOverrides(step_at=0)
    with pytest.raises(ConfigError, match="solver_mode TPU"):
        ScheduleOverrides(solver_mode="TPU")


def test_api_and_command_line_render_the_overrides(tmp_path):
    overrides = ScheduleOverrides(epochs=0.01, step_at=0.5, test_interval=100, batch=32,
                                  random_seed=7, solver_mode="CPU")
    made = make_net(IMAGENET_CNN8, str(tmp_path / "api"), overrides)
    assert main(["DEPTH=8", "VARIANT=cnn", "DATASET=imagenet", "--out", str(tmp_path / "cli"),
                 "--epochs", "0.01", "--step-at", "0.5", "--test-interval", "100",
                 "--batch", "32", "--seed", "7", "--solver-mode", "CPU"]) == 0
    for root in ("api", "cli"):
        folder = tmp_path / root / "imagenet-cnn8"
        solver = read_solver(str(folder / "solver.prototxt"))
        assert (solver.max_iter, solver.stepsize, solver.snapshot, solver.test_interval,
                list(solver.test_iter), solver.random_seed) == (500, 250, 200, 100, [1563], 7)
        assert solver.solver_mode == solver.CPU                  # imagenet's default is GPU
        assert solver.snapshot_prefix == f"{tmp_path / root}/imagenet-cnn8/snapshots/imagenet-cnn8"
        batches = [lp.data_param.batch_size for lp in read_net(str(folder / "train_val.prototxt")).layer
                   if lp.type == "Data"]
        assert batches == [32, 32]
    assert made.schedule.max_iter == 500
    api = (tmp_path / "api" / "imagenet-cnn8" / "solver.prototxt").read_text()
    cli = (tmp_path / "cli" / "imagenet-cnn8" / "solver.prototxt").read_text()
    assert api.replace(f"{tmp_path}/api/", f"{tmp_path}/cli/") == cli
