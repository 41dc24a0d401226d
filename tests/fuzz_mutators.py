"""Seeded mutators for the fuzz suite: each maps (seed bytes, numpy Generator) to new bytes.

Byte-level ones (flips, truncation, insertion, empty, non-UTF-8) apply to every format;
text ones (huge and negative numbers, wrong types, deep nesting) to prototxt and YAML;
message ones set a protobuf field anywhere in a binary file to an extreme value; YAML ones
add alias bombs and duplicate keys to a readme's front matter; the HDF5 one edits an HDF5
file's structure.
"""
from __future__ import annotations

import re

import numpy as np
from google.protobuf.message import DecodeError

EXTREME_INTS = [0, -1, -5, 2**31 - 1, 2**31, 2**32 + 1, 2**63 - 1, -2**31, -2**63, 10**30]
EXTREME_FLOATS = ["nan", "inf", "-inf", "1e309", "-1e38", "3.4e38", "1e-45", "-0"]
EXTREME_STRINGS = ["", "..", "../../../../etc/passwd", "/dev/zero", "a" * 5000, "\u00e9\u4e2d",
                   "x\ty", "/nonexistent/dir/x"]
_NUMBER = re.compile(rb"(?<![A-Za-z_])-?\d+(\.\d+)?(e-?\d+)?")
_VALUE = re.compile(rb":\s*(\"[^\"\n]*\"|[^\s{}]+)")


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _spot(data: bytes, rng: np.random.Generator) -> int:
    return int(rng.integers(len(data) + 1))


# ---- any format -----------------------------------------------------------------------

def flip_bytes(data: bytes, rng) -> bytes:
    if not data:
        return bytes(rng.integers(0, 256, 8, dtype=np.uint8))
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        out[int(rng.integers(len(out)))] ^= 1 << int(rng.integers(8))
    return bytes(out)


def truncate(data: bytes, rng) -> bytes:
    return data[:int(rng.integers(len(data) + 1))]


def insert_bytes(data: bytes, rng) -> bytes:
    at = _spot(data, rng)
    chunk = bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
    return data[:at] + chunk + data[at:]


def duplicate_chunk(data: bytes, rng) -> bytes:
    if not data:
        return data
    start = int(rng.integers(len(data)))
    end = min(len(data), start + int(rng.integers(1, 256)))
    return data[:end] + data[start:end] * int(rng.integers(1, 4)) + data[end:]


def empty(data: bytes, rng) -> bytes:
    return b""


def non_utf8(data: bytes, rng) -> bytes:
    at = _spot(data, rng)
    return data[:at] + _pick(rng, [b"\xff\xfe", b"\xc3(", b"\x80", b"\xed\xa0\x80"]) + data[at:]


BYTE_MUTATORS = [flip_bytes, truncate, insert_bytes, duplicate_chunk, empty, non_utf8]


# ---- text (prototxt, YAML) --------------------------------------------------------------

def huge_number(data: bytes, rng) -> bytes:
    """Replace one number with an extreme int or float (negative included)."""
    found = list(_NUMBER.finditer(data))
    if not found:
        return insert_bytes(data, rng)
    m = _pick(rng, found)
    value = str(_pick(rng, EXTREME_INTS) if rng.random() < 0.7 else _pick(rng, EXTREME_FLOATS))
    return data[:m.start()] + value.encode() + data[m.end():]


def wrong_type(data: bytes, rng) -> bytes:
    """Replace one `field: value` value with a value of another type, or a block."""
    found = list(_VALUE.finditer(data))
    if not found:
        return insert_bytes(data, rng)
    m = _pick(rng, found)
    value = _pick(rng, [b'"text"', b"12", b"-3.5", b"true", b"{ }", b"[1, 2]", b"RELU",
                        b'"' + _pick(rng, EXTREME_STRINGS).encode() + b'"'])
    return data[:m.start(1)] + value + data[m.end(1):]


def deep_nesting(data: bytes, rng) -> bytes:
    """Open thousands of nested blocks (prototxt) or flow collections (YAML)."""
    depth = int(_pick(rng, [200, 2000, 50000]))
    opener, closer = _pick(rng, [(b"layer { ", b"} "), (b"[", b"]"), (b"{a: ", b"}"),
                                 (b"- ", b"")])
    at = _spot(data, rng)
    return data[:at] + opener * depth + closer * depth + data[at:]


def repeat_lines(data: bytes, rng) -> bytes:
    """Repeat one line (a duplicate field or key) several times."""
    lines = data.splitlines(keepends=True)
    if not lines:
        return data
    i = int(rng.integers(len(lines)))
    return b"".join(lines[:i] + [lines[i]] * int(rng.integers(2, 6)) + lines[i:])


TEXT_MUTATORS = [huge_number, huge_number, wrong_type, wrong_type, deep_nesting, repeat_lines]


# ---- YAML front matter --------------------------------------------------------------------

def alias_bomb(data: bytes, rng) -> bytes:
    """Billion laughs: each anchor lists the previous one ten times."""
    levels = int(rng.integers(3, 12))
    bomb = [b"a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        bomb.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]".encode())
    return _into_front_matter(data, b"\n".join(bomb) + b"\n")


def duplicate_key(data: bytes, rng) -> bytes:
    key = _pick(rng, [b"caffemodel", b"sha1", b"name"])
    value = _pick(rng, [b"evil.caffemodel", b"0" * 40, b"x"])
    return _into_front_matter(data, key + b": " + value + b"\n")


