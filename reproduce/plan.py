"""What one reproduction runs: a `Run` per (Table 1 row, seed) with its folders, and the
run's files, rendered by the generator with the run's schedule.

Everything lives under `<runs>/<dataset>/<preset>/<row slug>/seed<k>/`, relative to the
working directory (Caffe's convention for the paths inside prototxt files); the committed
models/ folders are never written.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from generator.architectures import NetConfig, build
from generator.make import make_net
from generator.schedule import Schedule, ScheduleOverrides, schedule, with_data_sizes
from reproduce.config import NetRow, Protocol
from runner.deep_supervision import model_name


@dataclass(frozen=True)
class Run:
    """One training run: a row of the table with one seed."""
    row: NetRow
    seed: int
    dataset: str
    root: Path          # <runs>/<dataset>/<preset>/<slug>/seed<k>

    @property
    def name(self) -> str:
        """The generator's folder name: <dataset>-<variant><depth>."""
        return model_name(self.dataset, self.row.variant, self.row.depth)

    @property
    def model(self) -> Path:
        return self.root / self.name

    @property
    def solver(self) -> Path:
        return self.model / "solver.prototxt"

    @property
    def train_val(self) -> Path:
        return self.model / "train_val.prototxt"

    @property
    def deploy(self) -> Path:
        return self.model / "deploy.prototxt"

    @property
    def prefix(self) -> Path:
        """snapshot_prefix: snapshots, the solver log and its PNG start with it."""
        return self.model / "snapshots" / self.name

    @property
    def log(self) -> Path:
        return Path(f"{self.prefix}.log")

    def snapshot(self, iteration: int, ext: str = "caffemodel") -> Path:
        return Path(f"{self.prefix}_iter_{iteration}.{ext}")

    @property
    def test_log(self) -> Path:
        return self.root / "test.log"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def train_result(self) -> Path:
        """The solver's JSON result (beside its log; every attempt of a resumed run)."""
        return Path(f"{self.prefix}_result.json")

    @property
    def test_result(self) -> Path:
        """The final `solve.py test`'s JSON result."""
        return self.root / "test_result.json"

    @property
    def label(self) -> str:
        return f"{self.row.label} seed {self.seed}"


def plan_runs(protocol: Protocol, runs_root: Path) -> list[Run]:
    """Every run in training order: rows in config order, each over all seeds."""
    base = Path(runs_root) / protocol.dataset / protocol.preset
    return [Run(row, seed, protocol.dataset, base / row.slug / f"seed{seed}")
            for row in protocol.nets for seed in protocol.seeds]


def source_of(runs: list[Run], run: Run) -> Run | None:
    """The run whose final weights `run` starts from (same seed), or None."""
    if run.row.init_from is None:
        return None
    return next(r for r in runs if r.row.label == run.row.init_from and r.seed == run.seed)


def probe_folder(protocol: Protocol, runs_root: Path) -> Path:
    return Path(runs_root) / protocol.dataset / protocol.preset / "probe"


def run_config(run: Run, protocol: Protocol) -> NetConfig:
    """The generator settings of a run's net."""
    return NetConfig(dataset=run.dataset, variant=run.row.variant, depth=run.row.depth,
                     init=protocol.init, width=protocol.width or None)


def run_overrides(run: Run, protocol: Protocol, gpu: str | None,
                  max_iter_cap: int | None = None) -> ScheduleOverrides:
    """The run's schedule as generator overrides: the protocol's epochs (lr dropped at
    lr_drop_at of the iterations), test cadence, display and batch (0 keeps the
    generated value), the seed, the device; epochs count the LMDB records found.
    `max_iter_cap` shortens the run (a smoke test), keeping the rest of the schedule."""
    net = build(run_config(run, protocol))
    overrides = with_data_sizes(net, ScheduleOverrides(
        epochs=protocol.epochs, step_at=protocol.lr_drop_at if protocol.epochs is not None else None,
        test_interval=protocol.test_interval or None, test_iter=protocol.test_iter or None,
        display=protocol.display or None, batch=protocol.batch or None,
        solver_mode="GPU" if gpu is not None else "CPU", random_seed=run.seed))
    if max_iter_cap is not None and max_iter_cap < schedule(net, overrides).max_iter:
        overrides = replace(overrides, max_iter=max_iter_cap)
    return overrides


def run_schedule(run: Run, protocol: Protocol, gpu: str | None = None,
                 max_iter_cap: int | None = None) -> Schedule:
    """The schedule the run gets (what render_run renders), nothing written."""
    return schedule(build(run_config(run, protocol)), run_overrides(run, protocol, gpu, max_iter_cap))


def render_run(run: Run, protocol: Protocol, gpu: str | None,
               max_iter_cap: int | None = None) -> Schedule:
    """Render the run's net folder (train_val, deploy, solver) with its schedule through the
    generator, in this process; returns the schedule it got."""
    made = make_net(run_config(run, protocol), str(run.root),
                    run_overrides(run, protocol, gpu, max_iter_cap))
    return made.schedule
