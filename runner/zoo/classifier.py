"""Caffe's python Classifier, with OpenCV images: resize, centre crop or 10-crop, mean, scale.

Mirrors python/caffe/classifier.py + caffe.io.Transformer: every image is resized
(bilinear) to `image_dims`, then centre-cropped to the net input (or cut into the four
corner crops, the centre crop and their mirrors, whose predictions are averaged), the
per-channel mean is subtracted and `input_scale` applied. Images are read with OpenCV
(BGR, 0..255), the layout the LMDB training data has, so pycaffe's channel_swap (RGB->BGR)
and raw_scale (255) are already in effect; single-channel nets read images as grey.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from runner.precision import use_caffe_precision
from runner.shapes import INT_MAX
from runner.zoo.frontmatter import ZooError
from runner.zoo.load import ZooModel


def read_image(path: str | os.PathLike, channels: int) -> np.ndarray:
    """H x W x channels float32 in 0..255, BGR for 3 channels; clear error if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"{path}: no such image file")
    if channels not in (1, 3):
        raise ZooError(f"{path}: the net takes {channels}-channel input; "
                       "only grey (1) or BGR (3) images can be fed")
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imread(str(path), flag)
    if image is None:
        raise ZooError(f"{path}: OpenCV cannot decode it as an image")
    return image.reshape(*image.shape[:2], channels).astype(np.float32)


def resize(image: np.ndarray, dims: tuple[int, int], interpolation: int = cv2.INTER_LINEAR
           ) -> np.ndarray:
    """Resize an H x W x K image to dims = (height, width), bilinear unless told otherwise
    (OpenCV takes at most 512 channels a call, so wider images go in slices)."""
    if image.shape[:2] == tuple(dims):
        return image
    try:
        slices = [cv2.resize(image[:, :, k:k + 512], (dims[1], dims[0]), interpolation=interpolation)
                  for k in range(0, image.shape[2], 512)]
    except cv2.error as err:   # out of memory, most likely
        raise ValueError(f"cannot resize an image to {tuple(dims)}: "
                         f"{str(err).strip().splitlines()[-1]}") from None
    return np.concatenate([s.reshape(dims[0], dims[1], -1) for s in slices], axis=2)


def centre_crop(images: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """N x h x w x K centre crops of N x H x W x K images (offset floor((H - h)/2))."""
    top, left = (images.shape[1] - crop[0]) // 2, (images.shape[2] - crop[1]) // 2
    return images[:, top:top + crop[0], left:left + crop[1]]


def oversample(images: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """10N crops: per image the 4 corners and the centre, then those 5 mirrored."""
    h, w = images.shape[1:3]
    corners = [(0, 0), (0, w - crop[1]), (h - crop[0], 0), (h - crop[0], w - crop[1]),
               ((h - crop[0]) // 2, (w - crop[1]) // 2)]
    crops = []
    for image in images:
        five = [image[t:t + crop[0], l:l + crop[1]] for t, l in corners]
        crops += five + [c[:, ::-1] for c in five]
    return np.stack(crops)


class Classifier:
    """Predict class probabilities for images with a loaded zoo model. By default the net
    runs through `Net.for_inference()` (folded, packed, within 1e-4 of the plain net);
    `optimized=False` runs the plain Net."""

    def __init__(self, net, info: ZooModel, device: str = "cpu", optimized: bool = True):
        if torch.device(device).type == "cuda":
            use_caffe_precision()
        self.net = net.to(device).eval()
        self.model = self.net.for_inference(outputs=[info.output_blob]) if optimized else self.net
        self.info = info
        self.device = device

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """N x h x w x K crops -> N x K x h x w net input: minus mean, times input_scale."""
        blob = crops.transpose(0, 3, 1, 2).astype(np.float32)
        if self.info.mean is not None:
            blob = blob - self.info.mean[None, :, None, None]
        if self.info.input_scale is not None:
            blob = blob * self.info.input_scale
        return blob

    def predict(self, images: list[np.ndarray], oversampled: bool = False) -> np.ndarray:
        """N x classes probabilities (the net's output), averaged over 10 crops if asked."""
        if any(im.shape[2] != self.info.channels for im in images):
            raise ZooError(f"images must have {self.info.channels} channels")
        if min(r - c for r, c in zip(self.info.image_dims, self.info.crop_dims)) < 0:
            raise ZooError(f"images resized to {self.info.image_dims} are smaller than "
                           f"the net input {self.info.crop_dims}")
        values = math.prod(self.info.image_dims) * self.info.channels
        if values > INT_MAX:
            raise ZooError(f"images resized to {self.info.image_dims} hold {values} values each, "
                           f"more than Caffe's limit of {INT_MAX}")
        resized = np.stack([resize(im, self.info.image_dims) for im in images])
        crops = (oversample if oversampled else centre_crop)(resized, self.info.crop_dims)
        out = self.forward_all(self.preprocess(crops))
        return out.reshape(len(images), 10, -1).mean(1) if oversampled else out

    @torch.no_grad()
    def forward_all(self, blob: np.ndarray) -> np.ndarray:
        """Run in batches of the deploy's batch size, zero-padding the last as Caffe does."""
        batch = self.info.input_shape[0]
        outputs = []
        for start in range(0, len(blob), batch):
            chunk = blob[start:start + batch]
            padded = np.zeros((batch, *blob.shape[1:]), np.float32)
            padded[:len(chunk)] = chunk
            x = torch.from_numpy(padded).to(self.device)
            top = self.model({self.info.input_blob: x})[self.info.output_blob]
            outputs.append(top.reshape(batch, -1)[:len(chunk)].float().cpu().numpy())
        return np.concatenate(outputs)


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[tuple[str, float]]:
    """The k most probable (label, probability) pairs, most probable first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(labels[i], float(probabilities[i])) for i in order]
