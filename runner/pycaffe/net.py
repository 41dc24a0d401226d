"""pycaffe's Net over runner.Net: Caffe's blobs, layers and params as numpy views, and
Caffe's Forward/Backward (see passes.py) on the runner's modules and data sources."""
from __future__ import annotations

import os
from collections import OrderedDict
from itertools import zip_longest

import numpy as np
import torch

from runner import Net as RunnerNet
from runner import weights as weight_files
from runner.blob import Blob
from runner.caffe_layout import plan
from runner.solver.caffe_log import stderr_log
from runner.input_sources import InputSource
from runner.proto import caffe_pb2
from runner.solver.batches import BatchStream, share_trained_layers

from .mode import current_device
from .passes import Passes
from .steps import PYTHON, SOURCE, SPLIT, LayerView, build_steps

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def _constructor_args(args, phase, weights):
    """(phase) or the legacy (weights, phase) after the prototxt; phase may be a keyword."""
    if len(args) == 1 and phase is None:
        return args[0], weights
    if not args and phase is not None:
        return phase, weights
    if len(args) == 2 and phase is None and weights is None:
        return args[1], args[0]
    raise TypeError("Net(network_file, phase, level=0, stages=None, weights=None) or "
                    "Net(network_file, weights_file, phase)")


def _check_file(path) -> None:
    if not os.path.isfile(path):
        raise RuntimeError(f"Could not open file {path}")


