"""BlobProto <-> numpy: Caffe's Blob::FromProto / ToProto for float data."""
from __future__ import annotations

import math

import numpy as np

from runner.proto import caffe_pb2
from runner.proto.errors import ProtoError

_LEGACY_DIMS = ("num", "channels", "height", "width")
_DATA_FIELD = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["data"].number
_DIFF_FIELD = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["diff"].number


def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """The blob's shape: the legacy 4D num/channels/height/width when any is set (Caffe
    checks those first), else shape.dim (no dims: a scalar)."""
    if any(blob.HasField(name) for name in _LEGACY_DIMS):
        return tuple(int(getattr(blob, name)) for name in _LEGACY_DIMS)
    return tuple(int(d) for d in blob.shape.dim)


def blob_to_array(blob: caffe_pb2.BlobProto, what: str = "blob", diff: bool = False
                  ) -> np.ndarray:
    """The blob's values as float32 in its shape; `data`, or `double_data` when present
    (`diff`/`double_diff` with diff=True).

    `what` names the blob in errors (e.g. "layer 'conv1' blob 0 in w.caffemodel").
    """
    shape = blob_shape(blob)
    if any(d < 0 for d in shape):
        raise ProtoError(f"{what}: negative dimension in shape {shape}")
    field = "diff" if diff else "data"
    if len(getattr(blob, "double_" + field)):
        field = "double_" + field
    values = getattr(blob, field)
    count = math.prod(shape)
    if len(values) != count:
        raise ProtoError(f"{what}: shape {shape} holds {count} values but {field} has {len(values)}")
    return np.array(values, dtype=np.float32).reshape(shape)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _packed_floats(field_number: int, values: np.ndarray) -> bytes:
    """A packed repeated float field as wire bytes, for MergeFromString: far faster than
    extend() for large arrays."""
    payload = values.tobytes(order="C")  # values are "<f4" already
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def array_to_blob(array, diff=None) -> caffe_pb2.BlobProto:
    """A BlobProto with shape.dim and float `data` (and `diff`, of the same shape, when
    given): Caffe's Blob<float>::ToProto. A 0-axis blob, such as a shared Normalize scale,
    gets no shape field at all, as in Caffe."""
    values = np.asarray(array, dtype="<f4")
    blob = caffe_pb2.BlobProto()
    if values.ndim:
        blob.shape.dim.extend(values.shape)
    wire = _packed_floats(_DATA_FIELD, values) if values.size else b""
    if diff is not None:
        diffs = np.asarray(diff, dtype="<f4")
        if diffs.shape != values.shape:
            raise ValueError(f"diff has shape {diffs.shape} but the data has {values.shape}")
        wire += _packed_floats(_DIFF_FIELD, diffs) if diffs.size else b""
    blob.MergeFromString(wire)
    return blob
