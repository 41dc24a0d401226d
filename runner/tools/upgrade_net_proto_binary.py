"""Upgrade a legacy (V0/V1) binary net, e.g. an old .caffemodel, to the current format.

Usage: python -m runner.tools.upgrade_net_proto_binary IN.caffemodel OUT.caffemodel
(Caffe's tools/upgrade_net_proto_binary; OUT may equal IN.)
"""
from __future__ import annotations

import sys

from runner.proto import read_caffemodel, upgrade_net, write_binary
from runner.tools.upgrade_net_proto_text import run_upgrade


def _read(path: str):
    return read_caffemodel(path, upgrade=False)


def main(argv: list[str] | None = None) -> int:
    return run_upgrade(__spec__.name, __doc__, None, upgrade_net, argv, read=_read, write=write_binary)


if __name__ == "__main__":
    sys.exit(main())
