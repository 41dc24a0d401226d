"""ONNX forms of Caffe's recurrent layers: LSTM and RNN as a Scan over the time axis (T and
N stay free), LSTMUnit as one step's nodes, and CRNN's ContinuationIndicator (Expand of a
0, 1, 1, ... column).

Each step multiplies the previous state by cont_t and the forget gate by cont_t, as
Caffe's unrolled net does. Without expose_hidden Caffe starts a forward from the state the
previous one ended with; the graph starts from zeros, as a fresh net does, which is the
same wherever cont is 0 at t = 0 (ContinuationIndicator's pattern). With expose_hidden
the states are graph values: h_0 (and c_0) come in, h_T (and c_T) go out."""
from __future__ import annotations

from onnx import TensorProto, helper

from runner.onnx_export.graph import GraphBuilder
from runner.onnx_export.registry import blob_array, converter


def _transposed(b: GraphBuilder, what: str, blob) -> str:
    """A Caffe weight (out x in) as the right operand of MatMul (in x out)."""
    return b.const(what, blob_array(blob).T.copy())


def _pre_activation(b: GraphBuilder, h: str, cont: str, w_h: str, x_t: str, static: str | None) -> str:
    """W_h (cont_t * h_{t-1}) + W_x x_t + b [+ W_static x_static], summed in Caffe's order."""
    out = b.node("Add", [b.node("MatMul", [b.node("Mul", [h, cont]), w_h]), x_t])
    return out if static is None else b.node("Add", [out, static])


def _lstm_step(b: GraphBuilder, c_prev: str, gates: str, cont: str, c_out: str, h_out: str) -> None:
    """Caffe's LSTMUnit on gate inputs ordered i, f, o, g along the last axis; the forget
    gate is cont_t * sigmoid (0 where cont_t is 0)."""
    xi, xf, xo, xg = (b.temp(f"gate_{k}") for k in "ifog")
    b.node("Split", [gates], [xi, xf, xo, xg], axis=-1, num_outputs=4)
    f = b.node("Mul", [b.node("Sigmoid", [xf]), cont])
    c = b.node("Add", [b.node("Mul", [f, c_prev]),
                       b.node("Mul", [b.node("Sigmoid", [xi]), b.node("Tanh", [xg])])], [c_out])
    b.node("Mul", [b.node("Sigmoid", [xo]), b.node("Tanh", [c])], [h_out])


def _value(name: str) -> object:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def _zeros_state(b: GraphBuilder, cont: str, hidden: int) -> str:
    """An N x hidden zero state, N read from cont (T x N)."""
    n = b.node("Slice", [b.node("Shape", [cont]), b.ints("n_from", [1]), b.ints("n_to", [2])])
    shape = b.node("Concat", [n, b.ints("hidden", [hidden])], axis=0)
    return b.filled(shape, 0.0)


def _scan(b: GraphBuilder, layer, ins, outs, n_state: int, step) -> None:
    """The layer's T steps as one Scan: the input projection for all steps first, then
    `step(body, states, x_t, cont_t, static) -> (new states, output)` per step."""
    hidden = layer.hidden
    blobs = list(layer.blobs)
    x, cont = ins[0], ins[1]
    flat = b.node("Reshape", [x, b.ints("flat", [0, 0, -1])])
    x_proj = b.node("Add", [b.node("MatMul", [flat, _transposed(b, "w_x", blobs[0])]),
                            b.const("b_x", blob_array(blobs[1]))])
    static = None
    if layer.static_input:
        static = b.node("MatMul", [b.node("Flatten", [ins[2]], axis=1),
                                   _transposed(b, "w_static", blobs[2])])
    recurrent = blobs[2 + layer.static_input:]
    exposed = ins[2 + layer.static_input:]
    initial = ([b.node("Squeeze", [s, b.ints("time", [0])]) for s in exposed] if layer.exposed
               else [_zeros_state(b, cont, hidden) for _ in range(n_state)])
    cont_column = b.node("Unsqueeze", [cont, b.ints("column", [2])])

    body = b.body()
    states_in = [body.temp(f"state{k}_in") for k in range(n_state)]
    x_t, cont_t = body.temp("x_t"), body.temp("cont_t")
    states_out, output = step(body, states_in, x_t, cont_t, static, recurrent)
    emitted = body.node("Identity", [output])
    graph = helper.make_graph(body.nodes, body.temp("step"),
                              [_value(v) for v in (*states_in, x_t, cont_t)],
                              [_value(v) for v in (*states_out, emitted)])
    finals = [b.temp(f"state{k}_final") for k in range(n_state)]
    b.node("Scan", [*initial, x_proj, cont_column], [*finals, outs[0]], body=graph,
           num_scan_inputs=2)
    for final, top in zip(finals, outs[1:]):
        b.node("Unsqueeze", [final, b.ints("time", [0])], [top])


@converter("LSTM")
def _lstm(b: GraphBuilder, layer, ins, outs):
    def step(body, states, x_t, cont_t, static, recurrent):
        (w_hc,) = recurrent
        h, c = states
        gates = _pre_activation(body, h, cont_t, _transposed(b, "w_hc", w_hc), x_t, static)
        h_new, c_new = body.temp("h"), body.temp("c")
        _lstm_step(body, c, gates, cont_t, c_new, h_new)
        return [h_new, c_new], h_new
    _scan(b, layer, ins, outs, 2, step)


@converter("RNN")
def _rnn(b: GraphBuilder, layer, ins, outs):
    def step(body, states, x_t, cont_t, static, recurrent):
        w_hh, w_ho, b_o = recurrent
        h = body.node("Tanh", [_pre_activation(body, states[0], cont_t,
                                               _transposed(b, "w_hh", w_hh), x_t, static)])
        o = body.node("Tanh", [body.node("Add", [body.node("MatMul", [h, _transposed(b, "w_ho", w_ho)]),
                                                 b.const("b_o", blob_array(b_o))])])
        return [h], o
    _scan(b, layer, ins, outs, 1, step)


@converter("LSTMUnit")
def _lstm_unit(b: GraphBuilder, layer, ins, outs):
    c_prev, gates, cont = ins
    _lstm_step(b, c_prev, gates, b.node("Unsqueeze", [cont, b.ints("column", [2])]), *outs)


@converter("ContinuationIndicator")
def _continuation_indicator(b: GraphBuilder, layer, ins, outs):
    p = layer.lp.continuation_indicator_param
    axis = p.axis if p.axis >= 0 else p.axis + len(layer.bottom_shapes[0])
    column = b.const("column", [[0.0]] + [[1.0]] * (p.time_step - 1))
    n = b.node("Slice", [b.node("Shape", [ins[0]]), b.ints("n_from", [axis]), b.ints("n_to", [axis + 1])])
    shape = b.node("Concat", [b.ints("time_step", [p.time_step]), n], axis=0)
    b.node("Expand", [column, shape], outs)
