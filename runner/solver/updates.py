"""Caffe's update rules (sgd/nesterov/adagrad/rmsprop/adadelta/adam_solver.cpp).

One class per solver `type`, written out over parameter groups rather than borrowed
from torch.optim: Caffe's SGD folds the learning rate into the momentum history, and
its ApplyUpdate clips, normalises and regularises in a fixed order. Parameters that
share (lr_mult, decay_mult) are updated together with torch._foreach_* ops.

History tensors are kept in Caffe's SolverState order: one per learnable param, and
for AdaDelta and Adam a second full set after the first.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from runner.solver.errors import SolverConfigError


def as_caffe_float(x: float) -> float:
    """`x`, or +-inf where it lies past float32's range: Caffe computes its rates and
    decays in C floats, which overflow to inf; torch would refuse such a scalar."""
    with np.errstate(over="ignore"):
        narrowed = float(np.float32(x))
    return narrowed if math.isinf(narrowed) else x


class CaffeUpdate:
    """Clip -> per param: normalise, regularise, compute update -> w -= update."""

    history_sets = 1

    def __init__(self, params: list[tuple[str, torch.nn.Parameter, float, float]], solver_param):
        """`params`: (name, parameter, lr_mult, decay_mult) in Caffe's learnable order."""
        self.names = [p[0] for p in params]
        self.weights = [p[1] for p in params]
        self.iter_size = solver_param.iter_size
        self.weight_decay = solver_param.weight_decay
        self.regularization = solver_param.regularization_type
        if self.regularization not in ("L1", "L2"):
            raise SolverConfigError(
                f"regularization_type '{self.regularization}' is not L1 or L2")
        self.clip_gradients = solver_param.clip_gradients
        self.momentum = solver_param.momentum
        self.delta = solver_param.delta
        self.history = [torch.zeros_like(w) for _ in range(self.history_sets)
                        for w in self.weights]
        self.groups: dict[tuple[float, float], list[int]] = {}
        for i, (_, _, lr_mult, decay_mult) in enumerate(params):
            self.groups.setdefault((float(lr_mult), float(decay_mult)), []).append(i)
        self.on_clip = None  # callback(norm, clip, scale) for the log
        # Caffe's ApplyUpdate leaves each update in its blob's diff (what snapshot_diff
        # writes and pycaffe shows after a step); off, the diffs keep the gradients
        self.update_in_diff = False

    # ---- the step --------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, rate: float, it: int) -> None:
        """One ApplyUpdate with learning rate `rate` after `it` finished updates."""
        for w in self.weights:
            if w.grad is None:  # a blob no loss reaches: Caffe's diff is zero
                w.grad = torch.zeros_like(w)
        grads = [w.grad for w in self.weights]
        self._clip(grads)
        n = len(self.weights)
        for (lr_mult, decay_mult), idx in self.groups.items():
            w = [self.weights[i] for i in idx]
            g = [grads[i] for i in idx]
            hist = [[self.history[s * n + i] for i in idx] for s in range(self.history_sets)]
            if self.iter_size > 1:
                torch._foreach_mul_(g, 1.0 / self.iter_size)
            local_decay = as_caffe_float(self.weight_decay * decay_mult)
            if local_decay:
                reg = w if self.regularization == "L2" else torch._foreach_sign(w)
                torch._foreach_add_(g, reg, alpha=local_decay)
            update = self.compute(g, hist, as_caffe_float(rate * lr_mult), it)
            if self.update_in_diff:
                torch._foreach_copy_(g, update)
            torch._foreach_sub_(w, update)

    def _clip(self, grads: list[torch.Tensor]) -> None:
        clip = self.clip_gradients
        if clip < 0 or not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()
        if norm > clip:
            scale = clip / norm
            if self.on_clip is not None:
                self.on_clip(norm, clip, scale)
            torch._foreach_mul_(grads, scale)

    def compute(self, g, hist, local_rate: float, it: int) -> list[torch.Tensor]:
        """Update values for one group (history updated in place)."""
        raise NotImplementedError

    # ---- SolverState history ---------------------------------------------------------
    def load_history(self, arrays: list) -> None:
        """Restore history from SolverState blobs (numpy arrays, Caffe order)."""
        if len(arrays) != len(self.history):
            raise SolverConfigError(
                f"solver state has {len(arrays)} history blobs, this net and solver type "
                f"need {len(self.history)} (incorrect length of history blobs)")
        for i, (h, a) in enumerate(zip(self.history, arrays)):
            if a.size != h.numel():
                name = self.names[i % len(self.names)]
                raise SolverConfigError(
                    f"solver state history blob {i} ({name}) has {a.size} values, "
                    f"expected shape {tuple(h.shape)}")
            h.copy_(torch.as_tensor(a, dtype=h.dtype).reshape(h.shape))


