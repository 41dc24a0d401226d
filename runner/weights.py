"""Trained blobs in and out of a Net: Caffe's CopyTrainedLayersFrom and Net::ToProto.

Loading matches layers by name (the first of ours with that name, as Caffe), skips
layers we do not have, and checks every blob's count and shape with Caffe's rules
(legacy num/channels/height/width blobs match when our shape, padded with leading 1s
to four axes, equals them). Saving writes the filtered net with each layer's
definition and its blobs in Caffe's order and shapes. HDF5 weights (Net::ToHDF5,
CopyTrainedLayersFromHDF5) go through h5py; wherever weights are loaded, an HDF5 file is
told from a .caffemodel by its content, as Caffe's CopyTrainedLayersFrom does.
"""
from __future__ import annotations

import io
import logging
import os

import numpy as np
import torch

from runner.atomic import atomic_write_bytes
from runner.hdf5_files import H5PY_ERRORS, stored_array
from runner.net_params import FIXED_STATISTICS
from runner.proto import ProtoError, array_to_blob, blob_shape, blob_to_array, caffe_pb2, read_caffemodel, upgrade_net, write_binary

log = logging.getLogger(__name__)

_LEGACY_DIMS = ("num", "channels", "height", "width")


class WeightsError(ValueError):
    """Trained blobs that do not fit the net (names the file, layer and blob)."""


def _legacy_matches(ours: tuple[int, ...], blob) -> bool:
    """Caffe's Blob::ShapeEquals for a BlobProto with legacy 4-D dimensions."""
    return len(ours) <= 4 and (1,) * (4 - len(ours)) + ours == blob_shape(blob)


def _finite(values: np.ndarray, what: str, allow_nonfinite: bool) -> np.ndarray:
    bad = np.count_nonzero(~np.isfinite(values))
    if bad:
        message = f"{what}: {bad} of its {values.size} values are NaN or inf"
        if not allow_nonfinite:
            raise WeightsError(f"{message}; pass allow_nonfinite=True to load them anyway")
        log.warning("%s", message)
    return values


def _shape_mismatch(what: str, theirs, ours, legacy: bool = False) -> WeightsError:
    return WeightsError(f"{what}: shape mismatch: the file has {list(theirs)}"
                        f"{' (legacy num/channels/height/width)' if legacy else ''}, the net "
                        f"expects {list(ours)}; to learn this layer from scratch instead, rename it")


def _blob_values(blob, ours: tuple[int, ...], what: str, allow_nonfinite: bool) -> torch.Tensor:
    legacy = any(blob.HasField(name) for name in _LEGACY_DIMS)
    matches = _legacy_matches(ours, blob) if legacy else tuple(blob.shape.dim) == ours
    if not matches:
        raise _shape_mismatch(what, blob_shape(blob), ours, legacy)
    try:
        values = blob_to_array(blob, what)
    except ProtoError as err:
        raise WeightsError(str(err)) from None
    return torch.from_numpy(_finite(values, what, allow_nonfinite).reshape(ours))


def _read(source) -> tuple[caffe_pb2.NetParameter, str]:
    if isinstance(source, caffe_pb2.NetParameter):
        param = caffe_pb2.NetParameter()
        param.CopyFrom(source)
        upgrade_net(param, "<NetParameter>")
        return param, f"weights '{source.name}'" if source.name else "weights"
    path = os.fspath(source)
    return read_caffemodel(path), path


def is_hdf5(source) -> bool:
    """Whether `source` names an HDF5 file (Caffe's H5Fis_hdf5 test in CopyTrainedLayersFrom)."""
    if isinstance(source, caffe_pb2.NetParameter):
        return False
    import h5py

    try:
        return os.path.isfile(source) and h5py.is_hdf5(os.fspath(source))
    except (OSError, ValueError):
        return False


