"""Render a net's three prototxt files from templates/ and parse each back through the schema."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

from generator.architectures import Net
from generator.schedule import Schedule, schedule
from runner.proto import parse_net_text, parse_solver_text

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
FILES = {  # output file -> (template, schema parser)
    "train_val.prototxt": ("train_val.prototxt.j2", parse_net_text),
    "deploy.prototxt": ("deploy.prototxt.j2", parse_net_text),
    "solver.prototxt": ("solver.prototxt.j2", parse_solver_text),
}


def number(x) -> str:
    """Prototxt spelling of a number: integral values without a fraction, others by repr."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _fail(message: str):
    raise jinja2.TemplateRuntimeError(message)


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        autoescape=False)
    env.filters["num"] = number
    env.globals["fail"] = _fail
    return env


def parse(filename: str, text: str, origin: str | None = None):
    """Parse the text of one of FILES strictly (no legacy upgrade) into its Caffe message;
    a ProtoError names `origin` (default: the file name) with line:column."""
    return FILES[filename][1](text, origin or filename, upgrade=False)


def render(net: Net, root: str = "models", sched: Schedule | None = None) -> dict[str, str]:
    """The text of train_val, deploy and solver prototxt for `net`, each checked by the schema.

    `root` is the models folder as the solver's working directory sees it; the solver's
    `net` and `snapshot_prefix` point inside `<root>/<name>/`. `sched` defaults to the
    net's own schedule (generator/schedule.py).
    """
    folder = f"{root}/{net.name}"
    context = dict(net=net, ds=net.dataset, s=sched or schedule(net), folder=folder)
    texts = {}
    for filename, (template, _) in FILES.items():
        text = environment().get_template(template).render(context)
        parse(filename, text, f"{folder}/{filename}")
        texts[filename] = text
    return texts
