"""Caffe's Blob as Python sees it: `.data` and `.diff` float32 numpy arrays over tensors.

On the CPU an array is a view of its tensor, so writes go straight through. A tensor on
a GPU gets a host copy that is synchronised as Caffe's SyncedMemory does: reading the
array brings it to the host and marks the host copy as the newer one; `tensor()` (called
at forward/backward/update boundaries) sends a newer host copy back to the device.
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch

from runner.shapes import check_blob_size

_DEVICE, _HOST, _SYNCED = 0, 1, 2


class SyncedTensor:
    """One float32 tensor and, when it lives on a GPU, its host mirror."""

    def __init__(self, tensor: torch.Tensor):
        self._tensor = tensor
        self._host: np.ndarray | None = None
        self._head = _DEVICE
        self._exposed = False  # an array of it was handed out (and may be held)
        self._owned = True     # the tensor is this blob's own memory, not someone else's

    def array(self) -> np.ndarray:
        """The values as a writable numpy array (the host copy is newest from now on)."""
        self._exposed = True
        t = self._tensor
        if t.device.type == "cpu":
            return t.detach().numpy()
        if self._host is None or self._host.shape != tuple(t.shape):
            self._host = t.detach().cpu().numpy()
        elif self._head == _DEVICE:
            self._host[...] = t.detach().cpu().numpy()  # arrays held from before stay current
        self._head = _HOST
        return self._host

    def tensor(self) -> torch.Tensor:
        """The tensor, with a newer host copy sent to it first."""
        if self._head == _HOST:
            self._tensor.copy_(torch.from_numpy(self._host))
            self._head = _SYNCED
        return self._tensor

    def set(self, tensor: torch.Tensor, owned: bool = False) -> None:
        """Make `tensor` the value (the device copy is newest)."""
        self._tensor = tensor
        self._head = _DEVICE
        self._owned = owned

    def assign(self, values: torch.Tensor) -> None:
        """Make `values` the value. Once an array of it was handed out, values are copied
        into memory of its own (so held arrays see them); until then they are taken as
        they are, without a copy."""
        values = values.detach()
        t = self._tensor
        if not self._exposed:
            self.set(values if values.dtype == torch.float32 else values.float())
        elif self._owned and t.shape == values.shape and t.device == values.device:
            self.tensor().copy_(values)
            self._head = _DEVICE
        else:
            self.set(values.to(torch.float32, copy=True), owned=True)

    def device_changed(self) -> None:
        """The tensor was written on its device (by an update): the host copy is stale."""
        if self._head != _DEVICE:
            self._head = _DEVICE


def _gpu_address(tensor: torch.Tensor, what: str) -> int:
    if tensor.device.type != "cuda":
        raise RuntimeError(f"the blob's {what} is on the CPU, not a GPU (caffe.set_mode_gpu() "
                           "moves a net's blobs there at its next forward)")
    return tensor.data_ptr()


class Blob:
    """A named value of the net (or a layer's learnable blob): data and diff."""

    def __init__(self, shape=(), device: torch.device | str = "cpu"):
        zeros = torch.zeros(tuple(shape), device=device)
        self._data = SyncedTensor(zeros)
        self._diff = SyncedTensor(torch.zeros_like(zeros))

    @classmethod
    def over(cls, tensor: torch.Tensor, diff: torch.Tensor | None = None) -> "Blob":
        """A blob whose data is `tensor` itself (no copy); diff given or zeros when asked."""
        blob = cls.__new__(cls)
        blob._data = SyncedTensor(tensor.detach())
        blob._data._owned = False
        blob._diff = SyncedTensor(torch.zeros(0) if diff is None else diff)
        return blob

    # ---- pycaffe's Blob interface -------------------------------------------------------
    @property
    def data(self) -> np.ndarray:
        return self._data.array()

    @property
    def diff(self) -> np.ndarray:
        return self.diff_tensor_holder().array()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data._tensor.shape)

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    def _legacy(self, axis: int) -> int:
        shape = self.shape
        if len(shape) > 4:
            raise ValueError(f"num/channels/height/width need a blob of at most 4 axes, "
                             f"this one has shape {list(shape)}")
        return shape[axis] if axis < len(shape) else 1  # Caffe's LegacyShape

    @property
    def _gpu_data_ptr(self) -> int:
        """The address of the data on the GPU (for CUDA interop), newest values sent first."""
        return _gpu_address(self.data_tensor(), "data")

    @property
    def _gpu_diff_ptr(self) -> int:
        return _gpu_address(self.diff_tensor(), "diff")

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def reshape(self, *shape: int) -> None:
        """Caffe's Blob::Reshape: values kept when the count is unchanged, else zeros."""
        try:
            shape = tuple(operator.index(d) for d in shape)   # ints, numpy's included
        except TypeError:
            raise TypeError(f"Blob.reshape takes integer dimensions, got {shape}") from None
        check_blob_size(shape, "Blob.reshape")
        for synced in (self._data, self.diff_tensor_holder()):
            t = synced.tensor()
            if t.numel() == math.prod(shape):
                synced.set(t.reshape(shape), owned=synced._owned)
            else:
                synced.set(torch.zeros(shape, device=t.device), owned=True)

    # ---- for the engine -----------------------------------------------------------------
    def data_tensor(self) -> torch.Tensor:
        return self._data.tensor()

    def diff_tensor(self) -> torch.Tensor:
        return self.diff_tensor_holder().tensor()

    def diff_tensor_holder(self) -> SyncedTensor:
        if self._diff._tensor.shape != self._data._tensor.shape:
            self._diff.set(torch.zeros_like(self._data._tensor))
        return self._diff

    def set_data(self, values: torch.Tensor) -> None:
        """Take `values` as the data without a copy, as Caffe's data layers swap their
        tops' memory for each batch."""
        self._data.set(values.detach() if values.dtype == torch.float32 else values.float())

    def assign_data(self, values: torch.Tensor) -> None:
        self._data.assign(values)

    def assign_diff(self, values: torch.Tensor) -> None:
        self.diff_tensor_holder().assign(values)

    def share_data(self, other: "Blob") -> None:
        """Caffe's ShareData: this blob's data is the other's (a Split layer's tops)."""
        self._data = other._data

    def push(self) -> None:
        """Send values written on the host to the device (a boundary of Caffe's passes)."""
        self._data.tensor()
        self._diff.tensor()

    def to(self, device: torch.device) -> None:
        for synced in (self._data, self._diff):
            t = synced.tensor()
            moved = t.to(device)
            synced.set(moved, owned=synced._owned or moved is not t)

    def device_changed(self) -> None:
        self._data.device_changed()
        self._diff.device_changed()

    def __repr__(self) -> str:
        return f"<Blob shape={list(self.shape)}>"


