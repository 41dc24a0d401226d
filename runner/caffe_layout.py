"""Caffe's Net::Init view of a filtered net, as pycaffe shows it: the Split layers Caffe
inserts where one top feeds several bottoms (util/insert_splits.cpp), blobs in creation
order, net inputs and outputs, and which layers and bottoms Backward visits (net.cpp).

Pure bookkeeping over NetParameter messages; the torch modules stay in runner.net.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from runner.proto import caffe_pb2


def split_layer_name(layer: str, blob: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(layer: str, blob: str, top_index: int, k: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{k}"


def insert_splits(param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Caffe's InsertSplits: a top used by several bottoms (or by bottoms and as a loss)
    feeds a Split layer whose tops replace those bottoms."""
    last_top: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    uses: dict[tuple[int, int], int] = {}
    loss_weight: dict[tuple[int, int], float] = {}
    for i, lp in enumerate(param.layer):
        for j, name in enumerate(lp.bottom):
            top = last_top[name]  # runner.proto.check_bottoms has vouched for it
            source_of[(i, j)] = top
            uses[top] = uses.get(top, 0) + 1
        for j, name in enumerate(lp.top):
            last_top[name] = (i, j)
        for j in range(min(len(lp.loss_weight), len(lp.top))):
            top = last_top[lp.top[j]]
            loss_weight[top] = lp.loss_weight[j]
            if lp.loss_weight[j]:
                uses[top] = uses.get(top, 0) + 1
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split: dict[tuple[int, int], int] = {}
    for i, original in enumerate(param.layer):
        lp = out.layer.add()
        lp.CopyFrom(original)
        for j, name in enumerate(lp.bottom):
            top = source_of[(i, j)]
            if uses.get(top, 0) > 1:
                k = next_split.get(top, 0)
                next_split[top] = k + 1
                lp.bottom[j] = split_blob_name(param.layer[top[0]].name, name, top[1], k)
        for j, name in enumerate(lp.top):
            count = uses.get((i, j), 0)
            if count <= 1:
                continue
            weight = loss_weight.get((i, j), 0.0)
            split = out.layer.add()
            split.name = split_layer_name(lp.name, name, j)
            split.type = "Split"
            split.bottom.append(name)
            for k in range(count):
                split.top.append(split_blob_name(lp.name, name, j, k))
                if weight:
                    split.loss_weight.append(weight if k == 0 else 0.0)
            if weight:
                del lp.loss_weight[:]
                next_split[(i, j)] = next_split.get((i, j), 0) + 1
    return out


def split_net(param: caffe_pb2.NetParameter) -> tuple[caffe_pb2.NetParameter, list[int | None]]:
    """insert_splits(param), and for each of its layers the index in `param` of the layer
    it is (None for a Split that InsertSplits added)."""
    split = insert_splits(param)
    origins, k = [], 0
    for lp in split.layer:
        original = param.layer[k] if k < len(param.layer) else None
        if original is not None and original.name == lp.name and original.type == lp.type:
            origins.append(k)
            k += 1
        else:
            origins.append(None)
    return split, origins


@dataclass
class LayerFacts:
    """What Net::Init learns from a built layer."""
    learns: bool                     # some blob has lr_mult != 0
    loss_weights: list[float]        # one per top
    force_backward_blocked: tuple[int, ...] = ()


@dataclass
class Layout:
    """Blobs, inputs, outputs and the Backward plan of a (split) NetParameter."""
    blob_names: list[str] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    layer_needs_backward: list[bool] = field(default_factory=list)
    bottom_needs_backward: list[list[bool]] = field(default_factory=list)
    blob_loss_weights: dict[str, float] = field(default_factory=dict)


def plan(param: caffe_pb2.NetParameter, facts: list[LayerFacts]) -> Layout:
    """Net::Init's walk over the layers (after InsertSplits), then its backward pass that
    drops layers not under a loss, then force_backward."""
    out = Layout()
    blob_needs: dict[str, bool] = {}
    available: dict[str, None] = {}
    for lp, fact in zip(param.layer, facts):
        need = False
        bottom_need = []
        for j, name in enumerate(lp.bottom):
            available.pop(name, None)
            need |= blob_needs[name]
            bottom_need.append(lp.propagate_down[j] if lp.propagate_down else blob_needs[name])
        for j, name in enumerate(lp.top):
            if name not in blob_needs:
                out.blob_names.append(name)
                blob_needs[name] = False
            available[name] = None
            out.blob_loss_weights[name] = fact.loss_weights[j]
            if lp.type == "Input":
                out.input_names.append(name)
        need |= fact.learns
        out.layer_needs_backward.append(need)
        out.bottom_needs_backward.append(bottom_need)
        if need:
            blob_needs.update((name, True) for name in lp.top)
    under_loss: set[str] = set()
    skip_backprop: set[str] = set()
    for i in reversed(range(len(param.layer))):
        lp, fact = param.layer[i], facts[i]
        contributes = any(w or name in under_loss for name, w in zip(lp.top, fact.loss_weights))
        skip = all(name in skip_backprop for name in lp.top)
        if out.layer_needs_backward[i] and skip:
            out.layer_needs_backward[i] = False
            out.bottom_needs_backward[i] = [False] * len(lp.bottom)
        if not contributes:
            out.layer_needs_backward[i] = False
        for j, name in enumerate(lp.bottom):
            if contributes:
                under_loss.add(name)
            else:
                out.bottom_needs_backward[i][j] = False
            if not out.bottom_needs_backward[i][j]:
                skip_backprop.add(name)
    if param.force_backward:
        for i, (lp, fact) in enumerate(zip(param.layer, facts)):
            out.layer_needs_backward[i] = True
            for j in range(len(lp.bottom)):
                out.bottom_needs_backward[i][j] |= j not in fact.force_backward_blocked
    out.output_names = sorted(available)
    return out
