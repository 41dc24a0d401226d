"""What the segmentation data layers (SegNet's DenseImageData, DeepLab's ImageSegData)
share: batches of listed images whose labels are images too, made in one stage (the float
tops), with the loss's classes checked on every label pixel."""
from __future__ import annotations

import copy

import numpy as np

from runner.data.datum import DataError
from runner.data.image_data import ImageListBatches


class LabelImageBatches(ImageListBatches):
    """ImageListBatches whose items carry a label image; subclasses read and transform them."""

    def staged(self, device_finish: bool) -> LabelImageBatches:
        maker = copy.copy(self)
        maker.device_finish = False
        return maker

    def layout(self):
        return {top: (shape, np.dtype(np.float32)) for top, shape in self.top_shapes().items()}

    def check_label_image(self, label: np.ndarray, where: str) -> None:
        """check_labels' limits on every pixel of a label image."""
        for classes, ignore_label, layer in self.label_limits:
            bad = (label < 0) | (label >= classes)
            if ignore_label is not None:
                bad &= label != ignore_label
            if bad.any():
                raise DataError(f"{where}: label value {label[bad][0]:g} is outside "
                                f"[0, {classes}), the classes of layer '{layer}'")

    size: tuple[int, int] | None = None   # the first item's height x width, once read

    def check_size(self, image: np.ndarray, where: str) -> None:
        """Uncropped items batch only at the first item's height x width."""
        size = self.size or image.shape[:2]
        if image.shape[:2] != size:
            raise DataError(f"{where}: the image is {image.shape[0]} x {image.shape[1]} but the "
                            f"first is {size[0]} x {size[1]}; resize or crop to batch them")
