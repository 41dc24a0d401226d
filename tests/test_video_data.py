"""The SSD fork's VideoData layer on small MJPG AVI files written here with cv2.VideoWriter:
frames in order, skip_frames before each kept frame, the end of the video, the fork's
Transform(cv::Mat) (mirror, crop, resize_param with FIT_SMALL_SIZE, noise_param, mean,
scale) against numpy computations on the same decoded frames (noise and the byte read of
the noised Mat through test_annotated_data_noise's transcriptions, draws replayed), the
webcam's setup frame (a stand-in capture), bad files and an unopenable camera as
DataErrors naming the layer, and a net that convolves the frames."""
import copy
import warnings

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from runner.data.datum import DataError
from runner.data.source import BATCH_STREAM, generator
from runner.data.video_data import VideoEnded
from runner.layers.base import layer_type_list
from runner.net import Net
from runner.proto import caffe_pb2
from runner.sources import source_factory

from test_annotated_data import uniform
from test_annotated_data_noise import apply_noise, infer_new_size, read_as_bytes

F = np.float32
H, W = 16, 24
SEED = 5


def write_video(path, count, height=H, width=W):
    """`count` frames: channel 0 holds 20 * index + 10 (the index survives JPEG), channels 1
    and 2 a left/right and top/bottom pattern (so mirror and crop show)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (width, height))
    assert writer.isOpened()
    for i in range(count):
        frame = np.empty((height, width, 3), np.uint8)
        frame[:, :, 0] = 20 * i + 10
        frame[:, :, 1] = np.where(np.arange(width) < 8, 200, 50)
        frame[:, :, 2] = np.where(np.arange(height) < 8, 180, 60)[:, None]
        writer.write(frame)
    writer.release()
    return path


def decoded(path):
    """Every frame of the file as OpenCV decodes it (the layer's decoder too)."""
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def index_of(chw):
    """The frame number written into channel 0 of an untransformed C x H x W frame."""
    return int(round((float(np.mean(chw[0])) - 10) / 20))


def layer(video="", batch=2, transform="", param=None, tops=("data", "label")):
    param = param if param is not None else f'video_type: VIDEO video_file: "{video}"'
    text = (f'name: "video" type: "VideoData" {" ".join(f"top: {t!r}" for t in tops)} '
            f'data_param {{ batch_size: {batch} }} video_data_param {{ {param} }} '
            f'transform_param {{ {transform} }}').replace("'", '"')
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def source(video="", batch=2, transform="", param=None, phase="TEST", tops=("data", "label")):
    return source_factory("VideoData")(layer(video, batch, transform, param, tops), phase,
                                       seed=SEED)


@pytest.fixture
def video(tmp_path):
    return write_video(tmp_path / "clip.avi", 7)


def test_registered():
    assert "VideoData" in layer_type_list()


def test_frames_in_order_then_the_video_ends(video):
    frames = decoded(video)
    assert [index_of(f.transpose(2, 0, 1)) for f in frames] == list(range(7))
    layer_ = source(video, batch=3)
    assert layer_.top_shapes == {"data": (3, 3, H, W), "label": (3,)}
    batches = [next(layer_), next(layer_)]
    for b, batch in enumerate(batches):
        assert batch["data"].shape == (3, 3, H, W) and batch["data"].dtype == torch.float32
        assert torch.equal(batch["label"], torch.zeros(3))
        for item in range(3):   # the setup frame is not consumed: the file starts again
            np.testing.assert_array_equal(batch["data"][item].numpy(),
                                          frames[3 * b + item].transpose(2, 0, 1).astype(F))
    # frame 6 alone cannot fill a batch: the fork stops the process there
    with pytest.raises(VideoEnded, match=r"layer 'video': video '.*clip.avi': the video ended: "
                                         r"its 7 frames are read, 2 whole batches given"):
        next(layer_)
    with pytest.raises(VideoEnded):
        next(layer_)
    assert issubclass(VideoEnded, DataError)


@pytest.mark.parametrize("skip, count, kept", [
    (2, 12, [[2, 5], [8, 11]]),      # frames s, 2s+1, ...: the count restarts per frame kept
    (2, 10, [[2, 5]]),               # 8 is read, 11 is not there: the second batch ends it
    (1, 8, [[1, 3], [5, 7]]),
])
def test_skip_frames_are_read_and_dropped_before_each_kept_frame(tmp_path, skip, count, kept):
    path = write_video(tmp_path / "skip.avi", count)
    layer_ = source(path, batch=2, param=f'video_type: VIDEO video_file: "{path}" '
                                         f'skip_frames: {skip}', tops=("data",))
    got = [[index_of(x.numpy()) for x in next(layer_)["data"]] for _ in kept]
    assert got == kept
    with pytest.raises(VideoEnded):
        next(layer_)


def test_train_mirror_crop_mean_values_scale_against_numpy(video):
    frames = decoded(video)
    transform = "mirror: true crop_size: 8 mean_value: 10 mean_value: 20 mean_value: 30 scale: 0.5"
    layer_ = source(video, batch=3, transform=transform, phase="TRAIN")
    assert layer_.top_shapes["data"] == (3, 3, 8, 8)
    mirrored = set()
    for b in range(2):
        batch = next(layer_)["data"].numpy()
        rng = generator(SEED, BATCH_STREAM, 0, b)
        for item in range(3):
            mirror = rng.integers(2) == 1                 # the fork's order: mirror, then crop
            h_off, w_off = rng.integers(H - 8 + 1), rng.integers(W - 8 + 1)
            crop = frames[3 * b + item][h_off:h_off + 8, w_off:w_off + 8].astype(F)
            if mirror:
                crop = crop[:, ::-1]
            expected = ((crop - np.array([10, 20, 30], F)) * F(0.5)).transpose(2, 0, 1)
            np.testing.assert_array_equal(batch[item], expected)
            mirrored.add(bool(mirror))
    assert mirrored == {True, False}


def test_test_phase_crops_the_centre(video):
    frames = decoded(video)
    batch = next(source(video, batch=1, transform="crop_size: 6 scale: 2"))["data"].numpy()
    expected = frames[0][5:11, 9:15].astype(F).transpose(2, 0, 1) * F(2)
    np.testing.assert_array_equal(batch[0], expected)


def test_resize_warp_then_the_mean_file_at_the_output_pixel(video, tmp_path):
    frames = decoded(video)
    mean = np.random.default_rng(0).uniform(0, 255, (3, 10, 14)).astype(F)
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=10, width=14, data=mean.ravel())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    transform = (f'mirror: true mean_file: "{tmp_path / "mean.binaryproto"}" '
                 "resize_param { resize_mode: WARP height: 10 width: 14 }")
    layer_ = source(video, batch=2, transform=transform)
    assert layer_.top_shapes["data"] == (2, 3, 10, 14)
    batch = next(layer_)["data"].numpy()
    rng = generator(SEED, BATCH_STREAM, 0, 0)
    for item in range(2):
        resized = cv2.resize(frames[item], (14, 10), interpolation=cv2.INTER_LINEAR)
        out = resized.astype(F).transpose(2, 0, 1)
        if rng.integers(2) == 1:
            out = out[:, :, ::-1]
        np.testing.assert_array_equal(batch[item], out - mean)   # the mean is not flipped


