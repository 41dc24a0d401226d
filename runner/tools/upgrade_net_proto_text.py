"""Upgrade a legacy (V0/V1, input-field) net prototxt to the current format.

Usage: python -m runner.tools.upgrade_net_proto_text IN.prototxt OUT.prototxt
(Caffe's tools/upgrade_net_proto_text; OUT may equal IN.)
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from runner import console
from runner.proto import ProtoError, parse_net_text, upgrade_net, write_text
from runner.proto.textio import read_file_text


def run_upgrade(module: str, doc: str, parse: Callable, upgrade: Callable,
                argv: list[str] | None, read: Callable | None = None, write: Callable = write_text) -> int:
    """Read IN without upgrading (`read(path)`, default: `parse` of its text), apply
    `upgrade`, `write` OUT; one-line errors, exit 1."""
    parser = argparse.ArgumentParser(prog=console.prog(f"python -m {module}"), description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="the prototxt to read")
    parser.add_argument("output", help="where to write the upgraded prototxt (atomically)")
    args = parser.parse_args(argv)
    try:
        msg = read(args.input) if read else parse(read_file_text(args.input), args.input, upgrade=False)
        applied = upgrade(msg, args.input)
        write(msg, args.output)
    except (ProtoError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    status = f"upgraded ({'; '.join(applied)})" if applied else "already in the latest format"
    print(f"{args.input}: {status}\nwrote {args.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_upgrade(__spec__.name, __doc__, parse_net_text, upgrade_net, argv)


if __name__ == "__main__":
    sys.exit(main())
