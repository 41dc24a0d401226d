"""`make net` as a function: build a net, render its three files with a schedule, check
them, and write its model folder; the command line (generator/cli.py) and reproduce/
both call it, so a run's files are rendered with its schedule, never edited after."""
from __future__ import annotations

from dataclasses import dataclass

from generator.architectures import Net, NetConfig, build
from generator.model_folder import write_model_folder
from generator.render import parse, render
from generator.schedule import Schedule, ScheduleOverrides, schedule
from generator.summary import aux_cost, format_table, shape_table


@dataclass(frozen=True)
class RenderedNet:
    """A net with the schedule and texts it was rendered with, and its printed summary."""
    net: Net
    schedule: Schedule
    texts: dict[str, str]
    summary: str
    folder: str


def report(net: Net, texts: dict[str, str], sched: Schedule | None = None) -> str:
    """Shape tables of all three phases' nets (checks them) -> the printed summary."""
    ds = net.dataset
    sched = sched or schedule(net)
    train_batch, test_batch = sched.train_batch, sched.test_batch
    deploy = parse("deploy.prototxt", texts["deploy.prototxt"])
    train_val = parse("train_val.prototxt", texts["train_val.prototxt"])
    train = shape_table(train_val, "TRAIN", {"data": ds.input_shape(train_batch), "label": (train_batch,)})
    shape_table(train_val, "TEST", {"data": ds.input_shape(test_batch), "label": (test_batch,)})
    rows = shape_table(deploy, "TEST")
    title = f"{net.name}: deploy net, one {ds.channels}x{ds.crop}x{ds.crop} image"
    n, params, macs = aux_cost(train, train_batch)
    aux = (f"auxiliary branches (training only): {n}, params {params:,}, MACs per image {macs:,}"
           if n else "auxiliary branches: none")
    return f"{format_table(rows, title)}\n{aux}\n"


def prepare(config: NetConfig, root: str = "models",
            overrides: ScheduleOverrides | None = None) -> RenderedNet:
    """Build, render and check a net for `<root>/<name>/`; nothing is written. Raises
    ConfigError, ProtoError or ShapeError naming what is wrong."""
    net = build(config)
    sched = schedule(net, overrides)
    texts = render(net, root, sched)
    return RenderedNet(net, sched, texts, report(net, texts, sched), f"{root}/{net.name}")


def make_net(config: NetConfig, root: str = "models",
             overrides: ScheduleOverrides | None = None) -> RenderedNet:
    """prepare(), then write the model folder whole (OSError when it cannot be written)."""
    made = prepare(config, root, overrides)
    write_model_folder(made.folder, made.texts)
    return made
