"""The net the probe trains: a NetParameter turned into the paper's plain CNN.

Three edits, each on a copy: auxiliary branches removed (every layer named `*_ds<j>`),
the plain initialisation forced on every Convolution, Deconvolution and InnerProduct
layer (weights gaussian std 0.01, biases constant 0), and the TRAIN data layers given
another batch size or replaced by an Input layer fed with one seeded synthetic batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

import runner.net  # noqa: F401  (registers the data-layer sources)
from runner.deep_supervision import is_aux
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
