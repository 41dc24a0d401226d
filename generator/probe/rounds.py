"""Probe rounds end to end: synthetic input or the net's own data, each round's net (from
generator.probe.probed_net) trained and its gradients recorded; and the search that chains
rounds into a BRANCHES value."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from generator.architectures import ConfigError, NetConfig
from generator.probe.gradients import initial_blobs, record_gradients
from generator.probe.placement import Placement, ProbeRound, place_branches, taps_label
from generator.probe.probed_net import ProbeError, ProbedNet, SyntheticInput
from runner.deep_supervision import VANISHING_THRESHOLD
from runner.proto import caffe_pb2

SYNTHETIC_BATCH = 4


def paper_solver() -> caffe_pb2.SolverParameter:
    """The paper's SGD recipe (base_lr 0.01, momentum 0.9, weight decay 0.0005), fixed rate."""
    return caffe_pb2.SolverParameter(type="SGD", base_lr=0.01, lr_policy="fixed",
                                     momentum=0.9, weight_decay=0.0005)


@dataclass
class ProbeOptions:
    """How each round is trained. `synthetic=None` means: synthetic input only when the
    net's own data cannot be read (sources missing, or an Input layer)."""
    iters: int = 50
    threshold: float = VANISHING_THRESHOLD
    batch: int | None = None
    synthetic: bool | None = None
    input_shape: tuple[int, int, int] | None = None
    solver: caffe_pb2.SolverParameter = field(default_factory=paper_solver)
    seed: int = 0
    max_branches: int = 3
    amp: bool = False


class Prober:
    """Runs probe rounds for one probed net with fixed options."""

    def __init__(self, target: ProbedNet, options: ProbeOptions, log: Callable[[str], None] = print):
        self.target, self.options = target, options
        unreadable = target.unreadable_data()
        synthetic = bool(unreadable) if options.synthetic is None else options.synthetic
        if unreadable and not synthetic:
            raise ProbeError(f"net '{target.net.name}': {'; '.join(unreadable)}; build the data "
                             "(e.g. `make data`) or probe with synthetic input (--synthetic)")
        self.input = None
        self.start = None   # the plain net's initial blobs, shared by every round's trunk
        if synthetic:
            shape = options.input_shape or target.image_shape()
            if shape is None:
                raise ProbeError(f"net '{target.net.name}': synthetic input needs the image "
                                 "shape; pass --input-shape C,H,W")
            self.input = SyntheticInput(options.batch or SYNTHETIC_BATCH, tuple(shape), options.seed)
            why = "; ".join(unreadable) or "as asked"
            log(f"probe: synthetic input ({why}): seeded random batches of {self.input.batch} "
                f"x {'x'.join(map(str, shape))} with random labels")

    def __call__(self, taps: tuple[int, ...]) -> ProbeRound:
        """Train the net with branches after `taps` for options.iters iterations, its
        trunk starting from the plain net's initial weights."""
        if self.start is None:
            plain = self.target.round_net((), self.options.batch, self.input)
            self.start = initial_blobs(plain.train, self.options.seed)
        net = self.target.round_net(taps, self.options.batch, self.input)
        name = f"branches {taps_label(taps)}" if taps else "plain net"
        record = record_gradients(net.train, self.options.solver, self.options.iters,
                                  inputs=net.inputs, seed=self.options.seed,
                                  start=self.start, amp=self.options.amp,
                                  desc=f"probe ({name})")
        return ProbeRound(taps, record, net.convs)


def search(target: ProbedNet, options: ProbeOptions,
           report: Callable[[ProbeRound, str], None] | None = None,
           log: Callable[[str], None] = print) -> Placement:
    """Probe rounds per the placement rule (generator.probe.placement)."""
    prober = Prober(target, options, log)
    return place_branches(prober, target.depth, options.threshold, options.max_branches,
                          can_branch=target.can_branch, report=report)


class NoBranchSuggested(ProbeError, ConfigError):
    """The probe found no branch it can support with evidence (the message says why)."""


def suggest_branches(net: caffe_pb2.NetParameter, config: NetConfig | None = None,
                     **options) -> tuple[int, ...]:
    """The conv layers (1-based, ascending) after which to add supervision branches,
    found by probing `net` (a train_val NetParameter); `options` are ProbeOptions fields.
    Prints one line per probe; raises NoBranchSuggested, with the reason, when the
    search ends without a tap."""
    def report(r: ProbeRound | None, verdict: str) -> None:
        head = f"branches {taps_label(r.taps)}: " if r is not None else ""
        print(f"probe: {head}{verdict}", flush=True)

    placement = search(ProbedNet(net, config), ProbeOptions(**options), report)
    if not placement.taps:
        raise NoBranchSuggested(f"BRANCHES=auto: the probe suggests no branch: "
                                f"{placement.reason}; use VARIANT=cnn or give BRANCHES=k,...")
    return placement.taps
