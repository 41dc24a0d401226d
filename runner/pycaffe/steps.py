"""Caffe's layer list over a built runner Net: one Step per Caffe layer, Split layers
included, each pointing at what runs it (a source, a runner module, the user's Python
layer object) and at its learnable blobs."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from runner.blob import ParamBlob
from runner.caffe_layout import LayerFacts, split_net
from runner.debug_info import param_specs
from runner.layers.python_layer import PythonLayerModule

INPUT, SOURCE, SPLIT, PYTHON, LAYER = "input", "source", "split", "python", "layer"


@dataclass
class Step:
    """One Caffe layer: what kind of work it is, its blob names, and its runner parts."""
    name: str
    type: str
    kind: str
    bottoms: list[str]
    tops: list[str]
    module: torch.nn.Module | None = None    # LAYER and PYTHON
    source: object = None                    # INPUT and SOURCE: the runner's source
    slots: list = field(default_factory=list)   # runner BlobSlots of its learnable blobs
    blobs: list = field(default_factory=list)   # pycaffe's layer.blobs
    param_specs: list = field(default_factory=list)  # (display name, learned) per blob

    @property
    def impl(self):
        """The user's object of a Python layer."""
        return self.module.impl


class LayerView:
    """What `net.layers[i]` shows of a built-in layer: its type and learnable blobs."""

    def __init__(self, step: Step):
        self.type = step.type
        self.blobs = step.blobs

    def __repr__(self) -> str:
        return f"<Layer type={self.type!r} blobs={len(self.blobs)}>"


def _loss_weight(net, lp, j: int, last_producer: dict) -> float:
    """The runner's loss weight of a top, counted only at the layer that produced it last."""
    name = lp.top[j]
    return net.loss_weights.get(name, 0.0) if last_producer.get(name) is lp else 0.0


def build_steps(net) -> tuple[list[Step], list[LayerFacts], object]:
    """Steps, Net::Init facts and the split NetParameter of a runner Net."""
    split_param, origins = split_net(net.net_param)
    originals = net.layer_blobs()
    sources = iter(net.sources)
    last_producer = {name: lp for lp in net.net_param.layer for name in lp.top}
    steps, facts = [], []
    for lp, index in zip(split_param.layer, origins):
        if index is None:
            steps.append(Step(lp.name, "Split", SPLIT, list(lp.bottom), list(lp.top)))
            facts.append(LayerFacts(False, list(lp.loss_weight) or [0.0] * len(lp.top)))
            if any(lp.loss_weight):  # InsertSplits moved the producer's loss weight here
                producer = next(i for i in reversed(range(len(steps))) if lp.bottom[0] in steps[i].tops)
                facts[producer].loss_weights[steps[producer].tops.index(lp.bottom[0])] = 0.0
            continue
        original, module, slots = originals[index]
        weights = [_loss_weight(net, original, j, last_producer) for j in range(len(lp.top))]
        if module is None:
            kind = INPUT if lp.type == "Input" else SOURCE
            steps.append(Step(lp.name, lp.type, kind, list(lp.bottom), list(lp.top),
                              source=next(sources)))
            facts.append(LayerFacts(False, weights))
            continue
        step = Step(lp.name, lp.type, PYTHON if isinstance(module, PythonLayerModule) else LAYER,
                    list(lp.bottom), list(lp.top), module)
        step.blobs = (module.impl.blobs if step.kind == PYTHON else
                      [ParamBlob(lambda s=s: s.param, s.shape) for s in slots])
        step.slots = list(slots)
        step.param_specs = param_specs(original, len(step.blobs))
        lr_mults = [spec.lr_mult for spec in lp.param] + [1.0] * (len(slots) - len(lp.param))
        facts.append(LayerFacts(any(m != 0 for m in lr_mults[:len(slots)]), weights,
                                tuple(type(module).force_backward_blocked)))
        steps.append(step)
    return steps, facts, split_param
