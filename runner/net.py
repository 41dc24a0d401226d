"""A Caffe net as a torch.nn.Module: NetParameter + phase/stages/level -> compute graph.

Layers run in prototxt order after Caffe's include/exclude filtering. Data layers
(Input, DummyData, Data, ImageData, ...) become sources kept outside the module; the
module maps a dict of named input blobs to a dict of every named top, so one Caffe
Forward is `net(next(batches))` with `batches = iter(net.sources[0])`.
"""
from __future__ import annotations

import importlib.util
import os

import torch
from torch import nn

import runner.input_sources  # noqa: F401  (registers the Input and DummyData sources)
import runner.layers  # noqa: F401  (registers the compute layers)
from runner import weights as caffemodel_io
from runner.debug_info import NetDebugInfo
from runner.solver.caffe_log import stderr_log
from runner.fillers import FillerError, fill_
from runner.graph import (LayerMemoryError, NetBuildError, Wiring, infer_net_shapes,
                          is_out_of_memory, layer_label, loss_weights_for)
from runner.layers.base import UnsupportedLayerError, layer_class
from runner.layers.forks import python_layer_stand_in
from runner.net_params import BlobSlot, ParamTable
from runner.proto import caffe_pb2, check_bottoms, filter_net, phase_value, read_net, upgrade_net
from runner.shapes import LayerShapes, ShapeError
from runner.sources import is_source_type, source_factory

if importlib.util.find_spec("runner.data") is not None:
    import runner.data  # noqa: F401  (registers the LMDB Data and ImageData sources)

# Sources whose tops have one fixed shape; forward checks inputs against it.
_FIXED_SHAPE_SOURCES = {"Input", "DummyData"}


def _read_net(model) -> tuple[caffe_pb2.NetParameter, str]:
    """An upgraded NetParameter and a label for error messages, from a path or a message."""
    if isinstance(model, caffe_pb2.NetParameter):
        origin = f"net '{model.name}'" if model.name else "net"
        param = caffe_pb2.NetParameter()
        param.CopyFrom(model)
        upgrade_net(param, origin)
        return param, origin
    path = os.fspath(model)
    return read_net(path), path


def _naming_layer(lp, err: Exception) -> NetBuildError:
    """`err` as a NetBuildError whose message names the layer (once)."""
    text = str(err)
    return NetBuildError(text if f"'{lp.name}'" in text else f"{layer_label(lp)}: {text}")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _module_key(name: str, taken) -> str:
    """A ModuleDict key for a layer name (no '.', no clash with ModuleDict attributes)."""
    base = name.replace(".", "_") or "layer"
    if hasattr(nn.ModuleDict, base):
        base += "_"
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    return key


