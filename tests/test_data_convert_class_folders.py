"""convert_imageset's folder form: one subfolder per class becomes labels in class-name
order, written to labels.txt beside the LMDB; a later set (validation) follows that list."""
import cv2
import numpy as np
import pytest

from runner.data.datum import datum_to_array, parse_datum
from runner.data.lmdb_store import LmdbReader
from runner.tools import convert_imageset as tool


def write_tree(root, classes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """`count` random 6x5 colour PNGs per class subfolder; returns them by relative name."""
    rng = np.random.default_rng(seed)
    images = {}
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            cv2.imwrite(str(root / name / f"img{i}.png"), image)
            images[f"{name}/img{i}.png"] = image
    return images


def records(path):
    with LmdbReader(path) as reader:
        return [(key, parse_datum(value, key)) for key, value in reader]


def test_class_folders_become_labels_and_labels_txt(tmp_path):
    images = write_tree(tmp_path / "train", {"zebra": 2, "ant": 3, "moth": 1})
    (tmp_path / "train" / ".hidden").mkdir()
    out = tmp_path / "data"
    assert tool.main([str(tmp_path / "train"), str(out / "train_lmdb")]) == 0
    assert (out / "labels.txt").read_text() == "ant\nmoth\nzebra\n"
    got = records(out / "train_lmdb")
    names = [f"ant/img{i}.png" for i in range(3)] + ["moth/img0.png"] + [f"zebra/img{i}.png" for i in range(2)]
    assert [key for key, _ in got] == [f"{i:08d}_{n}" for i, n in enumerate(names)]
    for (_, datum), name in zip(got, names):
        assert datum.label == ["ant", "moth", "zebra"].index(name.split("/")[0])
        np.testing.assert_array_equal(datum_to_array(datum, name), images[name].transpose(2, 0, 1))
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "train_lmdb"]  # no temporary left


def test_validation_set_follows_the_written_class_list(tmp_path):
    write_tree(tmp_path / "train", {"b": 1, "c": 1, "a": 1})
    write_tree(tmp_path / "val", {"c": 2, "a": 1}, seed=1)   # no 'b' images in val
    out = tmp_path / "data"
    assert tool.main(["--shuffle", str(tmp_path / "train"), str(out / "train_lmdb")]) == 0
    assert tool.main([str(tmp_path / "val"), str(out / "val_lmdb")]) == 0
    assert (out / "labels.txt").read_text() == "a\nb\nc\n"
    labels = {key.split("_", 1)[1]: d.label for key, d in records(out / "val_lmdb")}
    assert labels == {"a/img0.png": 0, "c/img0.png": 2, "c/img1.png": 2}


def test_unknown_class_and_flat_folder_are_clear_errors(tmp_path, capsys):
    write_tree(tmp_path / "train", {"a": 1})
    write_tree(tmp_path / "val", {"a": 1, "dog": 1})
    out = tmp_path / "data"
    assert tool.main([str(tmp_path / "train"), str(out / "train_lmdb")]) == 0
    assert tool.main([str(tmp_path / "val"), str(out / "val_lmdb")]) == 2
    assert "subfolder(s) ['dog'] are not in the class list ['a']" in capsys.readouterr().err
    assert not (out / "val_lmdb").exists()
    flat = tmp_path / "flat"
    flat.mkdir()
    cv2.imwrite(str(flat / "x.png"), np.zeros((2, 2), np.uint8))
    assert tool.main([str(flat), str(out / "flat_lmdb")]) == 2
    assert "has no class subfolders" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / "train")])
