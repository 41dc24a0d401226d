"""`python -m generator.probe TRAIN_VAL.prototxt` (`caffe-ds-probe`): probe the plain net's
gradients, suggest BRANCHES for `make net`, and write probe.csv, the plots and the JSON
result probe.json into the model folder."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from generator.architectures import ConfigError
from generator.probe.placement import ProbeRound
from generator.probe.report import (plot_before_after, plot_layers, probe_line, round_table,
                                    write_csv)
from generator.probe.probed_net import ProbedNet, ProbeError
from generator.probe.result import probe_record
from generator.probe.rounds import ProbeOptions, search
from runner.data import DataError
from runner.deep_supervision import VANISHING_THRESHOLD
from runner.fillers import FillerError
from runner.graph import NetBuildError
from runner.layers.base import UnsupportedLayerError
from runner import console
from runner.proto import ProtoError, read_net
from runner.results import ProcessClock, write_result
from runner.shapes import ShapeError
from runner.solver import SolverConfigError, SolverDiverged, load_solver_param

USER_ERRORS = (ProbeError, ConfigError, ProtoError, ShapeError, NetBuildError,
               UnsupportedLayerError, DataError, FillerError, SolverConfigError, SolverDiverged)


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'")
        return value
    return parse


def _shape(text):
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W (three positive integers), got '{text}'")
    return shape


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=console.prog("python -m generator.probe"), description=(
        "Train the plain CNN variant of a net for a few iterations with the plain init "
        "(gaussian std 0.01, zero biases), record each layer's mean |dE/dW|, and suggest "
        "supervision branches after the deepest conv layer whose gradient vanishes."))
    p.add_argument("train_val", help="train_val prototxt (auxiliary *_ds<j> layers are removed)")
    p.add_argument("--iters", type=_positive(int), default=50, help="iterations per probe (50)")
    p.add_argument("--threshold", type=_positive(float), default=VANISHING_THRESHOLD,
                   help=f"a conv layer vanishes below this mean |dE/dW| ({VANISHING_THRESHOLD:g})")
    p.add_argument("--solver", help="solver prototxt to train with (default: SGD, base_lr "
                   "0.01, momentum 0.9, weight_decay 0.0005, fixed rate)")
    p.add_argument("--batch", type=_positive(int), help="batch size (default: the data "
                   "layer's; 4 with synthetic input)")
    p.add_argument("--synthetic", action="store_true", help="one seeded batch of random "
                   "pixels and labels instead of the data (the default when it is missing)")
    p.add_argument("--input-shape", type=_shape, metavar="C,H,W",
                   help="image shape for synthetic input of a net the generator did not render")
    p.add_argument("--max-branches", type=int, default=3, help="stop after this many branches (3)")
    p.add_argument("--seed", type=int, default=0, help="seed of fillers, dropout and synthetic input")
    p.add_argument("--amp", action="store_true", help="forward in bf16 autocast, as "
                   "runner/solve.py --amp trains")
    p.add_argument("--out", help="folder for probe.csv and the PNGs (default: the net's folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Path(args.out or Path(args.train_val).parent)
    start = time.perf_counter()
    clock = ProcessClock()
    threshold = args.threshold

    def report(r: ProbeRound | None, verdict: str) -> None:
        if r is None:
            print(f"=> {verdict}", flush=True)
        elif not r.taps:
            print(round_table(r, threshold))
            print(f"  -> {verdict}", flush=True)
        else:
            print(f"{probe_line(r, threshold)}\n  -> {verdict}", flush=True)

    try:
        if args.max_branches < 0:
            raise ProbeError(f"--max-branches {args.max_branches}: expected 0 or more")
        target = ProbedNet(read_net(args.train_val))
        options = ProbeOptions(iters=args.iters, threshold=threshold, batch=args.batch,
                               synthetic=True if args.synthetic else None,
                               input_shape=args.input_shape, seed=args.seed,
                               max_branches=args.max_branches, amp=args.amp)
        if args.solver:
            options.solver = load_solver_param(args.solver)
        placement = search(target, options, report)
        name = target.net.name or Path(args.train_val).stem
        write_csv(out / "probe.csv", placement.rounds)
        plot_layers(out / "probe.png", placement.rounds[0], threshold,
                    f"{name}, plain net: mean gradient per layer")
        written = ["probe.csv", "probe.png"]
        before_after = out / "probe_before_after.png"
        if placement.after is not None:
            plot_before_after(before_after, placement, threshold,
                              f"{name}: lower layers without and with branches")
            written.append(before_after.name)
        else:
            before_after.unlink(missing_ok=True)   # not one left from an earlier probe
        settings = {"iters": args.iters, "threshold": threshold, "batch": args.batch,
                    "seed": args.seed, "max_branches": args.max_branches}
        written.append("probe.json")
        write_result(out / "probe.json", probe_record(
            args.train_val, name, placement, settings, written, clock.seconds()))
    except USER_ERRORS as exc:
        print(f"probe: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"probe: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(str(out / f) for f in written)}")
    print(f"{len(placement.rounds)} probe(s), {time.perf_counter() - start:.0f} s in all")
    print(f"BRANCHES={placement.branches_value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
