"""Export a Caffe deploy net and its weights to ONNX (evaluation mode, Caffe's TEST phase).

Usage: python -m runner.tools.export_onnx deploy.prototxt weights.caffemodel out.onnx
       [--output-blob BLOB ...]
The batch axis is symbolic ("batch") unless a layer reshapes across it. Only the layers
behind the outputs are exported (e.g. an SSD net up to the blobs its DetectionOutput reads).
"""
from __future__ import annotations

import argparse
import sys

from runner import Net, console


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=console.prog(f"python -m {__spec__.name}"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="deploy prototxt")
    parser.add_argument("weights", help="trained .caffemodel (or Caffe's HDF5 weights, .caffemodel.h5)")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument("--output-blob", action="append", dest="blobs", metavar="BLOB",
                        help="blob to expose as a graph output (repeatable; default: the net's outputs)")
    args = parser.parse_args(argv)
    try:
        net = Net(args.model, phase="TEST", weights=args.weights)
        model = net.export_onnx(args.output, args.blobs)
    except (ValueError, OSError) as err:  # OnnxExportError, ProtoError, NetBuildError: ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    outs = ", ".join(o.name for o in model.graph.output)
    print(f"wrote {args.output}: {len(model.graph.node)} ONNX nodes, opset "
          f"{model.opset_import[0].version}, outputs {outs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
