"""Caffe's debug_info output (net.cpp: ForwardDebugInfo, BackwardDebugInfo, Backward).

After each layer's forward: the mean absolute value of each top and of each of its blobs.
After each layer's backward: that of each bottom's diff (where the bottom needs one) and
of each learned blob's diff. After a whole backward: the L1 and L2 norms of all learnable
blobs' data and diffs. Layers are Caffe's, Split layers included (InsertSplits).

The lines are written here; two engines give the values. `NetDebugInfo` hooks a runner
Net, so the solver's autograd pass computes exactly what it computes without it; the
pycaffe facade's layer-by-layer passes call `log_forward`/`log_backward` themselves.
"""
from __future__ import annotations

import math

import torch
from torch.autograd import Variable

from runner.caffe_layout import split_net
from runner.net_params import statistics_blobs
from runner.solver.caffe_log import cfloat

FORWARD_TOP, FORWARD_PARAM = "net.cpp:593", "net.cpp:605"
BACKWARD_BOTTOM, BACKWARD_PARAM = "net.cpp:621", "net.cpp:632"
NORMS = "net.cpp:721"


def mean_abs(tensor: torch.Tensor | None) -> float:
    """Caffe's asum / count (a diff never computed reads as Caffe's zeros)."""
    if tensor is None:
        return 0.0
    n = tensor.numel()
    return float(tensor.detach().abs().sum(dtype=torch.float64)) / n if n else math.nan


def param_specs(lp, count: int) -> list[tuple[str, bool]]:
    """(display name, learned) for each of `lp`'s `count` blobs: Caffe's param_display_names_
    (the ParamSpec's name, else the blob's index) and param_propagate_down (lr_mult != 0;
    never for statistics blobs)."""
    specs = []
    for j in range(count):
        spec = lp.param[j] if j < len(lp.param) else None
        name = spec.name if spec is not None and spec.name else str(j)
        lr_mult = spec.lr_mult if spec is not None else 1.0
        specs.append((name, lr_mult != 0 and j not in statistics_blobs(lp, count)))
    return specs


def log_forward(log, layer: str, tops, params) -> None:
    """`tops`: (blob name, mean |data|); `params`: (display name, mean |data|)."""
    for name, value in tops:
        log.info(FORWARD_TOP, f"    [Forward] Layer {layer}, top blob {name} data: {cfloat(value)}")
    for name, value in params:
        log.info(FORWARD_PARAM, f"    [Forward] Layer {layer}, param blob {name} data: {cfloat(value)}")


def log_backward(log, layer: str, bottoms, params) -> None:
    """`bottoms`: (blob name, mean |diff|) of the bottoms that need backward; `params`:
    (blob index, mean |diff|) of the learned blobs."""
    for name, value in bottoms:
        log.info(BACKWARD_BOTTOM, f"    [Backward] Layer {layer}, bottom blob {name} diff: {cfloat(value)}")
    for index, value in params:
        log.info(BACKWARD_PARAM, f"    [Backward] Layer {layer}, param blob {index} diff: {cfloat(value)}")


def log_norms(log, params) -> None:
    """Net::Backward's closing line over the learnable parameters (each once)."""
    asum_data = asum_diff = sumsq_data = sumsq_diff = 0.0
    for p in params:
        data = p.detach().double()
        asum_data += float(data.abs().sum())
        sumsq_data += float((data * data).sum())
        if p.grad is not None:
            diff = p.grad.detach().double()
            asum_diff += float(diff.abs().sum())
            sumsq_diff += float((diff * diff).sum())
    log.error(NORMS, f"    [Backward] All net params (data, diff): L1 norm = ({cfloat(asum_data)}, "
                     f"{cfloat(asum_diff)}); L2 norm = ({cfloat(math.sqrt(sumsq_data))}, "
                     f"{cfloat(math.sqrt(sumsq_diff))})")


class _Layer:
    """One layer of the net as Caffe's debug lines name it, with its values of this pass."""

    def __init__(self, name: str, bottoms, tops, params=()):
        self.name = name
        self.bottoms = list(bottoms)   # blob names after InsertSplits
        self.tops = list(tops)
        self.params = list(params)     # (display name, learned, BlobSlot)
        self.forward: tuple[list, list] | None = None   # (tops, params): (name, mean |data|)
        self.bottom_diffs: dict[int, float] = {}     # bottom index -> mean |diff|
        self.backward_ran = False


