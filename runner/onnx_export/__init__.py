"""Export a Net to ONNX: one small group of standard ONNX ops per Caffe layer, computing
what the Net computes in evaluation (Caffe's TEST) mode.

    from runner.onnx_export import export_onnx
    export_onnx(net, "model.onnx")          # or net.export_onnx("model.onnx")
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from runner.atomic import atomic_write_bytes
from runner.onnx_export import (  # noqa: F401  (register converters)
    ctc, detection, elementwise, flownet, forks, plumbing, recurrent, vision)
from runner.onnx_export.graph import GraphBuilder, OnnxExportError
from runner.onnx_export.registry import converter_for, exportable_types

OPSET = 18
BATCH = "batch"

__all__ = ["OPSET", "OnnxExportError", "build_model", "export_onnx", "exportable_types"]


def _last_writers(steps) -> dict[str, int]:
    last = {}
    for i, (_, _, tops) in enumerate(steps):
        for top in tops:
            last[top] = i
    return last


def _input_info(name: str, shape, batch) -> onnx.ValueInfoProto:
    """A graph input: the blob's shape, its first axis symbolic unless the batch is fixed."""
    dims = list(shape)
    if dims and batch is not None:
        dims[0] = batch
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _needed(steps, wanted: list[str]) -> list:
    """The steps that compute the `wanted` blobs, in order (walked back from them)."""
    needed, kept = set(wanted), []
    for step in reversed(steps):
        _, bottoms, tops = step
        if needed & set(tops):
            kept.append(step)
            needed = (needed - set(tops)) | set(bottoms)
    return kept[::-1]


def build_model(net, outputs: list[str] | None = None) -> onnx.ModelProto:
    """The ONNX model of `net` (evaluation mode); graph outputs are `outputs` (blob
    names, default the net's outputs), named as the blobs. Only the layers that compute
    them are exported."""
    wanted = list(outputs) if outputs is not None else list(net.output_names)
    if not wanted:
        raise OnnxExportError(f"{net.origin}: nothing to export: the net has no output blobs "
                              "(a graph needs at least one)")
    unknown = [name for name in wanted if name not in net.blob_shapes]
    if unknown:
        raise OnnxExportError(f"{net.origin}: no blob named {unknown} to export; blobs: "
                              f"{', '.join(net.blob_shapes)}")
    steps = _needed(net.layer_steps(), wanted)
    builder = GraphBuilder(_last_writers(steps))
    consumed = {name for _, bottoms, _ in steps for name in bottoms}
    inputs = [name for name in net.input_names if name in consumed or name in wanted]
    for name in inputs:
        builder.declare_input(name)
    for i, (layer, bottoms, tops) in enumerate(steps):
        builder.start_layer(i, layer.name)
        emit = converter_for(layer.type)
        if emit is None:
            raise OnnxExportError(
                f"{net.origin}: layer '{layer.name}' has type '{layer.type}', which has no ONNX "
                f"form (export a deploy net, or only the blobs before it with `outputs`; "
                f"exportable types: {', '.join(exportable_types())})")
        ins = [builder.value(name) for name in bottoms]
        outs = [builder.write(name) for name in tops]
        try:
            emit(builder, layer, ins, outs)
        except OnnxExportError as err:
            raise OnnxExportError(f"{net.origin}: layer '{layer.name}' ({layer.type}): {err}") from None
    batch = None if builder.fixed_batch_reason else BATCH
    graph_outputs = []
    for name in wanted:
        value = builder.value(name)
        if value != name and name not in inputs:  # an earlier version of an in-place blob
            value = builder.node("Identity", [value], [builder.unique(name)])
        graph_outputs.append(helper.make_tensor_value_info(value, TensorProto.FLOAT, None))
    graph = helper.make_graph(
        builder.nodes, net.name or "net",
        [_input_info(name, net.blob_shapes[name], batch) for name in inputs],
        graph_outputs, initializer=builder.initializers)
    model = helper.make_model(graph, producer_name="caffe-ds",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.doc_string = (f"Exported from {net.origin}; batch fixed at the net's size: "
                        f"{builder.fixed_batch_reason}" if builder.fixed_batch_reason
                        else f"Exported from {net.origin}")
    # output shapes as ONNX infers them (symbolic batch where it flows, fixed elsewhere)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    del model.graph.value_info[:]
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(net, path, outputs: list[str] | None = None) -> onnx.ModelProto:
    """Write the ONNX model of `net` to `path` (atomically), checked by onnx.checker."""
    model = build_model(net, outputs)
    atomic_write_bytes(path, model.SerializeToString())
    return model
