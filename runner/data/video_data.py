"""weiliu89/caffe's (SSD fork) VideoData layer as a Source: frames of a video file or a
webcam, read with OpenCV's VideoCapture, as `data` (N x C x H x W float32) and, with a
second top, `label` (N floats, always 0: the fork writes 0 for every frame).

As video_data_layer.cpp: video_type WEBCAM (the default) opens camera `device_id`, VIDEO
opens `video_file`; the batch size is data_param.batch_size. At setup one frame is read to
shape the tops; a video file then starts again at its first frame, a webcam goes on after
that frame. Frames come in order; before each frame kept, `skip_frames` frames are read and
dropped (the count restarts with every batch, so the kept frames are numbers s, 2s+1, 3s+2,
... for s = skip_frames). A video ends after the number of frames OpenCV reports for it
(CAP_PROP_FRAME_COUNT, skipped frames included): the fork logs "Finished processing
video." and raises SIGINT from its prefetch thread, which stops `caffe test`, losing the
batch being filled (and any still in its prefetch queue); here every whole batch is given
and the next one raises VideoEnded (a DataError naming the layer and the file), again on
every later call. A file whose count OpenCV cannot tell (0 or negative; the fork stops at
once) ends at the first frame it cannot read. Reading a frame that should be there fails
with a DataError naming the frame, where the fork CHECK-fails ("Could not load image!").

Each kept frame (H x W x 3 BGR bytes) goes through the fork's Transform(cv::Mat), in its
order of draws: mirror (`mirror` and Rand(2)), resize_param (the interpolation picked from
interp_mode), noise_param (salt-and-pepper pixels: caffe_rng_rand() for the column, then for
the row, per pixel), the crop offsets (crop_size, or crop_h and crop_w; Rand for the row,
then the column in TRAIN, centred in TEST), then (x - mean) * scale in float32, flipped
when mirrored; the mean file is taken at the output pixel, as the fork indexes it. Draws
come from one numpy Generator per (seed, rank, batch) (runner.data.source.generator); the
fork draws salt and pepper from caffe_rng and the rest from the transformer's own rng
(same rules, other draws, as AnnotatedData).

resize_param and noise_param are AnnotatedData's (runner.data.ssd_images: apply_resize,
apply_noise, fork_pixel_bytes). noise_param applies every effect set to every frame, in
the fork's order (decolorize, gauss_blur, hist_eq, clahe, jpeg, erode, posterize, inverse,
saltpepper, convert_to_hsv, convert_to_lab); its `prob` is never read (a warning says so
when set). The pixels are read as the fork reads the noised Mat: 3 bytes per pixel from the
start of each row of the crop, so convert_to_lab gives the bytes of its float Lab values.
resize_mode FIT_SMALL_SIZE (AspectKeepingResizeBySmall) scales each frame until it covers
height x width, keeping its aspect ratio (InferNewSize): unlike AnnotatedData the fork's
VideoData has no batch_size 1 CHECK and shapes its data top once, from the setup frame, and
never again; as a video's frames are all one size, every batch has that shape (a webcam
frame of another size is a DataError, as without resize_param).

Quirks and differences:
- The ssd branch's final load_batch (a merge) transforms each frame twice into the same
  slot, keeping the second result (same distribution as one transform: done once here),
  and with skip_frames > 0 writes to item -1 and aborts on Blob::offset's CHECK. Here
  skip_frames has the meaning of the fork's own commit that added it (and of its proto
  comment): frames skipped before each frame processed.
- Every rank reads the whole stream, as each solver's layer in the fork opens the file.
- Refused, as DataErrors naming the field: crop_h without crop_w, crop_h/crop_w in TRAIN
  without mirror or crop_size (the fork has no random generator then and aborts), a mean
  file with a crop smaller than the frame (the fork indexes the mean past its end), and
  what ApplyNoise aborts on or reads out of bounds, as for AnnotatedData (saltpepper_param
  values neither 1 nor 3, none, or not bytes, with saltpepper hitting pixels).
  distort_param, expand_param, emit_constraint, force_color and force_gray are never read
  by the fork's VideoData: they warn.
"""
from __future__ import annotations

import copy
import os
import warnings

import cv2
import numpy as np
import torch

from runner.data.datum import DataError, dims
from runner.data.source import BATCH_STREAM, check_tops, generator, resolve_seed
from runner.data.ssd_boxes import F32
from runner.data.ssd_images import (apply_noise, apply_resize, fork_pixel_bytes, resized_size,
                                    warn_unread_noise_prob)
