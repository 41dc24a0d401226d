"""docs/segmentation.md as written: its list command, its SegNet-style net and solver trained
with runner/solve.py on generated pairs, folded and exported to ONNX (ONNX Runtime's scores
against the net's), and its DeepLab-style net built and run."""
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch

from runner import Net

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "segmentation.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOC, re.S)


def _pairs(folder: Path, count: int = 12, side: int = 40) -> None:
    """Images whose label is the third of the blue range each pixel falls in, with a
    border of ignored (255) label pixels."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    (folder / "labels").mkdir()
    for i in range(count):
        image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        label = (image[:, :, 0].astype(int) * 3 // 256).astype(np.uint8)
        label[:2] = 255
        cv2.imwrite(str(folder / "images" / f"{i:02d}.png"), image)
        cv2.imwrite(str(folder / "labels" / f"{i:02d}.png"), label)


def test_the_segnet_example_trains_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # the doc's paths are relative to where its commands run
    _pairs(tmp_path)
    commands = [code for kind, code in BLOCKS if kind == "bash"]
    subprocess.run(["bash", "-c", commands[0]], cwd=tmp_path, check=True)
    assert (tmp_path / "train.txt").read_text().splitlines()[0] == "images/00.png labels/00.png"
    (tmp_path / "seg").mkdir()
    files = {}
    for kind, code in BLOCKS:
        first = code.splitlines()[0]
        if kind == "prototxt" and first.startswith("# "):
            files[first[2:]] = code
            (tmp_path / first[2:]).write_text(code)
    assert set(files) == {"seg/train_val.prototxt", "seg/solver.prototxt"}
    assert commands[1].strip() == "python runner/solve.py seg/solver.prototxt"
    subprocess.run([sys.executable, str(ROOT / "runner" / "solve.py"), "seg/solver.prototxt"],
                   cwd=tmp_path, check=True, capture_output=True)
    weights = tmp_path / "seg" / "segnet_iter_400.caffemodel"
    assert weights.is_file()
    net = Net("seg/train_val.prototxt", phase="TRAIN", weights=weights, source_kwargs={"workers": 0})
    source = net.sources[0]
    batch = next(source)
    blobs = net.eval()(batch)
    source.close()
    assert float(blobs["accuracy"]) > 0.8
    fold = commands[2].replace("\\\n", " ").split()
    assert fold[:3] == ["python", "-m", "runner.tools.bn_statistics"]
    subprocess.run([sys.executable, *fold[1:]], cwd=tmp_path, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    deploy = Net("seg/inference.prototxt", phase="TRAIN", weights="seg/segnet_inference.caffemodel",
                 source_kwargs={"workers": 0})
    assert deploy.layers["conv1_bn"].lp.bn_param.bn_mode == 1
    blobs = deploy.eval()(batch)
    assert float(blobs["accuracy"]) > 0.8   # population statistics do as well
    export = commands[3].replace("\\\n", " ").split()
    assert export[:3] == ["python", "-m", "runner.tools.export_onnx"]
    subprocess.run([sys.executable, *export[1:]], cwd=tmp_path, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    session = ort.InferenceSession("seg/segnet.onnx", providers=["CPUExecutionProvider"])
    (score,) = session.run(["score"], {"data": batch["data"].numpy()})
    expected = blobs["score"].detach().numpy()
    assert np.abs(score - expected).max() <= 1e-4 * np.abs(expected).max()
    assert {n.op_type for n in onnx.load("seg/segnet.onnx").graph.node} >= {"MaxPool", "ScatterElements"}


def test_the_deeplab_example_builds_and_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _pairs(tmp_path)
    subprocess.run(["bash", "-c", [c for k, c in BLOCKS if k == "bash"][0]], cwd=tmp_path, check=True)
    text = next(code for kind, code in BLOCKS if kind == "prototxt" and "deeplab-small" in code)
    (tmp_path / "deeplab.prototxt").write_text(text)
    net = Net("deeplab.prototxt", phase="TRAIN", source_kwargs={"workers": 0})
    source = net.sources[0]
    blobs = net(next(source))
    source.close()
    assert blobs["fc8"].shape == (4, 3, 17, 17) == blobs["label_shrink"].shape[:1] + (3, 17, 17)
    assert blobs["accuracy"].shape == (1, 1, 1, 3) and torch.isfinite(blobs["loss"])
