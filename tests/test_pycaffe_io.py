"""caffe.io: BlobProto/Datum converters, load_image (OpenCV, pycaffe's RGB [0, 1] output),
resize_image, oversample and the Transformer, against hand-built expectations."""
import cv2
import numpy as np
import pytest

import caffe
from caffe.proto import caffe_pb2

BGR = np.array([[[0, 0, 255], [0, 255, 0], [255, 0, 0]],
                [[10, 20, 30], [255, 255, 255], [0, 0, 0]]], np.uint8)   # 2 x 3, BGR


# ---- BlobProto / Datum -------------------------------------------------------------------

def test_blobproto_round_trip_with_diff():
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    diff = -data
    blob = caffe.io.array_to_blobproto(data, diff)
    assert list(blob.shape.dim) == [2, 3, 4]
    back = caffe.io.blobproto_to_array(caffe_pb2.BlobProto.FromString(blob.SerializeToString()))
    assert back.dtype == np.float64 and np.array_equal(back, data)
    assert np.array_equal(caffe.io.blobproto_to_array(blob, return_diff=True), diff)


def test_blobproto_legacy_dims_win_and_bad_counts_are_named():
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=range(6))
    blob.shape.dim.extend([6])
    assert caffe.io.blobproto_to_array(blob).shape == (1, 2, 1, 3)
    with pytest.raises(ValueError, match=r"shape \(4,\) holds 4 values but data has 3"):
        caffe.io.blobproto_to_array(caffe_pb2.BlobProto(shape=dict(dim=[4]), data=[1, 2, 3]))
    with pytest.raises(ValueError, match="diff has shape"):
        caffe.io.array_to_blobproto(np.zeros((2, 2)), np.zeros(4))


def test_blobprotovector_string_round_trip():
    arrays = [np.ones((1, 2)), np.arange(6.0).reshape(3, 2, 1), np.array(5.0)]
    text = caffe.io.arraylist_to_blobprotovector_str(arrays)
    assert len(caffe_pb2.BlobProtoVector.FromString(text).blobs) == 3
    back = caffe.io.blobprotovector_str_to_arraylist(text)
    assert [a.shape for a in back] == [(1, 2), (3, 2, 1), ()]
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back))


def test_datum_round_trips():
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    datum = caffe.io.array_to_datum(pixels, label=7)
    assert (datum.channels, datum.height, datum.width, datum.label) == (2, 3, 4, 7)
    assert datum.data == pixels.tobytes() and not len(datum.float_data)
    back = caffe.io.datum_to_array(caffe_pb2.Datum.FromString(datum.SerializeToString()))
    assert back.dtype == np.uint8 and np.array_equal(back, pixels)
    back[0, 0, 0] = 99                                     # a writable copy

    floats = pixels.astype(np.float32) / 3
    datum = caffe.io.array_to_datum(floats)
    assert not datum.HasField("label") and not datum.data
    back = caffe.io.datum_to_array(datum)
    assert back.dtype == np.float64 and np.array_equal(back, floats)
    with pytest.raises(ValueError, match=r"C x H x W array, got shape \(3, 4\)"):
        caffe.io.array_to_datum(np.zeros((3, 4)))
    nan = caffe_pb2.Datum(channels=1, height=1, width=2, float_data=[1, np.nan])
    with pytest.raises(ValueError, match="1 NaN or inf values"):
        caffe.io.datum_to_array(nan)


def test_encoded_datum_decodes_to_bgr_chw():
    ok, png = cv2.imencode(".png", BGR)
    datum = caffe_pb2.Datum(data=png.tobytes(), encoded=True, label=1)
    assert np.array_equal(caffe.io.datum_to_array(datum), BGR.transpose(2, 0, 1))


# ---- Images ------------------------------------------------------------------------------

def test_load_image_color_is_rgb_in_unit_range(tmp_path):
    cv2.imwrite(str(tmp_path / "c.png"), BGR)
    image = caffe.io.load_image(tmp_path / "c.png")
    expected = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                         [[30, 20, 10], [255, 255, 255], [0, 0, 0]]], np.float32) / 255
    assert image.dtype == np.float32 and image.shape == (2, 3, 3)
    assert np.array_equal(image, expected)

    gray = caffe.io.load_image(tmp_path / "c.png", color=False)
    rgb = expected.astype(np.float64)
    by_hand = 0.2125 * rgb[..., 0] + 0.7154 * rgb[..., 1] + 0.0721 * rgb[..., 2]
    assert gray.shape == (2, 3, 1) and np.allclose(gray[..., 0], by_hand, atol=1e-7)
    assert gray[0, 0, 0] == pytest.approx(0.2125, abs=1e-6)


