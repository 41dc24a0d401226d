"""The Fashion-MNIST importer on Debian's real IDX files: `make data` writes 60000/10000 raw
28 x 28 Datums with 6000/1000 per class, the mean of the train images, the class names, and
does nothing the second time; exported PNGs run through convert_imageset rebuild the same
database byte for byte."""
import gzip
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from runner.data.datum import parse_datum
from runner.data.lmdb_store import LmdbReader
from runner.proto import caffe_pb2
from runner.tools import convert_imageset, fashion_mnist

SOURCE = Path(fashion_mnist.SOURCE_DIR)
REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not SOURCE.is_dir(), reason=f"{SOURCE} absent: apt-get install {fashion_mnist.PACKAGE}")]


def make_data(out):
    return subprocess.run(["make", "data", f"FASHION_OUT={out}"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("fashion") / "fashion-mnist"
    make_data(out)
    return out


@pytest.mark.parametrize("split,count", [("train", 60000), ("test", 10000)])
def test_counts_labels_and_layout(imported, split, count):
    with LmdbReader(imported / f"{split}_lmdb") as reader:
        keys, labels = [], Counter()
        for key, value in reader:
            datum = parse_datum(value, key)
            assert (datum.channels, datum.height, datum.width, datum.encoded) == (1, 28, 28,
                                                                                  False)
            keys.append(key)
            labels[datum.label] += 1
    assert len(keys) == count
    assert keys[0] == f"00000000_{split}/00000.png"
    assert keys[-1] == f"{count - 1:08d}_{split}/{count - 1:05d}.png"
    assert labels == {label: count // 10 for label in range(10)}


def test_mean_and_class_names(imported):
    with gzip.open(SOURCE / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(60000, 28, 28)
    blob = caffe_pb2.BlobProto.FromString((imported / "mean.binaryproto").read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 1, 28, 28)
    expected = (images.sum(0, dtype=np.float64) / 60000).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(blob.data, np.float32).reshape(28, 28), expected)
    names = (imported / "labels.txt").read_text().splitlines()
    assert names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                     "Sneaker", "Bag", "Ankle boot"]


def test_make_data_is_idempotent(imported):
    files = sorted(p for p in imported.rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    assert "Nothing to be done" in make_data(imported)
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_exported_pngs_rebuild_the_database(tmp_path):
    fashion_mnist.main(["--out", str(tmp_path / "fm"), "--limit", "25", "--images-dir",
                        str(tmp_path / "png"), "--list", str(tmp_path / "test.txt")])
    assert (tmp_path / "test.txt").read_text().splitlines()[0].startswith("test/00000.png ")
    assert convert_imageset.main(["--gray", f"{tmp_path / 'png'}/", str(tmp_path / "test.txt"),
                                  str(tmp_path / "rebuilt")]) == 0
    with LmdbReader(tmp_path / "fm" / "test_lmdb") as a, \
            LmdbReader(tmp_path / "rebuilt") as b:
        assert len(a) == 25 and list(a) == list(b)
