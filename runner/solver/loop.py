"""The Solver: Caffe's Solve/Step/Test/Snapshot/Restore loop over our Net.

Read top to bottom it is Caffe's solver.cpp: test at the top of a step when due,
iter_size forward/backward passes, display, ApplyUpdate (lr policy, clip, normalise,
regularise, update), iter += 1, snapshot when due or asked. Added for the paper's
deep supervision: auxiliary loss weights set per epoch by an AuxWeightSchedule.
"""
from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from google.protobuf import text_format
from tqdm import tqdm

from runner.memory import keep_freed_memory
from runner.proto import caffe_pb2
from runner.solver import distributed, layout
from runner.solver.aux_weight_schedule import AuxWeightSchedule
from runner.solver.batches import BatchStream, share_trained_layers
from runner.solver.caffe_log import CaffeLog, cfloat
from runner.solver.config import prepare_solver_param, test_net_specs, train_net_spec
from runner.solver.detection_eval import DetectionTally
from runner.solver.errors import SolverDiverged
from runner.solver.log_reader import read_history
from runner.solver.plot import plot_history
from runner.solver.signals import NONE, SNAPSHOT, STOP, SignalRequests
from runner.solver.snapshot import load_solverstate, write_snapshot
from runner.solver.step import TrainingStep
from runner.solver.tensorboard import scalars_for


def train_set_size(net) -> int:
    """Records in the train net's data (0 if no source knows): the first source's
    `num_records` (the whole database, whatever this rank's share)."""
    for source in net.sources:
        if getattr(source, "num_records", 0):
            return int(source.num_records)
    return 0


@dataclass
class SolverOptions:
    """What the command line adds to the SolverParameter."""
    weights: list[str] = field(default_factory=list)
    aux_decay: str = "eq2"
    aux_loss: list[str] = field(default_factory=list)
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    sigint_effect: str = "stop"
    sighup_effect: str = "snapshot"
    progress: bool | None = None     # None: a bar only when stderr is a terminal
    log_path: str | None = None      # None: <snapshot_prefix>.log
    append_log: bool = False         # a resumed run continues its log
    plot_path: str | None = None     # None: <snapshot_prefix>_training.png
    tensorboard: str | None = None   # a directory for TensorBoard scalars, if wanted


