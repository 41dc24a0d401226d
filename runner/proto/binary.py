"""Binary protobuf files: .caffemodel (NetParameter), .binaryproto (BlobProto), .solverstate."""
from __future__ import annotations

import os
import stat
import warnings
from typing import Callable, TypeVar

from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError, Message

from runner.atomic import atomic_write_bytes
from runner.proto import caffe_pb2
from runner.proto.errors import ProtoError, check_required_fields
from runner.proto.upgrade import upgrade_net

M = TypeVar("M", bound=Message)


# protobuf refuses messages past 2 GiB (Caffe's kProtoReadBytesLimit is INT_MAX too).
MAX_FILE_BYTES = 2**31 - 1


def read_file_bytes(path: str | os.PathLike, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file `path` (at most `limit`), or a ProtoError naming it.

    Devices, pipes and directories are refused before anything is read, and no more than
    the size the file declares is read, so /dev/zero or a growing file cannot exhaust memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)   # a FIFO must not block the open
    except OSError as err:
        raise ProtoError(f"{path}: cannot read: {err.strerror or err}") from None
    except ValueError as err:   # a NUL byte in the path (one read from a corrupt file)
        raise ProtoError(f"{os.fspath(path)!r}: cannot read: {err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):   # checked before fdopen, which refuses directories
            raise ProtoError(f"{path}: cannot read: not a regular file")
        if info.st_size > limit:
            raise ProtoError(f"{path}: {info.st_size} bytes, more than the {limit} "
                             "this file may have")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            return f.read(info.st_size)
        except OSError as err:
            raise ProtoError(f"{path}: cannot read: {err.strerror or err}") from None


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"   # the first bytes of an HDF5 file


def read_binary(path: str | os.PathLike, message_class: type[M],
                repair: Callable[[M, str], None] | None = None) -> M:
    """Parse a binary protobuf file into a new `message_class`.

    Besides corrupt wire data this rejects top-level fields the message type does not
    have, which is how a file of another type (say a NetParameter read as a BlobProto)
    shows itself. `repair(msg, path)` runs before the required fields are checked.
    """
    type_name = message_class.DESCRIPTOR.full_name
    data = read_file_bytes(path)
    try:
        msg = message_class.FromString(data)
    except DecodeError:
        what = ("an HDF5 file" if data.startswith(HDF5_SIGNATURE)
                else f"{len(data)} bytes of corrupt protobuf wire data")
        raise ProtoError(f"{path}: not a binary {type_name} ({what})") from None
    unknown = sorted({f.field_number for f in unknown_fields.UnknownFieldSet(msg)})
    if unknown:
        raise ProtoError(f"{path}: not a binary {type_name} (it has field numbers "
                         f"{unknown} that {type_name} does not define)")
    if repair is not None:
        repair(msg, str(path))
    check_required_fields(msg, str(path))
    bad = _undecodable_string(msg)
    if bad:
        raise ProtoError(f"{path}: not a binary {type_name} (its string field {bad} "
                         "is not UTF-8 text)")
    return msg


def _undecodable_string(msg: Message, where: str = "") -> str | None:
    """The path of the first string field holding bytes that are not UTF-8 (protobuf
    hands such proto2 strings back as bytes), or None."""
    for field, value in msg.ListFields():
        if field.type not in (field.TYPE_STRING, field.TYPE_MESSAGE):
            continue
        items = enumerate(value) if field.is_repeated else [(None, value)]
        for i, item in items:
            name = f"{where}{field.name}" + ("" if i is None else f"[{i}]")
            found = (name if isinstance(item, bytes) else None) \
                if field.type == field.TYPE_STRING else _undecodable_string(item, name + ".")
            if found:
                return found
    return None


def write_binary(msg: Message, path: str | os.PathLike) -> None:
    """Serialize `msg` to `path` atomically (refused when required fields are unset)."""
    check_required_fields(msg, str(path))
    atomic_write_bytes(path, msg.SerializeToString())


def drop_forks_field_148(net: caffe_pb2.NetParameter, path: str) -> None:
    """Field 148 of a layer is BVLC's clip_param, whose min and max are required; ChWick's
    ctc branch (and TextBoxes++) store their ctc_loss_param there, which reads as a
    clip_param without them. On a layer that is not a Clip it is dropped, with a warning
    (the prototxt gives layer parameters); BVLC Caffe refuses such a file."""
    for layer in net.layer:
        if layer.type != "Clip" and layer.HasField("clip_param") \
                and not layer.clip_param.IsInitialized():
            layer.ClearField("clip_param")
            warnings.warn(f"{path}: layer '{layer.name}' ({layer.type}) carries field 148, "
                          "BVLC's clip_param, without its min and max: another fork's "
                          "parameter there (ChWick's ctc_loss_param) is ignored", stacklevel=3)


def read_caffemodel(path: str | os.PathLike, upgrade: bool = True) -> caffe_pb2.NetParameter:
    """Read trained weights (a binary NetParameter), upgrading legacy layers as Caffe does;
    a fork's parameter at BVLC's clip_param number is dropped (drop_forks_field_148)."""
    net = read_binary(path, caffe_pb2.NetParameter, drop_forks_field_148)
    if upgrade:
        upgrade_net(net, str(path))
    return net


def read_blobproto(path: str | os.PathLike) -> caffe_pb2.BlobProto:
    """Read a .binaryproto file (a mean image, for instance)."""
    return read_binary(path, caffe_pb2.BlobProto)


def read_solverstate(path: str | os.PathLike) -> caffe_pb2.SolverState:
    """Read a .solverstate file (iteration, learned_net, update history)."""
    return read_binary(path, caffe_pb2.SolverState)
