"""Trained blobs in and out of a Net: Caffe's CopyTrainedLayersFrom and Net::ToProto.

Loading matches layers by name (the first of ours with that name, as Caffe), skips
layers we do not have, and checks every blob's count and shape with Caffe's rules
(legacy num/channels/height/width blobs match when our shape, padded with leading 1s
to four axes, equals them). Saving writes the filtered net with each layer's
definition and its blobs in Caffe's order and shapes. HDF5 weights (Net::ToHDF5,
CopyTrainedLayersFromHDF5) go through h5py.
"""
from __future__ import annotations

import io
import logging
import os

import numpy as np
import torch

from runner.atomic import atomic_write_bytes
from runner.net_params import FIXED_STATISTICS
from runner.proto import ProtoError, array_to_blob, blob_shape, blob_to_array, caffe_pb2, read_caffemodel, upgrade_net, write_binary

log = logging.getLogger(__name__)

_LEGACY_DIMS = ("num", "channels", "height", "width")


class WeightsError(ValueError):
    """Trained blobs that do not fit the net (names the file, layer and blob)."""


def _legacy_matches(ours: tuple[int, ...], blob) -> bool:
    """Caffe's Blob::ShapeEquals for a BlobProto with legacy 4-D dimensions."""
    return len(ours) <= 4 and (1,) * (4 - len(ours)) + ours == blob_shape(blob)


def _blob_values(blob, ours: tuple[int, ...], what: str, allow_nonfinite: bool) -> torch.Tensor:
    legacy = any(blob.HasField(name) for name in _LEGACY_DIMS)
    matches = _legacy_matches(ours, blob) if legacy else tuple(blob.shape.dim) == ours
    if not matches:
        raise WeightsError(f"{what}: shape mismatch: the file has {list(blob_shape(blob))}"
                           f"{' (legacy num/channels/height/width)' if legacy else ''}, the net "
                           f"expects {list(ours)}; to learn this layer from scratch instead, rename it")
    try:
        values = blob_to_array(blob, what)
    except ProtoError as err:
        raise WeightsError(str(err)) from None
    bad = np.count_nonzero(~np.isfinite(values))
    if bad:
        message = f"{what}: {bad} of its {values.size} values are NaN or inf"
        if not allow_nonfinite:
            raise WeightsError(f"{message}; pass allow_nonfinite=True to load them anyway")
        log.warning("%s", message)
    return torch.from_numpy(values.reshape(ours))


def _read(source) -> tuple[caffe_pb2.NetParameter, str]:
    if isinstance(source, caffe_pb2.NetParameter):
        param = caffe_pb2.NetParameter()
        param.CopyFrom(source)
        upgrade_net(param, "<NetParameter>")
        return param, f"weights '{source.name}'" if source.name else "weights"
    path = os.fspath(source)
    return read_caffemodel(path), path


def load_caffemodel(net, sources, allow_missing: bool = False,
                    allow_nonfinite: bool = False) -> list[str]:
    """Copy blobs from one or more .caffemodel files (or NetParameters), in order, into `net`.

    Returns our layers with blobs that no source provided; unless allow_missing, those
    are an error (with allow_missing they keep their filler values). A blob holding NaN
    or inf is an error naming it; with allow_nonfinite, a warning.
    """
    if isinstance(sources, (str, os.PathLike, caffe_pb2.NetParameter)):
        sources = [sources]
    targets: dict[str, list] = {}
    for lp, layer, slots in net.layer_blobs():
        if layer is not None:
            targets.setdefault(lp.name, slots)
    provided: set[str] = set()
    labels = []
    for source in sources:
        param, label = _read(source)
        labels.append(label)
        pending = []
        for entry in param.layer:
            slots = targets.get(entry.name)
            if slots is None:
                log.debug("%s: ignoring layer '%s' (not in the net)", label, entry.name)
                continue
            if len(entry.blobs) != len(slots):
                raise WeightsError(f"{label}: layer '{entry.name}' has {len(entry.blobs)} blob(s), the "
                                   f"net's has {len(slots)} {[list(s.shape) for s in slots]} "
                                   "(incompatible number of blobs)")
            values = [_blob_values(blob, slot.shape, f"{label}: layer '{entry.name}' blob {j}",
                                   allow_nonfinite)
                      for j, (blob, slot) in enumerate(zip(entry.blobs, slots))]
            pending.append((slots, values))
            provided.add(entry.name)
        with torch.no_grad():
            for slots, values in pending:
                for slot, value in zip(slots, values):
                    slot.param.copy_(value.reshape(slot.param.shape))
    missing = [lp.name for lp, _, slots in net.layer_blobs() if slots and lp.name not in provided]
    if missing and not allow_missing:
        raise WeightsError(f"{', '.join(labels)}: no blobs for layer(s) {missing} of the net; "
                           "pass allow_missing=True to keep their filler values")
    if missing:
        log.info("layers left at their filler values (not in %s): %s", ", ".join(labels), ", ".join(missing))
    return missing


def net_to_proto(net, with_blobs: bool = True) -> caffe_pb2.NetParameter:
    """The filtered net as Caffe's Net::ToProto writes it: name, then each layer's own
    definition (phase filled in, a loss layer's default loss_weight and BatchNorm's fixed
    lr_mult 0 made explicit, as Caffe's layers record them) with its blobs."""
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
                value = slot.param.detach().reshape(slot.shape).to("cpu", torch.float32).numpy()
                entry.blobs.append(array_to_blob(value))
    return out


def save_caffemodel(net, path) -> None:
    """Write `net`'s definition and blobs as a binary .caffemodel, atomically."""
    write_binary(net_to_proto(net, with_blobs=True), path)


def save_hdf5(net, path) -> None:
    """Caffe's Net::ToHDF5: a group per layer under /data, one dataset per owned blob
    (named by its index), written atomically."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        data = f.create_group("data")
        for lp, module, slots in net.layer_blobs():
            group = data.require_group(lp.name)
            for j, slot in enumerate(slots):
                if slot.owner is module and slot.index == j:
                    group.create_dataset(str(j), data=slot.param.detach().reshape(slot.shape)
                                         .to("cpu", torch.float32).numpy())
    atomic_write_bytes(path, buffer.getvalue())


def load_hdf5(net, path) -> None:
    """Caffe's CopyTrainedLayersFromHDF5: layers matched by name; a blob this layer owns
    must be in the file with the same shape, shared ones may be missing."""
    import h5py

    targets: dict[str, tuple] = {}
    for lp, module, slots in net.layer_blobs():
        if module is not None:
            targets.setdefault(lp.name, (module, slots))
    with h5py.File(os.fspath(path), "r") as f, torch.no_grad():
        if "data" not in f:
            raise WeightsError(f"{path}: no /data group (not a Caffe HDF5 weights file)")
        for name, group in f["data"].items():
            if name not in targets:
                continue
            module, slots = targets[name]
            for j, slot in enumerate(slots):
                owned = slot.owner is module and slot.index == j
                if str(j) not in group:
                    if owned:
                        raise WeightsError(f"{path}: layer '{name}' has no blob {j} "
                                           "(incompatible number of blobs)")
                    continue
                value = np.asarray(group[str(j)], dtype=np.float32)
                if tuple(value.shape) != tuple(slot.shape):
                    raise WeightsError(f"{path}: layer '{name}' blob {j}: shape mismatch: the "
                                       f"file has {list(value.shape)}, the net expects "
                                       f"{list(slot.shape)}")
                slot.param.copy_(torch.from_numpy(value).reshape(slot.param.shape))