from runner.data.transformer import _SSD_FORK_FIELDS, DataTransformer, crop_offsets
from runner.proto import caffe_pb2
from runner.sources import register_source

VIDEO = caffe_pb2.VideoDataParameter.VIDEO
# TransformationParameter fields the fork's VideoData never reads
UNREAD_FIELDS = ("distort_param", "expand_param", "emit_constraint", "force_color", "force_gray")


class VideoEnded(DataError):
    """A video file has too few frames left for another batch (the fork stops there)."""


class FrameTransform:
    """The fork's DataTransformer::Transform(cv::Mat) for H x W x C byte frames."""

    def __init__(self, t: caffe_pb2.TransformationParameter, phase, layer: str, where: str):
        self.where = where
        self.noise = t.noise_param if t.HasField("noise_param") else None
        warn_unread_noise_prob(t.noise_param, where, stacklevel=3)
        self.resize = t.resize_param if t.HasField("resize_param") else None
        if self.resize is not None and (self.resize.height <= 0 or self.resize.width <= 0):
            raise DataError(f"{where}: resize_param.height and width must be positive")
        unread = [f for f in UNREAD_FIELDS if t.HasField(f)]
        if unread:
            warnings.warn(f"{where}: transform_param.{', '.join(unread)} are ignored: the "
                          "fork's VideoData never reads them", stacklevel=3)
        plain = copy.deepcopy(t)
        for field in (*_SSD_FORK_FIELDS, "force_color", "force_gray"):
            plain.ClearField(field)
        self.plain = DataTransformer(plain, phase, layer=layer)
        crop = self.plain.crop
        if not crop and bool(t.crop_h) != bool(t.crop_w):
            raise DataError(f"{where}: give both crop_h and crop_w (or crop_size); the fork "
                            "crops only when both are set, yet shapes the top by either")
        if t.crop_h and not crop and not t.mirror and self.plain.train:
            raise DataError(f"{where}: crop_h/crop_w crop at random in TRAIN, but without "
                            "mirror or crop_size the fork's DataTransformer has no random "
                            "generator and aborts")
        self.crop_hw = (crop, crop) if crop else (t.crop_h, t.crop_w)
        self.shape: tuple[int, int, int] | None = None

    def output_shape(self, frame: np.ndarray, where: str) -> tuple[int, int, int]:
        """InferBlobShape: C x H x W after resize_param (InferNewSize: its size, or for
        FIT_SMALL_SIZE the frame's aspect ratio covering it) and the crop, checked against
        the mean; the first call fixes the shape every later frame must give."""
        height, width, channels = frame.shape
        height, width = resized_size(self.resize, self.crop_hw, height, width, where, "frame")
        crop_h, crop_w = self.crop_hw
        shape = (channels, crop_h or height, crop_w or width)
        mean, values = self.plain.mean, self.plain.mean_values
        if mean is not None and (shape[1:] != (height, width) or mean.shape != shape):
            raise DataError(f"{where}: the mean file is {dims(mean.shape)}; the fork needs "
                            f"it equal to the {dims((channels, height, width))} frame, "
                            "uncropped (it indexes the mean by the frame's size)")
        if values is not None and len(values) not in (1, channels):
            raise DataError(f"{where}: specify either 1 mean_value or as many as channels "
                            f"({channels}), got {len(values)}")
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            raise DataError(f"{where}: frame gives {dims(shape)}, the first frame "
                            f"{dims(self.shape)}; use resize_param to give every frame one size")
        return shape

    def __call__(self, frame: np.ndarray, rng: np.random.Generator, where: str) -> np.ndarray:
        """The transformed frame, C x H x W float32: the crop's pixels are the bytes the
        fork reads from the resized and noised frame (fork_pixel_bytes)."""
        self.output_shape(frame, where)
        mirror = self.plain.mirror and rng.integers(2) == 1
        image = apply_resize(frame, self.resize, rng, where) if self.resize is not None \
            else frame
        if self.noise is not None:
            image = apply_noise(image, self.noise, rng, where)
        img_h, img_w = image.shape[:2]
        channels, height, width = self.shape
        h_off, w_off = crop_offsets(rng, self.plain.train, (img_h, img_w), (height, width)) \
            if self.crop_hw[0] else (0, 0)
        out = fork_pixel_bytes(image, channels, h_off, w_off, height, width
                               ).transpose(2, 0, 1).astype(F32)
        if mirror:
            out = out[:, :, ::-1]
        if self.plain.mean is not None:
            out = out - self.plain.mean
        elif self.plain.mean_values is not None:
            out = out - self.plain.mean_values.reshape(-1, 1, 1)
        return out * F32(self.plain.scale)


