"""`python -m generator DEPTH=8 VARIANT=cnds ...`: render nets into models/<name>/.

Arguments come as Make passes them (KEY=VALUE, an empty value meaning the default).
Every file is rendered, parsed back through the schema and shape-checked before
anything is written; a bad argument exits with status 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
from dataclasses import replace

from generator.architectures import ConfigError, Net, NetConfig, build, catalogue
from generator.datasets import register_dataset
from generator.own_data import folder_dataset
from generator.render import parse, render
from generator.summary import aux_cost, format_table, shape_table
from generator.output import write_model_folder
from runner.proto import ProtoError
from runner.shapes import ShapeError

KEYS = ("DEPTH", "VARIANT", "DATASET", "DATA", "BRANCHES", "ALPHA", "WIDTH", "INIT")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m generator", description=(
        "Render train_val, deploy and solver prototxt of the paper's CNN/CNDS nets into "
        "<out>/<dataset>-<variant><depth>/ and print each deploy net's shape table."))
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                   help="DEPTH=5..19 VARIANT=cnds|cnn DATASET=imagenet|places205|fashion-mnist "
                        "BRANCHES=4,7,10|none|auto ALPHA=0.3 WIDTH=<multiplier> INIT=released|vanilla|msra "
                        "DATA=<folder with train_lmdb, val_lmdb> (your own data instead of DATASET; "
                        "empty values mean the defaults)")
    p.add_argument("--all", action="store_true", help="render every net committed under models/")
    p.add_argument("--out", default="models", help="models folder, as the solver's working directory sees it")
    return p


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
    plain CNN with the same settings) for the conv layers (1-based) to tap."""
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
    taps = tuple(int(k) for k in suggest(parse("train_val.prototxt", text)))
    if not taps:
        raise ConfigError("BRANCHES=auto: the probe suggests no branch; use VARIANT=cnn")
    return taps


def report(net: Net, texts: dict[str, str]) -> str:
    """Shape tables of all three phases' nets (checks them) -> the printed summary."""
    ds = net.dataset
    deploy = parse("deploy.prototxt", texts["deploy.prototxt"])
    train_val = parse("train_val.prototxt", texts["train_val.prototxt"])
    train = shape_table(train_val, "TRAIN", {"data": ds.input_shape(ds.train_batch), "label": (ds.train_batch,)})
    shape_table(train_val, "TEST", {"data": ds.input_shape(ds.test_batch), "label": (ds.test_batch,)})
    rows = shape_table(deploy, "TEST")
    title = f"{net.name}: deploy net, one {ds.channels}x{ds.crop}x{ds.crop} image"
    n, params, macs = aux_cost(train, ds.train_batch)
    aux = (f"auxiliary branches (training only): {n}, params {params:,}, MACs per image {macs:,}"
           if n else "auxiliary branches: none")
    return f"{format_table(rows, title)}\n{aux}\n"


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
        nets = [build(c) for c in configs]
        rendered = [(net, render(net, args.out)) for net in nets]
        reports = [report(net, texts) for net, texts in rendered]
    except (ConfigError, ProtoError, ShapeError) as exc:
        print(f"generator: error: {exc}", file=sys.stderr)
        return 2
    for (net, texts), text in zip(rendered, reports):
        folder = f"{args.out}/{net.name}"
        try:
            write_model_folder(folder, texts)
        except OSError as exc:
            print(f"generator: error: cannot write {folder}/: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {folder}/ ({', '.join(texts)})")
        print(text)
    return 0