class NetDebugInfo:
    """Caffe's debug_info for a runner Net, written to `log` (info/error as CaffeLog's).

    Hooks record what each layer computes; a forward's lines are written when the net's
    forward returns, a backward's when autograd finishes it. Each bottom passes through an
    alias whose gradient is that layer's own bottom diff (Caffe's Split top); the values
    the net computes stay as they are. `remove()` takes the hooks out.
    """

    def __init__(self, net, log):
        self.net = net
        self.log = log
        self.layers: list[_Layer] = []           # Caffe's order, Split layers included
        self._sources: list[tuple[_Layer, list[tuple[_Layer, int]]]] = []
        self._handles = []
        self._backward_queued = False
        originals = net.layer_blobs()
        groups: list[tuple[_Layer, object, list[tuple[_Layer, int]]]] = []
        split_param, origins = split_net(net.net_param)
        for lp, index in zip(split_param.layer, origins):
            if index is not None:
                original, module, slots = originals[index]
                params = [(name, learned, slot) for (name, learned), slot
                          in zip(param_specs(original, len(slots)), slots)]
                entry = _Layer(lp.name, lp.bottom, lp.top, params)
                groups.append((entry, module, []))
            else:  # a Split that InsertSplits put after the original layer before it
                entry = _Layer(lp.name, lp.bottom, lp.top)
                producer = groups[-1][0]
                groups[-1][2].append((entry, producer.tops.index(lp.bottom[0])))
            self.layers.append(entry)
        for entry, module, split_layers in groups:
            if module is None:
                self._sources.append((entry, split_layers))
                continue
            self._handles.append(module.register_forward_pre_hook(self._bottoms_hook(entry)))
            self._handles.append(module.register_forward_hook(self._tops_hook(entry, split_layers)))
        self._handles.append(net.register_forward_pre_hook(self._start))
        self._handles.append(net.register_forward_hook(self._finish))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # ---- forward ----------------------------------------------------------------------
    def _start(self, net, args) -> None:
        for entry in self.layers:
            entry.forward, entry.bottom_diffs, entry.backward_ran = None, {}, False
        inputs = args[0]
        for entry, split_layers in self._sources:
            self._record_tops(entry, split_layers, [inputs[name] for name in entry.tops])

    def _bottoms_hook(self, entry: _Layer):
        def hook(module, args):
            if not torch.is_grad_enabled():
                return None
            aliased = []
            for j, arg in enumerate(args):
                if isinstance(arg, torch.Tensor) and arg.requires_grad:
                    arg = arg.view_as(arg)
                    arg.register_hook(self._diff_recorder(entry, j))
                aliased.append(arg)
            return tuple(aliased)
        return hook

    def _tops_hook(self, entry: _Layer, split_layers):
        def hook(module, args, outputs):
            self._record_tops(entry, split_layers, outputs)
            if not torch.is_grad_enabled():
                return
            for out in outputs:
                if out.requires_grad:
                    out.register_hook(self._ran_marker(entry))
            for split, j in split_layers:
                if outputs[j].requires_grad:
                    outputs[j].register_hook(self._diff_recorder(split, 0))
        return hook

    def _record_tops(self, entry: _Layer, split_layers, values) -> None:
        tops = [(name, mean_abs(value)) for name, value in zip(entry.tops, values)]
        entry.forward = (tops, [(name, mean_abs(slot.param)) for name, _, slot in entry.params])
        for split, j in split_layers:
            split.forward = ([(name, tops[j][1]) for name in split.tops], [])

    def _finish(self, net, args, outputs) -> None:
        for entry in self.layers:
            if entry.forward is not None:
                log_forward(self.log, entry.name, *entry.forward)

    # ---- backward ---------------------------------------------------------------------
    def _diff_recorder(self, entry: _Layer, j: int):
        def hook(grad):
            entry.bottom_diffs[j] = mean_abs(grad)
            entry.backward_ran = True
            self._queue_backward_lines()
        return hook

    def _ran_marker(self, entry: _Layer):
        def hook(grad):
            entry.backward_ran = True
            self._queue_backward_lines()
        return hook

    def _queue_backward_lines(self) -> None:
        if not self._backward_queued:
            self._backward_queued = True
            Variable._execution_engine.queue_callback(self._write_backward)

    def _write_backward(self) -> None:
        self._backward_queued = False
        for entry in reversed(self.layers):
            if not entry.backward_ran:
                continue
            bottoms = [(entry.bottoms[j], entry.bottom_diffs[j]) for j in sorted(entry.bottom_diffs)]
            params = [(k, mean_abs(slot.param.grad))
                      for k, (_, learned, slot) in enumerate(entry.params) if learned]
            log_backward(self.log, entry.name, bottoms, params)
            entry.bottom_diffs, entry.backward_ran = {}, False
        log_norms(self.log, [param for _, param, _, _ in self.net.learnable_params()])
