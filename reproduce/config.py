"""The reproduction protocol read from reproduce/config.yaml: one preset of one dataset,
merged (defaults < dataset < preset) and checked, as a `Protocol`."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from generator.architectures import DEPTHS, INITS, VARIANTS
from generator.datasets import DATASETS

CONFIG = Path(__file__).resolve().parent / "config.yaml"
KEYS = {"nets", "init", "width", "seeds", "epochs", "lr_drop_at", "test_interval", "test_iter",
        "final_test_iter", "display", "batch", "probe", "claims"}
CLAIM_KEYS = {"margin", "poor_within", "paper_gap_8"}
PROBE_KEYS = {"net", "iters", "batch", "threshold"}


class ProtocolError(ValueError):
    """A config file that does not describe a protocol (names the file and the key)."""


@dataclass(frozen=True)
class NetRow:
    """One row of Table 1: which net, and where its initial weights come from."""
    label: str
    variant: str
    depth: int
    init_from: str | None = None
    pretrain_only: bool = False

    @property
    def slug(self) -> str:
        """The row's folder name under runs/: lower case, runs of other characters as '-'."""
        return re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")


@dataclass(frozen=True)
class Probe:
    """The gradient probe run before training (None in Protocol.probe: no probe)."""
    net: str
    iters: int
    batch: int
    threshold: float


@dataclass(frozen=True)
class Claims:
    """Numbers of the rules that turn the measurements into verdicts."""
    margin: float
    poor_within: float
    paper_gap_8: float


@dataclass(frozen=True)
class Protocol:
    """Everything one `make reproduce` does, for one dataset and preset."""
    dataset: str
    preset: str
    nets: tuple[NetRow, ...]
    init: str
    width: float | None           # None: the dataset's default WIDTH
    seeds: tuple[int, ...]
    epochs: float | None          # None: the generated (paper) schedule
    lr_drop_at: float
    test_interval: int
    test_iter: int
    final_test_iter: int
    display: int
    batch: int
    probe: Probe | None
    claims: Claims
    default_preset: bool = False  # the dataset's default_preset

    def row(self, label: str) -> NetRow:
        return next(r for r in self.nets if r.label == label)

    def report_name(self) -> str:
        """The report's file stem: the dataset's name for its default preset (what `make
        reproduce` writes), `<dataset>-<preset>` for another."""
        return self.dataset if self.default_preset else f"{self.dataset}-{self.preset}"


def _fail(where: str, msg: str):
    raise ProtocolError(f"{where}: {msg}")


def _number(where, value, kind=float, minimum=0.0, allow_equal=True):
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok_type = isinstance(value, int) and not isinstance(value, bool)
    if not ok_type or not math.isfinite(value) or value < minimum or (value == minimum and not allow_equal):
        word = "an integer" if kind is int else "a number"
        bound = ">=" if allow_equal else ">"
        _fail(where, f"expected {word} {bound} {minimum}, got {value!r}")
    return kind(value)


def _mapping(where, value, keys=None) -> dict:
    if not isinstance(value, dict):
        _fail(where, f"expected a mapping, got {type(value).__name__}")
    if keys is not None:
        unknown = sorted(set(value) - keys)
        if unknown:
            _fail(where, f"unknown key(s) {', '.join(map(str, unknown))} (expected {', '.join(sorted(keys))})")
    return value


def _nets(where, value) -> tuple[NetRow, ...]:
    if not isinstance(value, list) or not value:
        _fail(where, "expected a non-empty list of nets")
    rows: list[NetRow] = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        item = _mapping(at, item, {"label", "variant", "depth", "init_from", "pretrain_only"})
        label = item.get("label")
        if not isinstance(label, str) or not label.strip():
            _fail(at, "expected a label")
        if item.get("variant") not in VARIANTS:
            _fail(at, f"variant must be one of {', '.join(VARIANTS)}")
        depth = _number(f"{at}.depth", item.get("depth"), int, 0)
        if depth not in DEPTHS:
            _fail(f"{at}.depth", f"depth {depth} is not one the generator renders (5..19)")
        source = item.get("init_from")
        if source is not None and source not in [r.label for r in rows]:
            _fail(f"{at}.init_from", f"'{source}' is not the label of an earlier net")
        row = NetRow(label, item["variant"], depth, source, bool(item.get("pretrain_only", False)))
        if row.slug in [r.slug for r in rows]:
            _fail(at, f"label '{label}' clashes with an earlier one")
        rows.append(row)
    return tuple(rows)


