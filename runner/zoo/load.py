"""Load a Model Zoo folder (ours or any BVLC-style one) or a deploy.prototxt + caffemodel.

Returns the converted net and what a classifier needs to feed it: input blob and shape,
the size images are resized to, the per-channel mean, the input scale and the labels.
Whatever the folder does not say falls back to a plain default, recorded in `notes`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runner.proto import (ProtoError, blob_to_array, filter_net, read_blobproto, read_file_bytes,
                          read_net)
from runner.zoo.frontmatter import ZooError, inside_folder, read_readme
from runner.zoo.verify import DEPLOY, caffemodel_path, check_sha1

MEAN_NAMES = ("mean.binaryproto",)
LABEL_NAMES = ("labels.txt", "synset_words.txt")
LABELS_LIMIT = 64 << 20   # bytes of a labels file read at most


@dataclass
class ZooModel:
    """How to feed a loaded model and read its output."""
    name: str
    deploy: Path
    weights: Path
    input_blob: str
    input_shape: tuple[int, ...]
    output_blob: str
    image_dims: tuple[int, int]          # images are resized to this, then cropped
    mean: np.ndarray | None              # one value per channel, or None
    input_scale: float | None            # applied after mean subtraction
    labels: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def crop_dims(self) -> tuple[int, int]:
        return tuple(self.input_shape[2:4])

    @property
    def channels(self) -> int:
        return self.input_shape[1]


def load(path: str | os.PathLike, weights: str | os.PathLike | None = None, *,
         mean_file: str | os.PathLike | None = None, mean_value: list[float] | None = None,
         labels_file: str | os.PathLike | None = None,
         image_dims: tuple[int, int] | None = None, verify_sha1: bool = True):
    """(Net, ZooModel) for a zoo folder or a deploy.prototxt (then `weights` is needed).

    A folder's own caffemodel is used only if its sha1 is readme.md's (unless
    `verify_sha1` is False); files the folder names must lie inside it."""
    from runner.net import Net

    path = Path(path)
    if path.is_dir():
        front, _ = read_readme(path)
        if not front.get("caffemodel"):
            raise ZooError(f"{path / 'readme.md'}: front matter lacks 'caffemodel'")
        name = front.get("name") or path.name
        if weights:
            weights = Path(weights)
        else:
            weights = caffemodel_path(path, front)
            if verify_sha1:
                check_sha1(path, front, weights)
        deploy = inside_folder(path, DEPLOY)
    elif path.is_file():
        if weights is None:
            raise ZooError(f"{path}: a deploy prototxt needs its weights (--weights)")
        name, deploy, weights = path.parent.name, path, Path(weights)
    else:
        raise ZooError(f"{path}: no such zoo folder or deploy prototxt")
    for needed in (deploy, weights):
        if not needed.is_file():
            raise ZooError(f"{needed}: no such file")
    net = Net(str(deploy), phase="TEST", weights=str(weights))
    if len(net.input_names) != 1 or len(net.blob_shapes[net.input_names[0]]) != 4:
        raise ZooError(f"{deploy}: expected one 4-D image input, got "
                       f"{[(n, net.blob_shapes[n]) for n in net.input_names]}")
    input_blob, output = net.input_names[0], net.output_names[0]
    input_shape = tuple(net.blob_shapes[input_blob])
    classes = int(np.prod(net.blob_shapes[output][1:]))
    transform = _train_val_transform(deploy.parent)
    notes: list[str] = []
    info = ZooModel(name, deploy, weights, input_blob, input_shape, output,
                    input_shape[2:4], None,
                    transform.scale if transform and transform.HasField("scale") else None,
                    _labels(labels_file, deploy.parent, classes, notes), notes)
    if mean_file is None and mean_value is None and transform and transform.mean_value:
        mean_value = list(transform.mean_value)
    _set_mean(info, mean_file, mean_value, deploy.parent)
    if image_dims is not None:
        info.image_dims = tuple(image_dims)
    return net, info


def _set_mean(info: ZooModel, mean_file, mean_value, folder: Path) -> None:
    """Per-channel mean (Caffe classifier's mean.mean(1).mean(1)) and the resize size."""
    if mean_file is not None and mean_value is not None:
        raise ZooError("give a mean file or mean values, not both")
    if mean_value is not None:
        values = np.asarray(mean_value, dtype=np.float32)
        info.mean = np.full(info.channels, values[0], np.float32) if values.size == 1 else values
    else:
        if mean_file is None:
            found = [folder / n for n in MEAN_NAMES if (folder / n).is_file()]
            found = found or sorted(folder.glob("*.binaryproto"))
            mean_file = inside_folder(folder, found[0].name) if len(found) == 1 else None
        if mean_file is None:
            info.notes.append(f"no mean file in {folder}: no mean is subtracted "
                              "(pass --mean or --mean-value)")
            return
        try:
            mean = blob_to_array(read_blobproto(mean_file)).astype(np.float32)
        except (OSError, ProtoError) as exc:
            raise ZooError(f"{mean_file}: cannot read mean: {exc}") from None
        if not np.isfinite(mean).all():
            raise ZooError(f"{mean_file}: the mean holds NaN or inf values")
        mean = mean.reshape(mean.shape[-3:]) if mean.ndim == 4 else mean
        if mean.ndim != 3:
            raise ZooError(f"{mean_file}: mean blob has shape {mean.shape}, "
                           "expected (1,) C x H x W")
        info.mean = mean.mean(axis=(1, 2))
        info.image_dims = tuple(mean.shape[1:])
    if info.mean.shape != (info.channels,):
        raise ZooError(f"mean has {info.mean.size} channels, the net's input "
                       f"'{info.input_blob}' has {info.channels}")


def _train_val_transform(folder: Path):
    """transform_param of the TEST-phase data layer of the folder's train_val, if any."""
    train_val = folder / "train_val.prototxt"
    if not train_val.is_file():
        return None
    inside_folder(folder, train_val.name)
    try:
        net = read_net(train_val)
    except ProtoError as exc:
        raise ZooError(str(exc)) from None
    for lp in filter_net(net, "TEST").layer:
        if lp.HasField("transform_param"):
            return lp.transform_param
    return None


def _labels(labels_file, folder: Path, classes: int, notes: list[str]) -> list[str]:
    """Labels, one per line in class order; `class <i>` when the folder has none."""
    if labels_file is None:
        found = [folder / n for n in LABEL_NAMES if (folder / n).is_file()]
        labels_file = inside_folder(folder, found[0].name) if found else None
    if labels_file is None:
        notes.append(f"no labels file in {folder}: classes are shown as 'class <i>' "
                     "(pass --labels)")
        return [f"class {i}" for i in range(classes)]
    try:
        lines = read_file_bytes(labels_file, LABELS_LIMIT).decode("utf-8").splitlines()
    except ProtoError as exc:
        raise ZooError(f"cannot read labels: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ZooError(f"{labels_file}: cannot read labels: not UTF-8 text (byte {exc.start})") from None
    labels = [line.strip() for line in lines if line.strip()]
    if len(labels) != classes:
        raise ZooError(f"{labels_file}: {len(labels)} labels, but the net outputs "
                       f"{classes} classes")
    return labels