@pytest.mark.parametrize("noise", [
    {"decolorize": True, "inverse": True},
    {"posterize": True, "erode": True},
    {"convert_to_lab": True},          # float Lab in the Mat: the fork reads its bytes
])
def test_noise_effects_on_the_frames(video, noise):
    frames = decoded(video)
    text = " ".join(f"{k}: true" for k in noise)
    layer_ = source(video, batch=2, transform=f"noise_param {{ {text} }}")
    assert layer_.top_shapes["data"] == (2, 3, H, W)
    batch, rng = next(layer_)["data"].numpy(), generator(SEED, BATCH_STREAM, 0, 0)
    for item in range(2):
        want = read_as_bytes(apply_noise(frames[item], noise, rng), 3, 0, 0, H, W)
        np.testing.assert_array_equal(batch[item], want)
        assert not np.array_equal(want, frames[item].transpose(2, 0, 1))
    if "decolorize" in noise:   # by hand: the inverse of the grey frame in every channel
        grey = cv2.cvtColor(frames[0], cv2.COLOR_BGR2GRAY).astype(F)
        np.testing.assert_array_equal(batch[0], np.broadcast_to(F(255) - grey, (3, H, W)))


def test_salt_and_pepper_draws_between_the_interpolation_pick_and_the_crop(video):
    """Transform(cv::Mat)'s order per frame: mirror, the interpolation pick, ApplyNoise's
    salt-and-pepper pixels (column, then row), the crop offsets (row, then column)."""
    frames = decoded(video)
    p = {"gauss_blur": True, "saltpepper": True, "fraction": 0.1, "values": [9, 200, 30]}
    layer_ = source(video, batch=3, phase="TRAIN", transform=(
        "mirror: true crop_h: 10 crop_w: 14 mean_value: 100 scale: 0.5 resize_param { "
        "resize_mode: FIT_SMALL_SIZE height: 12 width: 12 interp_mode: LINEAR interp_mode: CUBIC } "
        "noise_param { gauss_blur: true saltpepper: true saltpepper_param { fraction: 0.1 "
        "value: 9 value: 200 value: 30 } }"))
    assert layer_.top_shapes["data"] == (3, 3, 10, 14)
    seen = set()
    for b in range(2):
        batch, rng = next(layer_)["data"].numpy(), generator(SEED, BATCH_STREAM, 0, b)
        for item in range(3):
            mirror = rng.integers(2) == 1
            flag = cv2.INTER_LINEAR if uniform(rng, 0, F(1)) <= F(0.5) else cv2.INTER_CUBIC
            mat = apply_noise(cv2.resize(frames[3 * b + item], (18, 12), interpolation=flag), p, rng)
            h_off, w_off = int(rng.integers(12 - 10 + 1)), int(rng.integers(18 - 14 + 1))
            want = read_as_bytes(mat, 3, h_off, w_off, 10, 14)
            if mirror:
                want = want[:, :, ::-1]
            np.testing.assert_array_equal(batch[item], (want - F(100)) * F(0.5))
            seen.add((bool(mirror), flag))
    assert len(seen) > 2


