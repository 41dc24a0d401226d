"""caffe.Classifier: a Net that classifies H x W x K images, resized to `image_dims`, then
centre-cropped or cut into 10 crops (corners, centre, mirrors) whose predictions are
averaged, with caffe.io.Transformer's preprocessing."""
from __future__ import annotations

import numpy as np

from runner.zoo.classifier import centre_crop

from . import io as caffe_io
from .net import TEST, Net


def input_transformer(net, mean=None, input_scale=None, raw_scale=None, channel_swap=None):
    """The Transformer of pycaffe's Classifier and Detector for the net's first input:
    H x W x K images to K x H x W blobs, then the given options."""
    in_ = net.inputs[0]
    transformer = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """Net(model_file, TEST, weights=pretrained_file) with image preprocessing; images are
    resized to `image_dims` (default: the net's input size) before cropping."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None):
        Net.__init__(self, model_file, TEST, weights=pretrained_file)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[self.inputs[0]].data.shape[2:])
        self.image_dims = self.crop_dims if image_dims is None or not len(image_dims) \
            else image_dims

    def predict(self, inputs, oversample: bool = True) -> np.ndarray:
        """N x C class probabilities (the first output) for N H x W x K images, averaged
        over the 10 crops when `oversample`, else from the centre crop."""
        image_dims = tuple(int(d) for d in self.image_dims)
        crop_dims = tuple(int(d) for d in self.crop_dims)
        if image_dims[0] < crop_dims[0] or image_dims[1] < crop_dims[1]:
            raise ValueError(f"image_dims {image_dims} are smaller than the net input "
                             f"{crop_dims}")
        resized = np.stack([caffe_io.resize_image(image, image_dims) for image in inputs])
        crops = (caffe_io.oversample(resized, crop_dims) if oversample
                 else centre_crop(resized, crop_dims))
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, crop) for crop in crops])
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape(len(predictions) // 10, 10, -1).mean(1)
        return predictions