def yaml_tag(data: bytes, rng) -> bytes:
    tag = _pick(rng, [b"x: !!python/object/apply:os.system ['true']\n", b"x: !!binary AAAA\n",
                      b"x: !custom 3\n", b"? [a, b]\n: c\n"])
    return _into_front_matter(data, tag)


def _into_front_matter(data: bytes, text: bytes) -> bytes:
    head = b"---\n"
    return head + text + data[len(head):] if data.startswith(head) else head + text + data


YAML_MUTATORS = [alias_bomb, duplicate_key, yaml_tag]


# ---- protobuf messages ----------------------------------------------------------------------

def _slots(msg, depth: int = 0) -> list:
    """(message, field descriptor) for every field that may be set, nested messages included."""
    slots = []
    for field in msg.DESCRIPTOR.fields:
        slots.append((msg, field))
        if field.type == field.TYPE_MESSAGE and depth < 6:
            if field.is_repeated:
                for item in list(getattr(msg, field.name))[:4]:
                    slots += _slots(item, depth + 1)
            elif msg.HasField(field.name):
                slots += _slots(getattr(msg, field.name), depth + 1)
    return slots


def _extreme(field, rng):
    if field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
        return float(_pick(rng, EXTREME_FLOATS))
    if field.type == field.TYPE_BOOL:
        return bool(rng.integers(2))
    if field.type in (field.TYPE_STRING, field.TYPE_BYTES):
        text = _pick(rng, EXTREME_STRINGS)
        return text if field.type == field.TYPE_STRING else text.encode()
    if field.type == field.TYPE_ENUM:
        return _pick(rng, [v.number for v in field.enum_type.values])
    bits = 32 if field.type in (field.TYPE_INT32, field.TYPE_UINT32, field.TYPE_SINT32,
                                field.TYPE_FIXED32, field.TYPE_SFIXED32) else 64
    signed = field.type not in (field.TYPE_UINT32, field.TYPE_UINT64, field.TYPE_FIXED32,
                                field.TYPE_FIXED64)
    low, high = (-2**(bits - 1), 2**(bits - 1) - 1) if signed else (0, 2**bits - 1)
    return int(min(max(_pick(rng, EXTREME_INTS), low), high))


def message_mutator(message_class):
    """A mutator that parses the seed as `message_class` and sets one field anywhere in it
    to an extreme value (or clears, or repeats, a repeated one)."""
    def mutate(data: bytes, rng) -> bytes:
        try:
            msg = message_class.FromString(data)
        except DecodeError:
            return flip_bytes(data, rng)
        parent, field = _pick(rng, _slots(msg))
        if field.type == field.TYPE_MESSAGE:
            target = getattr(parent, field.name)
            if field.is_repeated:
                if len(target) and rng.random() < 0.5:
                    target.add().CopyFrom(target[int(rng.integers(len(target)))])
                else:
                    parent.ClearField(field.name)
            else:
                parent.ClearField(field.name)
        elif field.is_repeated:
            values = getattr(parent, field.name)
            if len(values) and rng.random() < 0.5:
                values[int(rng.integers(len(values)))] = _extreme(field, rng)
            else:
                values.append(_extreme(field, rng))
        else:
            setattr(parent, field.name, _extreme(field, rng))
        return msg.SerializeToString()
    mutate.__name__ = f"{message_class.DESCRIPTOR.name}_field"
    return mutate


# ---- HDF5 ------------------------------------------------------------------------------

HDF5_SHAPES = [(), (0,), (1,), (3,), (2, 2), (1,) * 33, (2**40,)]   # the last declared, never written
HDF5_DTYPES = ["f4", "f8", "i8", "u1", "S3", "bool"]


def hdf5_edit(data: bytes, rng) -> bytes:
    """One structural edit of an HDF5 file through h5py: delete or rename a member, put a
    dataset of another shape (up to 2**40 elements, declared only) or dtype in its place,
    turn it into a group, or replace it by a soft or external link that leads nowhere or
    to itself. Bytes h5py cannot open come back unchanged."""
    import io

    import h5py

    buffer = io.BytesIO(data)
    try:
        with h5py.File(buffer, "r+") as f:
            names: list[str] = []
            f.visit(names.append)
            if not names:
                return data
            name = _pick(rng, names)
            edit = int(rng.integers(6))
            if edit == 0:
                del f[name]
            elif edit == 1:
                f.move(name, name.rsplit("/", 1)[0] + "/x" if "/" in name else "x")
            elif edit in (2, 3):
                del f[name]
                shape = _pick(rng, HDF5_SHAPES) if edit == 2 else (2,)
                dtype = "f4" if edit == 2 else _pick(rng, HDF5_DTYPES)
                f.create_dataset(name, shape=shape, dtype=dtype, chunks=True if shape and 0 not in shape else None)
            elif edit == 4:
                del f[name]
                f.create_group(name)
            else:
                del f[name]
                f[name] = _pick(rng, [h5py.SoftLink("/" + name), h5py.SoftLink("/nowhere"),
                                      h5py.ExternalLink("/nonexistent.h5", "/data")])
    except Exception:   # h5py on a file an earlier mutator broke (its file-object driver too)
        return data
    return buffer.getvalue()


def mutate(data: bytes, mutators: list, rng) -> tuple[bytes, str]:
    """Apply 1-3 mutators drawn from `mutators`; returns the bytes and their names."""
    names = []
    for _ in range(int(rng.integers(1, 4))):
        fn = _pick(rng, mutators)
        data = fn(data, rng)
        names.append(fn.__name__)
    return data, "+".join(names)
