"""convert_imageset and compute_image_mean against Caffe's conventions, checked with OpenCV
reads of the same files: keys "%08d_NAME", key order, raw/encoded/gray/resize Datums,
reproducible --shuffle, and the mean BlobProto."""
import re

import cv2
import numpy as np
import pytest

from runner.data.datum import DataError, datum_to_array, parse_datum
from runner.data.lmdb_store import LmdbReader
from runner.data.mean import compute_image_mean
from runner.proto import caffe_pb2
from runner.tools import compute_image_mean as mean_tool
from runner.tools import convert_imageset as tool

LIST = ["a.png 3", "sub/b c.jpg 1", "missing.png 4", "e.png 0"]


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    cv2.imwrite(str(root / "a.png"), rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "sub" / "b c.jpg"), rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "e.png"), rng.integers(0, 256, (5, 7), dtype=np.uint8))
    (tmp_path / "list.txt").write_text("\n".join(LIST) + "\n")
    return root


def convert(tmp_path, *flags, db="db"):
    return tool.main([*flags, f"{tmp_path / 'images'}/", str(tmp_path / "list.txt"),
                      str(tmp_path / db)])


def records(path):
    with LmdbReader(path) as reader:
        return [(key, parse_datum(value, key)) for key, value in reader]


def test_raw_records_follow_caffes_keys_order_and_layout(tmp_path, image_folder, capsys):
    assert convert(tmp_path) == 0
    assert "could not open or find file" in capsys.readouterr().err
    got = records(tmp_path / "db")
    # the unreadable line is skipped but keeps its index, as in Caffe
    assert [key for key, _ in got] == ["00000000_a.png", "00000001_sub/b c.jpg",
                                       "00000003_e.png"]
    for (key, datum), (name, label) in zip(got, [("a.png", 3), ("sub/b c.jpg", 1),
                                                  ("e.png", 0)]):
        image = cv2.imread(str(image_folder / name), cv2.IMREAD_COLOR)
        assert (datum.channels, datum.height, datum.width) == (3, *image.shape[:2])
        assert datum.data == image.transpose(2, 0, 1).tobytes()
        assert datum.label == label and datum.HasField("encoded") and not datum.encoded


def test_gray_and_resize(tmp_path, image_folder):
    assert convert(tmp_path, "--gray", "--resize_height", "4", "--resize_width", "3") == 0
    key, datum = records(tmp_path / "db")[0]
    image = cv2.resize(cv2.imread(str(image_folder / "a.png"), cv2.IMREAD_GRAYSCALE), (3, 4))
    assert (datum.channels, datum.height, datum.width) == (1, 4, 3)
    assert datum.data == image.tobytes()


def test_encoded_keeps_file_bytes_and_decodes_to_the_raw_pixels(tmp_path, image_folder):
    assert convert(tmp_path, db="raw") == 0
    assert convert(tmp_path, "--encoded", db="enc") == 0
    assert convert(tmp_path, "--encode_type", "png", db="png") == 0
    raw, enc, png = (records(tmp_path / name) for name in ("raw", "enc", "png"))
    assert enc[0][1].data == (image_folder / "a.png").read_bytes()
    assert enc[1][1].data == (image_folder / "sub" / "b c.jpg").read_bytes()
    assert png[1][1].data[:4] == b"\x89PNG"            # the JPEG re-encoded as PNG
    for (_, r), (_, e), (_, p) in zip(raw, enc, png):
        assert e.encoded and p.encoded and e.label == r.label
        pixels = datum_to_array(r, "raw")
        # stored files decode as they are (e.png is a gray PNG): force colour to compare
        np.testing.assert_array_equal(datum_to_array(p, "png", cv2.IMREAD_COLOR), pixels)
        np.testing.assert_array_equal(datum_to_array(e, "enc", cv2.IMREAD_COLOR), pixels)
    assert datum_to_array(enc[2][1], "enc").shape == (1, 5, 7)


def test_shuffle_is_reproducible_with_its_seed(tmp_path, image_folder):
    lines = [f"a.png {i}" for i in range(12)]
    (tmp_path / "list.txt").write_text("\n".join(lines))
    orders = {}
    for db, seed in (("s1", "1"), ("s1b", "1"), ("s2", "2")):
        assert convert(tmp_path, "--shuffle", "--seed", seed, db=db) == 0
        got = records(tmp_path / db)
        assert [key for key, _ in got] == [f"{i:08d}_a.png" for i in range(12)]
        orders[db] = [datum.label for _, datum in got]
    assert orders["s1"] == orders["s1b"]
    assert sorted(orders["s1"]) == list(range(12))
    assert orders["s1"] != orders["s2"] and orders["s1"] != list(range(12))


