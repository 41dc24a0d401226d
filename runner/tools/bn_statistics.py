"""SegNet's step between training and deployment (its Scripts/compute_bn_statistics.py):
fold each LEARN-mode BN layer's statistics over the training data into its scale and shift,
so that the net runs with `bn_mode: INFERENCE`.

    python -m runner.tools.bn_statistics TRAIN_PROTOTXT WEIGHTS OUT_WEIGHTS
        [--iterations N] [--inference-prototxt OUT_PROTOTXT]

The TRAIN prototxt runs in the TEST phase with every BN layer giving its batch mean and
variance as two more tops, for N batches (default: enough to cover the data layer's list
once). Per layer the batch means are averaged, and so are the batch variances, which are
then made unbiased by m / (m - 1), m being the values per channel in a batch (N x H x W);
then scale' = scale / sqrt(var + 1e-9) and shift' = shift - scale * mean / sqrt(var + 1e-9),
as SegNet's script computes them. OUT_WEIGHTS holds every blob, the BN ones folded; the
prototxt written with --inference-prototxt is the TRAIN one with `bn_mode: INFERENCE` on
those layers. Both are written atomically.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch
from google.protobuf import text_format
from tqdm import tqdm

from runner import console
from runner.atomic import atomic_write_text
from runner.data.datum import DataError
from runner.graph import NetBuildError
from runner.net import Net
from runner.proto import ProtoError, caffe_pb2, read_net
from runner.shapes import ShapeError
from runner.shapes_forks import is_tsn_bn
from runner.weights import WeightsError

VARIANCE_EPS = 1e-9   # SegNet's BN var_eps_


def learn_bn_layers(param: caffe_pb2.NetParameter) -> list[caffe_pb2.LayerParameter]:
    """SegNet's BN layers in LEARN mode, whose statistics come from the batch."""
    return [lp for lp in param.layer if lp.type == "BN" and not is_tsn_bn(lp)
            and lp.bn_param.bn_mode == caffe_pb2.BNParameter.LEARN]


def bn_statistics(train_prototxt: str, weights: str, iterations: int | None = None
                  ) -> tuple[Net, caffe_pb2.NetParameter, int, list[str]]:
    """The TRAIN net (TEST phase, `weights` loaded) with its LEARN BN layers folded, the
    prototxt in INFERENCE mode, the batches run and the folded layers' names."""
    param = read_net(train_prototxt)
    layers = learn_bn_layers(param)
    if not layers:
        raise NetBuildError(f"{train_prototxt}: no BN layer in LEARN mode (SegNet's BN) to fold")
    tops = {}
    for lp in layers:
        del lp.top[1:]
        tops[lp.name] = (f"{lp.name}-mean", f"{lp.name}-var")
        lp.top.extend(tops[lp.name])
    net = Net(param, phase="TEST", weights=weights, source_kwargs={"workers": 0})
    if not net.sources:
        raise NetBuildError(f"{train_prototxt}: no data layer to draw the statistics from")
    source = net.sources[0]
    if iterations is None:
        if not hasattr(source, "num_records"):
            raise NetBuildError(f"{train_prototxt}: its data layer does not say how many "
                                "records it lists; give --iterations")
        batch = next(iter(source.top_shapes.values()))[0]
        iterations = math.ceil(source.num_records / batch)
    sums = {name: [0.0, 0.0] for name in tops}
    with torch.no_grad():
        for _ in tqdm(range(iterations), desc="batches", unit="batch", disable=None):
            blobs = net(next(source))
            for name, (mean_top, var_top) in tops.items():
                sums[name][0] = sums[name][0] + blobs[mean_top].double()
                sums[name][1] = sums[name][1] + blobs[var_top].double()
    source.close()
    for lp in layers:
        bottom = net.blob_shapes[lp.bottom[0]]
        per_channel = bottom[0] * math.prod(bottom[2:])   # SegNet's m
        mean = sums[lp.name][0] / iterations
        var = sums[lp.name][1] / iterations * per_channel / max(per_channel - 1, 1)
        scale, shift = net.layers[lp.name].blobs
        root = torch.sqrt(var + VARIANCE_EPS)
        folded_scale = scale.double() / root
        folded_shift = shift.double() - scale.double() * mean / root
        with torch.no_grad():
            scale.copy_(folded_scale.to(scale))
            shift.copy_(folded_shift.to(shift))
        del lp.top[1:]
        lp.bn_param.bn_mode = caffe_pb2.BNParameter.INFERENCE
    return net, param, iterations, [lp.name for lp in layers]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=console.prog("python -m runner.tools.bn_statistics"),
        description="Fold SegNet BN layers' statistics over the training data into their "
                    "scale and shift, for bn_mode: INFERENCE.")
    parser.add_argument("prototxt", metavar="TRAIN_PROTOTXT", help="the training net")
    parser.add_argument("weights", metavar="WEIGHTS", help="its trained .caffemodel")
    parser.add_argument("out", metavar="OUT_WEIGHTS", help="the folded .caffemodel to write")
    parser.add_argument("--iterations", type=int, help="batches to average (default: one pass "
                        "over the data layer's list)")
    parser.add_argument("--inference-prototxt", metavar="OUT_PROTOTXT",
                        help="also write the net with bn_mode: INFERENCE here")
    args = parser.parse_args(argv)
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be at least 1")
    try:
        net, param, iterations, folded = bn_statistics(args.prototxt, args.weights, args.iterations)
        net.save_caffemodel(args.out)
        if args.inference_prototxt:
            atomic_write_text(args.inference_prototxt, text_format.MessageToString(param))
    except (NetBuildError, ShapeError, ProtoError, WeightsError, DataError, OSError) as exc:
        print(f"bn_statistics: {exc}", file=sys.stderr)
        return 2
    print(f"Folded the statistics of {iterations} batches into {len(folded)} BN layers: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
