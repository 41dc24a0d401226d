"""The program name a command shows in its usage line: the console command it was started
as (`caffe-ds-probe`, ..., installed from pyproject's [project.scripts]), else the way
the documentation runs it (`python -m generator.probe`, ...)."""
from __future__ import annotations

import os
import sys


def prog(documented: str) -> str:
    """`documented`, or the caffe-ds* command this process was started as."""
    started = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return started if started.startswith("caffe-ds") else documented
