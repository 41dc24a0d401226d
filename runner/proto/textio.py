"""Text prototxt I/O: parse with protobuf's text_format, report errors as path:line:column."""
from __future__ import annotations

import os
from typing import TypeVar

from google.protobuf import text_format
from google.protobuf.message import Message

from runner.atomic import atomic_write_text
from runner.proto import caffe_pb2
from runner.proto.binary import read_file_bytes
from runner.proto.errors import ProtoError, check_required_fields
from runner.proto.upgrade import snapshot_prefix_for, upgrade_net, upgrade_solver

M = TypeVar("M", bound=Message)


def _located_message(err: text_format.ParseError, text: str) -> str:
    """protobuf's message without its own "L:C : 'source line': " prefix."""
    line, column = err.GetLine(), err.GetColumn()
    what = str(err)
    prefix = f"{line}:{column} : " if column is not None else f"{line} : "
    if what.startswith(prefix):
        what = what[len(prefix):]
    lines = text.splitlines()
    if line is not None and 1 <= line <= len(lines):
        quoted = f"'{lines[line - 1]}': "
        if what.startswith(quoted):
            what = what[len(quoted):]
    return what


def _caret(text: str, line: int | None, column: int | None) -> str:
    """The offending source line and a caret under the reported column."""
    lines = text.splitlines()
    if line is None or not 1 <= line <= len(lines):
        return ""
    source = lines[line - 1]
    col = min(max((column or 1) - 1, 0), len(source))
    pad = "".join(c if c == "\t" else " " for c in source[:col])
    return f"\n    {source}\n    {pad}^"


def parse_text(text: str, message_class: type[M], origin: str = "<string>") -> M:
    """Parse text-format `text` into a new `message_class`; errors say origin:line:column."""
    msg = message_class()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as err:
        line, column = err.GetLine(), err.GetColumn()
        where = origin if line is None else f"{origin}:{line}" + ("" if column is None else f":{column}")
        raise ProtoError(f"{where}: {_located_message(err, text)}{_caret(text, line, column)}") from None
    check_required_fields(msg, origin)
    return msg


def read_file_text(path: str | os.PathLike) -> str:
    """The UTF-8 contents of a text file, or a ProtoError naming the path."""
    data = read_file_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProtoError(
            f"{path}: not a text prototxt (byte {err.start} is not UTF-8); "
            "binary files (.caffemodel, .binaryproto, .solverstate) need the binary readers"
        ) from None


def read_text(path: str | os.PathLike, message_class: type[M]) -> M:
    """Parse a text-format file into a new `message_class`, without any upgrade."""
    return parse_text(read_file_text(path), message_class, str(path))


def _parse_upgraded(text: str, message_class: type[M], origin: str, upgrade) -> M:
    msg = parse_text(text, message_class, origin)
    if upgrade is not None:
        upgrade(msg, origin)
    return msg


def parse_net_text(text: str, origin: str = "<string>", upgrade: bool = True) -> caffe_pb2.NetParameter:
    """Parse a net prototxt; V0/V1 layers and legacy fields are upgraded as Caffe does."""
    return _parse_upgraded(text, caffe_pb2.NetParameter, origin, upgrade_net if upgrade else None)


def read_net(path: str | os.PathLike, upgrade: bool = True) -> caffe_pb2.NetParameter:
    """Read a net prototxt file (Caffe's ReadNetParamsFromTextFileOrDie)."""
    return parse_net_text(read_file_text(path), str(path), upgrade)


def parse_solver_text(text: str, origin: str = "<string>", upgrade: bool = True) -> caffe_pb2.SolverParameter:
    """Parse a solver prototxt; the deprecated `solver_type` enum becomes the `type` string."""
    return _parse_upgraded(text, caffe_pb2.SolverParameter, origin, upgrade_solver if upgrade else None)


def read_solver(path: str | os.PathLike, upgrade: bool = True) -> caffe_pb2.SolverParameter:
    """Read a solver prototxt file as Caffe's ReadSolverParamsFromTextFileOrDie does.

    Besides the type upgrade this fills in `snapshot_prefix` as Caffe does: unset means
    the solver file's path without extension; an existing directory gets the solver
    file's stem appended.
    """
    solver = parse_solver_text(read_file_text(path), str(path), upgrade)
    if upgrade:
        solver.snapshot_prefix = snapshot_prefix_for(solver, path)
    return solver


def to_text(msg: Message) -> str:
    """protobuf text format, fields in field-number order (as Caffe writes prototxt)."""
    return text_format.MessageToString(msg, as_utf8=True)


def write_text(msg: Message, path: str | os.PathLike) -> None:
    """Write `msg` as text format to `path` atomically."""
    atomic_write_text(path, to_text(msg))
