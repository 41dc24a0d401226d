"""One probe round end to end: the round's net, plain init, data or synthetic input, the
solver, the gradient record; and the search that chains rounds into a BRANCHES value."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from generator.architectures import ConfigError, NetConfig
from generator.datasets import DATASETS
from generator.probe.gradients import initial_blobs, record_gradients
from generator.probe.placement import Placement, ProbeRound, place_branches, taps_label
from generator.probe.prepare import (ProbeError, SyntheticInput, conv_layers, data_layer_shape,
                                     is_aux, plain_init, train_net)
from generator.probe.target import ProbeTarget
from runner.proto import caffe_pb2
from runner.sources import is_source_type

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
    threshold: float = 1e-7
    batch: int | None = None
    synthetic: bool | None = None
    input_shape: tuple[int, int, int] | None = None
    solver: caffe_pb2.SolverParameter = field(default_factory=paper_solver)
    seed: int = 0
    max_branches: int = 3
    amp: bool = False


def unreadable_data(train: caffe_pb2.NetParameter) -> list[str]:
    """Why `train`'s own data layers give no images: missing LMDB/list sources (relative
    to the working directory) and Input layers (which the caller fills)."""
    reasons = []
    for lp in train.layer:
        if lp.type == "Data" and not Path(lp.data_param.source).is_dir():
            reasons.append(f"{lp.data_param.source} not found")
        elif lp.type == "ImageData" and not Path(lp.image_data_param.source).is_file():
            reasons.append(f"{lp.image_data_param.source} not found")
        elif lp.type == "Input":
            reasons.append(f"layer '{lp.name}' is an Input layer")
    return reasons


def num_classes(net) -> int:
    """Channels of the first bottom of the net's main (non-auxiliary) SoftmaxWithLoss."""
    for lp in net.net_param.layer:
        if lp.type == "SoftmaxWithLoss" and not is_aux(lp.name):
            return net.blob_shapes[lp.bottom[0]][1]
    raise ProbeError(f"net '{net.name}': synthetic labels need a SoftmaxWithLoss layer")


class Prober:
    """Runs probe rounds for one target net with fixed options."""

    def __init__(self, target: ProbeTarget, options: ProbeOptions, log: Callable[[str], None] = print):
        self.target, self.options = target, options
        plain = train_net(target.net_with(()), None)
        unreadable = unreadable_data(plain)
        synthetic = bool(unreadable) if options.synthetic is None else options.synthetic
        if unreadable and not synthetic:
            raise ProbeError(f"net '{plain.name}': {'; '.join(unreadable)}; build the data "
                             "(e.g. `make data`) or probe with synthetic input (--synthetic)")
        self.input = None
        self.start = None   # the plain net's initial blobs, shared by every round's trunk
        if synthetic:
            shape = self._input_shape(plain)
            self.input = SyntheticInput(options.batch or SYNTHETIC_BATCH, shape, options.seed)
            why = "; ".join(unreadable) or "as asked"
            log(f"probe: synthetic input ({why}): seeded random batches of {self.input.batch} "
                f"x {'x'.join(map(str, shape))} with random labels")

    def _input_shape(self, train) -> tuple[int, int, int]:
        if self.options.input_shape:
            return tuple(self.options.input_shape)
        if self.target.config is not None:
            ds = DATASETS[self.target.config.dataset]
            return (ds.channels, ds.crop, ds.crop)
        shape = data_layer_shape(train)
        if shape is None:
            raise ProbeError(f"net '{train.name}': synthetic input needs the image shape; "
                             "pass --input-shape C,H,W")
        return shape

    def _train(self, taps: tuple[int, ...]):
        """The round's plain-initialised net, its TRAIN net, and its input batches (None:
        the net's own data layers)."""
        net = plain_init(self.target.net_with(taps))
        if self.input is None:
            return net, train_net(net, self.options.batch), None
        train, scale = self.input.replace_sources(train_net(net, None))
        data, label = [lp for lp in train.layer if lp.type == "Input"][0].top
        return net, train, lambda built: self.input.batches(data, label, scale, num_classes(built))

    def __call__(self, taps: tuple[int, ...]) -> ProbeRound:
        """Train the net with branches after `taps` for options.iters iterations, its
        trunk starting from the plain net's initial weights."""
        if self.start is None:
            self.start = initial_blobs(self._train(())[1], self.options.seed)
        net, train, make_inputs = self._train(taps)
        name = f"branches {taps_label(taps)}" if taps else "plain net"
        record = record_gradients(train, self.options.solver, self.options.iters,
                                  inputs=make_inputs, seed=self.options.seed,
                                  start=self.start, amp=self.options.amp,
                                  desc=f"probe ({name})")
        return ProbeRound(taps, record, conv_layers(net))


def search(target: ProbeTarget, options: ProbeOptions,
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

    placement = search(ProbeTarget(net, config), ProbeOptions(**options), report)
    if not placement.taps:
        raise NoBranchSuggested(f"BRANCHES=auto: the probe suggests no branch: "
                                f"{placement.reason}; use VARIANT=cnn or give BRANCHES=k,...")
    return placement.taps
