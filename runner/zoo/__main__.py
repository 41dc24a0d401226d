"""`python -m runner.zoo publish|verify|show ...`: the Model Zoo command line."""
from __future__ import annotations

import argparse
import sys

from runner import console
from runner.graph import LayerMemoryError
from runner.proto import ProtoError
from runner.zoo.frontmatter import ZooError, read_readme


def _publish(args) -> str:
    from runner.zoo.publish import publish
    folder = publish(args.model, args.weights, args.zoo, name=args.name,
                     license=args.license, url=args.url, gist_id=args.gist_id,
                     caffe_commit=args.caffe_commit, log=args.log, curve=args.curve,
                     force=args.force, score=not args.no_score, test_iterations=args.test_iterations)
    return f"published {folder}"


def _verify(args) -> str:
    from runner.zoo.verify import verify
    return verify(args.folder).summary()


def _show(args) -> str:
    from runner.zoo.load import load
    front, _ = read_readme(args.folder)
    _, info = load(args.folder)
    lines = [f"{k}: {v}" for k, v in front.items()]
    lines += [f"input: {info.input_blob} {'x'.join(map(str, info.input_shape))}",
              f"output: {info.output_blob} ({len(info.labels)} classes)",
              f"images resized to: {info.image_dims[0]}x{info.image_dims[1]}",
              f"mean per channel: {None if info.mean is None else info.mean.tolist()}",
              f"input scale: {info.input_scale}"]
    lines += [f"note: {n}" for n in info.notes]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    from runner.zoo.publish import DEFAULT_LICENSE
    p = argparse.ArgumentParser(prog=console.prog("python -m runner.zoo"), description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="write <ZOO>/<name>/ from a model folder and weights")
    pub.add_argument("model", help="model folder with train_val/deploy/solver.prototxt")
    pub.add_argument("weights", help="trained caffemodel (a train_val snapshot; .caffemodel "
                     "or .caffemodel.h5)")
    pub.add_argument("zoo", help="zoo directory; the model goes to <zoo>/<name>/")
    pub.add_argument("--name", help="model name (default: the model folder's name)")
    pub.add_argument("--license", default=DEFAULT_LICENSE,
                     help=f"license of the weights (default {DEFAULT_LICENSE})")
    pub.add_argument("--url", default="", help="caffemodel_url where the binary is hosted")
    pub.add_argument("--gist-id", default="", help="gist_id, if the model has a gist")
    pub.add_argument("--caffe-commit", help="code commit (default: this toolkit's git HEAD)")
    pub.add_argument("--log", help="training log (default: <prefix>.log beside a "
                     "<prefix>_iter_N.caffemodel snapshot)")
    pub.add_argument("--curve", help="training curve PNG (default: <prefix>_training.png "
                     "beside the snapshot)")
    pub.add_argument("--force", action="store_true", help="replace an existing folder")
    pub.add_argument("--test-iterations", type=int, help="batches to score the weights on the "
                     "TEST net (default: the solver's test_iter)")
    pub.add_argument("--no-score", action="store_true", help="do not score the weights; the "
                     "readme then says they were not measured")
    pub.set_defaults(run=_publish)
    ver = sub.add_parser("verify", help="check sha1, prototxt and blobs of a zoo folder")
    ver.add_argument("folder")
    ver.set_defaults(run=_verify)
    show = sub.add_parser("show", help="print front matter and how inputs are prepared")
    show.add_argument("folder")
    show.set_defaults(run=_show)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        print(args.run(args))
    except (ZooError, ProtoError, ValueError, OSError, LayerMemoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
