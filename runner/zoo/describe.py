"""The readme body of a published model: architecture, training settings, measured accuracy."""
from __future__ import annotations

import math

from runner.graph import infer_net_shapes
from runner.proto import filter_net
from runner.solver.log_reader import read_history

# Fields that are paths on the publishing machine, not training settings.
_SOLVER_PATHS = {"net", "train_net", "test_net", "snapshot_prefix"}


def architecture_table(deploy) -> str:
    """Markdown table: layer, type, top shape(s) for one image batch, learnable params."""
    rows = ["| layer | type | top shape | params |", "|---|---|---|---|"]
    total = 0
    for lp, shapes in infer_net_shapes(filter_net(deploy, "TEST")).layers:
        params = sum(math.prod(s) for s in shapes.blobs)
        total += params
        tops = ", ".join("×".join(str(d) for d in t) for t in shapes.tops)
        rows.append(f"| {lp.name} | {lp.type} | {tops} | {params:,} |")
    rows.append(f"| **total** | | | **{total:,}** |")
    return "\n".join(rows)


def solver_table(solver) -> str:
    """Markdown table of the settings the solver.prototxt sets (paths left out)."""
    rows = ["| setting | value |", "|---|---|"]
    for field, value in solver.ListFields():
        if field.name in _SOLVER_PATHS or field.message_type is not None:
            continue
        if field.is_repeated:
            shown = ", ".join(_scalar(field, v) for v in value)
        else:
            shown = _scalar(field, value)
        rows.append(f"| {field.name} | {shown} |")
    return "\n".join(rows)


def _scalar(field, value) -> str:
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name
    if isinstance(value, float):
        return f"{value:.6g}"  # float32 fields read back with float64 noise
    return str(value)


def last_test_outputs(log_path) -> tuple[int, dict[str, float]] | None:
    """(iteration, {output: value}) of the last test in a solver's glog-style log, read
    with the solver's own parser (Caffe's parse_log.py patterns); None if it has none."""
    tests = read_history(str(log_path)).test
    if not tests:
        return None
    last = max(points[-1][0] for points in tests.values())
    return last, {name: points[-1][1] for name, points in tests.items() if points[-1][0] == last}
