"""Caffe's Python layer: `type: "Python"` with python_param { module layer param_str }.

The class named by `layer` is imported from `module` on the Python path, as Caffe does, and
called with numpy views of the blobs: `setup(bottom, top)` once, `reshape(bottom, top)`
before every forward, `forward(bottom, top)`, `backward(top, propagate_down, bottom)`.
Learnable blobs (`self.blobs.add_blob(*shape)`) are Parameters of the module, so
solvers update them and .caffemodel files hold them. Inside a torch graph the layer is
an autograd Function: its backward is the user's.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

from runner.blob import Blob, ParamBlob
from runner.layers.base import Layer, register
from runner.net_params import blob_param
from runner.shapes import LayerShapes


class BlobVec(list):
    """A layer's learnable blobs as pycaffe shows them; `add_blob(*shape)` appends one."""

    def __init__(self):
        super().__init__()
        self._params: list[nn.Parameter] = []
        self._module: nn.Module | None = None

    def add_blob(self, *shape: int) -> None:
        if self._module is not None:
            raise RuntimeError("add_blob is only possible in setup(): the net's parameters "
                               "are fixed once the layer is built")
        index = len(self._params)
        self._params.append(nn.Parameter(torch.zeros(tuple(int(d) for d in shape))))
        self.append(ParamBlob(lambda: self._param(index), self._params[index].shape))

    def push(self) -> None:
        """Send what the layer's code wrote into its blobs on the host to the device."""
        for blob in self:
            blob.push()

    def _param(self, index: int) -> nn.Parameter:
        if self._module is None:
            return self._params[index]
        return blob_param(self._module, index)

    def bind(self, module: nn.Module) -> None:
        """From now on the blobs are the module's parameters (which may be shared)."""
        with torch.no_grad():
            for mine, theirs in zip(module.blobs, self._params):
                mine.copy_(theirs)
        self._params = []
        self._module = module


class PythonLayer:
    """Base class of Python layers (pycaffe's `caffe.Layer`)."""

    def __init__(self, layer_param=None):
        self.layer_param = layer_param
        self.param_str = layer_param.python_param.param_str if layer_param is not None else ""
        self.phase = 0
        self.blobs = BlobVec()

    @property
    def type(self) -> str:
        return "Python"

    def setup(self, bottom, top):
        """Called once with the bottom and top blobs."""

    def reshape(self, bottom, top):
        """Called before every forward; reshape the tops here."""
        raise NotImplementedError(f"Python layer {type(self).__name__} defines no reshape()")

    def forward(self, bottom, top):
        raise NotImplementedError(f"Python layer {type(self).__name__} defines no forward()")

    def backward(self, top, propagate_down, bottom):
        """Fill the bottom diffs (and learnable blob diffs) from the top diffs."""


def load_python_layer(lp, phase: int) -> PythonLayer:
    """Import python_param.module (from the Python path) and build its python_param.layer class."""
    p = lp.python_param
    where = f"layer '{lp.name}' (Python)"
    if not p.module or not p.layer:
        raise ValueError(f"{where}: python_param needs both module and layer")
    try:
        module = importlib.import_module(p.module)
    except ImportError as err:
        raise ValueError(f"{where}: cannot import module '{p.module}' from the Python path ({err}); "
                         "put its folder on PYTHONPATH") from err
    cls = getattr(module, p.layer, None)
    if cls is None:
        raise ValueError(f"{where}: module '{p.module}' ({module.__file__}) has no "
                         f"class '{p.layer}'")
    impl = cls(lp)
    if not hasattr(impl, "blobs"):  # a class that does not call PythonLayer.__init__
        impl.blobs = BlobVec()
    impl.param_str = p.param_str
    impl.phase = phase
    return impl


@register("Python")
class PythonLayerModule(Layer):
    """Runs a Python layer; `impl` is the user's object."""

    def infer_shapes(self, lp, bottom_shapes):
        self.impl = load_python_layer(lp, self.phase)
        self.tops = [Blob() for _ in lp.top]
        bottoms = [Blob(shape) for shape in bottom_shapes]
        self.impl.setup(bottoms, self.tops)
        self.impl.reshape(bottoms, self.tops)
        return LayerShapes([t.shape for t in self.tops],
                           [tuple(p.shape) for p in self.impl.blobs._params])

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.impl.blobs.bind(self)
        self.register_buffer("device_probe", torch.zeros(0), persistent=False)

    def blob_fillers(self):
        return [None] * len(self.blobs)  # the user's setup() gave the values

    def forward(self, *bottoms):
        params = [blob_param(self, i) for i in range(len(self.blobs))]
        return _PythonFunction.apply(self, len(bottoms), *bottoms, *params)

    def extra_repr(self):
        p = self.lp.python_param
        return f"name={self.name!r}, {p.module}.{p.layer}"


class _PythonFunction(torch.autograd.Function):
    """The user's forward and backward as one autograd node (parameters are inputs only so
    that the node runs backward when they learn; their diffs are written by the user)."""

    @staticmethod
    def forward(ctx, module, n_bottoms, *inputs):
        bottoms = inputs[:n_bottoms]
        bottom = [Blob.over(b) for b in bottoms]
        top = module.tops
        module.impl.reshape(bottom, top)
        module.impl.forward(bottom, top)
        module.impl.blobs.push()
        device = module.device_probe.device
        outs = tuple(t.data_tensor().to(device, copy=True) for t in top)
        ctx.module, ctx.n_bottoms = module, n_bottoms
        ctx.save_for_backward(*bottoms, *outs)
        return outs

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        n = ctx.n_bottoms
        bottom = [Blob.over(b, diff=torch.zeros_like(b)) for b in saved[:n]]
        top = [Blob.over(t, diff=torch.zeros_like(t) if g is None else g.contiguous())
               for t, g in zip(saved[n:], grads)]
        propagate_down = [bool(x) for x in ctx.needs_input_grad[2:2 + n]]
        ctx.module.impl.backward(top, propagate_down, bottom)
        ctx.module.impl.blobs.push()  # diffs written on the host reach a GPU's .grad
        bottom_grads = [b.diff_tensor() if need else None for b, need in zip(bottom, propagate_down)]
        n_params = len(ctx.needs_input_grad) - 2 - n
        return (None, None, *bottom_grads, *([None] * n_params))