@pytest.mark.parametrize("height, width", [(H, W), (W, H)])
def test_fit_small_size_shapes_the_top_once_with_any_batch_size(tmp_path, height, width):
    """No batch_size 1 CHECK in the fork's VideoData: InferBlobShape of the setup frame
    (InferNewSize: the short side becomes 10, the long one follows the aspect ratio,
    truncated) gives every batch's shape; each frame is AspectKeepingResizeBySmall's."""
    path = write_video(tmp_path / "fit.avi", 6, height, width)
    frames = decoded(path)
    new_h, new_w = infer_new_size(width, height, 10, 10)
    assert min(new_h, new_w) == 10 and max(new_h, new_w) in (14, 15)
    layer_ = source(path, batch=3, transform="resize_param { resize_mode: FIT_SMALL_SIZE "
                                             "height: 10 width: 10 }")
    assert layer_.top_shapes == {"data": (3, 3, new_h, new_w), "label": (3,)}
    for b in range(2):
        batch = next(layer_)["data"].numpy()
        assert batch.shape == (3, 3, new_h, new_w)
        for item in range(3):
            want = cv2.resize(frames[3 * b + item], (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_array_equal(batch[item], want.transpose(2, 0, 1).astype(F))


def test_noise_prob_is_ignored_with_a_warning(video):
    with pytest.warns(UserWarning, match=r"noise_param.prob is ignored: the fork never reads it"):
        layer_ = source(video, batch=1, transform="noise_param { prob: 0 inverse: true }")
    np.testing.assert_array_equal(next(layer_)["data"][0].numpy(),
                                  F(255) - decoded(video)[0].transpose(2, 0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source(video, batch=1, transform="noise_param { inverse: true }")


@pytest.mark.parametrize("noise, message", [
    ("saltpepper: true saltpepper_param { fraction: 0.5 }", "saltpepper needs saltpepper_param.value"),
    ("saltpepper_param { value: 1 value: 2 }", r"either 1 saltpepper_param.value or as many as "
                                               r"channels \(3\), got 2"),
])
def test_what_apply_noise_aborts_on_names_the_frame(video, noise, message):
    layer_ = source(video, batch=1, transform=f"noise_param {{ {noise} }}")
    with pytest.raises(DataError, match=rf"layer 'video': video '.*clip.avi' frame 0: .*{message}"):
        next(layer_)


def test_close_and_copies_carry_on_where_the_stream_was(video):
    layer_ = source(video, batch=2, tops=("data",))
    assert [index_of(x.numpy()) for x in next(layer_)["data"]] == [0, 1]
    layer_.close()
    twin = copy.deepcopy(layer_)
    assert [index_of(x.numpy()) for x in next(layer_)["data"]] == [2, 3]
    assert [index_of(x.numpy()) for x in next(twin)["data"]] == [2, 3]


class FakeCamera:
    """A stand-in cv2.VideoCapture for a camera: frames numbered from 0, `size` pixels."""
    opened: list = []

    def __init__(self, device, sizes=((H, W),) * 100):
        self.opened.append(device)
        self.sizes, self.next = list(sizes), 0

    def isOpened(self):
        return True

    def read(self):
        frame = np.zeros((*self.sizes[self.next], 3), np.uint8)
        frame[:, :, 0] = 20 * self.next + 10
        self.next += 1
        return True, frame

    def release(self):
        pass


def test_webcam_goes_on_after_the_setup_frame(monkeypatch):
    FakeCamera.opened = []
    monkeypatch.setattr("runner.data.video_data.cv2.VideoCapture", FakeCamera)
    layer_ = source(batch=2, param="device_id: 3 skip_frames: 1")
    assert FakeCamera.opened == [3]
    assert layer_.top_shapes["data"] == (2, 3, H, W)
    # frame 0 shaped the tops; then skip one, keep one: 2, 4 | 6, 8
    assert [index_of(x.numpy()) for x in next(layer_)["data"]] == [2, 4]
    assert [index_of(x.numpy()) for x in next(layer_)["data"]] == [6, 8]


def test_a_frame_of_another_size_is_named(monkeypatch):
    monkeypatch.setattr("runner.data.video_data.cv2.VideoCapture",
                        lambda device: FakeCamera(device, [(H, W), (H, W), (H + 2, W)]))
    layer_ = source(batch=2, param="device_id: 0")
    with pytest.raises(DataError, match=r"webcam 0 frame 2: frame gives 3 x 18 x 24, the first "
                                        r"frame 3 x 16 x 24; use resize_param"):
        next(layer_)


def test_an_unopenable_webcam_is_named():
    with pytest.raises(DataError, match=r"layer 'video': webcam 7: OpenCV cannot open the camera"):
        source(param="video_type: WEBCAM device_id: 7")


def test_bad_files_are_named(tmp_path):
    missing = tmp_path / "missing.avi"
    with pytest.raises(DataError, match=rf"layer 'video': video '{missing}': OpenCV cannot open "
                                        r"it as a video \(no such file\)"):
        source(missing)
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    with pytest.raises(DataError, match=rf"video '{garbage}': OpenCV cannot open it as a video$"):
        source(garbage)
    empty = write_video(tmp_path / "empty.avi", 0)
    with pytest.raises(DataError, match=rf"video '{empty}': OpenCV reads no frame from it"):
        source(empty)


@pytest.mark.parametrize("param, transform, tops, message", [
    ("video_type: VIDEO", "", ("data",), r"video_type VIDEO needs video_data_param.video_file"),
    (None, "crop_size: 5 resize_param { resize_mode: FIT_SMALL_SIZE height: 4 width: 4 }",
     ("data",), r"frame is 4 x 6 after resize_param, smaller than the crop 5 x 5"),
    (None, "resize_param { width: 4 }", ("data",),
     r"resize_param.height and width must be positive"),
    (None, "crop_size: 17", ("data",), r"frame is 16 x 24, smaller than the crop 17 x 17"),
    (None, "crop_h: 4", ("data",), r"give both crop_h and crop_w"),
    (None, "mean_value: 1 mean_value: 2", ("data",), r"either 1 mean_value or as many as channels"),
    (None, "", ("a", "b", "c"), r"expected 1 or 2 tops"),
])
def test_settings_the_fork_aborts_on_or_that_are_not_supported(video, param, transform, tops,
                                                               message):
    param = param if param is not None else f'video_type: VIDEO video_file: "{video}"'
    with pytest.raises(DataError, match=message):
        source(video, transform=transform, param=param, tops=tops)


def test_batch_size_must_be_positive(video):
    with pytest.raises(DataError, match=r"data_param.batch_size must be positive"):
        source(video, batch=0)


def test_fields_the_fork_never_reads_warn(video):
    with pytest.warns(UserWarning, match=r"transform_param.distort_param, force_gray are ignored"):
        source(video, transform="force_gray: true distort_param { brightness_prob: 1 }")


def test_a_net_convolves_the_frames(video):
    frames = decoded(video)
    text = f'''name: "video-net"
    layer {{ name: "video" type: "VideoData" top: "data"
             data_param {{ batch_size: 2 }}
             video_data_param {{ video_type: VIDEO video_file: "{video}" skip_frames: 1 }}
             transform_param {{ mean_value: 100 scale: 0.01 }} }}
    layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
             convolution_param {{ num_output: 1 kernel_size: 1
                                  weight_filler {{ type: "constant" value: 1 }} }} }}'''
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TEST",
              source_kwargs={"seed": 1})
    assert net.blob_shapes["conv"] == (2, 1, H, W)
    blobs = net(next(iter(net.sources[0])))
    for item, frame in enumerate((frames[1], frames[3])):
        expected = ((frame.astype(F) - F(100)) * F(0.01)).sum(axis=2)
        np.testing.assert_allclose(blobs["conv"][item, 0].detach().numpy(), expected, rtol=1e-5,
                                   atol=1e-5)
