"""SSD's box annotations as Caffe's convert_annoset reads them (weiliu89/caffe util/io.cpp):
a LabelMap prototxt (class name -> label), and per image a Pascal VOC XML file or a text file
of "label xmin ymin xmax ymax" lines, both in pixels, turned into AnnotationGroups of boxes
normalised by the image size: one group per label in order of first appearance, instance ids
counting within each group."""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from runner.data.datum import DataError
from runner.proto import ProtoError, caffe_pb2, read_text


def read_label_map(path: str | Path, strict: bool = False) -> dict[str, int]:
    """name -> label of a LabelMap prototxt (MapNameToLabel); `strict` refuses a name given
    twice, else the last one wins, as the fork's check_label flag."""
    try:
        label_map = read_text(path, caffe_pb2.LabelMap)
    except ProtoError as exc:
        raise DataError(f"cannot read the label map: {exc}") from None
    names: dict[str, int] = {}
    for item in label_map.item:
        if strict and item.name in names:
            raise DataError(f"{path}: the name '{item.name}' is listed twice (--check_label)")
        names[item.name] = item.label
    if not names:
        raise DataError(f"{path}: the label map lists no item")
    return names


def _add_box(groups: list[caffe_pb2.AnnotationGroup], label: int, box, difficult: bool) -> None:
    """The annotation into its label's group (a new group for a new label), with the next
    instance id of that group."""
    group = next((g for g in groups if g.group_label == label), None)
    if group is None:
        group = caffe_pb2.AnnotationGroup(group_label=label)
        groups.append(group)
    instance = group.annotation[-1].instance_id + 1 if len(group.annotation) else 0
    annotation = group.annotation.add(instance_id=instance)
    annotation.bbox.xmin, annotation.bbox.ymin, annotation.bbox.xmax, annotation.bbox.ymax = box
    annotation.bbox.difficult = difficult


def _normalised(pixels, width: int, height: int) -> list[float]:
    """Pixel corners divided by the image size in float, as the fork's static_cast<float>."""
    xmin, ymin, xmax, ymax = (np.float32(v) for v in pixels)
    return [float(xmin / np.float32(width)), float(ymin / np.float32(height)),
            float(xmax / np.float32(width)), float(ymax / np.float32(height))]


def voc_annotation(path: str, image_size: tuple[int, int], names: dict[str, int]
                   ) -> list[caffe_pb2.AnnotationGroup]:
    """ReadXMLToAnnotatedDatum: every <object>'s <name>, <difficult> and <bndbox>, normalised
    by <size> (the image's own (height, width) where the file gives none)."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as exc:
        raise DataError(f"{path}: cannot read the annotation XML: {exc}") from None
    try:
        height = int(root.findtext("size/height", str(image_size[0])))
        width = int(root.findtext("size/width", str(image_size[1])))
    except ValueError as exc:
        raise DataError(f"{path}: <size> is not a whole number of pixels ({exc})") from None
    if width <= 0 or height <= 0:
        raise DataError(f"{path}: no valid image width/height ({width} x {height})")
    groups: list[caffe_pb2.AnnotationGroup] = []
    for number, obj in enumerate(root.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if name not in names:
            raise DataError(f"{path}: object {number} is named '{name}', which the label map "
                            f"does not list")
        try:
            corners = [float(obj.findtext(f"bndbox/{c}", "0")) for c in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as exc:
            raise DataError(f"{path}: object {number} ('{name}') has a non-numeric box "
                            f"corner ({exc})") from None
        _add_box(groups, names[name], _normalised(corners, width, height),
                 (obj.findtext("difficult") or "").strip() == "1")
    return groups


def text_annotation(path: str, image_size: tuple[int, int]) -> list[caffe_pb2.AnnotationGroup]:
    """ReadTxtToAnnotatedDatum: "label xmin ymin xmax ymax" per line (MS COCO's conversion),
    normalised by the image's size; never difficult."""
    try:
        tokens = Path(path).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the annotation text: {exc}") from None
    if len(tokens) % 5:
        raise DataError(f"{path}: expected 'label xmin ymin xmax ymax' lines, got "
                        f"{len(tokens)} values")
    groups: list[caffe_pb2.AnnotationGroup] = []
    height, width = image_size
    for row in range(0, len(tokens), 5):
        try:
            label, corners = int(tokens[row]), [float(t) for t in tokens[row + 1:row + 5]]
        except ValueError:
            raise DataError(f"{path}: box {row // 5 + 1} is not 'label xmin ymin xmax ymax': "
                            f"{' '.join(tokens[row:row + 5])}") from None
        _add_box(groups, label, _normalised(corners, width, height), False)
    return groups
