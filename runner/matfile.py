"""Blobs as MATLAB files, as DeepLab v2's MatRead and MatWrite layers keep them
(deeplab-public-ver2's src/caffe/util/matio_io.cpp, which uses matio).

WriteBlobToMat stores a blob of (num, channels, height, width) as the uncompressed level-5
variable `data`, class single, of MATLAB size [width height channels num]: the blob's memory
in MATLAB's column-major order, so `data(w, h, c, n)` in MATLAB (1-based) is blob[n, c, h, w].
ReadBlobFromMat reads `data` back: class single (a float net's Dtype), at most four
dimensions, [d0 d1 d2 d3] becoming the blob (d3, d2, d1, d0) with missing trailing
dimensions 1; a `diff` variable, if present and not empty, must be single too (its values are
not used by the layers). scipy.io writes and reads the files here; a level-5 file's element
tags are checked first (check_level5), as scipy's compiled reader crashes the process on
some malformed ones (an unknown data type inside a variable).

Names: prefix + (the first word of line `iter` of `source`, less `strip` trailing
characters, or "iter_<iter>" without a source) + "_blob_<i>.mat".
"""
from __future__ import annotations

import io
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from runner.atomic import atomic_write_bytes
from runner.proto.binary import read_file_bytes
from runner.proto.errors import ProtoError

_SPACE = re.compile(r"[ \t\n\v\f\r]+")   # what `iss >> filename` skips (C isspace)


class MatFileError(ValueError):
    """A .mat file or name list the layer cannot use, as the fork's CHECKs."""


def legacy_4d(shape, where: str) -> tuple[int, int, int, int]:
    """Blob::num/channels/height/width (missing axes 1); more than four axes is Caffe's
    CHECK failure in those accessors."""
    if len(shape) > 4:
        raise MatFileError(f"{where}: a {len(shape)}-axis blob has no num/channels/height/width "
                           f"(Caffe's legacy accessors take at most 4 axes)")
    return tuple(int(d) for d in shape) + (1,) * (4 - len(shape))


def list_names(param, where: str) -> list[str] | None:
    """The names of `param.source` (None when the field is not set), as the fork's
    LayerSetUp reads them: per line its first word, less `strip` trailing characters; a
    line without a word longer than `strip` is the fork's "Too much stripping"."""
    if not param.HasField("source"):
        return None
    if param.strip < 0:
        raise MatFileError(f"{where}: strip {param.strip} cannot be negative")
    try:
        raw = Path(param.source).read_bytes()
    except OSError as err:
        raise MatFileError(f"{where}: failed to open source file '{param.source}' "
                           f"({err.strerror or err})") from None
    text = raw.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()   # std::getline finds no line after the last newline
    names = []
    for number, line in enumerate(lines, 1):
        words = _SPACE.split(line.strip(" \t\n\v\f\r"))
        word = words[0] if words else ""
        if len(word) <= param.strip:
            raise MatFileError(f"{where}: {param.source}:{number}: too much stripping ({param.strip} "
                               f"characters of {word!r})")
        names.append(word[:len(word) - param.strip])
    return names


def blob_file(prefix: str, names: list[str] | None, item: int, blob: int) -> str:
    """prefix + names[item] (or "iter_<item>") + "_blob_<blob>.mat"."""
    middle = f"iter_{item}" if names is None else names[item]
    return f"{prefix}{middle}_blob_{blob}.mat"


def write_blob(path: str, values: np.ndarray, where: str) -> None:
    """WriteBlobToMat(path, false, blob): `data`, single, [W H C N], written atomically."""
    n, c, h, w = legacy_4d(values.shape, where)
    data = np.asarray(values, np.float32).reshape(n, c, h, w).transpose(3, 2, 1, 0)
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise MatFileError(f"{where}: cannot create MAT file '{path}': folder '{folder}' does "
                           f"not exist")
    import scipy.io as sio   # here, not at import: runner.shapes imports this module
    buffer = io.BytesIO()
    sio.savemat(buffer, {"data": data}, format="5", do_compression=False)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:
        raise MatFileError(f"{where}: cannot create MAT file '{path}' ({err.strerror or err})") from None


# Level-5 data types (miINT8 .. miUTF32; 8, 10 and 11 are reserved) and the two that hold
# further elements: miMATRIX and miCOMPRESSED.
_MI_TYPES = {1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 14, 15, 16, 17, 18}
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MAX_INFLATED = 2 ** 31   # bytes one compressed variable may inflate to


