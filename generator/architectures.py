"""The paper's architectures as data: a `NetConfig` becomes a list of blocks.

Each block is one macro call in templates/macros.jinja (conv-relu, lrn, pool,
fc-relu-dropout, supervision branch); the templates only walk the list. The layout
rules (stage sizes for depths 6..19, the 28x28 adaptation, WIDTH, branch taps and
the bias initialisations) are documented in docs/generator.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from generator.datasets import DATASETS, Dataset
from runner.deep_supervision import VARIANTS, aux_suffix, model_name
from runner.shapes import conv_out, pool_out

DEPTHS = range(5, 20)             # 5 is the CNN-5 family, 6..19 the stage family
INITS = ("released", "vanilla", "msra")
STAGE_WIDTHS = (128, 256, 512, 512)   # 3x3 stages conv2..conv5 after the 7x7 conv1
BRANCH_CONV, BRANCH_FC = 64, 1024
STD = 0.01


class ConfigError(ValueError):
    """A net description that cannot be built (says which setting and why)."""


@dataclass(frozen=True)
class NetConfig:
    """What `make net` asks for; None means the default for the dataset/depth."""
    dataset: str = "imagenet"
    variant: str = "cnds"
    depth: int = 8
    branches: tuple[int, ...] | None = None
    alpha: float = 0.3
    width: float | None = None
    init: str | None = None   # None: the dataset's default

    @property
    def name(self) -> str:
        return model_name(self.dataset, self.variant, self.depth)


@dataclass(frozen=True)
class Conv:
    """Convolution followed by an in-place ReLU named `relu`."""
    name: str
    bottom: str
    num_output: int
    kernel: int
    stride: int
    pad: int
    group: int
    std: float | str   # gaussian std, or "msra"
    bias: float
    relu: str
    kind: str = "conv"


@dataclass(frozen=True)
class LRN:
    name: str
    bottom: str
    local_size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    kind: str = "lrn"


@dataclass(frozen=True)
class Pool:
    name: str
    bottom: str
    method: str
    kernel: int
    stride: int
    kind: str = "pool"


@dataclass(frozen=True)
class FC:
    """InnerProduct, optionally followed by in-place ReLU and Dropout(0.5)."""
    name: str
    bottom: str
    num_output: int
    std: float | str   # gaussian std, or "msra"
    bias: float
    relu: str | None
    dropout: str | None
    kind: str = "fc"


@dataclass(frozen=True)
class Branch:
    """Supervision branch j on blob `bottom`: every layer and blob ends in `_ds<j>`."""
    index: int
    bottom: str
    pool_kernel: int
    pool_stride: int
    conv_output: int
    fc_output: int
    num_classes: int
    alpha: float
    std: float | str   # gaussian std, or "msra"
    conv_bias: float
    fc_bias: float
    kind: str = "branch"

    @property
    def suffix(self) -> str:
        return aux_suffix(self.index)


@dataclass(frozen=True)
class Net:
    """A resolved net: its config (defaults filled in), dataset and blocks in prototxt order."""
    config: NetConfig
    dataset: Dataset
    blocks: tuple
    output: str

    @property
    def name(self) -> str:
        return self.config.name


def stage_sizes(depth: int) -> list[int]:
    """3x3 convs per stage conv2..conv5: depth-1 convs, the remainder to the later stages."""
    base, extra = divmod(depth - 1, len(STAGE_WIDTHS))
    return [base + (i >= len(STAGE_WIDTHS) - extra) for i in range(len(STAGE_WIDTHS))]


def default_branches(depth: int) -> tuple[int, ...]:
    """Taps after conv 4, 7, 10, ... while two convs remain above; depth 5 taps conv 3."""
    taps = tuple(range(4, depth - 1, 3))
    return taps or (depth - 2,)


def scaled(channels: int, width: float) -> int:
    """Channels times WIDTH, rounded to a multiple of 8 (at least 8); 1.0 keeps them."""
    if width == 1.0:
        return channels
    return max(8, round(channels * width / 8) * 8)


def resolve(config: NetConfig) -> NetConfig:
    """Validate `config` and fill in its defaults; raises ConfigError with one clear line."""
    if config.dataset not in DATASETS:
        raise ConfigError(f"DATASET={config.dataset}: unknown dataset (expected one of {', '.join(DATASETS)})")
    if config.variant not in VARIANTS:
        raise ConfigError(f"VARIANT={config.variant}: unknown variant (expected cnds or cnn)")
    if config.depth not in DEPTHS:
        raise ConfigError(f"DEPTH={config.depth}: depth must be 5 (CNN-5) or 6..19")
    init = DATASETS[config.dataset].default_init if config.init is None else config.init
    if init not in INITS:
        raise ConfigError(f"INIT={init}: unknown initialisation (expected released, vanilla or msra)")
    if not 0 < config.alpha < math.inf:
        raise ConfigError(f"ALPHA={config.alpha}: the auxiliary loss weight must be positive")
    width = DATASETS[config.dataset].default_width if config.width is None else config.width
    if not 0 < width <= 4:
        raise ConfigError(f"WIDTH={width}: the width multiplier must be in (0, 4]")
    branches = config.branches
    if config.variant == "cnn":
        if branches:
            raise ConfigError(f"BRANCHES={','.join(map(str, branches))}: VARIANT=cnn has no supervision branches")
        branches = ()
    else:
        if branches is None:
            branches = default_branches(config.depth)
        if not branches:
            raise ConfigError("BRANCHES=none: VARIANT=cnds needs at least one branch (use VARIANT=cnn)")
        if len(set(branches)) != len(branches):
            raise ConfigError(f"BRANCHES={','.join(map(str, branches))}: a conv layer is tapped twice")
        for k in branches:
            if not 1 <= k < config.depth:
                raise ConfigError(f"BRANCHES: {k} is not a conv layer below the last one "
                                  f"(depth {config.depth} taps conv 1..{config.depth - 1})")
        branches = tuple(sorted(branches))
    return replace(config, width=width, branches=branches, init=init)


class _Builder:
    """Chains blocks bottom to top and tracks the spatial size of the current blob."""

    def __init__(self, config: NetConfig, dataset: Dataset):
        self.config, self.dataset = config, dataset
        self.blocks: list = []
        self.blob, self.size, self.convs = "data", dataset.crop, 0
        self.released = config.init == "released"
        self.std = "msra" if config.init == "msra" else STD  # weight filler: msra or gaussian std

    def conv(self, name, num_output, kernel, stride=1, pad=0, group=1, bias=0.0):
        out = scaled(num_output, self.config.width)
        self.blocks.append(Conv(name, self.blob, out, kernel, stride, pad, group, self.std,
                                bias if self.released else 0.0, "relu" + name[4:]))
        self.blob, self.size = name, conv_out(self.size, kernel, stride, pad, 1)
        self.convs += 1
        if self.convs in self.config.branches:
            self.branch()

    def branch(self):
        small = self.dataset.small
        kernel = min(3 if small else 5, self.size)
        self.blocks.append(Branch(
            index=self.config.branches.index(self.convs) + 1, bottom=self.blob,
            pool_kernel=kernel, pool_stride=2,
            conv_output=scaled(BRANCH_CONV, self.config.width),
            fc_output=scaled(BRANCH_FC, self.config.width),
            num_classes=self.dataset.num_classes, alpha=self.config.alpha, std=self.std,
            conv_bias=0.1 if self.released else 0.0, fc_bias=1.0 if self.released else 0.0))

    def lrn(self, name):
        self.blocks.append(LRN(name, self.blob))
        self.blob = name

    def pool(self, name, kernel, stride):
        self.blocks.append(Pool(name, self.blob, "MAX", kernel, stride))
        self.blob, self.size = name, pool_out(self.size, kernel, stride, 0)

    def fc(self, name, num_output, std=STD, bias=0.0, last=False):
        out = num_output if last else scaled(num_output, self.config.width)
        std = "msra" if self.std == "msra" else std
        n = name[2:]
        self.blocks.append(FC(name, self.blob, out, std, bias if self.released else 0.0,
                              None if last else f"relu{n}", None if last else f"drop{n}"))
        self.blob = name

    def conv1(self, num_output, kernel, stride, pad, bias):
        """The first conv; 28x28 input turns it into 3x3 stride 1 pad 1."""
        if self.dataset.small:
            kernel, stride, pad = 3, 1, 1
        self.conv("conv1", num_output, kernel, stride, pad, bias=bias)


def _cnn5(b: _Builder) -> None:
    """CaffeNet layout (AlexNet's LRN-before-pool order) with CaffeNet's released init."""
    b.conv1(96, 11, 4, 0, bias=0.0)
    b.lrn("norm1")
    b.pool("pool1", 3, 2)
    b.conv("conv2", 256, 5, pad=2, group=2, bias=1.0)
    b.lrn("norm2")
    b.pool("pool2", 3, 2)
    b.conv("conv3", 384, 3, pad=1, bias=0.0)
    b.conv("conv4", 384, 3, pad=1, group=2, bias=1.0)
    b.conv("conv5", 256, 3, pad=1, group=2, bias=1.0)
    b.pool("pool5", 3, 2)
    b.fc("fc6", 4096, std=0.005, bias=1.0)
    b.fc("fc7", 4096, std=0.005, bias=1.0)


def _stages(b: _Builder) -> None:
    """7x7/2 conv1 and 3x3 stages conv2..conv5, each stage closed by a max pool."""
    b.conv1(64, 7, 2, 1, bias=0.5)
    b.pool("pool1", 3, 2)
    for stage, (n, width) in enumerate(zip(stage_sizes(b.config.depth), STAGE_WIDTHS), start=2):
        for i in range(1, n + 1):
            b.conv(f"conv{stage}" if n == 1 else f"conv{stage}_{i}", width, 3, pad=1, bias=0.1)
        b.pool(f"pool{stage}", 2, 2)
    b.fc("fc6", 4096, bias=1.0)
    b.fc("fc7", 4096, bias=1.0)


def build(config: NetConfig) -> Net:
    """Resolve `config` and lay out its blocks in prototxt order."""
    config = resolve(config)
    dataset = DATASETS[config.dataset]
    b = _Builder(config, dataset)
    (_cnn5 if config.depth == 5 else _stages)(b)
    b.fc("fc8", dataset.num_classes, last=True)
    return Net(config, dataset, tuple(b.blocks), b.blob)


def catalogue() -> list[NetConfig]:
    """The nets committed under models/: the paper's five per large dataset, and the
    28x28 adaptations for fashion-mnist."""
    paper = [("cnn", 5), ("cnn", 8), ("cnds", 8), ("cnn", 13), ("cnds", 13)]
    return [NetConfig(dataset=d, variant=v, depth=n)
            for d in ("imagenet", "places205", "fashion-mnist") for v, n in paper]