class Net(nn.Module):
    """A Caffe net built for one phase (and stages/level), computing what Caffe computes.

    `forward(inputs)` takes {blob name: tensor} for every source top (`input_names`) and
    returns {blob name: tensor} for every blob (an in-place name holds its last value).
    `objective(blobs)` is Caffe's loss: sum over tops of loss weight * sum(top).
    """

    def __init__(self, model, phase="TEST", stages=(), level: int = 0, weights=None,
                 allow_missing: bool = False, source_kwargs: dict | None = None,
                 allow_nonfinite: bool = False):
        super().__init__()
        param, self.origin = _read_net(model)
        self.phase = phase_value(phase)
        self.net_param = filter_net(param, self.phase, stages, level)
        check_bottoms(self.net_param, self.origin)
        self._debug_info = None
        self.force_backward = self.net_param.force_backward
        self.sources: list = []
        self.input_names: list[str] = []
        self.loss_weights: dict[str, float] = {}
        self.layers = nn.ModuleDict()
        self._fixed_input_shapes: dict[str, tuple[int, ...]] = {}
        self._steps: list[tuple[tuple[str, ...], tuple[str, ...], tuple[bool, ...] | None]] = []
        self._layer_keys: list[str | None] = []  # per layer of net_param: module key, None for sources
        wiring, table = Wiring(), ParamTable(self.force_backward)
        from_source: dict[str, object] = {}   # blob name -> the source whose top it still is

        def build(lp, bottom_shapes: list[tuple[int, ...]]) -> LayerShapes:
            if is_source_type(lp.type):
                shapes = self._add_source(lp, wiring, source_kwargs or {})
                from_source.update(dict.fromkeys(lp.top, self.sources[-1]))
                return shapes
            shapes = self._add_layer(lp, bottom_shapes, wiring, table)
            self._limit_source_labels(lp, from_source)
            return shapes

        try:
            shapes = infer_net_shapes(self.net_param, build)
        except (NetBuildError, ShapeError, UnsupportedLayerError) as err:
            raise type(err)(f"{self.origin}: {err}") from err.__cause__
        table.finish()
        self._learnable = table.learnable
        self._slots = table.slots
        self.blob_shapes: dict[str, tuple[int, ...]] = shapes.blobs
        self.output_names: list[str] = wiring.outputs()
        self.train(self.phase == caffe_pb2.TRAIN)
        if weights is not None:
            self.load_caffemodel(weights, allow_missing=allow_missing,
                                 allow_nonfinite=allow_nonfinite)
        if self.net_param.debug_info:
            self.set_debug_info(stderr_log())

    @property
    def name(self) -> str:
        return self.net_param.name

    # ---- building -------------------------------------------------------------------

    def _add_source(self, lp, wiring: Wiring, source_kwargs: dict) -> LayerShapes:
        if lp.bottom:
            raise NetBuildError(f"{layer_label(lp)}: a data layer takes no bottoms")
        try:
            source = source_factory(lp.type)(lp, self.phase, **source_kwargs)
        except (ValueError, OSError) as err:
            raise _naming_layer(lp, err) from err
        shapes = [tuple(source.top_shapes[name]) for name in lp.top]
        weights = loss_weights_for(lp, is_loss=False)
        wiring.add_tops(lp, shapes, weights)
        self.loss_weights.update(zip(lp.top, weights))
        self.sources.append(source)
        self.input_names.extend(lp.top)
        if lp.type in _FIXED_SHAPE_SOURCES:
            self._fixed_input_shapes.update(zip(lp.top, shapes))
        self._layer_keys.append(None)
        return LayerShapes(shapes)

    def _add_layer(self, lp, bottom_shapes, wiring: Wiring, table: ParamTable) -> LayerShapes:
        built = python_layer_stand_in(lp, self.phase) or lp   # py-faster-rcnn's proposal layer
        cls = layer_class(built)
        wiring.consume_bottoms(lp)
        try:
            layer = cls(built, bottom_shapes, self.phase)
        except (ShapeError, NetBuildError):
            raise
        except (ValueError, IndexError) as err:
            raise _naming_layer(lp, err) from err
        except (MemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            raise LayerMemoryError(f"{self.origin}: {layer_label(lp)}: its blobs do not fit in "
                                   f"memory ({_first_line(err)})") from None
        if len(layer.top_shapes) != len(lp.top):
            raise NetBuildError(f"{layer_label(lp)}: {len(lp.top)} tops given, the layer makes "
                                f"{len(layer.top_shapes)}")
        weights = loss_weights_for(lp, cls.is_loss)
        wiring.add_tops(lp, layer.top_shapes, weights)
        self.loss_weights.update(zip(lp.top, weights))
        for i, (blob, filler) in enumerate(zip(layer.blobs, layer.blob_fillers())):
            if filler is None:  # values set by the layer itself (a Python layer's setup)
                continue
            try:
                fill_(blob, filler)
            except FillerError as err:
                raise NetBuildError(f"{layer_label(lp)}: blob {i}: {err}") from None
        key = _module_key(lp.name, self.layers)
        self.layers[key] = layer
        table.add_layer(key, layer, lp)
        # Caffe's force_backward overrides propagate_down: false.
        blocked = tuple(not p for p in lp.propagate_down)
        detach = blocked if any(blocked) and not self.force_backward else None
        self._steps.append((tuple(lp.bottom), tuple(lp.top), detach))
        self._layer_keys.append(key)
        return LayerShapes(layer.top_shapes)

    def _limit_source_labels(self, lp, from_source: dict) -> None:
        """Where a source's label top meets a loss or accuracy layer, the source checks
        each record's label against the layer's classes (so the error names the record)."""
        layer = self.layers[self._layer_keys[-1]]
        if layer.label_limit is not None and len(lp.bottom) > 1:
            source = from_source.get(lp.bottom[1])
            if hasattr(source, "check_labels"):
                classes, ignore_label = layer.label_limit
                source.check_labels(lp.bottom[1], classes, ignore_label, lp.name)
        for top in lp.top:
            from_source.pop(top, None)

    # ---- running --------------------------------------------------------------------

    def _check_inputs(self, inputs: dict) -> dict:
        missing = [n for n in self.input_names if n not in inputs]
        unknown = [n for n in inputs if n not in self.input_names]
        if missing or unknown:
            raise ValueError(f"{self.origin}: forward needs exactly the input blobs "
                             f"{self.input_names}; missing {missing}, unknown {unknown}")
        for name, shape in self._fixed_input_shapes.items():
            if tuple(inputs[name].shape) != shape:
                raise ValueError(f"{self.origin}: input blob '{name}' has shape "
                                 f"{list(inputs[name].shape)}, but its data layer declares {list(shape)}")
        blobs = dict(inputs)
        if self.force_backward and torch.is_grad_enabled():
            for name in self.input_names:
                x = blobs[name]
                if x.is_floating_point() and not x.requires_grad:
                    blobs[name] = x.detach().requires_grad_()
        return blobs

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run every layer in order; returns all blobs by name."""
        blobs = self._check_inputs(inputs)
        for layer, (bottoms, tops, detach) in zip(self.layers.values(), self._steps):
            args = [blobs[name] for name in bottoms]
            if detach is not None:
                args = [a.detach() if d else a for a, d in zip(args, detach)]
            try:
                blobs.update(zip(tops, layer(*args)))
            except (MemoryError, RuntimeError) as err:
                if not is_out_of_memory(err):
                    raise
                raise LayerMemoryError(f"{self.origin}: layer '{layer.name}' ({layer.type}): "
                                       f"forward does not fit in memory ({_first_line(err)})") from None
        return blobs

    def set_debug_info(self, log=None) -> None:
        """Caffe's set_debug_info: with a log (CaffeLog's info/error), every forward and
        backward writes Caffe's [Forward]/[Backward] statistics to it (runner/debug_info.py);
        None stops them. The NetParameter's `debug_info: true` starts them, to stderr."""
        if self._debug_info is not None and self._debug_info.log is log:
            return
        if self._debug_info is not None:
            self._debug_info.remove()
            self._debug_info = None
        if log is not None:
            self._debug_info = NetDebugInfo(self, log)

    def layer_steps(self) -> list[tuple[nn.Module, tuple[str, ...], tuple[str, ...]]]:
        """(layer, bottom names, top names) per compute layer, in the order forward runs them."""
        return [(layer, bottoms, tops) for layer, (bottoms, tops, _) in zip(self.layers.values(), self._steps)]

    def objective(self, blobs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Caffe's loss: sum over tops of loss_weights[top] * sum(top)."""
        terms = []
        for name, weight in self.loss_weights.items():
            if not weight:
                continue
            if name not in blobs:
                raise KeyError(f"{self.origin}: loss weight {weight} on blob '{name}', which "
                               f"this net does not produce")
            terms.append(blobs[name].sum() * weight)
        if not terms:
            return torch.zeros(())
        total = terms[0]
        for term in terms[1:]:  # `+` promotes mixed dtypes (autocast) where stack would not
            total = total + term
        return total

    def for_inference(self, outputs=None, example: dict | None = None, form: str = "auto",
                      threads: str | int | None = "auto"):
        """This net optimised for forward-only use (runner/inference): BatchNorm/Scale folded,
        traced and frozen, same {blob: tensor} interface; returns `outputs` (default: the
        net's outputs)."""
        from runner.inference import InferenceNet
        return InferenceNet(self, outputs, example, form, threads)

    def learnable_params(self) -> list[tuple[str, nn.Parameter, float, float]]:
        """Caffe's learnable_params: (name, parameter, lr_mult, decay_mult), shared blobs once."""
        return [(p.name, p.param, p.lr_mult, p.decay_mult) for p in self._learnable]

    def layer_blobs(self) -> list[tuple[caffe_pb2.LayerParameter, nn.Module | None, list[BlobSlot]]]:
        """Each layer of `net_param` in order with its module (None for a data layer) and its
        blobs as .caffemodel files see them (a shared blob through its owner), in Caffe's order."""
        return [(lp, None, []) if key is None else (lp, self.layers[key], self._slots[key])
                for lp, key in zip(self.net_param.layer, self._layer_keys)]

    # ---- weights --------------------------------------------------------------------

    def load_caffemodel(self, source, allow_missing: bool = False,
                        allow_nonfinite: bool = False) -> list[str]:
        """Copy trained blobs by layer name (path, NetParameter, or a list of them, in order).

        Returns the names of our layers with blobs that the source(s) did not provide
        (only possible with allow_missing=True). NaN or inf in a blob is an error unless
        allow_nonfinite (then a warning naming the blob).
        """
        return caffemodel_io.load_caffemodel(self, source, allow_missing=allow_missing,
                                             allow_nonfinite=allow_nonfinite)

    def save_caffemodel(self, path) -> None:
        """Write a binary .caffemodel (atomically) with Caffe's layout."""
        caffemodel_io.save_caffemodel(self, path)

    def to_net_parameter(self, with_blobs: bool = True, with_diffs: bool = False) -> caffe_pb2.NetParameter:
        """The filtered net as Caffe's Net::ToProto writes it, blobs (and their diffs,
        Caffe's write_diff) filled if asked."""
        return caffemodel_io.net_to_proto(self, with_blobs=with_blobs, with_diffs=with_diffs)

    def export_onnx(self, path, outputs: list[str] | None = None):
        """Write this net as an ONNX model (evaluation mode; graph outputs `outputs`, default
        the net's outputs); returns the onnx.ModelProto. Needs the `onnx` extra."""
        from runner.onnx_export import export_onnx
        return export_onnx(self, path, outputs)

    def __repr__(self) -> str:
        """One line per layer, torchvision style: `(conv1): Convolution(name='conv1', ...)`."""
        phase = caffe_pb2.Phase.Name(self.phase)
        lines = [f"Net(name={self.name!r}, phase={phase}, inputs={self.input_names}"]
        lines += [f"  ({key}): {layer.type}({layer.extra_repr()})" for key, layer in self.layers.items()]
        return "\n".join(lines) + "\n)"