def check_level5(data: bytes, where: str) -> None:
    """Walk a level-5 MAT file's elements (those inside variables and compressed ones too):
    each tag's data type must be one the format defines and its size must fit in what
    holds it; a MatFileError names the byte otherwise. Other files are left to scipy."""
    if len(data) < 128 or data[124:126] not in (b"\x00\x01", b"\x01\x00") or \
            data[126:128] not in (b"IM", b"MI"):
        return
    order = "<" if data[126:128] == b"IM" else ">"

    def walk(body: bytes, start: int) -> None:
        pos = 0
        while pos < len(body):
            if len(body) - pos < 8:
                raise MatFileError(f"{where}: a truncated element tag at byte {start + pos}")
            first, second = struct.unpack_from(order + "II", body, pos)
            small = first >> 16
            kind, size, head = (first & 0xFFFF, small, 4) if small else (first, second, 8)
            if kind not in _MI_TYPES or (small and size > 4) or size > len(body) - pos - head:
                raise MatFileError(f"{where}: a malformed element at byte {start + pos} (data "
                                   f"type {kind}, {size} bytes)")
            content = body[pos + head:pos + head + size]
            if kind == _MI_MATRIX:
                walk(content, start + pos + head)
            elif kind == _MI_COMPRESSED:
                inflater = zlib.decompressobj()
                try:
                    inflated = inflater.decompress(content, _MAX_INFLATED)
                except zlib.error as err:
                    raise MatFileError(f"{where}: a compressed variable at byte {start + pos} "
                                       f"does not inflate ({err})") from None
                if inflater.unconsumed_tail:
                    raise MatFileError(f"{where}: a compressed variable at byte {start + pos} "
                                       f"inflates past {_MAX_INFLATED} bytes")
                walk(inflated, start + pos + head)
            pos += 8 if small else head + (size if kind == _MI_COMPRESSED else -(-size // 8) * 8)

    walk(data[128:], 128)


def _read(path: str, where: str) -> bytes:
    """The file's bytes (regular files only), its level-5 elements checked."""
    if not os.path.lexists(path):
        raise MatFileError(f"{where}: error opening MAT file '{path}' (no such file)")
    try:
        data = read_file_bytes(path)
    except ProtoError as err:
        raise MatFileError(f"{where}: error opening MAT file ({err})") from None
    check_level5(data, where + f": MAT file '{path}'")
    return data


# What scipy.io raises on files it cannot read (v7.3 HDF5 files: NotImplementedError).
_SCIPY_ERRORS = (OSError, ValueError, NotImplementedError, TypeError, IndexError, KeyError,
                 struct.error, zlib.error)


def _info(data: bytes, path: str, where: str) -> dict[str, tuple[tuple[int, ...], str]]:
    import scipy.io as sio
    try:
        return {name: (shape, kind) for name, shape, kind in sio.whosmat(io.BytesIO(data))}
    except (*_SCIPY_ERRORS, sio.matlab.MatReadError) as err:
        raise MatFileError(f"{where}: error opening MAT file '{path}' ({err})") from None


def read_blob(path: str, where: str) -> np.ndarray:
    """ReadBlobFromMat(path, blob) of a float net: the 4-axis float32 blob."""
    data = _read(path, where)
    info = _info(data, path, where)
    if "data" not in info:
        raise MatFileError(f"{where}: field 'data' not present in MAT file '{path}'")
    for name in ("data", "diff"):
        if name not in info or (name == "diff" and not np.prod(info[name][0])):
            continue
        if info[name][1] != "single":
            raise MatFileError(f"{where}: field '{name}' must be of class single (a float net's "
                               f"blobs) in MAT file '{path}', it is {info[name][1]}")
    shape = info["data"][0]
    if len(shape) > 4:
        raise MatFileError(f"{where}: field 'data' cannot have more than 4 dimensions in MAT "
                           f"file '{path}', it has {len(shape)}")
    import scipy.io as sio
    try:
        data = sio.loadmat(io.BytesIO(data), variable_names=["data"], squeeze_me=False,
                           mat_dtype=True)["data"]
    except (*_SCIPY_ERRORS, sio.matlab.MatReadError) as err:
        raise MatFileError(f"{where}: error reading array 'data' from MAT file '{path}' ({err})") from None
    if np.iscomplexobj(data) or data.dtype != np.float32:
        raise MatFileError(f"{where}: field 'data' in MAT file '{path}' must be real single, "
                           f"got {data.dtype}")
    dims = list(shape) + [1] * (4 - len(shape))
    return np.ascontiguousarray(data.reshape(dims, order="F").transpose(3, 2, 1, 0))
