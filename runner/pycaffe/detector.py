"""caffe.Detector: R-CNN-style windowed detection: crop windows (optionally with a border
of context) from images, warp them to the net input and classify them in one batch."""
from __future__ import annotations

import os

import numpy as np

from . import io as caffe_io
from .classifier import input_transformer
from .net import TEST, Net


class Detector(Net):
    """Net(model_file, TEST, weights=pretrained_file) that classifies image windows;
    `context_pad` pixels of the net input are taken from around each window."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None, context_pad=None):
        Net.__init__(self, model_file, TEST, weights=pretrained_file)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows) -> list[dict]:
        """[{'window', 'prediction', 'filename'}] for (image filename, windows) pairs;
        windows are (ymin, xmin, ymax, xmax) pixel boxes."""
        images_windows = [(name, [np.asarray(w) for w in windows])
                          for name, windows in images_windows]
        window_inputs = []
        for filename, windows in images_windows:
            image = caffe_io.load_image(filename)
            window_inputs += [self.crop(image, window) for window in windows]
        if not window_inputs:
            return []
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, w) for w in window_inputs])
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        windows = [(filename, window) for filename, ws in images_windows for window in ws]
        return [{"window": window, "prediction": prediction, "filename": filename}
                for (filename, window), prediction in zip(windows, predictions)]

    def detect_selective_search(self, image_fnames) -> list[dict]:
        """detect_windows over Selective Search proposals, from the external
        selective_search_ijcv_with_python package (it runs MATLAB)."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise ImportError(
                "detect_selective_search needs the selective_search_ijcv_with_python "
                "package (R-CNN's Selective Search wrapper, which runs MATLAB) importable "
                "from PYTHONPATH; or pass your own windows to detect_windows") from None
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows_list = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows_list))

    def crop(self, im: np.ndarray, window) -> np.ndarray:
        """The window of an H x W x K image; with context_pad, the window grown so the
        context fills that border of the net input, out-of-image parts set to the mean."""
        window = np.asarray(window)
        if not self.context_pad:
            return im[window[0]:window[2], window[1]:window[3]]
        crop_size = self.blobs[self.inputs[0]].width   # a square input, as pycaffe assumes
        scale = crop_size / (1. * crop_size - self.context_pad * 2)
        half_h = (window[2] - window[0] + 1) / 2.
        half_w = (window[3] - window[1] + 1) / 2.
        center = (window[0] + half_h, window[1] + half_w)
        box = np.round(np.tile(center, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        scale_h = crop_size / (box[2] - box[0] + 1)
        scale_w = crop_size / (box[3] - box[1] + 1)
        pad_y = round(max(0, -box[0]) * scale_h)   # rows of the input outside the image
        pad_x = round(max(0, -box[1]) * scale_w)
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0., [im_h, im_w, im_h, im_w])
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        if clip_h <= 0 or clip_w <= 0:
            raise ValueError(f"window {window.tolist()} lies outside the {im_h} x {im_w} image")
        crop_h = min(round(clip_h * scale_h), crop_size - pad_y)
        crop_w = min(round(clip_w * scale_w), crop_size - pad_x)
        top, left, bottom, right = (int(v) for v in box)
        context = caffe_io.resize_image(im[top:bottom, left:right], (crop_h, crop_w))
        crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        crop[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return crop

    def configure_crop(self, context_pad) -> None:
        """Set crop_dims (the input as H x W x K) and context_pad; with context, the mean
        in image space (before channel swap and raw_scale) fills what lies off the image."""
        in_ = self.inputs[0]
        transpose = self.transformer.transpose[in_]
        inverse = [transpose[t] for t in transpose]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inverse]
        self.context_pad = context_pad
        if not self.context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = mean.copy().transpose(inverse)
        channel_order = self.transformer.channel_swap.get(in_)
        if channel_order is not None:
            channel_order = list(channel_order)
            crop_mean = crop_mean[:, :, [channel_order.index(i)
                                         for i in range(crop_mean.shape[2])]]
        raw_scale = self.transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean
