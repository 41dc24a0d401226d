"""Converter overhead: forward+backward of a converted CNDS-8 train net against a
hand-written torchvision-style nn.Module of the same architecture.

Both run in one process, interleaved, after a warmup; each step is one forward of the
whole train net (main and auxiliary heads, both losses) and one backward. Prints the
median step time of each and the converted/hand-written ratio (target <= 1.05 on CPU).

    python bench/bench_converter.py [--iters 20] [--warmup 3] [--threads N] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runner import Net
from runner.precision import use_caffe_precision
from runner.proto import caffe_pb2, read_net

ROOT = Path(__file__).resolve().parents[1]

# (name, train_val, batch, channels, side, conv1 (out, kernel, stride, pad), pool1 kernel,
#  stage widths conv2..conv5, branch (AVE kernel, conv width, fc width), fc width, classes)
CASES = [
    ("fashion-mnist CNDS-8", "models/fashion-mnist-cnds8/train_val.prototxt", 64, 1, 28,
     (16, 3, 1, 1), 3, (32, 64, 128, 128), (3, 16, 256), 1024, 10),
    ("ImageNet CNDS-8", "models/imagenet-cnds8/train_val.prototxt", 2, 3, 227,
     (64, 7, 2, 1), 3, (128, 256, 512, 512), (5, 64, 1024), 4096, 1000),
]


def conv_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, pad: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, pad), nn.ReLU(inplace=True)]


def fc_head(cin: int, width: int, classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, width), nn.ReLU(inplace=True), nn.Dropout(0.5),
                         nn.Linear(width, width), nn.ReLU(inplace=True), nn.Dropout(0.5),
                         nn.Linear(width, classes))


class HandWrittenCNDS8(nn.Module):
    """CNDS-8 written directly in torch: conv1-pool1-conv2-pool2-conv3x2, an auxiliary
    head on conv3_2 (AVE pool, 1x1 conv, three FC), then pool3-conv4x2-pool4-conv5x2-pool5
    and three FC. Returns the main and auxiliary logits."""

    def __init__(self, channels, side, conv1, pool1, widths, branch, fc, classes):
        super().__init__()
        c1, k1, s1, p1 = conv1
        w2, w3, w4, w5 = widths
        self.stem = nn.Sequential(
            *conv_relu(channels, c1, k1, s1, p1), nn.MaxPool2d(pool1, 2, ceil_mode=True),
            *conv_relu(c1, w2), nn.MaxPool2d(2, 2, ceil_mode=True),
            *conv_relu(w2, w3), *conv_relu(w3, w3))
        ave, cb, fb = branch
        self.branch = nn.Sequential(nn.AvgPool2d(ave, 2, ceil_mode=True), nn.Conv2d(w3, cb, 1))
        self.top = nn.Sequential(
            nn.MaxPool2d(2, 2, ceil_mode=True), *conv_relu(w3, w4), *conv_relu(w4, w4),
            nn.MaxPool2d(2, 2, ceil_mode=True), *conv_relu(w4, w5), *conv_relu(w5, w5),
            nn.MaxPool2d(2, 2, ceil_mode=True))
        with torch.no_grad():
            x = self.stem(torch.zeros(1, channels, side, side))
            branch_in, top_in = self.branch(x).numel(), self.top(x).numel()
        self.branch_head = fc_head(branch_in, fb, classes)
        self.classifier = fc_head(top_in, fc, classes)

    def forward(self, x):
        x = self.stem(x)
        aux = self.branch_head(torch.flatten(self.branch(x), 1))
        return self.classifier(torch.flatten(self.top(x), 1)), aux


def converted_net(train_val: str, batch: int, channels: int, side: int) -> Net:
    """The TRAIN net with its Data layer replaced by an Input layer of the same tops."""
    param = read_net(ROOT / train_val)
    data = caffe_pb2.LayerParameter(name="data", type="Input", top=["data", "label"])
    data.input_param.shape.add(dim=[batch, channels, side, side])
    data.input_param.shape.add(dim=[batch])
    layers = [data] + [lp for lp in param.layer if lp.type != "Data"]
    param.ClearField("layer")
    param.layer.extend(layers)
    return Net(param, phase="TRAIN")


def copy_weights(net: Net, hand: nn.Module) -> None:
    """Give the hand-written module the converted net's blobs, layer by layer in order."""
    ours = [b for layer in net.layers.values() if layer.type in ("Convolution", "InnerProduct")
            for b in layer.blobs]
    by_creation = {"stem": [], "branch": [], "branch_head": [], "top": [], "classifier": []}
    for name, p in hand.named_parameters():
        by_creation[name.split(".")[0]].append(p)
    # prototxt order: stem convs, branch conv, branch FCs, top convs, classifier FCs
    theirs = [p for part in ("stem", "branch", "branch_head", "top", "classifier") for p in by_creation[part]]
    with torch.no_grad():
        for a, b in zip(ours, theirs, strict=True):
            b.copy_(a.reshape(b.shape))


def check_same_function(net: Net, hand: HandWrittenCNDS8, x, label) -> float:
    net.eval(), hand.eval()
    with torch.no_grad():
        blobs = net({"data": x, "label": label})
        main, aux = hand(x)
    net.train(), hand.train()
    return max((blobs["fc8"] - main).abs().max().item(), (blobs["fc3_ds1"] - aux).abs().max().item())


def step_converted(net: Net, inputs) -> None:
    net.zero_grad(set_to_none=True)
    net.objective(net(inputs)).backward()


def step_hand(hand: HandWrittenCNDS8, x, label, aux_weight: float) -> None:
    hand.zero_grad(set_to_none=True)
    main, aux = hand(x)
    (F.cross_entropy(main, label) + aux_weight * F.cross_entropy(aux, label)).backward()


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(case, iters: int, warmup: int, device: str) -> float:
    name, train_val, batch, channels, side, *arch = case
    classes = arch[-1]
    torch.manual_seed(0)
    if device == "cuda":
        use_caffe_precision()   # both sides in fp32, as Caffe computes
    net = converted_net(train_val, batch, channels, side).to(device)
    hand = HandWrittenCNDS8(channels, side, *arch).to(device).train()
    copy_weights(net, hand)
    x = torch.randn(batch, channels, side, side, device=device)
    label = torch.randint(0, classes, (batch,), device=device)
    inputs = {"data": x, "label": label.float()}
    gap = check_same_function(net, hand, x, inputs["label"])
    aux_weight = net.loss_weights["loss_ds1"]
    converted, handwritten = [], []
    for i in range(warmup + iters):
        pair = [("c", lambda: step_converted(net, inputs)), ("h", lambda: step_hand(hand, x, label, aux_weight))]
        if i % 2:
            pair.reverse()
        for kind, fn in pair:
            t = timed(fn, device)
            if i >= warmup:
                (converted if kind == "c" else handwritten).append(t)
    c, h = statistics.median(converted), statistics.median(handwritten)
    print(f"{name:22s} batch {batch:3d}  converted {c * 1e3:8.2f} ms  hand-written {h * 1e3:8.2f} ms  "
          f"ratio {c / h:.3f}  (same logits within {gap:.1e})")
    return c / h


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"median of {args.iters} interleaved forward+backward steps after {args.warmup} warmup")
    for case in CASES:
        bench(case, args.iters, args.warmup, args.device)


if __name__ == "__main__":
    main()
