"""A dataset from the user's own LMDBs: `make net DATA=<folder>` with <folder>/train_lmdb and
<folder>/val_lmdb (as convert_imageset writes them). What the nets need is read from the
data; the rules that turn it into a net and a solver are in docs/generator.md ("Your own
data")."""
from __future__ import annotations

import math
import re
from pathlib import Path

from generator.architectures import ConfigError
from generator.datasets import DATASETS, Dataset
from runner.atomic import atomic_write_bytes
from runner.data.datum import DataError, datum_to_array, parse_datum
from runner.data.imageset import read_class_names
from runner.data.lmdb_store import LmdbReader
from runner.data.mean import compute_image_mean

SMALL_SIDE = 64           # images up to this side get the 28x28 layout (conv1 3x3/1, no crop)
CROP_RATIO = 227 / 256    # larger images are cropped as ImageNet's 227 of 256
MIN_EPOCHS, MAX_EPOCHS, EPOCH_IMAGES = 5, 50, 300_000


def _reader(path: Path) -> LmdbReader:
    if not path.is_dir():
        raise ConfigError(f"DATA: {path} is missing (expected train_lmdb and val_lmdb, e.g. "
                          f"from python -m runner.tools.convert_imageset)")
    try:
        return LmdbReader(path)
    except DataError as exc:
        raise ConfigError(f"DATA: {exc}") from None


def _labels_present(readers) -> set[int]:
    labels = set()
    for reader in readers:
        for key, value in reader:
            labels.add(parse_datum(value, f"{reader.path}: {key}").label)
    return labels


def _name(folder: Path) -> str:
    """The dataset's name in model folder names: the folder's, lower-case, [a-z0-9-]."""
    name = re.sub(r"[^a-z0-9]+", "-", folder.resolve().name.lower()).strip("-") or "data"
    if name in DATASETS and DATASETS[name].train_source != str(folder / "train_lmdb"):
        raise ConfigError(f"DATA={folder}: its name '{name}' is taken by a built-in dataset; "
                          f"rename the folder")
    return name


def epochs_for(train_images: int) -> int:
    """Passes over the training set: 300,000 images' worth, at least 5 and at most 50."""
    return min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(EPOCH_IMAGES / train_images)))


def folder_dataset(folder: str) -> Dataset:
    """The Dataset of `folder`: image size and channels of the first training Datum,
    classes from labels.txt (else the largest label present + 1), the mean image
    (computed into mean.binaryproto when missing), set sizes from the LMDBs."""
    root = Path(folder)
    train_path, val_path = root / "train_lmdb", root / "val_lmdb"
    with _reader(train_path) as train, _reader(val_path) as val:
        key, value = train.record(0)
        first = datum_to_array(parse_datum(value, f"{train_path}: {key}"), f"{train_path}: {key}")
        labels_file = root / "labels.txt"
        if labels_file.is_file():
            classes = len(read_class_names(labels_file))
        else:
            present = _labels_present([train, val])
            if min(present) < 0:
                raise ConfigError(f"DATA={folder}: negative labels {sorted(present)[:3]}")
            classes = max(present) + 1
        n_train, n_val = len(train), len(val)
    if classes < 2:
        raise ConfigError(f"DATA={folder}: {classes} class; a classifier needs at least 2")
    mean = root / "mean.binaryproto"
    if not mean.is_file():
        atomic_write_bytes(mean, compute_image_mean(train_path).SerializeToString())
    channels, height, width = first.shape
    side = min(height, width)
    small = side <= SMALL_SIDE
    crop = side if small else int(side * CROP_RATIO)
    return Dataset(
        name=_name(root), num_classes=classes, channels=channels, crop=crop,
        train_source=str(train_path), test_source=str(val_path), mean_file=str(mean),
        train_batch=min(64 if small else 32, n_train), test_batch=min(100 if small else 50, n_val),
        train_images=n_train, test_images=n_val, mirror=not small,
        scale=0.00390625 if small else None, small=small, default_width=0.25 if small else 1.0,
        default_init="msra", solver_mode="CPU", crop_images=not small or height != width,
        epochs=epochs_for(n_train))
