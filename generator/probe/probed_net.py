"""The net as probed, in one place: the given train_val NetParameter, the generator config
that rendered it, and each round's TRAIN net.

A round's net is the plain CNN (auxiliary branches removed) or, for a generated net, the
generator's CNDS net with branches after chosen conv layers; either way with the plain
initialisation forced on every Convolution, Deconvolution and InnerProduct layer (weights
gaussian std 0.01, biases constant 0), the given data layers kept (batch size changed if
asked) or replaced by an Input layer fed with seeded synthetic batches.

The config travels with the net: callers that rendered it (`make net BRANCHES=auto`) pass
it; for a prototxt alone, a name `<dataset>-<cnn|cnds><depth>` and trunk channels that the
generator's architecture gives at some WIDTH identify it, confirmed by one render.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import torch

import runner.net  # noqa: F401  (registers the data-layer sources)
from generator.architectures import ConfigError, NetConfig, build
from generator.datasets import DATASETS
from generator.render import parse, render
from runner.deep_supervision import is_aux, parse_model_name, without_aux
from runner.proto import caffe_pb2, filter_net
from runner.sources import is_source_type

PLAIN_STD = 0.01
FILLED_TYPES = {"Convolution": "convolution_param", "Deconvolution": "convolution_param",
                "InnerProduct": "inner_product_param"}
BATCHED_SOURCES = {"Data": "data_param", "ImageData": "image_data_param"}


class ProbeError(ValueError):
    """A net or option the probe cannot work with (the message says which and why)."""


def plain_init(net: caffe_pb2.NetParameter, std: float = PLAIN_STD) -> caffe_pb2.NetParameter:
    """A copy of `net` whose conv/fc weights are gaussian(0, std) and biases constant 0."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    for lp in out.layer:
        field = FILLED_TYPES.get(lp.type)
        if field is None:
            continue
        param = getattr(lp, field)
        param.weight_filler.Clear()
        param.weight_filler.type = "gaussian"
        param.weight_filler.std = std
        param.bias_filler.Clear()
        param.bias_filler.type = "constant"
        param.bias_filler.value = 0.0
    return out


def conv_layers(net: caffe_pb2.NetParameter) -> list[str]:
    """Trunk convolutions in prototxt order: conv k (1-based) is element k-1."""
    return [lp.name for lp in net.layer if lp.type == "Convolution" and not is_aux(lp.name)]


def train_net(net: caffe_pb2.NetParameter, batch: int | None) -> caffe_pb2.NetParameter:
    """The TRAIN-phase layers of `net`, with data layers set to `batch` images if given."""
    train = filter_net(net, "TRAIN")
    sources = [lp for lp in train.layer if is_source_type(lp.type)]
    if not sources:
        raise ProbeError(f"net '{net.name}': no data layer in the TRAIN phase")
    if batch is not None:
        for lp in sources:
            field = BATCHED_SOURCES.get(lp.type)
            if field is None:
                raise ProbeError(f"layer '{lp.name}' ({lp.type}): --batch only applies to "
                                 f"{' and '.join(BATCHED_SOURCES)} layers")
            getattr(lp, field).batch_size = batch
    return train