class VideoDataSource:
    """The fork's VideoData layer: video_data_param (video_type, device_id, video_file,
    skip_frames), data_param.batch_size and transform_param; made in this process (a
    capture is read in order)."""

    def __init__(self, lp, phase, *, rank: int = 0, world_size: int = 1,
                 seed: int | None = None):
        param = lp.video_data_param
        self.name, self.tops = lp.name, check_tops(lp)
        layer = f"layer '{lp.name}' (VideoData)"
        self.batch_size = lp.data_param.batch_size
        if self.batch_size <= 0:
            raise DataError(f"{layer}: data_param.batch_size must be positive")
        self.webcam = param.video_type != VIDEO
        if not self.webcam and not param.HasField("video_file"):
            raise DataError(f"{layer}: video_type VIDEO needs video_data_param.video_file")
        self.device_id, self.video_file = param.device_id, param.video_file
        self.where = f"layer '{lp.name}': " + (f"webcam {self.device_id}" if self.webcam
                                               else f"video '{self.video_file}'")
        self.skip_frames, self.rank = param.skip_frames, rank
        self.seed = resolve_seed(seed, world_size, False, layer)
        self.transform = FrameTransform(lp.transform_param, phase, lp.name, self.where)
        self._capture, self.frames_read, self.batches = self._open(), 0, 0
        self.total = None
        if not self.webcam:
            count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
            self.total = count if count > 0 else None
        first = self._read()
        shape = self.transform.output_shape(first, f"{self.where} frame 0")
        if not self.webcam:   # the fork sets the position back to the first frame
            self.close()
            self.frames_read = 0
        self.top_shapes = {self.tops[0]: (self.batch_size, *shape)}
        if len(self.tops) > 1:
            self.top_shapes[self.tops[1]] = (self.batch_size,)

    def __getstate__(self):
        return {**self.__dict__, "_capture": None}   # reopened where the stream was

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(self.device_id if self.webcam else self.video_file)
        if not capture.isOpened():
            what = "open the camera" if self.webcam else "open it as a video"
            missing = not self.webcam and not os.path.exists(self.video_file)
            raise DataError(f"{self.where}: OpenCV cannot {what}"
                            f"{' (no such file)' if missing else ''}")
        return capture

    def _read(self) -> np.ndarray:
        """The next frame of the stream (end of the video and unreadable frames raise)."""
        if self.total is not None and self.frames_read >= self.total:
            raise VideoEnded(f"{self.where}: the video ended: its {self.total} frames are "
                             f"read, {self.batches} whole batches given (the fork logs "
                             "'Finished processing video.' and stops here)")
        if self._capture is None:   # after close(): reopen where the stream was
            self._capture = self._open()
            for _ in range(0 if self.webcam else self.frames_read):
                self._capture.grab()
        ok, frame = self._capture.read()
        if not ok or frame is None:
            if self.webcam:
                raise DataError(f"{self.where}: OpenCV could not read a frame")
            if not self.frames_read:
                raise DataError(f"{self.where}: OpenCV reads no frame from it")
            if self.total is None:
                self.total = self.frames_read
                return self._read()
            raise DataError(f"{self.where}: OpenCV could not read frame {self.frames_read} "
                            f"of the {self.total} it reports")
        self.frames_read += 1
        return frame

    def __iter__(self) -> VideoDataSource:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        rng = generator(self.seed, BATCH_STREAM, self.rank, self.batches)
        data = np.empty(self.top_shapes[self.tops[0]], F32)
        for item in range(self.batch_size):
            for _ in range(self.skip_frames):
                self._read()
            where = f"{self.where} frame {self.frames_read}"
            data[item] = self.transform(self._read(), rng, where)
        self.batches += 1
        tops = {self.tops[0]: torch.from_numpy(data)}
        if len(self.tops) > 1:
            tops[self.tops[1]] = torch.zeros(self.batch_size)
        return tops

    def close(self) -> None:
        """Release the capture (a later batch reopens it and carries on where it was)."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None


@register_source("VideoData")
def video_data_source(lp, phase, *, rank=0, world_size=1, seed=None, workers=None
                      ) -> VideoDataSource:
    """Source factory for the SSD fork's VideoData layer (read in this process)."""
    return VideoDataSource(lp, phase, rank=rank, world_size=world_size, seed=seed)
