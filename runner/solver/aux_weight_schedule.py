"""Deep supervision: the decay of auxiliary loss weights (Wang et al. 2015, Eq. 2).

Auxiliary losses start at their prototxt loss_weight alpha_0. At each new epoch t
(t = 1, 2, ...; N = total epochs of the run):
  eq2     alpha_t = alpha_{t-1} * (1 - t/N)   (a cumulative product)
  linear  alpha_t = alpha_0 * (1 - t/N)
  none    alpha_t = alpha_0
Factors are clamped at 0 once t reaches N. The weights are a pure function of the
epoch, so a resumed run recomputes them from its iteration.
"""
from __future__ import annotations

import math

from runner.deep_supervision import aux_loss_tops

DECAY_MODES = ("eq2", "linear", "none")


def aux_weight(alpha0: float, epoch: int, total_epochs: float, mode: str) -> float:
    """alpha at `epoch` for an auxiliary loss starting at `alpha0`."""
    if mode == "none" or epoch <= 0:
        return alpha0
    if mode == "linear":
        return alpha0 * max(0.0, 1.0 - epoch / total_epochs)
    if mode == "eq2":
        return alpha0 * math.prod(max(0.0, 1.0 - t / total_epochs)
                                  for t in range(1, epoch + 1))
    raise ValueError(f"aux decay mode '{mode}' is not one of {', '.join(DECAY_MODES)}")


class AuxWeightSchedule:
    """Sets the auxiliary entries of a net's loss_weights table for each iteration.

    `samples_per_iter` = batch_size * iter_size * world_size; `train_size` = records
    in the training set; epoch(iter) = floor(iter * samples_per_iter / train_size).
    """

    def __init__(self, loss_weights: dict, aux_names: list[str], mode: str,
                 samples_per_iter: int, train_size: int, max_iter: int):
        if mode not in DECAY_MODES:
            raise ValueError(f"aux decay mode '{mode}' is not one of {', '.join(DECAY_MODES)}")
        missing = [n for n in aux_names if n not in loss_weights]
        if missing:
            raise ValueError(
                f"auxiliary loss {', '.join(missing)} is not a loss top of the train net; "
                f"its loss tops are: {', '.join(loss_weights) or 'none'}")
        if train_size <= 0:
            raise ValueError("the training set size must be positive to count epochs")
        self.loss_weights = loss_weights
        self.alpha0 = {n: float(loss_weights[n]) for n in aux_names}
        self.mode = mode
        self.samples_per_iter = samples_per_iter
        self.train_size = train_size
        self.total_epochs = max_iter * samples_per_iter / train_size
        self.epoch = None

    @staticmethod
    def find_aux(loss_weights: dict, names: list[str] | None = None) -> list[str]:
        """Auxiliary loss tops: `names` if given, else the loss tops (non-zero weight)
        named `*_ds<j>` (loss_ds1, ...)."""
        if names:
            return list(names)
        return aux_loss_tops(loss_weights)

    def epoch_of(self, it: int) -> int:
        return it * self.samples_per_iter // self.train_size

    def weights_at(self, epoch: int) -> dict[str, float]:
        return {n: aux_weight(a, epoch, self.total_epochs, self.mode)
                for n, a in self.alpha0.items()}

    def update(self, it: int) -> dict[str, float] | None:
        """Apply the weights for iteration `it`; return them on the first call and
        whenever a new epoch changed them (the caller logs them)."""
        epoch = self.epoch_of(it)
        if epoch == self.epoch:
            return None
        first = self.epoch is None
        self.epoch = epoch
        weights = self.weights_at(epoch)
        changed = first or any(self.loss_weights[n] != w for n, w in weights.items())
        self.loss_weights.update(weights)
        return weights if changed else None