@dataclass(frozen=True)
class SyntheticInput:
    """Seeded random batches standing in for the data: uniform 8-bit pixels minus 127.5,
    times the data layer's transform scale, and labels uniform over the classes; a new
    batch every iteration, so the net cannot memorise one."""
    batch: int
    shape: tuple[int, int, int]   # channels, height, width of one image
    seed: int = 0

    def replace_sources(self, train: caffe_pb2.NetParameter) -> tuple[caffe_pb2.NetParameter, float]:
        """`train` with its single data layer (tops data, label) turned into an Input layer,
        and that layer's transform scale."""
        sources = [lp for lp in train.layer if is_source_type(lp.type)]
        if len(sources) != 1 or len(sources[0].top) != 2:
            raise ProbeError(f"net '{train.name}': synthetic input needs exactly one TRAIN data "
                             "layer with two tops (data, label)")
        lp = sources[0]
        scale = lp.transform_param.scale if lp.transform_param.HasField("scale") else 1.0
        data, label = lp.top
        lp.ClearField("transform_param")
        for field in ("data_param", "image_data_param", "dummy_data_param", "input_param",
                      "hdf5_data_param", "memory_data_param", "window_data_param"):
            lp.ClearField(field)
        lp.type = "Input"
        lp.input_param.shape.add().dim.extend([self.batch, *self.shape])
        lp.input_param.shape.add().dim.extend([self.batch])
        return train, scale

    def batches(self, data: str, label: str, scale: float,
                num_classes: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches {data: N x C x H x W, label: N} (labels as floats, as Caffe's), forever."""
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            pixels = torch.randint(0, 256, (self.batch, *self.shape), generator=gen).float()
            labels = torch.randint(0, num_classes, (self.batch,), generator=gen).float()
            yield {data: (pixels - 127.5) * scale, label: labels}


def data_layer_shape(train: caffe_pb2.NetParameter) -> tuple[int, int, int] | None:
    """(3, crop, crop) when the TRAIN data layer crops (the ImageNet convention), else None."""
    for lp in train.layer:
        if is_source_type(lp.type) and lp.transform_param.crop_size:
            crop = lp.transform_param.crop_size
            return (3, crop, crop)
    return None


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
    """Channels of the first bottom of the built net's main (non-auxiliary) SoftmaxWithLoss."""
    for lp in net.net_param.layer:
        if lp.type == "SoftmaxWithLoss" and not is_aux(lp.name):
            return net.blob_shapes[lp.bottom[0]][1]
    raise ProbeError(f"net '{net.name}': synthetic labels need a SoftmaxWithLoss layer")


# ---- the generator config of a net ---------------------------------------------------------

def render_train_val(config: NetConfig) -> caffe_pb2.NetParameter:
    """The generator's train_val NetParameter for `config` (with the plain INIT=vanilla)."""
    net = build(replace(config, init="vanilla"))
    return parse("train_val.prototxt", render(net)["train_val.prototxt"], net.name)


def _split(net: caffe_pb2.NetParameter) -> tuple[list, list]:
    """(data layers, compute layers) of `net`."""
    sources = [lp for lp in net.layer if is_source_type(lp.type)]
    compute = [lp for lp in net.layer if not is_source_type(lp.type)]
    return sources, compute


def _channels(net: caffe_pb2.NetParameter) -> list[int]:
    """num_output of each trunk Convolution and InnerProduct layer, in order."""
    return [lp.convolution_param.num_output if lp.type == "Convolution"
            else lp.inner_product_param.num_output
            for lp in without_aux(net).layer if lp.type in ("Convolution", "InnerProduct")]


def _generated_channels(config: NetConfig) -> list[int]:
    """The trunk channels the generator's architecture gives `config` (nothing rendered)."""
    return [b.num_output for b in build(config).blocks if b.kind in ("conv", "fc")]


def generated_config(net: caffe_pb2.NetParameter) -> NetConfig | None:
    """The generator settings whose plain CNN has `net`'s compute layers, or None: WIDTH is
    read off the trunk channels against the architecture's, then one render confirms."""
    name = parse_model_name(net.name)
    if name is None or name.dataset not in DATASETS:
        return None
    config = NetConfig(dataset=name.dataset, variant="cnn", depth=name.depth)
    try:
        full = _generated_channels(replace(config, width=1.0))
    except ConfigError:
        return None
    mine = _channels(net)
    if len(mine) != len(full):
        return None
    pairs = sorted(zip(full, mine), reverse=True)     # the widest layers (finest steps) first
    for width in dict.fromkeys(c / b for b, c in pairs):
        candidate = replace(config, width=width)
        try:
            if _generated_channels(candidate) != mine:
                continue
            rendered = render_train_val(candidate)
        except ConfigError:
            continue
        same = _split(plain_init(rendered))[1] == _split(plain_init(without_aux(net)))[1]
        return candidate if same else None
    return None


# ---- the net as probed ----------------------------------------------------------------------

@dataclass
class RoundNet:
    """One round's TRAIN net, its trunk conv layers, and its batches (None: its own data
    layers); `inputs(built)` takes the built Net (for the class count)."""
    train: caffe_pb2.NetParameter
    convs: list[str]
    inputs: Callable[[object], Iterator[dict]] | None


class ProbedNet:
    """A train_val net as the probe sees it: its plain CNN, its generator config (None: not
    generated, so only the plain net can be probed), and each round's TRAIN net."""

    def __init__(self, net: caffe_pb2.NetParameter, config: NetConfig | None = None):
        self.net = net
        self.config = generated_config(net) if config is None else replace(
            config, variant="cnn", branches=None)
        self.sources = _split(net)[0]
        self.plain = without_aux(net)

    @property
    def can_branch(self) -> bool:
        return self.config is not None

    @property
    def depth(self) -> int:
        """Number of trunk conv layers (the last one cannot be tapped)."""
        return len(conv_layers(self.plain))

    def net_with(self, taps: tuple[int, ...]) -> caffe_pb2.NetParameter:
        """The net with branches after conv layers `taps` (none: the plain CNN), before the
        plain initialisation; the given data layers are kept."""
        if not taps:
            return self.plain
        if self.config is None:
            raise ProbeError(f"net '{self.net.name}' was not rendered by the generator, so "
                             "branches cannot be added to it; probe the plain net only")
        config = replace(self.config, variant="cnds", branches=tuple(sorted(taps)))
        rendered = render_train_val(config)
        out = caffe_pb2.NetParameter()
        out.CopyFrom(rendered)
        out.ClearField("layer")
        out.layer.extend(self.sources)
        out.layer.extend(_split(rendered)[1])
        return out

    def unreadable_data(self) -> list[str]:
        """Why the plain net's own TRAIN data gives no images (empty: it does)."""
        return unreadable_data(train_net(self.plain, None))

    def image_shape(self) -> tuple[int, int, int] | None:
        """C, H, W of one image: the generator's dataset, else (3, crop, crop) from a
        cropping data layer, else None."""
        if self.config is not None:
            ds = DATASETS[self.config.dataset]
            return (ds.channels, ds.crop, ds.crop)
        return data_layer_shape(train_net(self.plain, None))

    def round_net(self, taps: tuple[int, ...], batch: int | None,
                  synthetic: SyntheticInput | None) -> RoundNet:
        """The TRAIN net of the round with branches after `taps`, plain-initialised, with
        `batch` images per data layer, or fed by `synthetic` when given."""
        net = plain_init(self.net_with(taps))
        convs = conv_layers(net)
        if synthetic is None:
            return RoundNet(train_net(net, batch), convs, None)
        train, scale = synthetic.replace_sources(train_net(net, None))
        data, label = [lp for lp in train.layer if lp.type == "Input"][0].top
        return RoundNet(train, convs,
                        lambda built: synthetic.batches(data, label, scale, num_classes(built)))
