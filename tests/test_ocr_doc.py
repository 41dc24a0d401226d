"""docs/ocr.md as written: its prepare_ocr.py, nets, solvers, read_lines.py and
read_lines_onnx.py written out from the page, its commands run as they stand (python from
this environment, runner/solve.py from this repository) on text lines drawn with
cv2.putText, both nets trained with the solver and both deploy nets reading the validation
lines, through pycaffe and, exported, through ONNX Runtime."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "ocr.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOC, re.S)
FILES = {code.splitlines()[0][2:]: code for kind, code in BLOCKS
         if kind in ("python", "prototxt") and code.startswith("# ")}
COMMANDS = [code for kind, code in BLOCKS if kind == "bash"]


def _lines(folder: Path, split: str, count: int, seed: int) -> None:
    """`count` grey lines of 3 to 6 random digits, of varied width, offset, ink and paper,
    and their list file, as the page describes it."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(exist_ok=True)
    rows = []
    for i in range(count):
        text = "".join(rng.choice(list("0123456789"), rng.integers(3, 7)))
        image = np.full((24, 12 * len(text) + int(rng.integers(8, 24))), int(rng.integers(200, 256)),
                        np.uint8)
        cv2.putText(image, text, (int(rng.integers(2, 6)), int(rng.integers(17, 21))),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.55, int(rng.integers(0, 60)), 1, cv2.LINE_AA)
        name = f"images/{split}_{i:03d}.png"
        cv2.imwrite(str(folder / name), image)
        rows.append(f"{name} {text}\n")
    (folder / f"{split}_list.txt").write_text("".join(rows))


def _run(command: str, cwd: Path) -> str:
    """A bash block of the page, with `python` this environment's and runner/solve.py this
    repository's."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-ec", command.replace("runner/solve.py", str(ROOT / "runner" / "solve.py"))],
                          cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _read_exactly(stdout: str, truths: dict[str, str]) -> float:
    """read_lines.py's closing fraction, checked against its per-line output."""
    *lines, last = stdout.strip().splitlines()
    read = dict(line.split(" ", 1) if " " in line else (line, "") for line in lines)
    assert read.keys() == truths.keys()
    right = sum(read[path] == truth for path, truth in truths.items())
    assert last == f"read exactly: {right} of {len(truths)} = {right / len(truths):.3f}"
    return right / len(truths)


def _train_and_read(tmp_path: Path, net: str, iterations: int, train: str, read: str,
                    read_onnx: str, truths: dict[str, str]) -> tuple[float, float]:
    """Run the guide's training command for `net`, check its result file's TEST accuracy,
    then its reading command on the weights it wrote, then its ONNX export and reading
    through ONNX Runtime, which must print the same lines; (accuracy, fraction read exactly)."""
    _run(train, tmp_path)
    result = json.loads((tmp_path / "ocr" / f"{net}_result.json").read_text())
    assert result["status"] == "done" and result["iterations"] == iterations
    accuracy = result["tests"][0]["final"]["accuracy"]
    assert accuracy > 0.9, result["tests"]
    assert f"ocr/{net}_iter_{iterations}.caffemodel" in read
    read_out = _run(read, tmp_path)
    read_exactly = _read_exactly(read_out, truths)
    assert read_exactly > 0.9
    assert f"ocr/{net}_iter_{iterations}.caffemodel ocr/{net}.onnx" in read_onnx
    assert _run(read_onnx, tmp_path) == read_out
    return accuracy, read_exactly


def test_the_ocr_guide_trains_and_reads_as_written(tmp_path):
    _lines(tmp_path, "train", 400, 1)
    _lines(tmp_path, "val", 100, 2)
    truths = dict(line.split(" ", 1) for line in (tmp_path / "val_list.txt").read_text().splitlines())
    assert set(FILES) == {"prepare_ocr.py", "read_lines.py", "read_lines_onnx.py", "ocr/train_val.prototxt",
                          "ocr/solver.prototxt", "ocr/deploy.prototxt", "ocr/blstm.prototxt",
                          "ocr/blstm_solver.prototxt", "ocr/blstm_deploy.prototxt"}
    (tmp_path / "ocr").mkdir()
    for name, code in FILES.items():
        (tmp_path / name).write_text(code)
    assert len(COMMANDS) == 8
    assert COMMANDS[1].strip() == "python runner/solve.py train --solver ocr/solver.prototxt"
    assert COMMANDS[5].strip() == "python runner/solve.py train --solver ocr/blstm_solver.prototxt"

    # the data: 24 x 96 grey lines in [0, 1], label rows of T = 24 padded with the blank, 10
    _run(COMMANDS[0], tmp_path)
    assert (tmp_path / "ocr" / "train.txt").read_text() == "ocr/train_0.h5\n"
    with h5py.File(tmp_path / "ocr" / "val_0.h5") as f:
        data, label = f["data"][:], f["label"][:]
    assert data.shape == (100, 1, 24, 96) and data.dtype == np.float32 and 0 <= data.min() < data.max() <= 1
    first = truths["images/val_000.png"]
    assert label.shape == (100, 24)
    assert label[0].tolist() == [int(c) for c in first] + [10] * (24 - len(first))

    # CRNN with CtcLoss: the solver's TEST accuracy (exact sequences), then the deploy net
    crnn_accuracy, crnn_read = _train_and_read(tmp_path, "crnn", 300, *COMMANDS[1:4], truths)

    # ChWick's form: -1 padding, a BLSTM with CTCLoss, its decoder's edit-distance accuracy
    _run(COMMANDS[4], tmp_path)
    with h5py.File(tmp_path / "ocr" / "val_tm_0.h5") as f:
        assert f["label"][0].tolist() == [int(c) for c in first] + [-1] * (24 - len(first))
    blstm_accuracy, blstm_read = _train_and_read(tmp_path, "blstm", 150, *COMMANDS[5:8], truths)
    print(f"crnn {crnn_accuracy:.3f} / {crnn_read:.3f}, blstm {blstm_accuracy:.3f} / {blstm_read:.3f}")
