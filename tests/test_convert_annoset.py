"""convert_annoset (weiliu89/caffe tools/convert_annoset.cpp): images and Pascal VOC XML or
text box files into AnnotatedDatum records, boxes normalised by the image size in float,
grouped by label in order of appearance with instance ids per group, as the fork's
ReadXMLToAnnotatedDatum / ReadTxtToAnnotatedDatum; bad annotations named."""
import cv2
import numpy as np
import pytest

from runner.data.lmdb_store import LmdbReader
from runner.proto import caffe_pb2
from runner.tools.convert_annoset import main

LABEL_MAP = '''item { name: "none_of_the_above" label: 0 display_name: "background" }
item { name: "cat" label: 1 display_name: "cat" }
item { name: "dog" label: 2 display_name: "dog" }
'''
VOC = '''<annotation><filename>a.png</filename>
  <size><width>50</width><height>40</height><depth>3</depth></size>
  <object><name>cat</name><difficult>0</difficult><bndbox><xmin>3</xmin><ymin>4</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>
  <object><name>dog</name><difficult>1</difficult><bndbox><xmin>10</xmin><ymin>0</ymin><xmax>49</xmax><ymax>39</ymax></bndbox></object>
  <object><name>cat</name><bndbox><xmin>7</xmin><ymin>9</ymin><xmax>11</xmax><ymax>13.5</ymax></bndbox></object>
</annotation>'''


def _records(db):
    with LmdbReader(db) as reader:
        out = []
        for key, value in reader.raw_items():
            record = caffe_pb2.AnnotatedDatum()
            record.ParseFromString(value)
            out.append((key.decode(), record))
        return out


def _setup(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((40, 50, 3), 7, np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.full((40, 50, 3), 9, np.uint8))
    (tmp_path / "a.xml").write_text(VOC)
    (tmp_path / "labelmap.prototxt").write_text(LABEL_MAP)


def test_voc_boxes_are_normalised_and_grouped_as_the_fork(tmp_path):
    _setup(tmp_path)
    (tmp_path / "list.txt").write_text("a.png a.xml\nb.png b.xml\n")   # b has no annotation file
    assert main([f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db"), "--anno_type",
                 "detection", "--label_map_file", str(tmp_path / "labelmap.prototxt")]) == 0
    (key_a, a), (key_b, b) = _records(tmp_path / "db")
    assert (key_a, key_b) == ("00000000_a.png", "00000001_b.png")
    assert a.type == caffe_pb2.AnnotatedDatum.BBOX and a.datum.label == -1
    assert (a.datum.channels, a.datum.height, a.datum.width) == (3, 40, 50)
    assert [g.group_label for g in a.annotation_group] == [1, 2]
    cat, dog = a.annotation_group
    assert [x.instance_id for x in cat.annotation] == [0, 1] and dog.annotation[0].instance_id == 0
    f = np.float32
    box = cat.annotation[0].bbox
    assert (box.xmin, box.ymin, box.xmax, box.ymax) == (f(3) / f(50), f(4) / f(40), f(20) / f(50), f(30) / f(40))
    assert cat.annotation[1].bbox.ymax == f(13.5) / f(40) and not cat.annotation[1].bbox.difficult
    assert dog.annotation[0].bbox.difficult and not cat.annotation[0].bbox.difficult
    assert b.type == caffe_pb2.AnnotatedDatum.BBOX and len(b.annotation_group) == 0


def test_text_boxes_and_classification_records(tmp_path):
    _setup(tmp_path)
    (tmp_path / "a.txt").write_text("2 5 6 25 36\n2 0 0 10 10\n1 1 1 2 2\n")
    (tmp_path / "list.txt").write_text("a.png a.txt\n")
    assert main([f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db"), "--anno_type", "detection",
                 "--label_type", "txt", "--label_map_file", str(tmp_path / "labelmap.prototxt"), "--encoded"]) == 0
    [(_, a)] = _records(tmp_path / "db")
    assert a.datum.encoded and [g.group_label for g in a.annotation_group] == [2, 1]
    assert (a.datum.channels, a.datum.height, a.datum.width) == (3, 40, 50)   # as the fork sets them
    assert [x.instance_id for x in a.annotation_group[0].annotation] == [0, 1]
    assert a.annotation_group[0].annotation[0].bbox.xmax == np.float32(25) / np.float32(50)
    (tmp_path / "classes.txt").write_text("a.png 3\nb.png 4\n")
    assert main([f"{tmp_path}/", str(tmp_path / "classes.txt"), str(tmp_path / "cls")]) == 0
    records = _records(tmp_path / "cls")
    assert [r.datum.label for _, r in records] == [3, 4] and not records[0][1].HasField("type")


@pytest.mark.parametrize("xml, message", [
    (VOC.replace("<name>dog</name>", "<name>horse</name>"), r"a.xml: object 2 is named 'horse', which the label map does not list"),
    (VOC.replace("<xmin>3</xmin>", "<xmin>three</xmin>"), r"a.xml: object 1 \('cat'\) has a non-numeric box corner"),
    ("<annotation><object>", r"a.xml: cannot read the annotation XML"),
])
def test_bad_annotations_are_named(tmp_path, capsys, xml, message):
    _setup(tmp_path)
    (tmp_path / "a.xml").write_text(xml)
    (tmp_path / "list.txt").write_text("a.png a.xml\n")
    assert main([f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db"), "--anno_type",
                 "detection", "--label_map_file", str(tmp_path / "labelmap.prototxt")]) == 2
    import re
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "db").exists()


def test_detection_needs_a_label_map(tmp_path, capsys):
    _setup(tmp_path)
    (tmp_path / "list.txt").write_text("a.png a.xml\n")
    assert main([f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db"), "--anno_type", "detection"]) == 2
    assert "needs --label_map_file" in capsys.readouterr().err
