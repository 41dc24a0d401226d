"""Per-layer tables of a prototxt net: top shapes, learnable parameters, multiply-adds.

Layers are followed in prototxt order for one phase by runner.graph.infer_net_shapes;
Data layers take their top shapes from the caller (the dataset).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from runner.deep_supervision import aux_branch
from runner.graph import infer_net_shapes
from runner.proto import caffe_pb2, check_bottoms, filter_net
from runner.shapes import LayerShapes, Shape, ShapeError


@dataclass(frozen=True)
class Row:
    """One layer of a table."""
    name: str
    type: str
    tops: tuple[Shape, ...]
    blobs: tuple[Shape, ...]   # learnable blobs in Caffe's order
    macs: int

    @property
    def params(self) -> int:
        return sum(math.prod(b) for b in self.blobs)


def shape_table(net: caffe_pb2.NetParameter, phase: str,
                data_shapes: dict[str, Shape] | None = None) -> list[Row]:
    """Rows for every layer of `net` in `phase` ("TRAIN"/"TEST"); `data_shapes` gives the
    tops of Data layers by blob name. A miswired net raises ProtoError, a layer whose
    parameters do not fit its bottoms ShapeError, both naming the layer."""
    net = filter_net(net, phase)
    check_bottoms(net)
    data_shapes = data_shapes or {}

    def data_tops(lp, _bottoms) -> LayerShapes | None:
        if lp.type != "Data":
            return None
        missing = [t for t in lp.top if t not in data_shapes]
        if missing:
            raise ShapeError(f"layer '{lp.name}': no data shape given for top(s) {missing}")
        return LayerShapes([data_shapes[t] for t in lp.top])

    return [Row(lp.name, lp.type, tuple(map(tuple, s.tops)), tuple(map(tuple, s.blobs)), s.macs)
            for lp, s in infer_net_shapes(net, data_tops).layers]


def _shape(shape: Shape) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"


def format_table(rows: list[Row], title: str) -> str:
    """A fixed-width text table with a totals line."""
    header = ("layer", "type", "top shape", "params", "MACs")
    body = [(r.name, r.type, ", ".join(_shape(t) for t in r.tops), f"{r.params:,}", f"{r.macs:,}")
            for r in rows]
    total = ("total", "", "", f"{sum(r.params for r in rows):,}", f"{sum(r.macs for r in rows):,}")
    widths = [max(len(line[i]) for line in [header, *body, total]) for i in range(5)]

    def line(cells):
        left = "  ".join(c.ljust(w) for c, w in zip(cells[:3], widths))
        right = "  ".join(c.rjust(w) for c, w in zip(cells[3:], widths[3:]))
        return f"{left}  {right}"

    rule = "-" * len(line(header))
    return "\n".join([title, line(header), rule, *map(line, body), rule, line(total)])


def aux_cost(rows: list[Row], batch: int) -> tuple[int, int, int]:
    """(branches, learnable parameters, multiply-adds per image) of the supervision branches."""
    aux = [r for r in rows if aux_branch(r.name) is not None]
    branches = {aux_branch(r.name) for r in aux}
    return len(branches), sum(r.params for r in aux), sum(r.macs for r in aux) // batch
