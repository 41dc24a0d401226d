"""Shared by the reproduce tests: data where the generated nets look for it (relative to
a working directory), tiny protocol files, and an independent reader of `caffe test` logs."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from runner.data.datum import image_to_datum
from runner.data.lmdb_store import write_lmdb
from runner.tools import fashion_mnist
from runner.tools.compute_image_mean import write_image_mean

FASHION_SOURCE = Path(fashion_mnist.SOURCE_DIR)


def random_lmdb(path: Path, count: int, channels: int, side: int, classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (side, side) if channels == 1 else (side, side, channels)
    write_lmdb(path, [(f"{i:08d}", image_to_datum(rng.integers(0, 256, shape, dtype=np.uint8),
                                                  int(rng.integers(classes))).SerializeToString())
                      for i in range(count)], total=count)


def fashion_data(root: Path, limit: int = 100) -> str:
    """data/fashion-mnist/{train,test}_lmdb and mean under `root`: the first `limit`
    real images per split when Debian's dataset is installed, else random 28x28 ones.
    Returns which."""
    out = root / "data" / "fashion-mnist"
    if FASHION_SOURCE.is_dir():
        fashion_mnist.import_fashion_mnist(out, FASHION_SOURCE, limit=limit)
        return "real"
    random_lmdb(out / "train_lmdb", limit, 1, 28, 10, 0)
    random_lmdb(out / "test_lmdb", limit, 1, 28, 10, 1)
    write_image_mean(str(out / "train_lmdb"), str(out / "mean.binaryproto"))
    return "synthetic"


def imagenet_data(root: Path, train: int = 4, val: int = 2) -> None:
    """A few random 3x256x256 Datums where the generated ImageNet nets read them."""
    out = root / "data" / "imagenet"
    random_lmdb(out / "ilsvrc12_train_lmdb", train, 3, 256, 1000, 0)
    random_lmdb(out / "ilsvrc12_val_lmdb", val, 3, 256, 1000, 1)
    write_image_mean(str(out / "ilsvrc12_train_lmdb"), str(out / "imagenet_mean.binaryproto"))


CLAIMS = {"margin": 0.5, "poor_within": 10.0, "paper_gap_8": 1.0}


def write_config(path: Path, dataset: str, preset: dict, nets: list[dict] | None = None) -> Path:
    """A protocol file with one preset `tiny` for `dataset`."""
    defaults = {
        "nets": nets or [{"label": "CNN-8", "variant": "cnn", "depth": 8},
                         {"label": "CNDS-8", "variant": "cnds", "depth": 8}],
        "init": "released", "width": 0, "seeds": [1], "epochs": "paper", "lr_drop_at": 0.5,
        "test_interval": 0, "test_iter": 1, "final_test_iter": 1, "display": 1, "batch": 2,
        "probe": None, "claims": CLAIMS}
    path.write_text(yaml.safe_dump({"defaults": defaults, "datasets": {
        dataset: {"default_preset": "tiny", "presets": {"tiny": preset}}}}))
    return path


_ACCURACY = re.compile(r"caffe\.cpp:\d+\] (accuracy|accuracy_top5) = ([0-9.eE+-]+)$")


def logged_accuracies(test_log: Path) -> dict[str, float]:
    """The averaged accuracies a `solve.py test` log ends with (not the per-batch lines)."""
    found = {}
    for line in test_log.read_text().splitlines():
        m = _ACCURACY.search(line.strip())
        if m:
            found[m.group(1)] = float(m.group(2))
    return found


def table_rows(report: str) -> dict[str, list[str]]:
    """The Table 1 rows of a report, by net label, as cell lists."""
    section = report.split("## Table 1", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 3 and cells[0] not in ("Net", "---"):
            rows[cells[0]] = cells
    return rows
