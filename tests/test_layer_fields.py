"""Every field of every LayerParameter `*_param` message, and of SolverParameter, is read by
runner/ or listed in docs/layer-fields.md with its reason; the listed ones exist;
WindowData's ignored fields warn as Caffe's ignored data_param fields do."""
import re
from pathlib import Path

import pytest
from google.protobuf import text_format

from runner.layers import layer_type_list
from runner.proto import caffe_pb2, upgrade_net

REPO = Path(__file__).resolve().parents[1]
# pycaffe's layers (Python, MemoryData) are built in the `caffe` package and tested there.
OTHER_PARTS = {"python_param", "memory_data_param"}
# Parameters of fork layer types that are not built here: a net using them is refused.
REFUSED_TYPES: dict[str, str] = {}


def schema_fields():
    for holder in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if holder.message_type is None or not holder.name.endswith("_param") \
                or holder.name in OTHER_PARTS or holder.name in REFUSED_TYPES:
            continue
        for field in holder.message_type.fields:
            yield f"{holder.name}.{field.name}", field.name


def listed_fields() -> set[str]:
    text = (REPO / "docs" / "layer-fields.md").read_text()
    return {row for row in re.findall(r"^\| `([a-z_0-9]+\.[a-z_0-9]+)` \|", text, re.MULTILINE)
            if not row.startswith("solver.")}


def runner_source() -> str:
    return "\n".join(p.read_text() for p in (REPO / "runner").rglob("*.py") if p.name != "caffe_pb2.py")


def test_every_layer_field_is_read_or_listed_with_a_reason():
    source, listed = runner_source(), listed_fields()
    unaccounted = [full for full, name in schema_fields()
                   if full not in listed and not re.search(rf"[.\"']{name}\b", source)]
    assert unaccounted == []


def test_every_solver_field_is_read_or_listed_with_a_reason():
    text = (REPO / "docs" / "layer-fields.md").read_text()
    listed = set(re.findall(r"^\| `solver\.([a-z_0-9]+)` \|", text, re.MULTILINE))
    fields = {f.name for f in caffe_pb2.SolverParameter.DESCRIPTOR.fields}
    assert listed and listed <= fields
    source = runner_source()
    assert [name for name in sorted(fields - listed)
            if not re.search(rf"[.\"']{name}\b", source)] == []


def test_layer_types_whose_fields_go_unchecked_are_refused():
    assert not set(REFUSED_TYPES.values()) & set(layer_type_list())


def test_listed_fields_exist_in_the_schema():
    assert listed_fields() and listed_fields() <= {full for full, _ in schema_fields()}


def test_window_data_ignored_fields_warn_but_its_scale_does_not():
    net = text_format.Parse('''layer { name: "w" type: "WindowData" top: "d" top: "l"
        window_data_param { source: "w.txt" scale: 0.5 crop_size: 9 mirror: true } }''',
                            caffe_pb2.NetParameter())
    with pytest.warns(UserWarning, match=r"window_data_param.crop_size/mirror, which Caffe ignores") as seen:
        upgrade_net(net, "net.prototxt")
    assert "scale" not in str(seen[0].message)
