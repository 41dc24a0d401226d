"""Which layers a net runs with: Caffe's Net::FilterNet / StateMeetsRule, plus the
wiring checks Net::Init makes (every bottom produced earlier, one producer per top)."""
from __future__ import annotations

from typing import Iterable

from runner.proto import caffe_pb2
from runner.proto.errors import ProtoError

_PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}


def phase_value(phase: int | str) -> int:
    """caffe.Phase value of "TRAIN"/"TEST" (any case) or of the enum value itself."""
    if isinstance(phase, str) and phase.upper() in _PHASES:
        return _PHASES[phase.upper()]
    if not isinstance(phase, str) and phase in _PHASES.values():
        return int(phase)
    raise ProtoError(f"phase must be TRAIN or TEST, got {phase!r}")


def state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    """True when `state` satisfies every condition the rule sets (Caffe's StateMeetsRule)."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    return all(s in stages for s in rule.stage) and not any(s in stages for s in rule.not_stage)


def layer_included(layer: caffe_pb2.LayerParameter, state: caffe_pb2.NetState) -> bool:
    """Caffe's include/exclude logic: no include rules means included unless an exclude
    rule is met; otherwise included only if some include rule is met."""
    if len(layer.include) and len(layer.exclude):
        raise ProtoError(f"layer '{layer.name}' specifies both include and exclude rules; "
                         "specify one or the other")
    if len(layer.include):
        return any(state_meets_rule(state, rule) for rule in layer.include)
    return not any(state_meets_rule(state, rule) for rule in layer.exclude)


def filter_net(net: caffe_pb2.NetParameter, phase: int | str, stages: Iterable[str] = (),
               level: int = 0) -> caffe_pb2.NetParameter:
    """A copy of `net` with only the layers its NetState includes.

    As Caffe's Net(param_file, phase, level, stages): the state keeps the net's own
    stages, adds `stages`, and takes `phase` and `level`; the result carries that state.
    """
    state = caffe_pb2.NetState()
    state.CopyFrom(net.state)
    state.phase = phase_value(phase)
    state.level = level
    state.stage.extend(stages)
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(net)
    filtered.state.CopyFrom(state)
    filtered.ClearField("layer")
    filtered.layer.extend(layer for layer in net.layer if layer_included(layer, state))
    return filtered


def check_bottoms(net: caffe_pb2.NetParameter, path: str | None = None) -> None:
    """Raise ProtoError unless every layer's bottoms are produced by earlier layers (or
    are net inputs) and each top has one producer (in-place reuse of a bottom aside), as
    Caffe's Net::Init. Layer names may repeat, as in Caffe (weights load into the first
    layer of a name, as its CopyTrainedLayersFrom). Pass a filtered net."""
    where = f"{path}: " if path else ""
    available = set(net.input)
    producer: dict[str, str] = {name: "net input" for name in net.input}
    for layer in net.layer:
        label = f"layer '{layer.name}' ({layer.type})"
        for index, blob in enumerate(layer.bottom):
            if blob not in available:
                raise ProtoError(f"{where}{label}: bottom '{blob}' (bottom {index}) is not "
                                 "produced by any earlier layer")
        for index, blob in enumerate(layer.top):
            in_place = index < len(layer.bottom) and layer.bottom[index] == blob
            if blob in producer and not in_place:
                raise ProtoError(f"{where}{label}: top '{blob}' is already produced by "
                                 f"{producer[blob]}; a top may only reuse the bottom at its "
                                 "own index (in-place)")
            producer[blob] = f"layer '{layer.name}'"
            available.add(blob)
