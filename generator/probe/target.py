"""Which net each probe round trains: the given net's plain CNN, and, for nets the
generator renders, the same net with supervision branches after chosen conv layers.

A net counts as generated when its name is `<dataset>-<cnn|cnds><depth>` and the
generator, asked for that net (WIDTH read off the channel counts), renders the same
compute layers;
its data layers are kept as given, so a changed source or batch size carries over.
"""
from __future__ import annotations

from dataclasses import replace

from generator.architectures import ConfigError, NetConfig, build
from generator.datasets import DATASETS
from generator.probe.prepare import ProbeError, plain_init
from generator.render import parse, render
from runner.deep_supervision import parse_model_name, without_aux
from runner.proto import caffe_pb2
from runner.sources import is_source_type

def _split(net: caffe_pb2.NetParameter) -> tuple[list, list]:
    sources = [lp for lp in net.layer if is_source_type(lp.type)]
    compute = [lp for lp in net.layer if not is_source_type(lp.type)]
    return sources, compute


def _with_sources(net: caffe_pb2.NetParameter, sources: list) -> caffe_pb2.NetParameter:
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    out.ClearField("layer")
    out.layer.extend(sources)
    out.layer.extend(_split(net)[1])
    return out


def render_train_val(config: NetConfig) -> caffe_pb2.NetParameter:
    """The generator's train_val NetParameter for `config` (with the plain INIT=vanilla)."""
    net = build(replace(config, init="vanilla"))
    return parse("train_val.prototxt", render(net)["train_val.prototxt"], net.name)


def _channels(net: caffe_pb2.NetParameter) -> list[int]:
    """num_output of each trunk Convolution and InnerProduct layer, in order."""
    return [lp.convolution_param.num_output if lp.type == "Convolution"
            else lp.inner_product_param.num_output
            for lp in without_aux(net).layer if lp.type in ("Convolution", "InnerProduct")]


def _widths(net: caffe_pb2.NetParameter, config: NetConfig) -> list[float]:
    """WIDTH values that may have rendered `net`: each layer's channels over its channels
    at WIDTH=1, the widest layers (finest steps) first."""
    try:
        full = _channels(render_train_val(replace(config, width=1.0)))
    except ConfigError:
        return []
    mine = _channels(net)
    if len(mine) != len(full):
        return []
    pairs = sorted(zip(full, mine), reverse=True)
    return list(dict.fromkeys(c / b for b, c in pairs))


def generated_config(net: caffe_pb2.NetParameter) -> NetConfig | None:
    """The generator settings whose plain CNN has `net`'s compute layers, or None."""
    name = parse_model_name(net.name)
    if name is None or name.dataset not in DATASETS:
        return None
    config = NetConfig(dataset=name.dataset, variant="cnn", depth=name.depth)
    mine = _split(plain_init(without_aux(net)))[1]
    for width in _widths(net, config):
        try:
            rendered = render_train_val(replace(config, width=width))
        except ConfigError:
            continue
        if _split(plain_init(rendered))[1] == mine:
            return replace(config, width=width)
    return None


class ProbeTarget:
    """Makes the NetParameter of each round: the plain net, or the generator's CNDS net
    with branches after the given conv layers (only when `config` is known)."""

    def __init__(self, net: caffe_pb2.NetParameter, config: NetConfig | None = None):
        self.net = net
        self.config = generated_config(net) if config is None else replace(
            config, variant="cnn", branches=None)
        self.sources = _split(net)[0]

    @property
    def can_branch(self) -> bool:
        return self.config is not None

    @property
    def depth(self) -> int:
        """Number of trunk conv layers (the last one cannot be tapped)."""
        return sum(lp.type == "Convolution" for lp in without_aux(self.net).layer)

    def net_with(self, taps: tuple[int, ...]) -> caffe_pb2.NetParameter:
        """The net to probe with branches after conv layers `taps` (none: the plain CNN)."""
        if not taps:
            return without_aux(self.net)
        if self.config is None:
            raise ProbeError(f"net '{self.net.name}' was not rendered by the generator, so "
                             "branches cannot be added to it; probe the plain net only")
        config = replace(self.config, variant="cnds", branches=tuple(sorted(taps)))
        return _with_sources(render_train_val(config), self.sources)