def test_load_image_gray_alpha_and_16_bit(tmp_path):
    plane = np.array([[0, 51], [102, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), plane)
    as_color = caffe.io.load_image(tmp_path / "g.png")
    assert as_color.shape == (2, 2, 3)
    assert all(np.array_equal(as_color[..., c], plane / np.float32(255)) for c in range(3))
    as_gray = caffe.io.load_image(tmp_path / "g.png", color=False)
    assert as_gray.shape == (2, 2, 1) and np.array_equal(as_gray[..., 0], plane / np.float32(255))

    bgra = np.dstack([BGR, np.full(BGR.shape[:2], 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    cv2.imwrite(str(tmp_path / "c.png"), BGR)
    assert np.array_equal(caffe.io.load_image(tmp_path / "a.png"),
                          caffe.io.load_image(tmp_path / "c.png"))        # alpha dropped

    deep = np.array([[0, 65535], [32768, 1000]], np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    loaded = caffe.io.load_image(tmp_path / "d.png", color=False)
    assert np.allclose(loaded[..., 0], deep / 65535.0, atol=1e-7)


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg: no such image file"):
        caffe.io.load_image(tmp_path / "nope.jpg")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.png: OpenCV cannot decode it"):
        caffe.io.load_image(tmp_path / "junk.png")


def test_resize_image_bilinear_by_hand_and_any_channel_count():
    ramp = np.array([[0, 1], [0, 1]], np.float64)[:, :, None]
    up = caffe.io.resize_image(ramp, (4, 4))
    # pixel centres: x_src = (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (edges clamp)
    assert up.dtype == np.float32 and up.shape == (4, 4, 1)
    assert np.allclose(up[..., 0], [[0, 0.25, 0.75, 1]] * 4)
    nearest = caffe.io.resize_image(ramp, (4, 4), interp_order=0)
    assert np.array_equal(nearest[0, :, 0], [0, 0, 1, 1])
    wide = np.random.default_rng(0).random((3, 5, 600)).astype(np.float32)
    out = caffe.io.resize_image(wide, (6, 10))
    assert out.shape == (6, 10, 600)
    assert np.allclose(out[..., 599], caffe.io.resize_image(wide[..., 599:], (6, 10))[..., 0])
    with pytest.raises(ValueError, match="interp_order 2"):
        caffe.io.resize_image(ramp, (4, 4), interp_order=2)


def test_oversample_is_corners_centre_then_mirrors():
    image = np.arange(5 * 6 * 2, dtype=np.float32).reshape(5, 6, 2)
    crops = caffe.io.oversample([image, image + 1], (3, 4))
    assert crops.shape == (20, 3, 4, 2) and crops.dtype == np.float32
    corners = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]   # centre: floor(5/2 - 3/2), floor(3 - 2)
    for i, (t, l) in enumerate(corners):
        assert np.array_equal(crops[i], image[t:t + 3, l:l + 4])
        assert np.array_equal(crops[5 + i], image[t:t + 3, l:l + 4][:, ::-1])
    assert np.array_equal(crops[10:], crops[:10] + 1)
    with pytest.raises(ValueError, match="do not fit"):
        caffe.io.oversample([image], (6, 4))


# ---- Transformer -------------------------------------------------------------------------

def imagenet_style_transformer(shape=(1, 3, 4, 5)):
    t = caffe.io.Transformer({"data": shape})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([104.0, 117.0, 123.0]))
    t.set_input_scale("data", 0.5)
    return t


def test_preprocess_and_deprocess_against_numpy():
    image = np.random.default_rng(1).random((4, 5, 3)).astype(np.float32)
    kept = image.copy()
    t = imagenet_style_transformer()
    blob = t.preprocess("data", image)
    mean = np.array([104, 117, 123])[:, None, None]
    by_hand = (image.transpose(2, 0, 1)[::-1] * 255 - mean) * 0.5
    assert blob.dtype == np.float32 and blob.shape == (3, 4, 5)
    assert np.allclose(blob, by_hand, atol=1e-4)
    assert np.array_equal(image, kept)                    # the caller's array is untouched
    assert np.allclose(t.deprocess("data", blob[None]), image, atol=1e-6)


def test_preprocess_resizes_to_the_input_size():
    image = np.random.default_rng(2).random((8, 10, 3)).astype(np.float32)
    t = caffe.io.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    blob = t.preprocess("data", image)
    assert np.array_equal(blob, caffe.io.resize_image(image, (4, 5)).transpose(2, 0, 1))


def test_elementwise_mean_is_resized_to_the_input():
    t = caffe.io.Transformer({"data": (1, 1, 4, 4)})
    t.set_mean("data", np.full((2, 2), 3.0))             # H x W: one channel
    assert t.mean["data"].shape == (1, 4, 4) and np.allclose(t.mean["data"], 3.0)
    exact = np.arange(16.0).reshape(1, 4, 4)
    t.set_mean("data", exact)
    assert np.shares_memory(t.mean["data"], exact)       # kept as given, not resized
    t.set_transpose("data", (2, 0, 1))
    assert np.array_equal(t.preprocess("data", np.zeros((4, 4, 1))), -exact)


def test_transformer_setters_check_their_input():
    t = caffe.io.Transformer({"data": (1, 3, 4, 5)})
    with pytest.raises(ValueError, match="label is not one of the net inputs"):
        t.set_raw_scale("label", 2)
    with pytest.raises(ValueError, match="Transpose order"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(ValueError, match="Channel swap"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="Mean channels incompatible with input: mean has 2"):
        t.set_mean("data", np.zeros(2))
    with pytest.raises(ValueError, match="Mean shape invalid"):
        t.set_mean("data", np.zeros((1, 1, 3, 4, 5)))
    with pytest.raises(ValueError, match="Mean channels incompatible with input: mean has 2, the input 3"):
        t.set_mean("data", np.zeros((2, 8, 8)))   # pycaffe resizes it, then preprocess fails
