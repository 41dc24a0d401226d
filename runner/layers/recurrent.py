"""Caffe's recurrent layers: RNN, LSTM (the nets RecurrentLayer unrolls over T time steps)
and LSTMUnit (one LSTM step), with Caffe's T x N layout, `cont` resets and blob order.

Without expose_hidden the state after the last step is kept and starts the next forward
(as Caffe's unrolled net copies h_T into h_0); no gradient crosses forwards. With it the
state comes in as bottoms and goes out as tops, and Caffe shares only their data, so no
gradient flows through those bottoms or tops either.
"""
from __future__ import annotations

import torch

from runner.layers.base import Layer, register
from runner.layers.common import filler_or
from runner.shapes_sequence import recurrent_geometry


class _LSTMUnitFunction(torch.autograd.Function):
    """LSTMUnit with Caffe's backward: the forget gate is f = cont * sigmoid(x_f) and its
    diff is taken as c_term * c_prev * f * (1 - f) (exact when cont is 0 or 1)."""

    @staticmethod
    def forward(ctx, c_prev, x, cont):
        i, f, o, g = _gates(x, cont)
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, o * tanh_c

    @staticmethod
    def backward(ctx, c_diff, h_diff):
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        c_term = c_diff + h_diff * o * (1 - tanh_c * tanh_c)
        x_diff = torch.cat([c_term * g * i * (1 - i), c_term * c_prev * f * (1 - f),
                            h_diff * tanh_c * o * (1 - o), c_term * i * (1 - g * g)], dim=-1)
        return c_term * f, x_diff, None


def _gates(x: torch.Tensor, cont: torch.Tensor):
    """Caffe's gate order i, f, o, g of a ... x 4D pre-activation; f is zeroed where cont is 0."""
    xi, xf, xo, xg = x.chunk(4, dim=-1)
    cont = cont.unsqueeze(-1).to(x.dtype)
    f = torch.where(cont == 0, torch.zeros_like(xf), cont * torch.sigmoid(xf))
    return torch.sigmoid(xi), f, torch.sigmoid(xo), torch.tanh(xg)


def lstm_unit(c_prev: torch.Tensor, x: torch.Tensor, cont: torch.Tensor):
    """One LSTM step: (c_t, h_t) from c_{t-1}, the 4D gate inputs and cont_t (no gradient)."""
    return _LSTMUnitFunction.apply(c_prev, x, cont.detach())


@register("LSTMUnit")
class LSTMUnit(Layer):
    """Bottoms c_prev (1 x N x D), gates (1 x N x 4D, order i, f, o, g), cont (1 x N);
    tops c, h."""

    bottom_count, top_count = (3, 3), (2, 2)

    def forward(self, c_prev, x, cont):
        return lstm_unit(c_prev, x, cont)


class _Recurrent(Layer):
    """What RNN and LSTM share: bottoms x, cont, [x_static], [h_0 (, c_0)]; the state kept
    between forwards; fillers from recurrent_param."""

    bottom_count, top_count = (2, 5), (1, 3)   # exact counts depend on expose_hidden
    forward_state = ("_state",)

    n_state = 1

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        _, _, self.hidden, self.static_input, self.exposed = recurrent_geometry(lp, bottom_shapes)
        self._state: tuple[torch.Tensor, ...] | None = None

    def blob_fillers(self):
        weight = filler_or(self.lp.recurrent_param, "weight_filler")
        bias = filler_or(self.lp.recurrent_param, "bias_filler")
        return [bias if b.dim() == 1 else weight for b in self.blobs]

    def reset(self) -> None:
        """Zero the carried state, as Caffe's RecurrentLayer::Reset."""
        self._state = None

    def _initial_state(self, extra, n: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.exposed:
            return tuple(s.detach() for s in extra)
        state = self._state
        if state is None or state[0].shape[1] != n:
            return tuple(like.new_zeros(1, n, self.hidden) for _ in range(self.n_state))
        return tuple(s.to(like) for s in state)

    def forward(self, x, cont, *extra):
        static = extra[0] if self.static_input else None
        state = self._initial_state(extra[1:] if self.static_input else extra, x.shape[1], x)
        w_x, b_x = self.blobs[0], self.blobs[1]
        x_proj = x.flatten(2) @ w_x.t() + b_x
        static_proj = None
        if static is not None:
            static_proj = static.flatten(1) @ self.blobs[2].t()
        recurrent_blobs = list(self.blobs)[2 + self.static_input:]
        out, final = self.unroll(x_proj, cont.detach(), static_proj, state, recurrent_blobs)
        final = tuple(s.detach() for s in final)
        if not self.exposed:
            self._state = final
            return (out,)
        return (out, *final)

    def unroll(self, x_proj, cont, static_proj, state, blobs):
        """Run the T steps (RNN and LSTM each define theirs); returns (outputs, final state)."""
        raise NotImplementedError


def step_input(h, cont_t, w_h, x_proj_t, static_proj):
    """W_h (cont_t * h_{t-1}) + W_x x_t + b [+ W_static x_static]: one step's pre-activation,
    summed in the order of Caffe's unrolled Eltwise."""
    out = (h * cont_t.to(h.dtype).reshape(1, -1, 1)) @ w_h.t() + x_proj_t
    return out if static_proj is None else out + static_proj.unsqueeze(0)


@register("LSTM")
class LSTM(_Recurrent):
    """Caffe's LSTM: blobs W_xc (4H x x_dim), b_c (4H), [W_xc_static], W_hc (4H x H); top h
    (T x N x H), plus h_T and c_T with expose_hidden (then bottoms h_0, c_0 follow)."""

    n_state = 2

    def unroll(self, x_proj, cont, static_proj, state, blobs):
        (w_hc,) = blobs
        h, c = state
        hs = []
        for t in range(x_proj.shape[0]):
            gates = step_input(h, cont[t], w_hc, x_proj[t:t + 1], static_proj)
            c, h = lstm_unit(c, gates, cont[t:t + 1])
            hs.append(h)
        return torch.cat(hs, dim=0), (h, c)


@register("RNN")
class RNN(_Recurrent):
    """Caffe's RNN: h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]),
    o_t = tanh(W_ho h_t + b_o); blobs W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o; top o."""

    def unroll(self, x_proj, cont, static_proj, state, blobs):
        w_hh, w_ho, b_o = blobs
        (h,) = state
        outs = []
        for t in range(x_proj.shape[0]):
            h = torch.tanh(step_input(h, cont[t], w_hh, x_proj[t:t + 1], static_proj))
            outs.append(torch.tanh(h @ w_ho.t() + b_o))
        return torch.cat(outs, dim=0), (h,)