class ParamBlob(Blob):
    """A layer's learnable blob over a Parameter: data is the parameter, diff its .grad.

    `lookup()` returns the current Parameter (parameters can be replaced by weight
    sharing), and `shape` is the blob's shape in this layer.
    """

    def __init__(self, lookup, shape):
        self._lookup = lookup
        self._shape = tuple(shape)
        self._views: dict[str, tuple[tuple[int, int], SyncedTensor]] = {}

    def _view(self, tensor: torch.Tensor, which: str) -> SyncedTensor:
        """The SyncedTensor over `tensor` in this blob's shape, kept while the tensor's
        storage stays the same (a device move or a new .grad makes a new one)."""
        key = (id(tensor), tensor.data_ptr())
        held = self._views.get(which)
        if held is None or held[0] != key:
            held = self._views[which] = (key, SyncedTensor(tensor.detach().view(self._shape)))
        return held[1]

    @property
    def _data(self) -> SyncedTensor:
        return self._view(self._lookup(), "data")

    def diff_tensor_holder(self) -> SyncedTensor:
        param = self._lookup()
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        return self._view(param.grad, "diff")

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    def reshape(self, *shape: int) -> None:
        raise ValueError("a layer's learnable blob keeps the shape its layer gave it")

    def push(self) -> None:
        for _, synced in self._views.values():
            synced.tensor()

    def to(self, device: torch.device) -> None:
        """Parameters move with their module; nothing to do here."""

    def device_changed(self) -> None:
        for _, synced in self._views.values():
            synced.device_changed()
