"""Caffe's ForwardFromTo, BackwardFromTo and Reshape over the Steps of a runner Net.

Each layer runs its runner module on its bottoms as fresh autograd leaves, and keeps
that small graph until the next forward, so Backward can ask autograd for the bottom
diffs of one layer at a time, from the tops' diffs, as Caffe's Layer::Backward does:
bottom diffs are overwritten, parameter diffs (.grad) accumulate. A layer with no kept
graph (backward before any forward) is run again for its backward. Split layers share
data and sum diffs; Python layers get the net's blobs themselves.
"""
from __future__ import annotations

import torch

from runner.debug_info import log_backward, log_forward, mean_abs

from .steps import INPUT, LAYER, PYTHON, SOURCE, SPLIT


class Passes:
    """Forward/backward/reshape over `steps`, reading and writing the `blobs` views."""

    def __init__(self, steps, layout, blobs, batches, loss_weights):
        self.steps = steps
        self.layout = layout
        self.blobs = blobs
        self.batches = batches            # callable -> iterator of {top: tensor} for the sources
        self.loss_weights = loss_weights  # callable -> {top: weight} (the runner's live table)
        self.records: dict[int, tuple[list, tuple]] = {}
        # blobs some layer writes: read from storage they are copied, as a later in-place
        # layer may copy into that storage while this pass's graphs still need the values
        self.rewritten = {name for step in steps if step.kind in (LAYER, PYTHON)
                          for name in step.tops}
        # DummyData's constant tops: filled once, when the net is built, as Caffe does
        self.filled_once: set[str] = set()
        for step in steps:
            if hasattr(step.source, "constant_tops"):
                for name, values in step.source.constant_tops().items():
                    blobs[name].assign_data(values.to(blobs[name].data_tensor().device))
                    self.filled_once.add(name)
        self._filled: dict[str, tuple] = {}  # loss top -> (weight, shape) its diff holds
        self.debug_log = None  # where Caffe's debug_info lines go (runner/debug_info.py), if on
        # Net::add_before_forward and its kin: callables given each layer's index
        self.callbacks = {when: [] for when in ("before_forward", "after_forward",
                                                "before_backward", "after_backward")}

    # ---- forward ----------------------------------------------------------------------
    def forward(self, start: int, end: int) -> None:
        current: dict[str, torch.Tensor] = {}  # tops made in this pass, with their graphs
        batch = None
        for i in range(start, end + 1):
            step = self.steps[i]
            self._run_callbacks("before_forward", i)
            if step.kind == INPUT:
                pass
            elif step.kind == SOURCE:
                if batch is None:
                    batch = next(self.batches())
                for top in step.tops:
                    if top not in self.filled_once:
                        self.blobs[top].set_data(batch[top])
                    current.pop(top, None)
            elif step.kind == SPLIT:
                source = self.blobs[step.bottoms[0]]
                for top in step.tops:
                    self.blobs[top].share_data(source)
                    if step.bottoms[0] in current:
                        current[top] = current[step.bottoms[0]]
            elif step.kind == PYTHON:
                bottom, top = self._blobs(step)
                step.impl.reshape(bottom, top)
                step.impl.forward(bottom, top)
                step.impl.blobs.push()
                for name in step.tops:
                    current.pop(name, None)
            else:
                self._forward_layer(i, step, current)
            if self.debug_log is not None:
                log_forward(self.debug_log, step.name,
                            [(name, mean_abs(self.blobs[name].data_tensor())) for name in step.tops],
                            [(name, mean_abs(blob.data_tensor()))
                             for (name, _), blob in zip(step.param_specs, step.blobs)])
            self._run_callbacks("after_forward", i)
        self.fill_loss_diffs()

    def _run_callbacks(self, when: str, layer: int) -> None:
        for run in self.callbacks[when]:
            run(layer)

    def _leaves(self, i: int, step, current, need: bool) -> list[torch.Tensor]:
        leaves = []
        for j, name in enumerate(step.bottoms):
            made = current.get(name)
            if made is not None:
                t = made.detach()
            else:
                t = self.blobs[name].data_tensor()
                t = t.clone() if name in self.rewritten else t.detach()
            if need and self.layout.bottom_needs_backward[i][j] and t.is_floating_point():
                t.requires_grad_()
            leaves.append(t)
        return leaves

    def _forward_layer(self, i: int, step, current) -> None:
        need = self.layout.layer_needs_backward[i]
        leaves = self._leaves(i, step, current, need)
        with torch.set_grad_enabled(need):
            outs = step.module(*leaves)
        for name, out in zip(step.tops, outs):
            self.blobs[name].assign_data(out)
            current[name] = out
        if need:
            self.records[i] = (leaves, outs, self._versions(step))
        else:
            self.records.pop(i, None)

    def fill_loss_diffs(self) -> None:
        """Caffe keeps a loss top's weight in its diff (Layer::SetLossWeights); the runner's
        table can change (deep supervision), so the diff follows it."""
        table = self.loss_weights()
        for name, weight in self.layout.blob_loss_weights.items():
            weight = table.get(name, weight) if weight else 0.0
            blob = self.blobs[name]
            if not weight and name not in self._filled:
                continue
            filled = (float(weight), blob.shape)
            if self._filled.get(name) != filled:
                device = blob.data_tensor().device
                blob.assign_diff(torch.full(blob.shape, float(weight), device=device))
                self._filled[name] = filled

    # ---- backward ---------------------------------------------------------------------
    def backward(self, start: int, end: int) -> None:
        for i in range(start, end - 1, -1):
            self._run_callbacks("before_backward", i)
            if self.layout.layer_needs_backward[i]:
                self._backward_step(i)
            self._run_callbacks("after_backward", i)

    def _backward_step(self, i: int) -> None:
        """Layer i's Backward (it needs one), then its debug lines when they are on."""
        step = self.steps[i]
        if step.kind == SPLIT:
            diffs = [self.blobs[top].diff_tensor() for top in step.tops]
            total = diffs[0] + diffs[1] if len(diffs) > 1 else diffs[0].clone()
            for diff in diffs[2:]:
                total += diff
            self.blobs[step.bottoms[0]].assign_diff(total)
        elif step.kind == PYTHON:
            bottom, top = self._blobs(step)
            step.impl.backward(top, list(self.layout.bottom_needs_backward[i]), bottom)
            step.impl.blobs.push()
        elif step.kind == LAYER:
            self._backward_layer(i, step)
        if self.debug_log is not None:
            self._log_backward(i, step)

    def _log_backward(self, i: int, step) -> None:
        needs = self.layout.bottom_needs_backward[i]
        log_backward(self.debug_log, step.name,
                     [(name, mean_abs(self.blobs[name].diff_tensor()))
                      for name, need in zip(step.bottoms, needs) if need],
                     [(k, mean_abs(blob.diff_tensor()))
                      for k, ((_, learned), blob) in enumerate(zip(step.param_specs, step.blobs))
                      if learned])

    def _backward_layer(self, i: int, step) -> None:
        record = self.records.get(i)
        if record is None or record[2] != self._versions(step):
            # no forward kept this layer's graph, or its parameters were updated since:
            # run it again on the blobs' current values, as Caffe's Backward reads them
            leaves = self._leaves(i, step, {}, True)
            with torch.enable_grad():
                record = (leaves, step.module(*leaves), self._versions(step))
            self.records[i] = record
        leaves, outs, _ = record
        pairs = [(out, self.blobs[name].diff_tensor()) for out, name in zip(outs, step.tops)
                 if out.requires_grad]
        if not pairs:
            return
        needs = self.layout.bottom_needs_backward[i]
        targets = [j for j, leaf in enumerate(leaves) if needs[j] and leaf.requires_grad]
        params = list({id(s.param): s.param for s in step.slots if s.param.requires_grad}.values())
        grads = torch.autograd.grad([out for out, _ in pairs],
                                    [leaves[j] for j in targets] + params,
                                    [diff.reshape(out.shape).to(out.dtype) for out, diff in pairs],
                                    retain_graph=True, allow_unused=True)
        for j, grad in zip(targets, grads):
            blob = self.blobs[step.bottoms[j]]
            blob.assign_diff(grad if grad is not None else torch.zeros_like(leaves[j]))
        with torch.no_grad():
            for param, grad in zip(params, grads[len(targets):]):
                if grad is None:
                    continue
                if param.grad is None:
                    param.grad = grad  # a fresh tensor from autograd, as AccumulateGrad keeps it
                else:
                    param.grad += grad

    @staticmethod
    def _versions(step) -> tuple[int, ...]:
        """The in-place write counters of a layer's parameters (an update bumps them)."""
        return tuple(slot.param._version for slot in step.slots)

    # ---- reshape ----------------------------------------------------------------------
    def reshape(self) -> None:
        """Caffe's Net::Reshape: every layer's top shapes from its bottoms' current shapes."""
        self.records.clear()
        for step in self.steps:
            if step.kind == SPLIT:
                for top in step.tops:
                    self.blobs[top].share_data(self.blobs[step.bottoms[0]])
            elif step.kind == PYTHON:
                step.impl.reshape(*self._blobs(step))
            elif step.kind == LAYER:
                shapes = step.module.infer_shapes(step.module.lp,
                                                  [self.blobs[b].shape for b in step.bottoms]).tops
                for name, shape in zip(step.tops, shapes):
                    if self.blobs[name].shape != tuple(shape):
                        self.blobs[name].reshape(*shape)

    def _blobs(self, step):
        return [self.blobs[b] for b in step.bottoms], [self.blobs[t] for t in step.tops]
