"""ONNX form of ChWick's CTCGreedyDecoder (its deploy use: scores and sequence indicators in,
the decoded sequences and optionally their scores out): ArgMax per step, the steps before
each sample's next 0 indicator, blanks and (with ctc_merge_repeated) repeats dropped, the
kept classes moved to the front by ScatterElements, -1 after them."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from runner.onnx_export.graph import GraphBuilder, OnnxExportError
from runner.onnx_export.registry import converter


@converter("CTCGreedyDecoder")
def _ctc_greedy_decoder(b: GraphBuilder, layer, ins, outs):
    if len(ins) > 2:
        raise OnnxExportError("with target labels its output is an accuracy, a metric; export "
                              "the deploy form (scores and sequence indicators)")
    scores, cont = ins
    best = b.node("ArgMax", [scores], axis=2, keepdims=0)                 # T x N, first highest
    # the steps before a sample's next 0 indicator (the one at t = 0 starts it)
    zeros = b.node("Cast", [b.node("Equal", [cont, b.const("zero", 0.0)])], to=TensorProto.INT64)
    later = b.node("Concat", [b.node("Mul", [_rows(b, zeros, 0, 1), b.const("zero_i", 0, np.int64)]),
                              _rows(b, zeros, 1, 2 ** 62)], axis=0)
    valid = b.node("Equal", [b.node("CumSum", [later, b.const("time", 0, np.int64)]), b.const("none", 0, np.int64)])
    keep = b.node("And", [valid, b.node("Not", [b.node("Equal", [best, b.const("blank", layer.blank, np.int64)])])])
    if layer.lp.ctc_decoder_param.ctc_merge_repeated:
        minus_ones = b.node("Sub", [b.node("Mul", [_rows(b, best, 0, 1), b.const("zero_i", 0, np.int64)]),
                                    b.const("one_i", 1, np.int64)])
        before = b.node("Concat", [minus_ones, _rows(b, best, 0, -1)], axis=0)   # the previous step's class
        keep = b.node("And", [keep, b.node("Not", [b.node("Equal", [best, before])])])
    kept = b.node("Cast", [keep], to=TensorProto.INT64)
    shape = b.node("Shape", [best])
    steps = b.node("Slice", [shape, b.ints("from", [0]), b.ints("to", [1])])
    position = b.node("Sub", [b.node("CumSum", [kept, b.const("time", 0, np.int64)]), b.const("one_i", 1, np.int64)])
    slot = b.node("Where", [keep, position, steps])                    # unkept ones to a spare row T
    spare_shape = b.node("Concat", [b.node("Add", [steps, b.ints("spare", [1])]),
                                    b.node("Slice", [shape, b.ints("from", [1]), b.ints("to", [2])])], axis=0)
    filled = b.filled(spare_shape, -1.0)
    placed = b.node("ScatterElements", [filled, slot, b.node("Cast", [best], to=TensorProto.FLOAT)], axis=0)
    sequences = b.node("Slice", [placed, b.ints("from", [0]), steps, b.ints("axis", [0])])
    b.node("Reshape", [b.node("Transpose", [sequences], perm=[1, 0]), b.ints("shape", [0, 0, 1, 1])], outs[:1])
    if len(outs) > 1:   # minus the sum of each counted step's highest score
        top = b.node("Mul", [b.node("ReduceMax", [scores, b.ints("classes", [2])], keepdims=0),
                             b.node("Cast", [valid], to=TensorProto.FLOAT)])
        total = b.node("Neg", [b.node("ReduceSum", [top, b.ints("time", [0])], keepdims=0)])
        b.node("Reshape", [total, b.ints("shape", [-1, 1, 1, 1])], outs[1:])


def _rows(b: GraphBuilder, x: str, start: int, end: int) -> str:
    return b.node("Slice", [x, b.ints("from", [start]), b.ints("to", [end]), b.ints("axis", [0])])