class Net:
    """A Caffe net as pycaffe shows it: `Net(prototxt, phase)`, `Net(prototxt, weights,
    phase)` or `Net(prototxt, phase, weights=..., level=..., stages=[...])`."""

    def __init__(self, network_file, *args, phase=None, level: int = 0, stages=None,
                 weights=None):
        phase, weights = _constructor_args(args, phase, weights)
        _check_file(network_file)
        if weights is not None:
            _check_file(weights)
        net = RunnerNet(network_file, phase=phase, stages=tuple(stages or ()), level=level)
        if weights is not None:
            net.load_caffemodel(weights, allow_missing=True)
        self._attach(net, None, follow_mode=True)

    @classmethod
    def over(cls, net: RunnerNet, batches) -> "Net":
        """The pycaffe view of a runner Net that a solver drives (with its batch stream)."""
        self = cls.__new__(cls)
        self._attach(net, batches, follow_mode=False)
        return self

    def _attach(self, net: RunnerNet, batches, follow_mode: bool) -> None:
        self._net = net
        self._follow_mode = follow_mode
        self._stream = batches
        device = self._net_device()
        if follow_mode and device != current_device():
            net.to(current_device())
            device = current_device()
        self._device = device
        steps, facts, split_param = build_steps(net)
        self._steps = steps
        layout = plan(split_param, facts)
        self._layout = layout
        shapes = dict(net.blob_shapes)
        blobs = OrderedDict()
        for step in steps:
            for name in step.tops:
                if name not in blobs:
                    shape = shapes.get(name) or shapes.get(_split_source(steps, name), ())
                    blobs[name] = Blob(shape, device)
        for step in steps:
            if step.kind == SPLIT:
                for top in step.tops:
                    blobs[top].share_data(blobs[step.bottoms[0]])
        self._blob_map = blobs
        self.layers = [step.impl if step.kind == PYTHON else LayerView(step) for step in steps]
        self._layer_names = [step.name for step in steps]
        self._passes = Passes(steps, layout, blobs, self._batches, lambda: self._net.loss_weights)
        self._passes.fill_loss_diffs()
        net.set_debug_info(None)  # Caffe's debug lines come from the layer-by-layer passes
        if follow_mode and net.net_param.debug_info:
            self._passes.debug_log = stderr_log()

    def _net_device(self) -> torch.device:
        tensor = next(iter(self._net.parameters()), None)
        if tensor is None:
            tensor = next(iter(self._net.buffers()), None)
        return tensor.device if tensor is not None else current_device()

    def _batches(self):
        if self._stream is None:
            sources = [s for s in self._net.sources if not isinstance(s, InputSource)]
            self._stream = BatchStream(sources, self._device)
        return self._stream

    # ---- device ----------------------------------------------------------------------
    def _sync(self) -> None:
        """Follow caffe.set_mode_*; send values written from Python to the device."""
        if self._follow_mode and self._device != current_device():
            device = current_device()
            for blob in self._all_blobs():
                blob.push()
            self._net.to(device)
            for blob in self._all_blobs():
                blob.to(device)
                blob.device_changed()
            self._device = device
            self._stream = None
            self._passes.records.clear()
        for blob in self._param_blobs():
            blob.push()

    def _device_wrote(self) -> None:
        for blob in self._param_blobs():
            blob.device_changed()

    def _param_blobs(self):
        return [blob for layer in self.layers for blob in layer.blobs]

    def _all_blobs(self):
        return list(self._blob_map.values()) + self._param_blobs()

    # ---- pycaffe's properties ----------------------------------------------------------
    @property
    def blobs(self) -> OrderedDict:
        return self._blob_map

    @property
    def params(self) -> OrderedDict:
        return OrderedDict((name, layer.blobs) for name, layer in zip(self._layer_names, self.layers)
                           if len(layer.blobs))

    @property
    def layer_dict(self) -> OrderedDict:
        return OrderedDict(zip(self._layer_names, self.layers))

    @property
    def blob_loss_weights(self) -> OrderedDict:
        return OrderedDict((name, self._layout.blob_loss_weights[name]) for name in self._blob_map)

    @property
    def inputs(self) -> list[str]:
        return list(self._layout.input_names)

    @property
    def outputs(self) -> list[str]:
        return list(self._layout.output_names)

    @property
    def top_names(self) -> OrderedDict:
        return OrderedDict((s.name, list(s.tops)) for s in self._steps)

    @property
    def bottom_names(self) -> OrderedDict:
        return OrderedDict((s.name, list(s.bottoms)) for s in self._steps)

    @property
    def name(self) -> str:
        return self._net.name

    # ---- _caffe.cpp's own members, which pycaffe.py and scripts use -----------------------
    @property
    def _blobs(self) -> list:
        """The blobs in blob-index order."""
        return list(self._blob_map.values())

    @property
    def _blob_names(self) -> list[str]:
        return list(self._blob_map)

    @property
    def _blob_loss_weights(self) -> list[float]:
        return [self._layout.blob_loss_weights[name] for name in self._blob_map]

    @property
    def _inputs(self) -> list[int]:
        """The input blobs' indices (Net::input_blob_indices)."""
        return [self._blob_names.index(name) for name in self._layout.input_names]

    @property
    def _outputs(self) -> list[int]:
        return [self._blob_names.index(name) for name in self._layout.output_names]

    def _bottom_ids(self, i: int) -> list[int]:
        """Layer i's bottom blobs as blob indices."""
        names = self._blob_names
        return [names.index(name) for name in self._steps[i].bottoms]

    def _top_ids(self, i: int) -> list[int]:
        names = self._blob_names
        return [names.index(name) for name in self._steps[i].tops]

    def before_forward(self, run) -> None:
        """Call `run(layer_index)` before each layer's forward (Net::add_before_forward)."""
        self._passes.callbacks["before_forward"].append(run)

    def after_forward(self, run) -> None:
        self._passes.callbacks["after_forward"].append(run)

    def before_backward(self, run) -> None:
        self._passes.callbacks["before_backward"].append(run)

    def after_backward(self, run) -> None:
        self._passes.callbacks["after_backward"].append(run)

    # ---- running -----------------------------------------------------------------------
    def _index(self, layer: str) -> int:
        try:
            return self._layer_names.index(layer)
        except ValueError:
            raise ValueError(f"net '{self.name}' has no layer '{layer}'; its layers: "
                             f"{', '.join(self._layer_names)}") from None

    def _forward(self, start: int, end: int) -> None:
        self._sync()
        self._passes.forward(start, end)
        self._device_wrote()

    def _backward(self, start: int, end: int) -> None:
        self._sync()
        self._passes.backward(start, end)
        self._device_wrote()

    def blob_tensors(self) -> dict:
        """Every blob's data as a tensor on the net's device (what the runner's objective reads)."""
        return {name: blob.data_tensor() for name, blob in self._blob_map.items()}

    def forward(self, blobs=None, start=None, end=None, **kwargs) -> dict:
        """Run layers start..end (names, inclusive); inputs by keyword. Returns the output
        blobs (or end's tops) and `blobs` by name."""
        extra = list(blobs or [])
        start_i = 0 if start is None else self._index(start)
        end_i = len(self._steps) - 1 if end is None else self._index(end)
        wanted = set((self.top_names[end] if end is not None else self.outputs) + extra)
        self._fill("data", kwargs, self.inputs, "Input blob arguments do not match net inputs.",
                   "Input is not batch sized")
        self._forward(start_i, end_i)
        return {name: self._blob_map[name].data for name in wanted}

    def backward(self, diffs=None, start=None, end=None, **kwargs) -> dict:
        """Run Backward from layer start down to end (names); output diffs by keyword.
        Returns the input diffs (or end's bottoms) and `diffs` by name."""
        extra = list(diffs or [])
        start_i = len(self._steps) - 1 if start is None else self._index(start)
        end_i = 0 if end is None else self._index(end)
        wanted = set((self.bottom_names[end] if end is not None else self.inputs) + extra)
        self._fill("diff", kwargs, self.outputs, "Top diff arguments do not match net outputs.",
                   "Diff is not batch sized")
        self._backward(start_i, end_i)
        return {name: self._blob_map[name].diff for name in wanted}

    def _fill(self, field: str, arrays: dict, names: list[str], mismatch: str, unbatched: str):
        """Write keyword arrays into the blobs' data or diff, with pycaffe's checks."""
        if not arrays:
            return
        if set(arrays) != set(names):
            raise Exception(f"{mismatch} Expected {sorted(names)}, got {sorted(arrays)}")
        for name, array in arrays.items():
            if array.shape[0] != self._blob_map[name].shape[0]:
                raise Exception(f"{unbatched}: '{name}' has {array.shape[0]} items, the blob "
                                f"holds {self._blob_map[name].shape[0]}")
            getattr(self._blob_map[name], field)[...] = array

    def forward_all(self, blobs=None, **kwargs) -> dict:
        """forward() over inputs of any length, batch by batch; outputs concatenated."""
        outs = {name: [] for name in set(self.outputs + list(blobs or []))}
        for batch in self._batch(kwargs):
            for name, value in self.forward(blobs=blobs, **batch).items():
                outs[name].extend(value.copy())
        return _trim(outs, kwargs)

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """forward() and backward() batch by batch; returns (all outputs, all diffs)."""
        outs = {name: [] for name in set(self.outputs + list(blobs or []))}
        grads = {name: [] for name in set(self.inputs + list(diffs or []))}
        forward_batches = self._batch({k: v for k, v in kwargs.items() if k in self.inputs})
        backward_batches = self._batch({k: v for k, v in kwargs.items() if k in self.outputs})
        for fb, bb in zip_longest(forward_batches, backward_batches, fillvalue={}):
            for name, value in self.forward(blobs=blobs, **fb).items():
                outs[name].extend(value.copy())
            for name, value in self.backward(diffs=diffs, **bb).items():
                grads[name].extend(value.copy())
        return _trim(outs, kwargs), _trim(grads, kwargs)

    def _batch(self, arrays: dict):
        """Batches of the net's batch size; the last one padded with zeros."""
        if not arrays:
            return
        n = len(next(iter(arrays.values())))
        size = next(iter(self._blob_map.values())).shape[0]
        for i in range(0, n - n % size, size):
            yield {name: a[i:i + size] for name, a in arrays.items()}
        left = n % size
        if left:
            yield {name: np.concatenate([a[-left:], np.zeros((size - left,) + a.shape[1:])])
                   for name, a in arrays.items()}

    def reshape(self) -> None:
        """Propagate input blob shapes to every top (Caffe's Net::Reshape)."""
        self._sync()
        self._passes.reshape()

    def clear_param_diffs(self) -> None:
        for blob in self._param_blobs():
            blob.diff[...] = 0

    # ---- weights -------------------------------------------------------------------------
    def copy_from(self, path) -> None:
        """Caffe's CopyTrainedLayersFrom: layers matched by name, others left as they are."""
        _check_file(path)
        self._sync()
        self._net.load_caffemodel(path, allow_missing=True)
        self._device_wrote()

    def share_with(self, other: "Net") -> None:
        """Use the other net's blobs in layers of the same name (ShareTrainedLayersWith)."""
        share_trained_layers(self._net, other._net)

    def save(self, path) -> None:
        self._sync()
        self._net.save_caffemodel(path)

    def save_hdf5(self, path) -> None:
        self._sync()
        weight_files.save_hdf5(self._net, path)

    def load_hdf5(self, path) -> None:
        _check_file(path)
        self._sync()
        weight_files.load_hdf5(self._net, path)
        self._device_wrote()

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Hand arrays to the MemoryData layer that must come first in the net (labels may
        be 1-D, as pycaffe.py allows)."""
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
        self._set_input_arrays(data, labels)

    def _set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """_caffe.cpp's Net_SetInputArrays: (N, C, H, W) data and (N, 1, 1, 1) labels."""
        step = self._steps[0] if self._steps else None
        if step is None or step.kind != SOURCE or step.type != "MemoryData":
            raise RuntimeError("set_input_arrays may only be called if the first layer is a "
                               "MemoryDataLayer")
        self._net.sources[0].reset(data, labels)

    def __repr__(self) -> str:
        return f"<caffe.Net '{self.name}': {len(self._steps)} layers, {len(self._blob_map)} blobs>"


def _split_source(steps, name: str) -> str:
    """The blob a Split top copies."""
    for step in steps:
        if step.kind == SPLIT and name in step.tops:
            return step.bottoms[0]
    return name


def _trim(collected: dict, inputs: dict) -> dict:
    """Arrays from lists of per-item results, without the padding of the last batch."""
    arrays = {name: np.asarray(values) for name, values in collected.items()}
    if not inputs or not arrays:
        return arrays
    n = len(next(iter(inputs.values())))
    return {name: a[:n] for name, a in arrays.items()}
