"""Caffe's learning-rate policies (SGDSolver::GetLearningRate), as one small class.

`iter` is the number of updates done so far. `current_step` is Caffe's own counter:
"step" recomputes it from iter, "multistep" advances it by at most one per call and
it is saved in the SolverState, so a resumed run continues where it stopped.
"""
from __future__ import annotations

import math

from runner.solver.errors import SolverConfigError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


class LearningRatePolicy:
    """rate(iter) for one SolverParameter; keeps Caffe's current_step."""

    def __init__(self, param):
        self.policy = param.lr_policy
        if self.policy not in POLICIES:
            raise SolverConfigError(
                f"lr_policy '{param.lr_policy}' is not one of Caffe's policies "
                f"({', '.join(POLICIES)}); Caffe requires one, e.g. lr_policy: \"fixed\"")
        self.param = param   # base_lr is read from it at each rate, as pycaffe may set it
        self.gamma = param.gamma
        self.power = param.power
        self.stepsize = param.stepsize
        self.stepvalue = list(param.stepvalue)
        self.max_iter = param.max_iter
        if self.policy in ("step", "sigmoid") and self.stepsize <= 0:
            raise SolverConfigError(f"lr_policy '{self.policy}' needs stepsize > 0")
        if self.policy in ("step", "exp", "inv", "multistep", "sigmoid") and self.gamma < 0:
            raise SolverConfigError(f"lr_policy '{self.policy}' needs gamma >= 0")
        if self.policy == "poly" and self.max_iter <= 0:
            raise SolverConfigError("lr_policy 'poly' needs max_iter > 0")
        self.current_step = 0

    @property
    def base_lr(self) -> float:
        return self.param.base_lr

    def rate(self, it: int) -> float:
        """The learning rate for the update that follows `it` finished updates; +-inf
        where it overflows (Caffe's float arithmetic gives inf there, Python raises)."""
        try:
            return self._rate(it)
        except OverflowError:
            if self.policy == "sigmoid":   # base_lr / (1 + exp(overflow)) is 0 in floats
                return 0.0 * self.base_lr
            return math.copysign(math.inf, self.base_lr)

    def _rate(self, it: int) -> float:
        p = self.policy
        if p == "fixed":
            return self.base_lr
        if p == "step":
            self.current_step = it // self.stepsize
            return self.base_lr * self.gamma ** self.current_step
        if p == "exp":
            return self.base_lr * self.gamma ** it
        if p == "inv":
            return self.base_lr * (1.0 + self.gamma * it) ** (-self.power)
        if p == "multistep":
            if (self.current_step < len(self.stepvalue)
                    and it >= self.stepvalue[self.current_step]):
                self.current_step += 1
            return self.base_lr * self.gamma ** self.current_step
        if p == "poly":
            return self.base_lr * (1.0 - it / self.max_iter) ** self.power
        return self.base_lr / (1.0 + math.exp(-self.gamma * (it - self.stepsize)))
