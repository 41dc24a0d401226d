"""Upgrade a solver prototxt that uses the deprecated `solver_type` enum to `type`.

Usage: python -m runner.tools.upgrade_solver_proto_text IN.prototxt OUT.prototxt
(Caffe's tools/upgrade_solver_proto_text; OUT may equal IN.)
"""
from __future__ import annotations

import sys

from runner.proto import parse_solver_text, upgrade_solver
from runner.tools.upgrade_net_proto_text import run_upgrade


def main(argv: list[str] | None = None) -> int:
    return run_upgrade(__spec__.name, __doc__, parse_solver_text, upgrade_solver, argv)


if __name__ == "__main__":
    sys.exit(main())