class Solver:
    """One training run of a SolverParameter (caffe train)."""

    def __init__(self, param, options: SolverOptions | None = None,
                 ctx: distributed.DistContext | None = None):
        from runner import Net

        self.param = param
        self.options = options = options or SolverOptions()
        self.ctx = ctx = ctx or distributed.DistContext()
        self.device = ctx.device
        prefix = param.snapshot_prefix
        self.log_path = options.log_path or f"{prefix}.log"
        self.plot_path = options.plot_path or f"{prefix}_training.png"
        self.log = CaffeLog(self.log_path if ctx.is_root else None, enabled=ctx.is_root,
                            append=options.append_log)
        self.scalars = scalars_for(options.tensorboard, ctx.is_root)
        prepare_solver_param(param)
        self.seed = param.random_seed if param.random_seed >= 0 else random.randrange(2**31)
        torch.manual_seed(self.seed + ctx.rank)  # Caffe: random_seed + solver_rank
        self.log.info("solver.cpp:44", "Initializing solver from parameters: \n"
                      + text_format.MessageToString(param))
        if ctx.is_root:
            self._check_snapshot_prefix(prefix)

        weights = options.weights or list(param.weights)
        spec = train_net_spec(param)
        self.log.info("solver.cpp:87", f"Creating training net from {spec.origin}")
        self.net = Net(spec.param, phase=spec.phase, stages=spec.stages, level=spec.level,
                       weights=weights or None, allow_missing=True,
                       source_kwargs={"rank": ctx.rank, "world_size": ctx.world_size,
                                      "seed": self.seed})
        self.test_nets = []
        if ctx.is_root:
            for i, tspec in enumerate(test_net_specs(param)):
                self.log.info("solver.cpp:172", f"Creating test net (#{i}) specified by {tspec.origin}")
                test_net = Net(tspec.param, phase=tspec.phase, stages=tspec.stages,
                               level=tspec.level, weights=weights or None, allow_missing=True,
                               source_kwargs={"seed": self.seed})
                share_trained_layers(test_net, self.net)
                self.test_nets.append(test_net)
        self.log.info("solver.cpp:56", "Solver scaffolding done.")
        for net in [self.net, *self.test_nets]:
            net.set_debug_info(None)  # the solver's debug_info decides, as in Caffe
        if param.debug_info and options.compile:
            self.log.warning("solver.cpp:56", "debug_info: true: the per-layer statistics need "
                                              "the eager net; none are written under --compile")
        where = "Use CPU." if self.device.type == "cpu" else f"Using GPU {self.device.index}"
        self.log.info("caffe.cpp:219", where + (f" (rank 0 of {ctx.world_size}, torch.distributed)"
                                                if ctx.distributed else ""))

        if self.device.type == "cpu":
            keep_freed_memory()
        self.channels_last = options.channels_last and self._channels_last_pays()
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        for net in [self.net, *self.test_nets]:
            net.to(self.device, memory_format=memory_format)
        self.iter = self.start_iter = 0   # start_iter: where the last step() began
        self.requested_early_exit = False
        self.request = NONE          # the signal request taken at the last iteration
        self.last_snapshot = None        # the last one written
        self.last_good_snapshot = None   # the last one whose own weights gave a finite loss
        self._unchecked_snapshot = None  # (iter, path) written, its forward not yet run
        self.smoothed_loss = float("nan")
        self.scores = []      # (iteration, test net, mean of each output element) per test
        self.snapshots = []   # the .caffemodel files written
        self.schedule = self._aux_schedule()
        # Solver::add_callback's callables: on_start before each iteration's passes,
        # on_gradients_ready after them, before the update
        self.callbacks: list[tuple[Callable[[], None], Callable[[], None]]] = []

        self.ddp = distributed.wrap(self.net, ctx)
        self.model = self.ddp
        self.test_models = list(self.test_nets)
        if options.compile:
            self.model = torch.compile(self.model)
            self.test_models = [torch.compile(n) for n in self.test_nets]
        self.train_step = TrainingStep(
            self.net, param, seed=self.seed, rank=ctx.rank, model=self.model, amp=options.amp,
            no_sync=self.ddp.no_sync if ctx.distributed else None, on_rate=self._log_rate,
            on_warning=lambda msg: self.log.warning("solver.cpp:48", msg))
        self.update.update_in_diff = param.snapshot_diff
        self.update.on_clip = lambda norm, clip, scale: self.log.info(
            "sgd_solver.cpp:92", f"Gradient clipping: scaling down gradients (L2 norm "
            f"{cfloat(norm)} > {cfloat(clip)}) by scale factor {cfloat(scale)}")
        stream_kwargs = {"device": self.device, "channels_last": self.channels_last}
        self.train_batches = BatchStream(self.net.sources, **stream_kwargs)
        self.test_batches = [BatchStream(n.sources, **stream_kwargs) for n in self.test_nets]
        self.requests = SignalRequests(options.sigint_effect, options.sighup_effect)

    # ---- setup helpers -----------------------------------------------------------------
    def _channels_last_pays(self) -> bool:
        """--channels-last: on a GPU yes; on the CPU only where this net's training pass
        measured faster in channels_last than in NCHW (runner/solver/layout.py)."""
        if self.device.type != "cpu":
            return True
        try:
            seconds = layout.training_pass_seconds(self.net, self.device)
        except (RuntimeError, ValueError, IndexError, KeyError) as err:
            self.log.warning("layout.py", f"--channels-last: a training pass on synthetic inputs "
                                          f"failed ({err}); training in channels_last as asked")
            return True
        seconds = dict(zip(seconds, distributed.agree_max(list(seconds.values()), self.ctx)))
        chosen = layout.choose(seconds)
        times = ", ".join(f"{name} {s * 1e3:.1f} ms" for name, s in seconds.items())
        self.log.info("layout.py", f"--channels-last: a training pass took {times} on this CPU; "
                                   f"training in {chosen}")
        return chosen == "channels_last"

    def _check_snapshot_prefix(self, prefix: str) -> None:
        folder = os.path.dirname(prefix) or "."
        os.makedirs(folder, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"Cannot write to snapshot prefix '{prefix}'. Make sure that "
                                  "the directory exists and is writeable.")

    def _aux_schedule(self) -> AuxWeightSchedule | None:
        names = AuxWeightSchedule.find_aux(self.net.loss_weights, self.options.aux_loss)
        if not names:
            return None
        train_size = train_set_size(self.net)
        batch = self.train_batches_per_pass()
        if not train_size:
            self.log.warning("solver.cpp:60", "auxiliary losses found but the train net's "
                             "data source does not report its size; aux weights stay fixed")
            return None
        return AuxWeightSchedule(
            self.net.loss_weights, names, self.options.aux_decay,
            samples_per_iter=batch * self.param.iter_size * self.ctx.world_size,
            train_size=train_size, max_iter=self.param.max_iter)

    def train_batches_per_pass(self) -> int:
        """batch_size of the train net: the first axis of its first data top."""
        for source in self.net.sources:
            for shape in source.top_shapes.values():
                return int(shape[0])
        return 1

    @property
    def update(self):
        """The update rule (weights, history) the training step applies."""
        return self.train_step.update

    @property
    def lr_policy(self):
        """The learning-rate policy (with Caffe's current_step) the training step follows."""
        return self.train_step.lr_policy

    # ---- Solve ---------------------------------------------------------------------------
    def solve(self, resume_file: str | None = None) -> None:
        """Caffe's Solver::Solve: optionally restore, step to max_iter, snapshot, test."""
        self.log.info("solver.cpp:272", f"Solving {self.net.name}")
        self.log.info("solver.cpp:273", f"Learning Rate Policy: {self.param.lr_policy}")
        self.requested_early_exit = False
        self.requests.install()
        try:
            if resume_file:
                self.log.info("solver.cpp:274", f"Restoring previous solver status from {resume_file}")
                self.restore(resume_file)
            start_iter = self.iter
            self.step(self.param.max_iter - self.iter)
            p = self.param
            if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
                self.snapshot()
            if self.requested_early_exit:
                self.log.info("solver.cpp:287", "Optimization stopped early.")
                return
            if p.display and self.iter % p.display == 0:
                with torch.no_grad(), self.train_step.autocast():
                    blobs = self.model(next(self.train_batches))
                    loss = float(self.net.objective(blobs))
                self._update_smoothed_loss(loss, start_iter)
                self.log.info("solver.cpp:310", f"Iteration {self.iter}, loss = {cfloat(self.smoothed_loss)}")
            if p.test_interval and self.iter % p.test_interval == 0:
                self.test_all()
            self.log.info("solver.cpp:315", "Optimization Done.")
        finally:
            self.requests.close()
            self.finish_plot()
            self.scalars.close()

    # ---- Step ----------------------------------------------------------------------------
    def step(self, iters: int) -> None:
        """Caffe's Solver::Step: `iters` updates (fewer on a stop request)."""
        p = self.param
        stop_iter = self.iter + iters
        self.start_iter = self.iter
        self.losses, self.smoothed_loss = [], 0.0
        self.display_clock = (time.perf_counter(), self.iter)
        show = self.options.progress
        if show is None:
            show = sys.stderr.isatty()
        bar = tqdm(total=p.max_iter, initial=self.iter, unit="iter", file=sys.stderr,
                   disable=not (show and self.ctx.is_root), dynamic_ncols=True)
        try:
            while self.iter < stop_iter:
                self.train_step.zero_diffs()  # Caffe clears them before testing
                if (p.test_interval and self.iter % p.test_interval == 0
                        and (self.iter > 0 or p.test_initialization)):
                    self.test_all()
                    if self._agree([float(self.requested_early_exit)])[0]:
                        self.requested_early_exit = True
                        break
                self._apply_aux_schedule()
                for on_start, _ in self.callbacks:
                    on_start()
                self.set_debug_info(self.net, p.display and self.iter % p.display == 0)
                self.train_step(self.train_batches, self.iter, self._before_update)
                if p.display and self.iter % p.display == 0:
                    bar.set_postfix(loss=cfloat(self.smoothed_loss), refresh=False)
                self.iter += 1
                bar.update(1)
                request = self.request
                if (p.snapshot and self.iter % p.snapshot == 0) or request == SNAPSHOT:
                    self.snapshot()
                if request == STOP:
                    self.requested_early_exit = True
                    break
        finally:
            bar.close()

    def set_debug_info(self, net, displayed) -> None:
        """Caffe's Net::set_debug_info(displayed && debug_info) for one of this solver's
        nets: its per-layer statistics go to the log (rank 0, eager nets)."""
        on = bool(displayed) and self.param.debug_info and self.ctx.is_root and not self.options.compile
        self._route_debug_info(net, self.log if on else None)

    def _route_debug_info(self, net, log) -> None:
        net.set_debug_info(log)

    def _before_update(self, loss: float, blobs: dict) -> None:
        """Between backward and update: stop on a non-finite loss (all ranks agree), take
        the pending signal request, smooth the loss and log a displayed iteration."""
        diverged, self.request = self._agree([float(not math.isfinite(loss)),
                                              float(self.requests.pop())])
        if diverged:
            raise SolverDiverged(
                f"Iteration {self.iter}: the loss is {cfloat(loss)}; stopping before the "
                f"update. Last good snapshot (its weights gave a finite loss): "
                f"{self.last_good_snapshot or 'none'}")
        self._confirm_snapshot()
        self._update_smoothed_loss(loss, self.start_iter)
        self.scalars.add("train/loss", self.smoothed_loss, self.iter)
        p = self.param
        if p.display and self.iter % p.display == 0:
            timer, iterations_last = self.display_clock
            lapse = time.perf_counter() - timer
            per_s = (self.iter - iterations_last) / (lapse or 1)
            self.log.info("solver.cpp:218", f"Iteration {self.iter} ({cfloat(per_s)} iter/s, "
                          f"{cfloat(lapse)}s/{p.display} iters), loss = {cfloat(self.smoothed_loss)}")
            self.display_clock = (time.perf_counter(), self.iter)
            self._log_outputs(self.net, blobs, "    Train net output", "solver.cpp:237")
        for _, on_gradients_ready in self.callbacks:
            on_gradients_ready()

    def _log_rate(self, it: int, rate: float) -> None:
        """Caffe logs the rate of a displayed iteration just before its update."""
        self.scalars.add("train/lr", rate, it)
        if self.param.display and it % self.param.display == 0:
            self.log.info("sgd_solver.cpp:105", f"Iteration {it}, lr = {cfloat(rate)}")

    def _apply_aux_schedule(self) -> None:
        if self.schedule is None:
            return
        changed = self.schedule.update(self.iter)
        if changed is None:
            return
        for net in self.test_nets:
            net.loss_weights.update({k: v for k, v in changed.items() if k in net.loss_weights})
        for name, weight in changed.items():
            self.log.info("solver.cpp:205", f"Iteration {self.iter}, aux {name} weight = {cfloat(weight)}")
            self.scalars.add(f"aux_weight/{name}", weight, self.iter)

    def _agree(self, flags: list[float]) -> list[float]:
        """The same decision on every rank: each flag is the max over ranks."""
        return distributed.agree_max(flags, self.ctx)

    def _update_smoothed_loss(self, loss: float, start_iter: int) -> None:
        """Caffe's UpdateSmoothedLoss: mean of the last `average_loss` losses."""
        avg = self.param.average_loss
        if len(self.losses) < avg:
            self.losses.append(loss)
            self.smoothed_loss = (self.smoothed_loss * (len(self.losses) - 1) + loss) / len(self.losses)
        else:
            idx = (self.iter - start_iter) % avg
            self.smoothed_loss += (loss - self.losses[idx]) / avg
            self.losses[idx] = loss

    def _log_outputs(self, net, blobs, label: str, where: str, scale: float = 1.0) -> None:
        """One line per output element: `name = value (* w = w*value loss)`."""
        index = 0
        for name in net.output_names:
            weight = net.loss_weights.get(name, 0.0)
            for value in (blobs[name].detach().float().reshape(-1).cpu() * scale).tolist():
                suffix = f" (* {cfloat(weight)} = {cfloat(weight * value)} loss)" if weight else ""
                self.log.info(where, f"{label} #{index}: {name} = {cfloat(value)}{suffix}")
                index += 1

    # ---- Test ----------------------------------------------------------------------------
    def test_all(self) -> None:
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    @torch.no_grad()
    def test(self, k: int) -> None:
        """Caffe's Solver::Test: test_iter forward passes; outputs averaged over them, or
        with eval_type "detection" scored as the SSD fork's TestDetection does."""
        self.log.info("solver.cpp:330", f"Iteration {self.iter}, Testing net (#{k})")
        net, n = self.test_nets[k], self.param.test_iter[k]
        self.set_debug_info(net, True)
        sums, loss = None, 0.0
        tally = DetectionTally(net.output_names) if self.param.eval_type == "detection" else None
        for _ in range(n):
            request = self.requests.pop()
            if request == SNAPSHOT:
                self.snapshot()
            elif request == STOP:
                self.requested_early_exit = True
                break
            with self.train_step.autocast():
                blobs = self._test_forward(k)
                if self.param.test_compute_loss:
                    loss += net.objective(blobs).float()
            if tally is not None:
                tally.add(blobs)
                continue
            outs = {name: blobs[name].detach().float() for name in net.output_names}
            sums = outs if sums is None else {name: sums[name] + outs[name] for name in outs}
        if self.requested_early_exit:
            self.log.info("solver.cpp:360", "Test interrupted.")
            return
        if self.param.test_compute_loss:
            self.log.info("solver.cpp:366", f"Test loss: {cfloat(float(loss) / n)}")
        if tally is not None:
            means = self._detection_scores(tally)
        else:
            self._log_outputs(net, sums, "    Test net output", "solver.cpp:397", scale=1.0 / n)
            means = {name: (sums[name] / n).reshape(-1).tolist() for name in net.output_names}
        self.scores.append((self.iter, k, means))
        for name, values in means.items():
            for i, value in enumerate(values):
                self.scalars.add(f"test{k}/{name if len(values) == 1 else f'{name}/{i}'}", value, self.iter)

    def _detection_scores(self, tally: DetectionTally) -> dict[str, list[float]]:
        """The end of the fork's Solver::TestDetection: per output a warning for each class
        without detections, each class's AP with show_per_class_result, and the mAP logged;
        returns {output: [mAP]}."""
        means = {}
        for i, name, mean_ap, aps in tally.mean_aps(self.param.ap_version):
            for label, ap in aps.items():
                if ap is None:
                    self.log.warning("solver.cpp:524", f"Missing true_pos for label: {label}")
                elif self.param.show_per_class_result:
                    self.log.info("solver.cpp:540", f"class{label}: {cfloat(ap)}")
            self.log.info("solver.cpp:546", f"    Test net output #{i}: {name} = {cfloat(mean_ap)}")
            means[name] = [float(mean_ap)]
        return means

    def _test_forward(self, k: int) -> dict:
        """One forward of test net k on its next batch."""
        return self.test_models[k](next(self.test_batches[k]))

    # ---- Snapshot / Restore ----------------------------------------------------------------
    def snapshot(self) -> None:
        """Write <prefix>_iter_<N>.caffemodel/.solverstate (.h5 with snapshot_format HDF5;
        rank 0), never NaN weights."""
        if not self.ctx.is_root:
            return
        with torch.no_grad():
            finite = all(bool(torch.isfinite(w).all()) for w in self.update.weights)
        if not finite:
            raise SolverDiverged(
                f"Iteration {self.iter}: the weights contain NaN/inf; not snapshotting over the "
                f"last good snapshot ({self.last_good_snapshot or 'none'})")
        paths = write_snapshot(self.net, self.update.history, self.iter,
                               self.lr_policy.current_step, self.param.snapshot_prefix, self.log,
                               hdf5=self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5,
                               diffs=self.param.snapshot_diff)
        self.last_snapshot = paths.state
        self.snapshots.append(paths.model)
        self._unchecked_snapshot = (self.iter, paths.state)

    def _confirm_snapshot(self) -> None:
        """After a finite forward at self.iter: a snapshot of this iteration is good."""
        if self._unchecked_snapshot and self._unchecked_snapshot[0] == self.iter:
            self.last_good_snapshot = self._unchecked_snapshot[1]
            self._unchecked_snapshot = None

    def restore(self, state_file: str) -> None:
        """Weights, history, iter, current_step; data and aux weights follow from iter."""
        state = load_solverstate(state_file, [tuple(h.shape) for h in self.update.history])
        self.net.load_caffemodel(state.learned_net)
        self.update.load_history(state.history)
        self.iter = state.iter
        self._unchecked_snapshot = (state.iter, state_file)
        self.lr_policy.current_step = state.current_step
        # A state past max_iter trains no more: its streams need not be wound that far.
        done = min(self.iter, self.param.max_iter)
        self.train_batches.skip(done * self.param.iter_size)
        for stream, n in zip(self.test_batches, self.param.test_iter):
            stream.skip(self.tests_before(done) * n)

    def tests_before(self, it: int) -> int:
        """How many test rounds the loop ran before reaching iteration `it`."""
        p = self.param
        if not p.test_interval or it <= 0:
            return 0
        rounds = (it + p.test_interval - 1) // p.test_interval
        return rounds - (0 if p.test_initialization else 1)

    def finish_plot(self) -> None:
        """The PNG of the curves in this run's log (rank 0)."""
        if not self.ctx.is_root or not os.path.exists(self.log_path):
            return
        self.log.close()
        history = read_history(self.log_path)
        if history.train_loss or history.test:
            plot_history(history, self.plot_path, title=self.net.name)