def test_bad_invocations_are_refused_with_reasons(tmp_path, image_folder, capsys):
    assert convert(tmp_path) == 0
    assert convert(tmp_path) == 2
    assert "already exists" in capsys.readouterr().err
    assert convert(tmp_path, "--check_size", db="sized") == 2
    assert "e.png: image has 105 values, the first has 144" in capsys.readouterr().err
    assert not (tmp_path / "sized").exists()
    with pytest.raises(SystemExit):
        convert(tmp_path, "--backend", "rocksdb", db="rdb")
    assert "argument --backend: invalid choice: 'rocksdb' (choose from 'leveldb', 'lmdb')" \
        in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert convert(tmp_path, db="afile/db") == 2     # an output folder that cannot be made
    assert f"convert_imageset: [Errno 17] File exists: '{tmp_path / 'afile'}'" in capsys.readouterr().err
    assert convert(tmp_path, "--resize_height", "4", "--resize_width", "4", db="even") == 0
    assert mean_tool.main([str(tmp_path / "even"), str(tmp_path / "afile" / "m.binaryproto")]) == 2
    assert f"compute_image_mean: [Errno 17] File exists: '{tmp_path / 'afile'}'" in capsys.readouterr().err
    (tmp_path / "list.txt").write_text("a.png three\n")
    assert convert(tmp_path, db="bad") == 2
    assert "list.txt:1: expected 'NAME LABEL'" in capsys.readouterr().err


def test_resize_past_caffes_limit_or_memory_is_refused_naming_it(tmp_path, image_folder, capsys,
                                                                   monkeypatch):
    assert convert(tmp_path, "--resize_height", "100000", "--resize_width", "100000", db="huge") == 2
    assert ("--resize_height/--resize_width: a 100000 x 100000 colour image holds 30000000000 "
            "values, more than Caffe's limit of 2147483647") in capsys.readouterr().err
    assert not (tmp_path / "huge").exists()

    def no_memory(*args, **kwargs):
        raise cv2.error("OpenCV(4.14.0) alloc.cpp:73: error: (-4:Insufficient memory) "
                        "Failed to allocate 30000000000 bytes in function 'OutOfMemoryError'\n")
    monkeypatch.setattr(cv2, "resize", no_memory)
    assert convert(tmp_path, "--resize_height", "30", "--resize_width", "30", db="oom") == 2
    assert re.search(r"a.png: cannot resize to 30 x 30: .*Insufficient memory",
                     capsys.readouterr().err)


def test_compute_image_mean_matches_numpy_and_caffes_blob(tmp_path, image_folder, capsys):
    (tmp_path / "list.txt").write_text("a.png 0\nsub/b c.jpg 1\na.png 2\n")
    assert convert(tmp_path, db="raw") == 0
    assert convert(tmp_path, "--encoded", db="enc") == 0
    images = [cv2.imread(str(image_folder / n)).transpose(2, 0, 1)
              for n in ("a.png", "sub/b c.jpg", "a.png")]
    expected = (np.sum(images, axis=0, dtype=np.float64) / 3).astype(np.float32)
    assert mean_tool.main([str(tmp_path / "raw"), str(tmp_path / "mean.binaryproto")]) == 0
    blob = caffe_pb2.BlobProto.FromString((tmp_path / "mean.binaryproto").read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 6, 8)
    np.testing.assert_array_equal(np.asarray(blob.data, np.float32).reshape(3, 6, 8), expected)
    out = capsys.readouterr().out
    for c in range(3):
        assert f"mean_value channel [{c}]: {expected[c].mean():g}" in out
    assert compute_image_mean(tmp_path / "enc") == blob          # encoded Datums decoded
    (tmp_path / "list.txt").write_text("a.png 0\ne.png 1\n")
    assert convert(tmp_path, db="sizes") == 0
    with pytest.raises(DataError, match="key '00000001_e.png': image is 3 x 5 x 7"):
        compute_image_mean(tmp_path / "sizes")
