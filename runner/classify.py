"""Classify images with a Model Zoo folder or a deploy.prototxt + caffemodel, as Caffe's
python/classify.py does: `python runner/classify.py ZOO_DIR_OR_DEPLOY IMAGE... [--top 5]`.

Preprocessing is caffe.Classifier's (see runner/zoo/classifier.py): resize to the mean's
size (or --images-dim, else the net input), centre crop or --oversample (10 crops
averaged), subtract the mean averaged per channel, apply the train_val's scale. The net
runs in its inference form (Net.for_inference) unless --plain is given.
"""
import argparse
import math
import sys

import torch

from runner import console
from runner.graph import LayerMemoryError
from runner.proto import ProtoError
from runner.zoo import ZooError, load
from runner.zoo.classifier import Classifier, read_image, top_k


def parse_args(argv):
    p = argparse.ArgumentParser(prog=console.prog("python runner/classify.py"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="Model Zoo folder, or a deploy.prototxt (with --weights)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (OpenCV reads them)")
    p.add_argument("--weights", help="caffemodel (default: the folder's, from readme.md)")
    mean = p.add_mutually_exclusive_group()
    mean.add_argument("--mean", help="mean .binaryproto (default: the folder's)")
    mean.add_argument("--mean-value", help="per-channel mean, e.g. 104,117,123 or 33.3")
    p.add_argument("--labels", help="labels file, one per line (default: the folder's)")
    p.add_argument("--images-dim", help="H,W to resize images to before cropping "
                   "(default: the mean's size, else the net input)")
    p.add_argument("--top", type=console.at_least(1), default=5, help="labels to print per image (5)")
    p.add_argument("--oversample", action="store_true",
                   help="average 10 crops (corners, centre and mirrors)")
    p.add_argument("--gpu", action="store_true", help="run on the CUDA device")
    p.add_argument("--plain", action="store_true",
                   help="run the plain Net, not its inference form (Net.for_inference: "
                        "BatchNorm/Scale folded, oneDNN-packed convolutions)")
    p.add_argument("--no-verify-sha1", dest="verify_sha1", action="store_false",
                   help="use a zoo folder's caffemodel even if its sha1 is not readme.md's")
    return p.parse_args(argv)


def numbers(text: str | None, kind=float) -> list | None:
    """'1,2,3' -> [1.0, 2.0, 3.0]; None stays None."""
    if text is None:
        return None
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        raise ZooError(f"'{text}': expected comma-separated numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise ZooError(f"'{text}': expected finite numbers")
    return values


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.gpu and not torch.cuda.is_available():
            raise ZooError("--gpu given but no CUDA device is available")
        dims = numbers(args.images_dim, int)
        if dims is not None and len(dims) != 2:
            raise ZooError(f"--images-dim '{args.images_dim}': expected H,W")
        net, info = load(args.model, args.weights, mean_file=args.mean,
                         mean_value=numbers(args.mean_value), labels_file=args.labels,
                         image_dims=dims, verify_sha1=args.verify_sha1)
        for note in info.notes:
            print(f"note: {note}", file=sys.stderr)
        images = [read_image(path, info.channels) for path in args.images]
        classifier = Classifier(net, info, "cuda" if args.gpu else "cpu", optimized=not args.plain)
        probabilities = classifier.predict(images, oversampled=args.oversample)
    except (ZooError, ProtoError, ValueError, LayerMemoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, probs in zip(args.images, probabilities):
        print(f"{path}:")
        for label, p in top_k(probs, info.labels, args.top):
            print(f"  {p:.6f}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
