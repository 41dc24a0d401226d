"""The deploy nets the inference benchmark runs, with seeded He-scaled random weights.

`NETS` names each net's prototxt; `build(name, batch, folder)` returns the Net at that batch
size and writes the prototxt and caffemodel OpenCV reads into `folder`.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from runner import Net
from runner.proto import read_net, to_text

ROOT = Path(__file__).resolve().parents[1]
NETS = {
    "ImageNet CNDS-8": ROOT / "models/imagenet-cnds8/deploy.prototxt",
    "GoogLeNet": ROOT / "bench/nets/googlenet.prototxt",
    "ResNet-50": ROOT / "bench/nets/resnet50.prototxt",
    "SqueezeNet 1.1": ROOT / "bench/nets/squeezenet.prototxt",
}


@torch.no_grad()
def he_random_(net: Net, seed: int) -> None:
    """Weights ~ N(0, 2 / fan_in) (He), biases ~ U(-0.1, 0.1); BatchNorm statistics of a
    unit-scale activation (s = 1); Scale multipliers ~ U(0.5, 1.5)."""
    gen = torch.Generator().manual_seed(seed)
    for layer in net.layers.values():
        blobs = list(layer.blobs)
        if layer.type == "BatchNorm":
            channels = blobs[0].numel()
            blobs[0].copy_(torch.randn(channels, generator=gen) * 0.1)
            blobs[1].copy_(torch.rand(channels, generator=gen) + 0.5)
            blobs[2].fill_(1.0)
            continue
        for i, blob in enumerate(blobs):
            if blob.dim() >= 2:
                fan_in = blob.numel() // blob.shape[0]
                blob.copy_(torch.randn(blob.shape, generator=gen) * math.sqrt(2.0 / fan_in))
            elif layer.type == "Scale" and i == 0:
                blob.copy_(torch.rand(blob.shape, generator=gen) + 0.5)
            else:
                blob.copy_((torch.rand(blob.shape, generator=gen) - 0.5) * 0.2)


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
