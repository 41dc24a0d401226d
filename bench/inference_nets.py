"""The deploy nets the inference benchmark runs, with seeded He-scaled random weights.

`NETS` names each net's prototxt; `build(name, batch, folder)` returns the Net at that batch
size and writes the prototxt and caffemodel OpenCV reads into `folder`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from runner import Net
from runner.fillers import fill_
from runner.proto import caffe_pb2, read_net, to_text

ROOT = Path(__file__).resolve().parents[1]
NETS = {
    "ImageNet CNDS-8": ROOT / "models/imagenet-cnds8/deploy.prototxt",
    "GoogLeNet": ROOT / "bench/nets/googlenet.prototxt",
    "ResNet-50": ROOT / "bench/nets/resnet50.prototxt",
    "SqueezeNet 1.1": ROOT / "bench/nets/squeezenet.prototxt",
}


MSRA = caffe_pb2.FillerParameter(type="msra")                    # N(0, 2 / fan_in): He
BIAS = caffe_pb2.FillerParameter(type="uniform", min=-0.1, max=0.1)
MULTIPLIER = caffe_pb2.FillerParameter(type="uniform", min=0.5, max=1.5)


@torch.no_grad()
def he_random_(net: Net, seed: int) -> None:
    """Caffe's msra filler for weights, U(-0.1, 0.1) biases, U(0.5, 1.5) Scale multipliers
    and BatchNorm variances, BatchNorm means as biases, s = 1; seeded."""
    gen = torch.Generator().manual_seed(seed)
    for layer in net.layers.values():
        for i, blob in enumerate(layer.blobs):
            if layer.type == "BatchNorm":
                filler = [BIAS, MULTIPLIER, caffe_pb2.FillerParameter(type="constant", value=1)][i]
            elif blob.dim() >= 2:
                filler = MSRA
            else:
                filler = MULTIPLIER if layer.type == "Scale" and i == 0 else BIAS
            fill_(blob, filler, gen)


def build(name: str, batch: int, folder: Path, seed: int = 0) -> tuple[Net, Path, Path]:
    """(net, prototxt, caffemodel): the named deploy net with input batch `batch`."""
    param = read_net(NETS[name])
    param.layer[0].input_param.shape[0].dim[0] = batch
    net = Net(param, phase="TEST")
    he_random_(net, seed)
    stem = name.lower().replace(" ", "-")
    prototxt, weights = folder / f"{stem}.prototxt", folder / f"{stem}.caffemodel"
    prototxt.write_text(to_text(param))
    net.save_caffemodel(weights)
    return net, prototxt, weights
