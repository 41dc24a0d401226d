"""caffe.Classifier and caffe.Detector: their preprocessing, crops and batching, against
the same steps done by hand with numpy/OpenCV and runner.Net."""
import cv2
import numpy as np
import pytest
import torch

import caffe
from caffe import layers as L
from caffe import params as P
from runner import Net as RunnerNet
from runner.proto import read_net

BATCH, SIZE = 2, 8
MEAN = np.array([100.0, 110.0, 120.0])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A deploy net (batch 2, 3 x 8 x 8) and random weights, written with NetSpec."""
    folder = tmp_path_factory.mktemp("model")
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[BATCH, 3, SIZE, SIZE]))
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=4,
                           weight_filler=dict(type="gaussian", std=0.01))
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2, pool=P.Pooling.AVE)
    n.ip = L.InnerProduct(n.pool, num_output=5, weight_filler=dict(type="gaussian", std=0.1))
    n.prob = L.Softmax(n.ip)
    deploy = folder / "deploy.prototxt"
    deploy.write_text(str(n.to_proto()))
    torch.manual_seed(0)
    RunnerNet(deploy, phase="TEST").save_caffemodel(folder / "w.caffemodel")
    return str(deploy), str(folder / "w.caffemodel")


def reference_probs(model, crops):
    """The net's probabilities for H x W x 3 RGB [0, 1] crops, preprocessed by hand as the
    ImageNet models are: to BGR, x255, minus the per-channel mean."""
    param = read_net(model[0])
    param.layer[0].input_param.shape[0].dim[0] = len(crops)    # all crops in one batch
    net = RunnerNet(param, phase="TEST", weights=model[1])
    blob = crops[..., ::-1].transpose(0, 3, 1, 2) * 255 - MEAN[None, :, None, None]
    with torch.no_grad():
        return net({"data": torch.from_numpy(blob.astype(np.float32))})["prob"].numpy()


def images(count, shape=(12, 10, 3), seed=0):
    return [np.random.default_rng(seed + i).random(shape).astype(np.float32)
            for i in range(count)]


def resized(image, dims):
    return cv2.resize(image, (dims[1], dims[0]), interpolation=cv2.INTER_LINEAR)


def test_classifier_centre_crop(model):
    clf = caffe.Classifier(*model, image_dims=(10, 12), mean=MEAN, raw_scale=255,
                           channel_swap=(2, 1, 0))
    inputs = images(3)                       # 3 images: one batch of 2, one padded
    probs = clf.predict(inputs, oversample=False)
    crops = np.stack([resized(im, (10, 12))[1:9, 2:10] for im in inputs])
    assert probs.shape == (3, 5)
    assert np.allclose(probs, reference_probs(model, crops), atol=1e-6)
    assert np.allclose(probs.sum(1), 1, atol=1e-6)


def test_classifier_oversample_averages_ten_crops(model):
    clf = caffe.Classifier(*model, image_dims=(10, 12), mean=MEAN, raw_scale=255,
                           channel_swap=(2, 1, 0))
    inputs = images(2, seed=5)
    probs = clf.predict(inputs)
    for image, got in zip(inputs, probs):
        big = resized(image, (10, 12))
        five = [big[t:t + 8, l:l + 8] for t, l in [(0, 0), (0, 4), (2, 0), (2, 4), (1, 2)]]
        crops = np.stack(five + [c[:, ::-1] for c in five])
        assert np.allclose(got, reference_probs(model, crops).mean(0), atol=1e-6)


def test_classifier_defaults_to_the_net_input_size(model):
    clf = caffe.Classifier(*model)
    assert list(clf.image_dims) == list(clf.crop_dims) == [SIZE, SIZE]
    small = caffe.Classifier(*model, image_dims=(4, 4))
    with pytest.raises(ValueError, match=r"image_dims \(4, 4\) are smaller than the net input"):
        small.predict(images(1))


@pytest.fixture()
def detector_files(tmp_path):
    paths = []
    for i, image in enumerate(images(2, shape=(20, 16, 3), seed=9)):
        path = tmp_path / f"im{i}.png"
        cv2.imwrite(str(path), (image[..., ::-1] * 255).round().astype(np.uint8))
        paths.append(str(path))
    return paths


def test_detect_windows_warps_each_window(model, detector_files):
    det = caffe.Detector(*model, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0))
    windows = [np.array([0, 0, 10, 8]), np.array([5, 4, 20, 16])]
    found = det.detect_windows([(detector_files[0], windows), (detector_files[1], windows[:1])])
    assert [d["filename"] for d in found] == [detector_files[0]] * 2 + [detector_files[1]]
    crops = []
    for path, (y0, x0, y1, x1) in [(detector_files[0], windows[0]),
                                   (detector_files[0], windows[1]),
                                   (detector_files[1], windows[0])]:
        image = caffe.io.load_image(path)
        crops.append(resized(image[y0:y1, x0:x1], (SIZE, SIZE)))
    expected = reference_probs(model, np.stack(crops))
    assert np.allclose(np.stack([d["prediction"] for d in found]), expected, atol=1e-6)
    assert np.array_equal(found[1]["window"], windows[1])


def test_context_crop_by_hand(model):
    det = caffe.Detector(*model, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0),
                         context_pad=1)
    image = np.random.default_rng(3).random((20, 20, 3)).astype(np.float32)
    # window 4..11: centre 8, half 4; context scale 8 / (8 - 2) grows it to 3..13 (11 px),
    # inside the image, so the whole input is that box warped to 8 x 8
    assert np.allclose(det.crop(image, np.array([4, 4, 11, 11])),
                       caffe.io.resize_image(image[3:13, 3:13], (8, 8)))
    # window 0..5: box -1..7 (9 px, 8/9 input px each): one row and column off the image,
    # filled with the mean in image space (RGB, /255); then image[0:7, 0:7] unscaled
    crop = det.crop(image, np.array([0, 0, 5, 5]))
    assert crop.shape == (8, 8, 3)
    assert np.allclose(crop[0], MEAN[::-1] / 255) and np.allclose(crop[:, 0], MEAN[::-1] / 255)
    assert np.allclose(crop[1:, 1:], image[0:7, 0:7])


def test_selective_search_names_what_it_needs(model):
    det = caffe.Detector(*model)
    with pytest.raises(ImportError, match="selective_search_ijcv_with_python"):
        det.detect_selective_search(["a.jpg"])
