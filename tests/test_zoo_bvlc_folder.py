"""A Model Zoo folder written by hand the way BVLC's are (front matter only, V1 deploy with
legacy input_dim, no mean, no labels) verifies, loads and classifies like OpenCV's importer."""
import hashlib

import cv2
import numpy as np
import pytest
import torch

from runner import Net
from runner.classify import main as classify
from runner.zoo import load
from runner.zoo.__main__ import main as zoo_cli
from runner.zoo.verify import verify
from zoo_helpers import fashion_images

DEPLOY = """name: "TinyBVLC"
input: "data"
input_dim: 10
input_dim: 3
input_dim: 24
input_dim: 24
layers {
  name: "conv1"  type: CONVOLUTION  bottom: "data"  top: "conv1"
  blobs_lr: 1  blobs_lr: 2
  convolution_param { num_output: 8 kernel_size: 5 stride: 2
                      weight_filler { type: "gaussian" std: 0.002 }
                      bias_filler { type: "constant" value: 0.1 } }
}
layers { name: "relu1"  type: RELU  bottom: "conv1"  top: "conv1" }
layers {
  name: "pool1"  type: POOLING  bottom: "conv1"  top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 }
}
layers {
  name: "fc6"  type: INNER_PRODUCT  bottom: "pool1"  top: "fc6"
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.05 } }
}
layers { name: "prob"  type: SOFTMAX  bottom: "fc6"  top: "prob" }
"""


@pytest.fixture(scope="module")
def bvlc(tmp_path_factory):
    """(folder, colour PNGs): the folder holds only readme.md, deploy.prototxt, caffemodel."""
    root = tmp_path_factory.mktemp("bvlc")
    folder = root / "tiny_bvlc"
    folder.mkdir()
    (folder / "deploy.prototxt").write_text(DEPLOY)
    torch.manual_seed(7)
    Net(str(folder / "deploy.prototxt")).save_caffemodel(str(folder / "tiny.caffemodel"))
    sha1 = hashlib.sha1((folder / "tiny.caffemodel").read_bytes()).hexdigest()
    (folder / "readme.md").write_text(f"""---
name: Tiny BVLC-style model
caffemodel: tiny.caffemodel
caffemodel_url: http://example.org/tiny.caffemodel
license: unrestricted
sha1: {sha1}
caffe_commit: 709dc15af4a06bebda027c1eb2b3f3e3375d5077
---

A hand-written folder in the Model Zoo's original layout.
""")
    grey = fashion_images("t10k-images-idx3-ubyte.gz", 9)
    pngs = []
    for i in range(3):  # colour images: three real images as the B, G, R planes
        pngs.append(root / f"colour_{i}.png")
        cv2.imwrite(str(pngs[-1]), cv2.merge(list(grey[3 * i:3 * i + 3])))
    return folder, pngs


def opencv_forward(folder, crops):
    """prob of OpenCV's Caffe importer for H x W x 3 crops (no mean, scale 1; resized as
    float32, as Caffe's classifier resizes float images)."""
    net = cv2.dnn.readNetFromCaffe(str(folder / "deploy.prototxt"),
                                   str(folder / "tiny.caffemodel"))
    out = []
    for crop in crops:
        net.setInput(cv2.dnn.blobFromImage(np.ascontiguousarray(crop, np.float32), size=(24, 24)))
        out.append(net.forward()[0].copy())
    return np.array(out)


def printed(stdout):
    """{image: {label: probability}} from classify's printout."""
    results, current = {}, None
    for line in stdout.splitlines():
        if not line.startswith(" "):
            current = results.setdefault(line[:-1], {})
        else:
            prob, label = line.split(None, 1)
            current[label] = float(prob)
    return results


def test_bvlc_folder_verifies_and_loads_with_defaults_said(bvlc):
    folder, _ = bvlc
    assert verify(folder).summary().startswith("OK Tiny BVLC-style model: tiny.caffemodel")
    net, info = load(folder)
    assert (info.input_blob, info.input_shape, info.output_blob) == \
        ("data", (10, 3, 24, 24), "prob")
    assert info.image_dims == (24, 24) and info.mean is None and info.input_scale is None
    assert info.labels == [f"class {i}" for i in range(6)]
    assert sorted(note.split(" file")[0] for note in info.notes) == ["no labels", "no mean"]
    assert net.input_names == ["data"]


def test_bvlc_folder_classifies_like_opencv(bvlc, capsys):
    folder, pngs = bvlc
    assert classify([str(folder), *map(str, pngs), "--top", "6"]) == 0
    out, err = capsys.readouterr()
    assert "note: no mean file" in err and "note: no labels file" in err
    ours = printed(out)
    images = [cv2.imread(str(p)) for p in pngs]  # 28x28 -> resized to the 24x24 input
    reference = opencv_forward(folder, images)
    assert np.ptp(reference, axis=0).max() > 1e-2
    for path, probs in zip(pngs, reference):
        assert -np.diff(np.sort(probs)[::-1]).min() > 1e-4, "near ties make ranks moot"
        labels = [f"class {i}" for i in np.argsort(-probs)]
        assert list(ours[str(path)]) == labels
        np.testing.assert_allclose([ours[str(path)][l] for l in labels],
                                   np.sort(probs)[::-1], atol=2e-6)


def test_oversample_is_corners_centre_and_mirrors(bvlc, capsys):
    folder, pngs = bvlc
    assert classify([str(folder), *map(str, pngs), "--images-dim", "28,28",
                     "--oversample", "--top", "6"]) == 0
    ours = printed(capsys.readouterr().out)
    for path in pngs:
        image = cv2.imread(str(path))
        offsets = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]
        crops = [image[y:y + 24, x:x + 24] for y, x in offsets]
        crops += [c[:, ::-1] for c in crops]
        expected = opencv_forward(folder, crops).mean(0)
        np.testing.assert_allclose([ours[str(path)][f"class {i}"] for i in range(6)],
                                   expected, atol=2e-6)


def test_show_prints_front_matter_and_the_defaults(bvlc, capsys):
    folder, _ = bvlc
    assert zoo_cli(["show", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "caffemodel: tiny.caffemodel" in out and "license: unrestricted" in out
    assert "input: data 10x3x24x24" in out and "output: prob (6 classes)" in out
    assert "mean per channel: None" in out
    assert sum(line.startswith("note: ") for line in out) == 2


def test_gpu_flag_matches_cpu_or_says_there_is_no_gpu(bvlc, capsys):
    folder, pngs = bvlc
    status = classify([str(folder), str(pngs[0]), "--gpu"])
    out, err = capsys.readouterr()
    if not torch.cuda.is_available():
        assert status == 2 and err.strip() == \
            "error: --gpu given but no CUDA device is available"
        return
    assert status == 0
    assert classify([str(folder), str(pngs[0])]) == 0
    cpu = printed(capsys.readouterr().out)[str(pngs[0])]
    gpu = printed(out)[str(pngs[0])]
    assert list(gpu) == list(cpu)
    np.testing.assert_allclose(list(gpu.values()), list(cpu.values()), atol=2e-5)
