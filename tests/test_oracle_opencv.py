"""OpenCV's Caffe importer as an independent oracle: random weights exported with our
.caffemodel writer, the same random input, and every blob compared layer by layer.

Covers sample nets in the style of CaffeNet, GoogLeNet, VGG and ResNet, and every
generated deploy net under models/ (ImageNet-size ones at the smallest input their
shapes allow, to keep the suite fast).
"""
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from runner import Net
from runner.graph import infer_net_shapes
from runner.proto import read_net, to_text
from runner.shapes import ShapeError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_NETS = sorted((ROOT / "tests" / "data" / "nets").glob("*_like.prototxt")) + [
    ROOT / "tests" / "data" / "nets" / "googlenet_inception.prototxt",
    ROOT / "tests" / "data" / "nets" / "resnet_block.prototxt"]
MODEL_NETS = sorted(ROOT.glob("models/*/deploy.prototxt"))
REDUCED_SIDES = range(32, 228, 8)  # candidate input sides for ImageNet-size deploy nets


@torch.no_grad()
def randomize(net: Net, gen: torch.Generator) -> None:
    """Gaussian weights scaled by fan-in, non-trivial biases and scales, BatchNorm
    statistics with a scale factor s != 1 (mean_acc/s, var_acc/s are what is used)."""
    for layer in net.layers.values():
        blobs = list(layer.blobs)
        if layer.type == "BatchNorm":
            s = 2.5
            channels = blobs[0].numel()
            blobs[0].copy_(torch.randn(channels, generator=gen) * 0.3 * s)
            blobs[1].copy_((torch.rand(channels, generator=gen) + 0.5) * s)
            blobs[2].fill_(s)
            continue
        for i, blob in enumerate(blobs):
            if blob.dim() >= 2:
                fan_in = blob.numel() // blob.shape[0]
                blob.copy_(torch.randn(blob.shape, generator=gen) * math.sqrt(2.0 / fan_in))
            elif layer.type == "Scale" and i == 0:
                blob.copy_(torch.rand(blob.shape, generator=gen) + 0.5)
            else:
                blob.copy_(torch.rand(blob.shape, generator=gen) - 0.5)


def final_writers(net: Net) -> dict[str, str]:
    """Layer name -> the blob whose final value it writes (later in-place layers excluded)."""
    writer = {}
    for lp in net.net_param.layer:
        if lp.type != "Input":
            for top in lp.top:
                writer[top] = lp.name
    return {layer: blob for blob, layer in writer.items()}


def compare_with_opencv(net: Net, prototxt: Path, tmp_path: Path, seed: int = 0) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    randomize(net, gen)
    weights = tmp_path / "random.caffemodel"
    net.save_caffemodel(weights)
    (shape,) = [net.blob_shapes[name] for name in net.input_names]
    x = torch.randn(shape, generator=gen)
    ours = net({net.input_names[0]: x})

    oracle = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    oracle.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    oracle.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    oracle.enableFusion(False)
    oracle.setInput(x.numpy(), net.input_names[0])
    layers = final_writers(net)
    theirs = dict(zip(layers, oracle.forward(list(layers))))
    errors = {}
    for layer, blob in layers.items():
        expected = theirs[layer].reshape(net.blob_shapes[blob])
        got = ours[blob].detach().numpy()
        scale = float(np.abs(expected).max())
        errors[blob] = float(np.abs(got - expected).max()) / max(scale, 1e-30)
        assert np.abs(got - expected).max() <= 1e-4 * scale, (
            f"{prototxt.name}: blob '{blob}' differs from OpenCV by {np.abs(got - expected).max():.3g} "
            f"(max |cv2| {scale:.3g})")
    assert net.output_names[0] in ours and net.output_names[0] in layers.values()
    return errors


@pytest.mark.parametrize("prototxt", SAMPLE_NETS, ids=lambda p: p.stem)
def test_sample_nets_match_opencv(prototxt, tmp_path):
    net = Net(prototxt, phase="TEST")
    compare_with_opencv(net, prototxt, tmp_path)


def fits(param) -> bool:
    """Shapes infer for every layer and every pooling window fits inside its input.
    Caffe's ceil rounding also accepts a window larger than the input (one output);
    OpenCV rejects that, so the oracle avoids it."""
    def pooling_fits(lp, bottoms):
        p = lp.pooling_param
        if lp.type == "Pooling" and not p.global_pooling:
            if min(bottoms[0][2:]) < max(p.kernel_size, p.kernel_h, p.kernel_w):
                raise ShapeError(f"layer '{lp.name}': window larger than its input")
        return None   # Caffe's rule gives the shapes

    try:
        shapes = infer_net_shapes(param, pooling_fits)
    except ShapeError:
        return False
    return all(d > 0 for _, layer in shapes.layers for top in layer.tops for d in top)


def smallest_input(prototxt: Path, tmp_path: Path) -> Path:
    """The deploy net itself when its input is small; else the same net with the smallest
    square input side that fits, written beside the weights for OpenCV."""
    param = read_net(prototxt)
    dims = param.layer[0].input_param.shape[0].dim
    if dims[-1] <= 64:
        return prototxt
    for side in REDUCED_SIDES:
        dims[-2] = dims[-1] = side
        if fits(param):
            reduced = tmp_path / "deploy_reduced.prototxt"
            reduced.write_text(to_text(param))
            return reduced
    raise AssertionError(f"{prototxt}: no input side in {REDUCED_SIDES} fits")


@pytest.mark.parametrize("prototxt", MODEL_NETS, ids=lambda p: p.parent.name)
def test_generated_deploy_nets_match_opencv(prototxt, tmp_path):
    definition = smallest_input(prototxt, tmp_path)
    compare_with_opencv(Net(definition, phase="TEST"), definition, tmp_path)


def test_every_generated_model_is_covered():
    """The glob above is not empty: the generated models are part of the oracle run."""
    assert len(MODEL_NETS) >= 1
