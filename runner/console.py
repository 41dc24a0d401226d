"""Command-line helpers: the program name a command shows in its usage line (the console
command it was started as, `caffe-ds-probe`, ..., installed from pyproject's
[project.scripts], else the way the documentation runs it, `python -m generator.probe`,
...), and argparse types shared by the commands."""
from __future__ import annotations

import argparse
import os
import sys


def at_least(low: int):
    """argparse type: an int >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def prog(documented: str) -> str:
    """`documented`, or the caffe-ds* command this process was started as."""
    started = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return started if started.startswith("caffe-ds") else documented
