"""glog-style log lines, as Caffe prints them, so Caffe's log tools read our logs.

`I1127 10:00:00.123456 12345 solver.cpp:218] Iteration 100 (...), loss = 0.53`
Lines go to stderr (through tqdm.write, so a progress bar stays intact) and, when a
path is given, to a log file. Numbers are formatted as C++ ostreams print floats.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time

from tqdm import tqdm


def cfloat(x: float) -> str:
    """A float as `std::ostream << float` prints it (6 significant digits)."""
    x = float(x)
    if math.isnan(x):
        return "nan" if math.copysign(1.0, x) > 0 else "-nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.6g}"


class GlogFormatter(logging.Formatter):
    """Formats records as glog does: severity, MMDD, time with microseconds, pid, file:line."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        micros = int((record.created % 1) * 1_000_000)
        where = getattr(record, "where", f"{record.filename}:{record.lineno}")
        return (f"{record.levelname[0]}{t.tm_mon:02d}{t.tm_mday:02d} "
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d} "
                f"{record.process:5d} {where}] {record.getMessage()}")


class _TqdmStderrHandler(logging.Handler):
    """Writes to stderr without tearing an active tqdm bar."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never take the run down
            self.handleError(record)


class CaffeLog:
    """The solver's log: `log.info("solver.cpp:218", "Iteration ...")`."""

    def __init__(self, path: str | os.PathLike | None = None, enabled: bool = True,
                 stderr: bool = True, append: bool = False):
        """`append` continues an existing log file (a resumed run); else it starts afresh."""
        self.path = path
        self.logger = logging.getLogger(f"runner.caffe.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.enabled = enabled
        if not enabled:
            return
        fmt = GlogFormatter()
        if stderr:
            handler = _TqdmStderrHandler()
            handler.setFormatter(fmt)
            self.logger.addHandler(handler)
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            handler = logging.FileHandler(path, mode="a" if append else "w", encoding="utf-8")
            handler.setFormatter(fmt)
            self.logger.addHandler(handler)

    def info(self, where: str, msg: str) -> None:
        if self.enabled:
            self.logger.info(msg, extra={"where": where})

    def warning(self, where: str, msg: str) -> None:
        if self.enabled:
            self.logger.warning(msg, extra={"where": where})

    def error(self, where: str, msg: str) -> None:
        if self.enabled:
            self.logger.error(msg, extra={"where": where})

    def close(self) -> None:
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)
