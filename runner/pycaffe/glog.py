"""pycaffe's init_log and log: glog's flags and an INFO line, over runner's glog-style log."""
from __future__ import annotations

from runner.solver.caffe_log import configure_glog, stderr_log


def init_log(level: int = 0, stderr: bool = False) -> None:
    """As _caffe.cpp's InitLog: lines below `level` (0 INFO .. 3 FATAL) are dropped, and
    unless `stderr` only ERROR and above reach stderr (glog then logs to files; a solver's
    `<snapshot_prefix>.log` keeps its lines)."""
    configure_glog(int(level), bool(stderr))


def log(message: str) -> None:
    """An INFO line, as glog's LOG(INFO) << message."""
    stderr_log().info("_caffe.cpp:68", str(message))
