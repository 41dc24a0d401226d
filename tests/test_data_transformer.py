"""DataTransformer against an element-by-element transcription of Caffe's
DataTransformer::Transform(const Datum&, Dtype*), drawing Rand(n) from the same seeded
Generator, for crop/mirror/mean_file/mean_value/scale in TRAIN and TEST, on planar (raw
Datum) and interleaved (decoded image) pixels; in one stage (`transform_into` per image) and
in two (`crop_into` per image, then `finish` on the whole batch)."""
import numpy as np
import pytest
import torch

from runner.data.datum import DataError
from runner.data.transformer import DataTransformer
from runner.proto import caffe_pb2

C, H, W = 3, 9, 11


def caffe_reference(image, param, train, mean, rng):
    """Caffe's loop, transcribed: one output element at a time, float32 arithmetic."""
    channels, height0, width0 = image.shape
    rand = lambda n: int(rng.integers(n))                          # noqa: E731
    do_mirror = param.mirror and rand(2)
    height, width, h_off, w_off = height0, width0, 0, 0
    if param.crop_size:
        height = width = param.crop_size
        if train:
            h_off = rand(height0 - param.crop_size + 1)
            w_off = rand(width0 - param.crop_size + 1)
        else:
            h_off = (height0 - param.crop_size) // 2
            w_off = (width0 - param.crop_size) // 2
    mean_values = list(param.mean_value)
    if channels > 1 and len(mean_values) == 1:
        mean_values *= channels
    data, mean_flat = image.ravel(), None if mean is None else mean.ravel()
    out = np.zeros(channels * height * width, np.float32)
    scale = np.float32(param.scale)
    for c in range(channels):
        for h in range(height):
            for w in range(width):
                data_index = (c * height0 + h_off + h) * width0 + w_off + w
                top_w = width - 1 - w if do_mirror else w
                top_index = (c * height + h) * width + top_w
                element = np.float32(data[data_index])
                if mean_flat is not None:
                    out[top_index] = (element - mean_flat[data_index]) * scale
                elif mean_values:
                    out[top_index] = (element - np.float32(mean_values[c])) * scale
                else:
                    out[top_index] = element * scale
    return out.reshape(channels, height, width), bool(do_mirror)


@pytest.fixture
def mean_file(tmp_path):
    mean = np.random.default_rng(1).uniform(0, 255, (C, H, W)).astype(np.float32)
    path = tmp_path / "mean.binaryproto"
    blob = caffe_pb2.BlobProto(num=1, channels=C, height=H, width=W, data=mean.ravel())
    path.write_bytes(blob.SerializeToString())
    return str(path), mean


CASES = [
    dict(crop_size=5, mirror=True, mean_file=True, scale=0.5),
    dict(crop_size=4, mirror=True, mean_value=[104.0, 117.0, 123.0], scale=0.017),
    dict(crop_size=6, mean_value=[127.5]),
    dict(mirror=True, scale=0.00390625),
    dict(mean_file=True),
    dict(),
]


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(sorted(c)) or "identity")
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("interleaved", [False, True], ids=["planar", "interleaved"])
@pytest.mark.parametrize("stages", [1, 2])
def test_transform_equals_caffes_loop(case, phase, dtype, interleaved, stages, mean_file):
    case = dict(case)
    mean = None
    if case.pop("mean_file", False):
        case["mean_file"], mean = mean_file
    param = caffe_pb2.TransformationParameter(**case)
    transformer = DataTransformer(param, phase)
    ours, theirs = np.random.default_rng(7), np.random.default_rng(7)
    images = np.random.default_rng(3).integers(0, 256, (20, C, H, W)).astype(dtype)
    if interleaved:      # channels interleaved in memory, as OpenCV decodes images
        images = np.ascontiguousarray(images.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    shape = (20, *transformer.output_shape(images[0].shape, "img"))
    if stages == 1:
        batch = torch.empty(shape)
        for image, out in zip(images, batch.numpy()):
            transformer.transform_into(image, out, ours, "img")
    else:
        pixels = np.empty(shape, dtype)
        if interleaved:    # kept interleaved, as a Data layer keeps decoded images
            pixels = np.empty((20, *shape[2:], C), dtype).transpose(0, 3, 1, 2)
        crops = np.array([transformer.crop_into(image, out, ours, "img")
                          for image, out in zip(images, pixels)], np.int32)
        batch = transformer.finish(torch.from_numpy(pixels), torch.from_numpy(crops))
    assert batch.dtype == torch.float32
    mirrored = set()
    for image, got in zip(images, batch):
        expected, was_mirrored = caffe_reference(image, param, phase == "TRAIN", mean, theirs)
        np.testing.assert_array_equal(got.numpy(), expected)
        mirrored.add(was_mirrored)
    assert mirrored == ({False, True} if param.mirror else {False})  # in TEST too


def test_one_channel_mean_value_and_center_crop():
    param = caffe_pb2.TransformationParameter(crop_size=2, mean_value=[10])
    image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    transformer = DataTransformer(param, caffe_pb2.TEST)
    out = np.empty((1, 1, 2, 2), np.uint8)
    crops = [transformer.crop_into(image, out[0], None, "img")]
    batch = transformer.finish(torch.from_numpy(out), torch.tensor(crops, dtype=torch.int32))
    assert crops == [(1, 1, 0)]
    np.testing.assert_array_equal(batch.numpy(), [[[[-5, -4], [-1, 0]]]])


def test_bad_parameters_and_images_name_the_problem(mean_file):
    path, _ = mean_file
    with pytest.raises(DataError, match="mean_file and mean_value"):
        DataTransformer(caffe_pb2.TransformationParameter(mean_file=path, mean_value=[1]),
                        "TRAIN", layer="data")
    with pytest.raises(DataError, match="force_color and force_gray"):
        DataTransformer(caffe_pb2.TransformationParameter(force_color=True, force_gray=True),
                        "TRAIN")
    with pytest.raises(DataError, match="cannot read mean file"):
        DataTransformer(caffe_pb2.TransformationParameter(mean_file=path + ".missing"), "TEST")
    image = np.zeros((C, H, W), np.uint8)
    crop = DataTransformer(caffe_pb2.TransformationParameter(crop_size=10), "TRAIN")
    with pytest.raises(DataError, match="key 'k1': image is 9 x 11, smaller than crop_size 10"):
        crop.output_shape(image.shape, "key 'k1'")
    meaned = DataTransformer(caffe_pb2.TransformationParameter(mean_file=path), "TRAIN")
    with pytest.raises(DataError, match=r"key 'k2': image is 3 x 8 x 8 but mean file '.*' "
                                        r"is 3 x 9 x 11"):
        meaned.output_shape((C, 8, 8), "key 'k2'")
    two = DataTransformer(caffe_pb2.TransformationParameter(mean_value=[1, 2]), "TRAIN")
    with pytest.raises(DataError, match="either 1 mean_value or as many as channels"):
        two.output_shape(image.shape, "key 'k3'")
    with pytest.raises(DataError, match="key 'k4': image is 3 x 9 x 11, which does not give"):
        two_free = DataTransformer(caffe_pb2.TransformationParameter(), "TRAIN")
        two_free.crop_into(image, np.empty((C, 8, 8), np.uint8), None, "key 'k4'")
    with pytest.raises(DataError, match="key 'k5': pixels are float32, the batch's are uint8"):
        two_free.crop_into(image.astype(np.float32), np.empty((C, H, W), np.uint8), None,
                           "key 'k5'")
