"""classify on a published Fashion-MNIST model agrees with OpenCV's own Caffe importer
(cv2.dnn.readNetFromCaffe on the same folder) on real test images."""
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from runner.classify import main as classify
from runner.proto import blob_to_array, read_blobproto, read_net
from zoo_helpers import LABELS, REPO, publish_fixture, write_test_pngs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    folder, model, weights = publish_fixture(root)
    return folder, model, write_test_pngs(root, 6)


def parse(stdout: str) -> dict[str, list[tuple[str, float]]]:
    """{image: [(label, probability), ...]} from classify's printout."""
    results, current = {}, None
    for line in stdout.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = results.setdefault(line[:-1], [])
        else:
            prob, label = line.strip().split(None, 1)
            current.append((label, float(prob)))
    return results


def opencv_probabilities(folder, images, flip=False):
    """Softmax output of OpenCV's Caffe importer, preprocessed with cv2.dnn.blobFromImages:
    (image - per-channel mean of mean.binaryproto) * the train_val's transform scale."""
    net = cv2.dnn.readNetFromCaffe(str(folder / "deploy.prototxt"),
                                   str(folder / "fashion-mnist-cnds8.caffemodel"))
    mean = float(blob_to_array(read_blobproto(folder / "mean.binaryproto")).mean())
    scale = next(lp.transform_param.scale for lp in
                 read_net(folder / "train_val.prototxt").layer if lp.type == "Data")
    out = []
    for image in images:
        if flip:
            image = image[:, ::-1].copy()
        net.setInput(cv2.dnn.blobFromImage(image, scalefactor=scale, size=(28, 28),
                                           mean=(mean,)))
        out.append(net.forward()[0].copy())
    return np.array(out)


def top5(probs):
    order = np.argsort(-probs)[:5]
    gaps = -np.diff(np.sort(probs)[::-1][:6])
    assert gaps.min() > 1e-4, "near-tied scores would make the ranking comparison moot"
    return [LABELS[i] for i in order], probs[order]


def test_script_top5_matches_opencv_dnn(setup):
    folder, _, pngs = setup
    run = subprocess.run([sys.executable, "runner/classify.py", str(folder), *map(str, pngs),
                          "--top", "5"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    ours = parse(run.stdout)
    assert list(ours) == [str(p) for p in pngs]
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in pngs]
    reference = opencv_probabilities(folder, images)
    assert np.ptp(reference, axis=0).max() > 1e-2, "scores should depend on the image"
    for path, probs in zip(pngs, reference):
        labels, values = top5(probs)
        assert [label for label, _ in ours[str(path)]] == labels
        np.testing.assert_allclose([p for _, p in ours[str(path)]], values, atol=2e-6)


def test_oversample_averages_the_ten_crops(setup, capsys):
    # 28x28 images and a 28x28 input: the five crops are the image, the mirrors its flip.
    folder, _, pngs = setup
    assert classify([str(folder), *map(str, pngs[:3]), "--oversample", "--top", "10"]) == 0
    ours = parse(capsys.readouterr().out)
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in pngs[:3]]
    reference = (opencv_probabilities(folder, images)
                 + opencv_probabilities(folder, images, flip=True)) / 2
    for path, probs in zip(pngs, reference):
        got = dict(ours[str(path)])
        np.testing.assert_allclose([got[label] for label in LABELS], probs, atol=2e-6)


def test_deploy_with_weights_mean_and_labels_flags(setup, capsys):
    folder, model, pngs = setup
    assert classify([str(folder), str(pngs[0])]) == 0
    from_folder = capsys.readouterr().out
    assert classify([str(model / "deploy.prototxt"), str(pngs[0]),
                     "--weights", str(folder / "fashion-mnist-cnds8.caffemodel"),
                     "--mean", str(folder / "mean.binaryproto"),
                     "--labels", str(folder / "labels.txt")]) == 0
    assert capsys.readouterr().out == from_folder


@pytest.mark.parametrize("content, message", [
    (None, "no such image file"),
    (b"not an image", "OpenCV cannot decode it as an image"),
])
def test_bad_image_is_one_clear_error(setup, tmp_path, capsys, content, message):
    folder, _, pngs = setup
    bad = tmp_path / "bad.png"
    if content is not None:
        bad.write_bytes(content)
    assert classify([str(folder), str(pngs[0]), str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == f"error: {bad}: {message}"


@pytest.mark.parametrize("flags, message", [
    (["--images-dim", "100000,100000"], "error: images resized to (100000, 100000) hold "
     "10000000000 values each, more than Caffe's limit of 2147483647"),
    (["--mean-value", "nan"], "error: 'nan': expected finite numbers"),
    (["--images-dim", "30,x"], "error: '30,x': expected comma-separated numbers"),
])
def test_bad_preprocessing_flags_are_one_clear_error(setup, capsys, flags, message):
    folder, _, pngs = setup
    assert classify([str(folder), str(pngs[0]), *flags]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines()[-1] == message


def test_opencv_failing_to_resize_is_one_clear_error(setup, capsys, monkeypatch):
    folder, _, pngs = setup

    def no_memory(*args, **kwargs):
        raise cv2.error("OpenCV(4.14.0) alloc.cpp:73: error: (-4:Insufficient memory) "
                        "Failed to allocate 40000000000 bytes in function 'OutOfMemoryError'\n")
    monkeypatch.setattr(cv2, "resize", no_memory)
    assert classify([str(folder), str(pngs[0]), "--images-dim", "30,30"]) == 2
    assert re.search(r"^error: cannot resize an image to \(30, 30\): .*Insufficient memory",
                     capsys.readouterr().err.strip().splitlines()[-1])


def test_top_must_be_positive(setup, capsys):
    folder, _, pngs = setup
    with pytest.raises(SystemExit):
        classify([str(folder), str(pngs[0]), "--top", "-3"])
    assert "argument --top: must be >= 1, got -3" in capsys.readouterr().err


def test_missing_model_is_one_clear_error(tmp_path, capsys):
    assert classify([str(tmp_path / "nowhere"), "x.png"]) == 2
    assert capsys.readouterr().err.strip() == \
        f"error: {tmp_path / 'nowhere'}: no such zoo folder or deploy prototxt"


def test_inference_form_and_plain_net_give_the_same_top5(setup, capsys):
    """classify runs Net.for_inference() by default; --plain runs the Net as built."""
    folder, _, pngs = setup
    assert classify([str(folder), *map(str, pngs), "--top", "5"]) == 0
    fast = parse(capsys.readouterr().out)
    assert classify([str(folder), *map(str, pngs), "--top", "5", "--plain"]) == 0
    plain = parse(capsys.readouterr().out)
    assert list(fast) == list(plain) == [str(p) for p in pngs]
    for path in fast:
        assert [label for label, _ in fast[path]] == [label for label, _ in plain[path]]
        np.testing.assert_allclose([p for _, p in fast[path]], [p for _, p in plain[path]],
                                   atol=1e-4)
