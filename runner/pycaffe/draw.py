"""caffe.draw: a NetParameter as a graphviz picture (layers as boxes, blobs as octagons),
with pycaffe's labels, colours and phase filter.

The graph is built with pydot and rendered by Graphviz's `dot` program; a missing pydot
or dot is a GraphvizError saying what to install.
"""
from __future__ import annotations

import os
import subprocess

from runner.atomic import atomic_write_bytes
from runner.proto import layer_included, phase_value

from .proto import caffe_pb2

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
_LAYER_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                 "InnerProduct": "#CC33FF"}
_LEARNING_TYPES = ("Convolution", "Deconvolution", "InnerProduct")


class GraphvizError(RuntimeError):
    """Drawing needs pydot and Graphviz's dot; the message says what to install or what
    dot reported."""


def _pydot():
    try:
        import pydot
    except ImportError:
        raise GraphvizError("caffe.draw needs the pydot package: pip install pydot "
                            "(and Graphviz: apt-get install graphviz)") from None
    return pydot


def get_pooling_types_dict() -> dict[int, str]:
    """Pooling method number -> name (0 -> 'MAX', ...)."""
    return {v.number: v.name for v in caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values}


def get_edge_label(layer) -> str:
    """Batch size on a Data layer's edges, num_output on Convolution, Deconvolution and
    InnerProduct ones, else none."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer) -> tuple[float, float]:
    """(weight, bias) lr_mult of a Convolution, Deconvolution or InnerProduct layer."""
    if layer.type not in _LEARNING_TYPES:
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    mults = [p.lr_mult for p in layer.param]
    if len(mults) > 2:
        raise ValueError(f"layer '{layer.name}': {len(mults)} param entries, expected at most 2")
    return tuple(mults + [1.0] * (2 - len(mults)))


def _kernel_stride_pad(layer) -> tuple[int, int, int] | None:
    """A Convolution/Deconvolution/Pooling layer's first kernel size, stride and pad."""
    if layer.type == "Pooling":
        pp = layer.pooling_param
        return pp.kernel_size, pp.stride, pp.pad
    if layer.type in ("Convolution", "Deconvolution"):
        cp = layer.convolution_param
        return (cp.kernel_size[0] if len(cp.kernel_size) else 1,
                cp.stride[0] if len(cp.stride) else 1, cp.pad[0] if len(cp.pad) else 0)
    return None


def get_layer_label(layer, rankdir: str, display_lrm: bool = False) -> str:
    """The node label: name, (type), kernel/stride/pad for spatial layers and, if asked,
    lr_mults; words on one line for vertical layouts (TB, BT), else one per line."""
    separator = " " if rankdir in ("TB", "BT") else r"\n"
    if layer.type == "Pooling":
        kind = f"(Pooling {get_pooling_types_dict()[layer.pooling_param.pool]})"
    else:
        kind = f"({layer.type})"
    parts = [layer.name, kind]
    spatial = _kernel_stride_pad(layer)
    if spatial is not None:
        parts.append(separator.join([f"kernel size: {spatial[0]}", f"stride: {spatial[1]}",
                                     f"pad: {spatial[2]}"]))
    if display_lrm and layer.type in _LEARNING_TYPES:
        weight_mult, bias_mult = get_layer_lr_mult(layer)
        if weight_mult or bias_mult:
            parts.append(f"lr mult: {weight_mult:.1f}, {bias_mult:.1f}")
    return '"%s"' % separator.join(parts)   # quoted, or dot misreads the colons


def choose_color_by_layertype(layertype: str) -> str:
    return _LAYER_COLORS.get(layertype, LAYER_STYLE_DEFAULT["fillcolor"])


def get_pydot_graph(caffe_net, rankdir: str, label_edges: bool = True, phase=None,
                    display_lrm: bool = False):
    """The net as a pydot.Dot graph; with `phase` (caffe.TRAIN/TEST) only the layers
    Caffe's include/exclude rules keep in that phase."""
    pydot = _pydot()
    state = None if phase is None else caffe_pb2.NetState(phase=phase_value(phase))
    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    nodes, edges = {}, []
    for layer in caffe_net.layer:
        if state is not None and not layer_included(layer, state):
            continue
        node_name = f"{layer.name}_{layer.type}"
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        in_place = len(layer.bottom) == len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        style = (NEURON_LAYER_STYLE if in_place else
                 dict(LAYER_STYLE_DEFAULT, fillcolor=choose_color_by_layertype(layer.type)))
        nodes[node_name] = pydot.Node(label, **style)
        for bottom in layer.bottom:
            nodes[bottom + "_blob"] = pydot.Node(bottom, **BLOB_STYLE)
            edges.append((bottom + "_blob", node_name, '""'))
        for top in layer.top:
            nodes[top + "_blob"] = pydot.Node(top)
            edges.append((node_name, top + "_blob",
                          get_edge_label(layer) if label_edges else '""'))
    for node in nodes.values():
        graph.add_node(node)
    for src, dst, label in edges:
        graph.add_edge(pydot.Edge(nodes[src], nodes[dst], label=label))
    return graph


def render(graph, ext: str) -> bytes:
    """The graph drawn by Graphviz's dot in format `ext` (png, svg, pdf, ...); 'raw' gives
    the dot source itself."""
    source = graph.to_string().encode("utf-8")
    if ext == "raw":
        return source
    try:
        done = subprocess.run(["dot", f"-T{ext}"], input=source, capture_output=True)
    except FileNotFoundError:
        raise GraphvizError("drawing needs Graphviz's dot program, which is not on PATH: "
                            "apt-get install graphviz (or your system's graphviz "
                            "package)") from None
    if done.returncode != 0:
        raise GraphvizError(f"dot -T{ext} failed: "
                            f"{done.stderr.decode('utf-8', 'replace').strip()}")
    return done.stdout


def draw_net(caffe_net, rankdir: str, ext: str = "png", phase=None,
             display_lrm: bool = False) -> bytes:
    """The net drawn as an image in format `ext`, as bytes."""
    return render(get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm),
                  ext)


def draw_net_to_file(caffe_net, filename: str, rankdir: str = "LR", phase=None,
                     display_lrm: bool = False) -> None:
    """Draw the net into `filename`, in the format its extension names ('.raw': the dot
    source); written atomically."""
    filename = os.fspath(filename)
    ext = os.path.splitext(filename)[1][1:]
    if not ext:
        raise ValueError(f"{filename}: no extension to name the image format (.png, .svg, "
                         ".pdf, ... or .raw)")
    atomic_write_bytes(filename, draw_net(caffe_net, rankdir, ext, phase, display_lrm))
