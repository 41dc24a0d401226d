"""Caffe's learnable parameters (Net::AppendParam): ownership, `param { name: }` sharing,
lr_mult/decay_mult per blob, and which blobs get gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from runner.graph import NetBuildError, layer_label
from runner.proto import caffe_pb2
from runner.shapes_forks import is_tsn_bn

Shape = tuple[int, ...]

# Layers whose blobs are statistics, not weights: Caffe forces their lr_mult to 0.
FIXED_STATISTICS = {"BatchNorm"}


def statistics_blobs(lp, count: int) -> frozenset[int]:
    """The blobs of `lp` that hold statistics, never learned: all of BatchNorm's (whose
    lr_mult must be 0), and TSN's BN running mean and variance, its slope and bias too when
    `frozen` (the fork sets their lr_mult to 0 whatever the prototxt says)."""
    if lp.type in FIXED_STATISTICS or lp.type == "DataAugmentation":   # FlowNet's mean blobs
        return frozenset(range(count))
    if lp.type == "BN" and is_tsn_bn(lp):
        return frozenset(range(4) if lp.bn_param.frozen else (2, 3))
    return frozenset()


def blob_param(layer: nn.Module, index: int) -> nn.Parameter:
    """The Parameter behind a layer's blob `index` (the shared original when the layer
    sees it reshaped). Looked up on each use, so parameters replaced after building
    (load_state_dict(assign=True), device moves that swap tensors) are still found."""
    if parametrize.is_parametrized(layer.blobs, str(index)):
        return layer.blobs.parametrizations[str(index)].original
    return layer.blobs[index]


@dataclass
class LearnableParam:
    """One entry of Caffe's learnable_params_: an owned blob with its multipliers."""

    name: str
    layer: nn.Module  # the owning layer
    index: int        # blob index in the owning layer
    lr_mult: float
    decay_mult: float
    has_lr: bool
    has_decay: bool

    @property
    def param(self) -> nn.Parameter:
        return blob_param(self.layer, self.index)


@dataclass
class BlobSlot:
    """A layer's blob as .caffemodel files see it: the owner's parameter, in the shape
    this layer gives it."""

    owner: nn.Module
    index: int
    shape: Shape

    @property
    def param(self) -> nn.Parameter:
        return blob_param(self.owner, self.index)


class _Reshaped(nn.Module):
    """Shows a PERMISSIVE-shared parameter in the sharing layer's own blob shape."""

    def __init__(self, shape: Shape):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.shape)


class ParamTable:
    """Learnable parameters in Caffe's order, built one layer at a time."""

    def __init__(self, force_backward: bool = False):
        self.learnable: list[LearnableParam] = []
        self.slots: dict[str, list[BlobSlot]] = {}  # layer module key -> its blobs
        self._named: dict[str, tuple[int, str, int]] = {}  # param name -> (learnable idx, layer, blob idx)
        self._needs_grad: list[bool] = []
        self._force_backward = force_backward

    def add_layer(self, key: str, layer: nn.Module, lp) -> None:
        """Append a layer's blobs: new ones become learnable, named repeats share the owner's."""
        specs = list(lp.param)
        if len(specs) > len(layer.blobs):
            raise NetBuildError(f"{layer_label(lp)}: {len(specs)} param specs for "
                                f"{len(layer.blobs)} blobs (too many params specified)")
        statistics = statistics_blobs(lp, len(layer.blobs))
        self.slots[key] = []
        for i in range(len(layer.blobs)):
            spec = specs[i] if i < len(specs) else caffe_pb2.ParamSpec()
            fixed = i in statistics
            if fixed and lp.type in FIXED_STATISTICS and i < len(specs) and spec.lr_mult != 0:
                raise NetBuildError(f"{layer_label(lp)}: cannot configure batch normalization "
                                    "statistics as layer parameters (their lr_mult must be 0)")
            lr, has_lr = (0.0, True) if fixed else (spec.lr_mult, spec.HasField("lr_mult"))
            wants_grad = not fixed and (spec.lr_mult > 0 or self._force_backward)
            if spec.name and spec.name in self._named:
                self._share(key, layer, lp, i, spec, lr, has_lr, wants_grad)
                continue
            if spec.name:
                self._named[spec.name] = (len(self.learnable), lp.name, i)
            self.learnable.append(LearnableParam(
                name=f"{lp.name}/{spec.name or i}", layer=layer, index=i, lr_mult=lr,
                decay_mult=spec.decay_mult, has_lr=has_lr, has_decay=spec.HasField("decay_mult")))
            self._needs_grad.append(wants_grad)
            self.slots[key].append(BlobSlot(layer, i, tuple(layer.blobs[i].shape)))

    def _share(self, key, layer, lp, i, spec, lr, has_lr, wants_grad) -> None:
        index, owner_layer, owner_blob = self._named[spec.name]
        entry = self.learnable[index]
        mine, theirs = tuple(layer.blobs[i].shape), tuple(entry.param.shape)
        where = (f"{layer_label(lp)}: shared param '{spec.name}' (blob {i}) has shape {list(mine)} "
                 f"but its owner, layer '{owner_layer}' blob {owner_blob}, has {list(theirs)}")
        if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
            if math.prod(mine) != math.prod(theirs):
                raise NetBuildError(where + "; PERMISSIVE sharing needs equal counts")
        elif mine != theirs:
            raise NetBuildError(where + "; use share_mode: PERMISSIVE to share equal counts")
        for attr, has_attr, value, given in (
                ("lr_mult", "has_lr", lr, has_lr),
                ("decay_mult", "has_decay", spec.decay_mult, spec.HasField("decay_mult"))):
            if not given:
                continue
            if not getattr(entry, has_attr):
                setattr(entry, attr, value)
                setattr(entry, has_attr, True)
            elif getattr(entry, attr) != value:
                raise NetBuildError(f"{layer_label(lp)}: shared param '{spec.name}' has mismatched "
                                    f"{attr} ({value} vs the owner's {getattr(entry, attr)})")
        self._needs_grad[index] |= wants_grad
        layer.blobs[i] = entry.param
        if mine != theirs:
            parametrize.register_parametrization(layer.blobs, str(i), _Reshaped(mine), unsafe=True)
        self.slots[key].append(BlobSlot(entry.layer, entry.index, mine))

    def finish(self) -> None:
        """Blobs that no layer learns (lr_mult 0, statistics) get no gradient, as in Caffe."""
        for entry, needs in zip(self.learnable, self._needs_grad):
            entry.param.requires_grad_(needs)