def _proto_values(source, targets: dict, allow_nonfinite: bool):
    """(label, [(layer name, slots, values, diffs)]) from a .caffemodel or NetParameter:
    Caffe's CopyTrainedLayersFrom(NetParameter), each matched layer's blob count exactly the
    net's; a diff is None where the blob stores none."""
    param, label = _read(source)
    pending = []
    for entry in param.layer:
        if entry.name not in targets:
            log.debug("%s: ignoring layer '%s' (not in the net)", label, entry.name)
            continue
        layer, slots = targets[entry.name]
        custom = getattr(layer, "custom_copy_blobs", None)   # a fork's DoesUseCustomCopyBlobs
        if custom is not None:
            stored = [blob_to_array(blob, f"{label}: layer '{entry.name}' blob {j}")
                      for j, blob in enumerate(entry.blobs)]
            try:
                fitted = custom(stored)
            except ValueError as err:
                raise WeightsError(f"{label}: {err}") from None
            values = [torch.from_numpy(_finite(np.asarray(v, np.float32), f"{label}: layer "
                                               f"'{entry.name}' blob {j}", allow_nonfinite))
                      for j, v in enumerate(fitted)]
            pending.append((entry.name, slots, values, [None] * len(slots)))
            continue
        if len(entry.blobs) != len(slots):
            raise WeightsError(f"{label}: layer '{entry.name}' has {len(entry.blobs)} blob(s), the "
                               f"net's has {len(slots)} {[list(s.shape) for s in slots]} "
                               "(incompatible number of blobs)")
        values = [_blob_values(blob, slot.shape, f"{label}: layer '{entry.name}' blob {j}",
                               allow_nonfinite)
                  for j, (blob, slot) in enumerate(zip(entry.blobs, slots))]
        diffs = [_blob_diff(blob, slot.shape, f"{label}: layer '{entry.name}' blob {j}")
                 for j, (blob, slot) in enumerate(zip(entry.blobs, slots))]
        pending.append((entry.name, slots, values, diffs))
    return label, pending


def _blob_diff(blob, ours: tuple[int, ...], what: str) -> torch.Tensor | None:
    """The diff a BlobProto stores (a snapshot_diff snapshot's), which Blob::FromProto
    copies along with the data; None when it stores none."""
    if not (len(blob.diff) or len(blob.double_diff)):
        return None
    try:
        return torch.from_numpy(blob_to_array(blob, what, diff=True).reshape(ours))
    except ProtoError as err:
        raise WeightsError(str(err)) from None


def _hdf5_values(path, targets: dict, allow_nonfinite: bool):
    """(label, [(layer name, slots, values, diffs)]) from HDF5 weights: Caffe's
    CopyTrainedLayersFromHDF5, which reads no diffs (all None). /data/<layer>/<j> holds blob j; a layer may not hold more
    blobs than the net's, and may leave out only the blobs it shares from another layer.
    Each dataset's shape is checked before it is read."""
    import h5py

    label = os.fspath(path)
    pending = []
    try:
        with h5py.File(label, "r") as f:
            data = f.get("data")
            if not isinstance(data, h5py.Group):
                raise WeightsError(f"{label}: no /data group (not a Caffe HDF5 weights file)")
            for name in data:
                if name not in targets:
                    log.debug("%s: ignoring layer '%s' (not in the net)", label, name)
                    continue
                module, slots = targets[name]
                group = data[name]
                if not isinstance(group, h5py.Group):
                    raise WeightsError(f"{label}: /data/{name} is not a group of blobs "
                                       "(/data/<layer>/<index>)")
                if len(group) > len(slots):
                    raise WeightsError(f"{label}: layer '{name}' has {len(group)} blob(s), the "
                                       f"net's has {len(slots)} {[list(s.shape) for s in slots]} "
                                       "(incompatible number of blobs)")
                chosen, values = [], []
                for j, slot in enumerate(slots):
                    what = f"{label}: layer '{name}' blob {j}"
                    dataset = group.get(str(j))
                    if dataset is None:
                        if slot.owner is module and slot.index == j:
                            raise WeightsError(f"{what} is missing (incompatible number of blobs)")
                        continue   # shared from another layer, as Caffe allows
                    if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind not in "fiu":
                        raise WeightsError(f"{what}: expected a numeric dataset, got "
                                           f"{getattr(dataset, 'dtype', type(dataset).__name__)}")
                    if tuple(dataset.shape) != tuple(slot.shape):
                        raise _shape_mismatch(what, dataset.shape, slot.shape)
                    value = stored_array(dataset, what, WeightsError)
                    chosen.append(slot)
                    values.append(torch.from_numpy(_finite(value, what, allow_nonfinite)))
                pending.append((name, chosen, values, [None] * len(values)))
    except WeightsError:
        raise
    except H5PY_ERRORS as err:
        raise WeightsError(f"{label}: cannot read HDF5 weights: {err}") from None
    return label, pending


