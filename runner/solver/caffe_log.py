"""glog-style log lines, as Caffe prints them, so Caffe's log tools read our logs.

`I1127 10:00:00.123456 12345 solver.cpp:218] Iteration 100 (...), loss = 0.53`
Lines go to stderr (through tqdm.write, so a progress bar stays intact) and, when a
path is given, to a log file. Numbers are formatted as C++ ostreams print floats.
"""
from __future__ import annotations

import functools
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


# glog's FLAGS_minloglevel, and the least severity that reaches stderr (everything until
# glog is initialised; ERROR after InitGoogleLogging unless FLAGS_logtostderr)
_GLOG = {"min_level": logging.INFO, "stderr_level": logging.INFO}
_SEVERITIES = (logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)


def configure_glog(min_severity: int = 0, to_stderr: bool = False) -> None:
    """glog's flags as pycaffe's init_log sets them: lines below `min_severity` (0 INFO,
    1 WARNING, 2 ERROR, 3 FATAL) are dropped; unless `to_stderr`, only ERROR and above
    reach stderr (glog writes the rest to its log files; a solver's log file keeps them)."""
    if not 0 <= min_severity <= 3:
        raise ValueError(f"glog severity {min_severity} is not 0 (INFO) to 3 (FATAL)")
    _GLOG["min_level"] = _SEVERITIES[min_severity]
    _GLOG["stderr_level"] = logging.INFO if to_stderr else logging.ERROR


class _GlogLevels(logging.Filter):
    """Passes the records glog's flags let through to this handler's destination."""

    def __init__(self, stderr: bool):
        super().__init__()
        self.stderr = stderr

    def filter(self, record: logging.LogRecord) -> bool:
        least = max(_GLOG["min_level"], _GLOG["stderr_level"]) if self.stderr else _GLOG["min_level"]
        return record.levelno >= least


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
            handler.addFilter(_GlogLevels(stderr=True))
            self.logger.addHandler(handler)
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            handler = logging.FileHandler(path, mode="a" if append else "w", encoding="utf-8")
            handler.setFormatter(fmt)
            handler.addFilter(_GlogLevels(stderr=False))
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


@functools.cache
def stderr_log() -> CaffeLog:
    """The process's glog lines outside a solver (a net's own debug_info, pycaffe's
    caffe.log): stderr only, one log for all."""
    return CaffeLog()