class SGD(CaffeUpdate):
    """v = momentum*v + local_rate*g; w -= v."""

    def compute(self, g, hist, local_rate, it):
        (h,) = hist
        torch._foreach_mul_(h, self.momentum)
        torch._foreach_add_(h, g, alpha=local_rate)
        return h


class Nesterov(CaffeUpdate):
    """v' = m*v + lr*g; step = (1+m)*v' - m*v."""

    def compute(self, g, hist, local_rate, it):
        (h,) = hist
        m = self.momentum
        old = torch._foreach_mul(h, m)
        torch._foreach_mul_(h, m)
        torch._foreach_add_(h, g, alpha=local_rate)
        step = torch._foreach_mul(h, 1.0 + m)
        torch._foreach_sub_(step, old)
        return step


class AdaGrad(CaffeUpdate):
    """h += g^2; step = lr * g / (sqrt(h) + delta)."""

    def __init__(self, params, solver_param):
        super().__init__(params, solver_param)
        if self.momentum != 0:
            raise SolverConfigError("momentum cannot be used with AdaGrad (set momentum: 0)")

    def compute(self, g, hist, local_rate, it):
        (h,) = hist
        torch._foreach_addcmul_(h, g, g)
        return _scaled_ratio(g, h, self.delta, local_rate)


class RMSProp(CaffeUpdate):
    """h = d*h + (1-d)*g^2; step = lr * g / (sqrt(h) + delta)."""

    def __init__(self, params, solver_param):
        super().__init__(params, solver_param)
        if self.momentum != 0:
            raise SolverConfigError("momentum cannot be used with RMSProp (set momentum: 0)")
        self.rms_decay = solver_param.rms_decay
        if not 0 <= self.rms_decay <= 1:
            raise SolverConfigError(f"rms_decay {self.rms_decay} must be within [0, 1]")

    def compute(self, g, hist, local_rate, it):
        (h,) = hist
        torch._foreach_mul_(h, self.rms_decay)
        torch._foreach_addcmul_(h, g, g, value=1.0 - self.rms_decay)
        return _scaled_ratio(g, h, self.delta, local_rate)


class AdaDelta(CaffeUpdate):
    """h = m*h + (1-m)*g^2; u = g*sqrt((h2+delta)/(h+delta)); h2 = m*h2 + (1-m)*u^2."""

    history_sets = 2

    def compute(self, g, hist, local_rate, it):
        h, h2 = hist
        m = self.momentum
        torch._foreach_mul_(h, m)
        torch._foreach_addcmul_(h, g, g, value=1.0 - m)
        u = torch._foreach_add(h2, self.delta)
        torch._foreach_div_(u, torch._foreach_add(h, self.delta))
        torch._foreach_sqrt_(u)
        torch._foreach_mul_(u, g)
        torch._foreach_mul_(h2, m)
        torch._foreach_addcmul_(h2, u, u, value=1.0 - m)
        torch._foreach_mul_(u, local_rate)
        return u


class Adam(CaffeUpdate):
    """m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
    step = lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+delta), t = iter+1."""

    history_sets = 2

    def __init__(self, params, solver_param):
        super().__init__(params, solver_param)
        self.momentum2 = solver_param.momentum2

    def compute(self, g, hist, local_rate, it):
        m1, v = hist
        b1, b2 = self.momentum, self.momentum2
        t = it + 1
        correction = math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
        torch._foreach_mul_(m1, b1)
        torch._foreach_add_(m1, g, alpha=1.0 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, g, g, value=1.0 - b2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, self.delta)
        step = torch._foreach_div(m1, denom)
        torch._foreach_mul_(step, as_caffe_float(local_rate * correction))
        return step


def _scaled_ratio(g, h, delta, local_rate):
    """local_rate * g / (sqrt(h) + delta), as AdaGrad and RMSProp compute it."""
    denom = torch._foreach_sqrt(h)
    torch._foreach_add_(denom, delta)
    step = torch._foreach_div(g, denom)
    torch._foreach_mul_(step, local_rate)
    return step


UPDATES = {"SGD": SGD, "Nesterov": Nesterov, "AdaGrad": AdaGrad, "RMSProp": RMSProp,
           "AdaDelta": AdaDelta, "Adam": Adam}


def make_update(solver_type: str, params, solver_param) -> CaffeUpdate:
    """The update rule registered for a SolverParameter `type` string."""
    cls = UPDATES.get(solver_type)
    if cls is None:
        raise SolverConfigError(
            f"solver type '{solver_type}' is unknown; known types: {', '.join(UPDATES)}")
    return cls(params, solver_param)
