"""Deep supervision's conventions, in one place for the generator, the solver, the probe and
the zoo: supervision branch j's layers and blobs end in `_ds<j>`; a generated net and its
model folder are named `<dataset>-<variant><depth>`; a layer's gradient vanishes when its
mean |dE/dW| is below a threshold (the paper's 1e-7).
"""
from __future__ import annotations

import re
from typing import NamedTuple

from runner.proto import caffe_pb2

AUX_PATTERN = re.compile(r"_ds(\d+)$")
VARIANTS = ("cnds", "cnn")             # with and without supervision branches
MODEL_NAME = re.compile(rf"^(?P<dataset>.+)-(?P<variant>{'|'.join(VARIANTS)})(?P<depth>\d+)$")
VANISHING_THRESHOLD = 1e-7


def aux_suffix(branch: int) -> str:
    """The suffix of every layer and blob of supervision branch `branch`: `_ds<branch>`."""
    return f"_ds{branch}"


def aux_branch(name: str) -> int | None:
    """The supervision branch a layer or blob named `name` belongs to, or None (trunk)."""
    m = AUX_PATTERN.search(name)
    return int(m.group(1)) if m else None


def is_aux(name: str) -> bool:
    """Whether a layer or blob belongs to a supervision branch (`*_ds<j>`)."""
    return AUX_PATTERN.search(name) is not None


def aux_loss_tops(loss_weights: dict[str, float]) -> list[str]:
    """The auxiliary losses among a net's loss tops: non-zero weight, named `*_ds<j>`."""
    return [name for name, weight in loss_weights.items() if weight and is_aux(name)]


def without_aux(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """A copy of `net` without its supervision branches (a CNDS net's CNN variant)."""
    kept = caffe_pb2.NetParameter()
    kept.CopyFrom(net)
    kept.ClearField("layer")
    kept.layer.extend(lp for lp in net.layer if not is_aux(lp.name))
    return kept


class ModelName(NamedTuple):
    """The parts of a generated net's name, `<dataset>-<variant><depth>`."""
    dataset: str
    variant: str
    depth: int


def model_name(dataset: str, variant: str, depth: int) -> str:
    """A generated net's name, which is also its model folder: `<dataset>-<variant><depth>`."""
    return f"{dataset}-{variant}{depth}"


def parse_model_name(name: str) -> ModelName | None:
    """The parts of a name `model_name` would give, or None for any other name."""
    m = MODEL_NAME.match(name)
    return ModelName(m["dataset"], m["variant"], int(m["depth"])) if m else None


def vanishes(mean_gradient: float, threshold: float = VANISHING_THRESHOLD) -> bool:
    """Whether a layer's mean |dE/dW| counts as vanished (the paper's rule of thumb)."""
    return mean_gradient < threshold