def load_caffemodel(net, sources, allow_missing: bool = False,
                    allow_nonfinite: bool = False) -> list[str]:
    """Copy blobs from one or more .caffemodel files, HDF5 weights files (told apart by
    their content, as Caffe does) or NetParameters, in order, into `net`.

    Returns our layers with blobs that no source provided; unless allow_missing, those
    are an error (with allow_missing they keep their filler values). Diffs a .caffemodel
    stores become the parameters' .grad, as Caffe's Blob::FromProto copies them. A blob holding NaN
    or inf is an error naming it; with allow_nonfinite, a warning. Each source is checked
    whole before any of its blobs is copied.
    """
    if isinstance(sources, (str, os.PathLike, caffe_pb2.NetParameter)):
        sources = [sources]
    targets: dict[str, tuple] = {}
    for lp, layer, slots in net.layer_blobs():
        if layer is not None:
            targets.setdefault(lp.name, (layer, slots))
    provided: set[str] = set()
    labels = []
    for source in sources:
        read = _hdf5_values if is_hdf5(source) else _proto_values
        label, pending = read(source, targets, allow_nonfinite)
        labels.append(label)
        with torch.no_grad():
            for name, slots, values, diffs in pending:
                for slot, value, diff in zip(slots, values, diffs):
                    slot.param.copy_(value.reshape(slot.param.shape))
                    if diff is not None:
                        slot.param.grad = diff.reshape(slot.param.shape).to(slot.param)
                provided.add(name)
    missing = [lp.name for lp, _, slots in net.layer_blobs() if slots and lp.name not in provided]
    if missing and not allow_missing:
        raise WeightsError(f"{', '.join(labels)}: no blobs for layer(s) {missing} of the net; "
                           "pass allow_missing=True to keep their filler values")
    if missing:
        log.info("layers left at their filler values (not in %s): %s", ", ".join(labels), ", ".join(missing))
    return missing


def _as_array(tensor: torch.Tensor, shape) -> np.ndarray:
    return tensor.detach().reshape(shape).to("cpu", torch.float32).numpy()


def slot_data(slot) -> np.ndarray:
    """A layer's blob as Caffe stores it: float32, in this layer's shape."""
    return _as_array(slot.param, slot.shape)


def slot_diff(slot) -> np.ndarray:
    """The blob's diff (its parameter's .grad; Caffe's zeros where there is none)."""
    grad = slot.param.grad
    return np.zeros(slot.shape, np.float32) if grad is None else _as_array(grad, slot.shape)


def net_to_proto(net, with_blobs: bool = True, with_diffs: bool = False) -> caffe_pb2.NetParameter:
    """The filtered net as Caffe's Net::ToProto writes it: name, then each layer's own
    definition (phase filled in, a loss layer's default loss_weight and BatchNorm's fixed
    lr_mult 0 made explicit, as Caffe's layers record them) with its blobs, and their
    diffs too when `with_diffs` (Caffe's write_diff)."""
    out = caffe_pb2.NetParameter(name=net.net_param.name)
    for lp, layer, slots in net.layer_blobs():
        entry = out.layer.add()
        entry.CopyFrom(lp)
        entry.ClearField("blobs")
        if not entry.HasField("phase"):
            entry.phase = net.phase
        if layer is None:
            continue
        if layer.is_loss and not len(entry.loss_weight):
            entry.loss_weight.append(1.0)
        if lp.type in FIXED_STATISTICS:
            while len(entry.param) < len(slots):
                entry.param.add(lr_mult=0.0)
        if with_blobs:
            for slot in slots:
                entry.blobs.append(array_to_blob(slot_data(slot),
                                                 slot_diff(slot) if with_diffs else None))
    return out


def save_caffemodel(net, path) -> None:
    """Write `net`'s definition and blobs as a binary .caffemodel, atomically."""
    write_binary(net_to_proto(net, with_blobs=True), path)


def save_hdf5(net, path, with_diffs: bool = False) -> None:
    """Caffe's Net::ToHDF5: a group per layer under /data, one dataset per owned blob
    (named by its index); with `with_diffs` also /diff, every blob's diff, shared or
    not. Written atomically."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        data = f.create_group("data")
        diff = f.create_group("diff") if with_diffs else None
        for lp, module, slots in net.layer_blobs():
            if slots and lp.name in data and len(data[lp.name]):
                raise WeightsError(f"{os.fspath(path)}: two layers with blobs are named "
                                   f"'{lp.name}', and HDF5 weights hold one group per layer "
                                   "name (Caffe's ToHDF5 fails on it too); rename one, or "
                                   "save a .caffemodel")
            group = data.require_group(lp.name)
            diff_group = diff.require_group(lp.name) if with_diffs else None
            for j, slot in enumerate(slots):
                if slot.owner is module and slot.index == j:
                    group.create_dataset(str(j), data=slot_data(slot))
                if with_diffs:
                    diff_group.create_dataset(str(j), data=slot_diff(slot))
    atomic_write_bytes(path, buffer.getvalue())


def load_hdf5(net, path) -> None:
    """Caffe's Net::CopyTrainedLayersFromHDF5 (pycaffe's load_hdf5): `path` must be HDF5;
    layers it does not hold keep their values."""
    if not is_hdf5(path):
        raise WeightsError(f"{os.fspath(path)}: not an HDF5 file (Caffe's HDF5 weights, as "
                           "save_hdf5 writes them)")
    load_caffemodel(net, path, allow_missing=True)
