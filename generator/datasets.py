"""The datasets the nets are rendered for: classes, input geometry, LMDBs, mean, batches.

Paths are relative to the repository root, which is Caffe's working directory when
training (Caffe resolves `source` and `mean_file` against the working directory).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dataset:
    """Everything the data layers and the solver need to know about one dataset."""
    name: str
    num_classes: int
    channels: int
    crop: int            # side of the square network input (crop_size, or the image side)
    train_source: str
    test_source: str
    mean_file: str
    train_batch: int
    test_batch: int
    train_images: int
    test_images: int
    mirror: bool         # random horizontal flips in TRAIN
    scale: float | None  # transform_param.scale after mean subtraction, None for Caffe's 1
    small: bool          # 28x28-class input: nets are adapted (see architectures.py)
    default_width: float
    default_init: str    # INIT when none is given (see architectures.INITS)
    solver_mode: str
    crop_images: bool | None = None  # crop_size in the Data layers; None: unless small
    epochs: int | None = None        # a user's dataset: the solver trains this many epochs

    @property
    def crop_size(self) -> int | None:
        """transform_param.crop_size, or None when the images are used whole."""
        crop = (not self.small) if self.crop_images is None else self.crop_images
        return self.crop if crop else None

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.channels, self.crop, self.crop)


DATASETS: dict[str, Dataset] = {
    "imagenet": Dataset(
        name="imagenet", num_classes=1000, channels=3, crop=227,
        train_source="data/imagenet/ilsvrc12_train_lmdb",
        test_source="data/imagenet/ilsvrc12_val_lmdb",
        mean_file="data/imagenet/imagenet_mean.binaryproto",
        train_batch=128, test_batch=50, train_images=1_281_167, test_images=50_000,
        mirror=True, scale=None, small=False, default_width=1.0, default_init="released", solver_mode="GPU"),
    "places205": Dataset(
        name="places205", num_classes=205, channels=3, crop=227,
        train_source="data/places205/places205_train_lmdb",
        test_source="data/places205/places205_val_lmdb",
        mean_file="data/places205/places205_mean.binaryproto",
        train_batch=256, test_batch=100, train_images=2_448_873, test_images=20_500,
        mirror=True, scale=None, small=False, default_width=1.0, default_init="released", solver_mode="GPU"),
    "fashion-mnist": Dataset(
        name="fashion-mnist", num_classes=10, channels=1, crop=28,
        train_source="data/fashion-mnist/train_lmdb",
        test_source="data/fashion-mnist/test_lmdb",
        mean_file="data/fashion-mnist/mean.binaryproto",
        train_batch=64, test_batch=100, train_images=60_000, test_images=10_000,
        mirror=False, scale=0.00390625, small=True, default_width=0.25, default_init="msra",
        solver_mode="CPU"),
}


def register_dataset(dataset: Dataset) -> None:
    """Make a dataset built at run time (a user's own data) known by its name."""
    DATASETS[dataset.name] = dataset