def _probe(where, value, nets) -> Probe | None:
    if value is None:
        return None
    value = _mapping(where, value, PROBE_KEYS)
    if value.get("net") not in [r.label for r in nets]:
        _fail(f"{where}.net", f"'{value.get('net')}' is not a net of the protocol")
    return Probe(value["net"], _number(f"{where}.iters", value.get("iters"), int, 1),
                 _number(f"{where}.batch", value.get("batch", 0), int, 0),
                 _number(f"{where}.threshold", value.get("threshold"), float, 0.0, False))


def protocol_from(settings: dict, dataset: str, preset: str, where: str) -> Protocol:
    """Check merged settings (every key of KEYS present) and build the Protocol."""
    missing = sorted(KEYS - set(settings))
    if missing:
        _fail(where, f"missing key(s) {', '.join(missing)}")
    _mapping(where, settings, KEYS)
    nets = _nets(f"{where}.nets", settings["nets"])
    if settings["init"] not in INITS:
        _fail(f"{where}.init", f"expected one of {', '.join(INITS)}")
    width = _number(f"{where}.width", settings["width"], float, 0.0) or None
    seeds = settings["seeds"]
    if not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds):
        _fail(f"{where}.seeds", "expected a list of distinct seeds")
    seeds = tuple(_number(f"{where}.seeds", s, int, 0) for s in seeds)
    epochs = settings["epochs"]
    if epochs != "paper":
        epochs = _number(f"{where}.epochs", epochs, float, 0.0, False)
    else:
        epochs = None
    drop = _number(f"{where}.lr_drop_at", settings["lr_drop_at"], float, 0.0, False)
    if drop > 1:
        _fail(f"{where}.lr_drop_at", "expected a fraction of the iterations, at most 1")
    claims = _mapping(f"{where}.claims", settings["claims"], CLAIM_KEYS)
    if set(claims) != CLAIM_KEYS:
        _fail(f"{where}.claims", f"expected the keys {', '.join(sorted(CLAIM_KEYS))}")
    claims = Claims(**{k: _number(f"{where}.claims.{k}", v) for k, v in claims.items()})
    ints = {k: _number(f"{where}.{k}", settings[k], int, 0)
            for k in ("test_interval", "test_iter", "final_test_iter", "display", "batch")}
    return Protocol(dataset, preset, nets, settings["init"], width, seeds, epochs, drop,
                    probe=_probe(f"{where}.probe", settings["probe"], nets), claims=claims, **ints)


def load_protocol(dataset: str, preset: str | None = None, path: str | Path = CONFIG) -> Protocol:
    """The protocol of `preset` (default: the dataset's default_preset) from `path`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProtocolError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ProtocolError(f"{path}: not YAML: {exc}") from None
    data = _mapping(str(path), data, {"defaults", "datasets"})
    if dataset not in DATASETS:
        _fail(str(path), f"dataset '{dataset}' is not one the generator knows ({', '.join(DATASETS)})")
    datasets = _mapping(f"{path}: datasets", data.get("datasets"))
    if dataset not in datasets:
        _fail(f"{path}: datasets", f"no entry for '{dataset}' (has {', '.join(datasets)})")
    entry = _mapping(f"{path}: datasets.{dataset}", datasets[dataset],
                     KEYS | {"default_preset", "presets"})
    presets = _mapping(f"{path}: datasets.{dataset}.presets", entry.get("presets", {}))
    preset = preset or entry.get("default_preset")
    if preset not in presets:
        _fail(f"{path}: datasets.{dataset}.presets",
              f"no preset '{preset}' (has {', '.join(presets) or 'none'})")
    settings = dict(_mapping(f"{path}: defaults", data.get("defaults", {}), KEYS))
    settings.update({k: v for k, v in entry.items() if k in KEYS})
    settings.update(_mapping(f"{path}: datasets.{dataset}.presets.{preset}", presets[preset] or {}, KEYS))
    protocol = protocol_from(settings, dataset, preset,
                             f"{path}: datasets.{dataset}.presets.{preset}")
    return replace(protocol, default_preset=preset == entry.get("default_preset"))
