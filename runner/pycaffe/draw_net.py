"""Draw a net prototxt as a picture, as Caffe's python/draw_net.py does:
`caffe-ds-draw-net NET.prototxt OUT.png [--rankdir LR] [--phase TRAIN|TEST|ALL]
[--display_lrm]` (or `python -m caffe.draw_net ...`). The format is the output's
extension (png, svg, pdf, ...; .raw writes the dot source)."""
from __future__ import annotations

import argparse
import sys

from runner.proto import ProtoError, read_net

from . import draw
from .proto import caffe_pb2

_PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST, "ALL": None}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input_net_proto_file", help="Input network prototxt file")
    p.add_argument("output_image_file", help="Output image file")
    p.add_argument("--rankdir", default="LR",
                   help="One of TB (top-bottom, i.e., vertical), RL (right-left, i.e., "
                        "horizontal), or another valid dot option")
    p.add_argument("--phase", default="ALL", choices=sorted(_PHASES),
                   help="Which network phase to draw: TRAIN, TEST, or ALL (every layer)")
    p.add_argument("--display_lrm", action="store_true",
                   help="Show the learning rate multipliers, when non-zero, of the learning "
                        "layers (Convolution, Deconvolution, InnerProduct)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        net = read_net(args.input_net_proto_file)   # V0/V1 nets are upgraded first
        print(f"Drawing net to {args.output_image_file}")
        draw.draw_net_to_file(net, args.output_image_file, args.rankdir,
                              _PHASES[args.phase], args.display_lrm)
    except (ProtoError, draw.GraphvizError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
