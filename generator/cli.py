"""`python -m generator DEPTH=8 VARIANT=cnds ...`: render nets into models/<name>/.

Arguments come as Make passes them (KEY=VALUE, an empty value meaning the default);
flags override the solver schedule (--epochs, --step-at, --test-interval, ...).
Every file is rendered, parsed back through the schema and shape-checked before
anything is written; a bad argument exits with status 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
from dataclasses import replace

from generator.architectures import ConfigError, NetConfig, build, catalogue
from generator.datasets import register_dataset
from generator.make import prepare
from generator.model_folder import write_model_folder
from generator.own_data import folder_dataset
from generator.render import parse, render
from generator.schedule import ScheduleOverrides, with_data_sizes
from runner import console
from runner.proto import ProtoError
from runner.shapes import ShapeError

KEYS = ("DEPTH", "VARIANT", "DATASET", "DATA", "BRANCHES", "ALPHA", "WIDTH", "INIT")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=console.prog("python -m generator"), description=(
        "Render train_val, deploy and solver prototxt of the paper's CNN/CNDS nets into "
        "<out>/<dataset>-<variant><depth>/ and print each deploy net's shape table."))
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                   help="DEPTH=5..19 VARIANT=cnds|cnn DATASET=imagenet|places205|fashion-mnist "
                        "BRANCHES=4,7,10|none|auto ALPHA=0.3 WIDTH=<multiplier> INIT=released|vanilla|msra "
                        "DATA=<folder with train_lmdb, val_lmdb> (your own data instead of DATASET; "
                        "empty values mean the defaults)")
    p.add_argument("--all", action="store_true", help="render every net committed under models/")
    p.add_argument("--out", default="models", help="models folder, as the solver's working directory sees it")
    s = p.add_argument_group("schedule overrides (default: the net's own schedule, docs/generator.md)")
    s.add_argument("--epochs", type=float, help="train this many epochs over the records of the "
                   "train LMDB (its nominal size when absent); max_iter is rounded up to a "
                   "multiple of test_interval and snapshots fall every quarter of the run")
    s.add_argument("--step-at", type=float, help="lr step at this fraction of max_iter")
    s.add_argument("--test-interval", type=int, help="test every this many iterations")
    s.add_argument("--test-iter", type=int, help="test batches per test")
    s.add_argument("--display", type=int, help="log every this many iterations")
    s.add_argument("--snapshot", type=int, help="snapshot every this many iterations")
    s.add_argument("--max-iter", type=int, help="max_iter, set last (the rest of the schedule stays)")
    s.add_argument("--batch", type=int, help="batch_size of both Data layers")
    s.add_argument("--seed", type=int, help="the solver's random_seed")
    s.add_argument("--solver-mode", choices=("CPU", "GPU"), help="the solver's solver_mode")
    return p


def overrides_from_args(args) -> ScheduleOverrides:
    """The schedule overrides the flags ask for (all None: the defaults)."""
    return ScheduleOverrides(
        epochs=args.epochs, step_at=args.step_at, test_interval=args.test_interval,
        test_iter=args.test_iter, display=args.display, snapshot=args.snapshot,
        max_iter=args.max_iter, batch=args.batch, solver_mode=args.solver_mode,
        random_seed=args.seed)


def _number(key: str, value: str, kind):
    try:
        x = kind(value)
    except ValueError:
        raise ConfigError(f"{key}={value}: expected {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(x):
        raise ConfigError(f"{key}={value}: expected a finite number")
    return x


def _branches(value: str) -> tuple[int, ...] | str | None:
    if value in ("", "default"):
        return None
    if value in ("none", "auto"):
        return () if value == "none" else "auto"
    return tuple(_number("BRANCHES", v.strip(), int) for v in value.split(","))


def config_from_settings(settings: list[str]) -> tuple[NetConfig, bool]:
    """A NetConfig from KEY=VALUE strings, and whether BRANCHES=auto was asked for."""
    values = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise ConfigError(f"{item}: expected KEY=VALUE with KEY one of {', '.join(KEYS)}")
        values[key] = value.strip()
    config = NetConfig()
    if values.get("DATA"):
        if values.get("DATASET"):
            raise ConfigError("give DATASET (a built-in dataset) or DATA (a folder of your own), not both")
        dataset = folder_dataset(values["DATA"])
        register_dataset(dataset)
        config = replace(config, dataset=dataset.name)
    if values.get("DEPTH"):
        config = replace(config, depth=_number("DEPTH", values["DEPTH"], int))
    for key, field in (("VARIANT", "variant"), ("DATASET", "dataset"), ("INIT", "init")):
        if values.get(key):
            config = replace(config, **{field: values[key].lower()})
    if values.get("ALPHA"):
        config = replace(config, alpha=_number("ALPHA", values["ALPHA"], float))
    if values.get("WIDTH"):
        config = replace(config, width=_number("WIDTH", values["WIDTH"], float))
    branches = _branches(values.get("BRANCHES", "").lower())
    if branches != "auto":
        return replace(config, branches=branches), False
    return config, True


def probe_branches(config: NetConfig) -> tuple[int, ...]:
    """BRANCHES=auto: ask generator.probe.suggest_branches(train_val NetParameter of the
    plain CNN with the same settings, and those settings) for the conv layers (1-based) to tap."""
    if config.variant != "cnds":
        raise ConfigError("BRANCHES=auto: only VARIANT=cnds has supervision branches")
    try:
        suggest = getattr(importlib.import_module("generator.probe"), "suggest_branches", None)
    except ModuleNotFoundError as exc:
        if exc.name != "generator.probe":
            raise
        suggest = None
    if suggest is None:
        raise ConfigError("BRANCHES=auto needs the gradient probe (generator.probe.suggest_branches), "
                          "which is not available; give BRANCHES=k,... instead")
    plain = build(replace(config, variant="cnn", branches=None))
    text = render(plain)["train_val.prototxt"]
    taps = tuple(int(k) for k in suggest(parse("train_val.prototxt", text), plain.config))
    if not taps:
        raise ConfigError("BRANCHES=auto: the probe suggests no branch; use VARIANT=cnn")
    return taps


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_intermixed_args(argv)
        if args.all and args.settings:
            raise ConfigError("--all renders the committed nets and takes no KEY=VALUE settings")
        if args.all:
            configs = catalogue()
        else:
            config, auto = config_from_settings(args.settings)
            configs = [replace(config, branches=probe_branches(config)) if auto else config]
        overrides = overrides_from_args(args)
        made = [prepare(c, args.out, with_data_sizes(build(c), overrides)
                        if overrides.epochs is not None else overrides) for c in configs]
    except (ConfigError, ProtoError, ShapeError) as exc:
        print(f"generator: error: {exc}", file=sys.stderr)
        return 2
    for m in made:
        try:
            write_model_folder(m.folder, m.texts)
        except OSError as exc:
            print(f"generator: error: cannot write {m.folder}/: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {m.folder}/ ({', '.join(m.texts)})")
        print(m.summary)
    return 0
