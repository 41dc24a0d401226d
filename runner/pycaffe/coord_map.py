"""Spatial coordinate maps between NetSpec tops, and `crop` to align one top to another
(FCN's score/upsample alignment), as pycaffe's coord_map.

A map is (axis, a, b): output coordinate = a * input coordinate + b, per spatial axis
from `axis` on; (None, 1, 0) is the identity of pointwise layers.
"""
from __future__ import annotations

import numpy as np

from .net_spec import layers as L

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU",
                       "Log", "LRN", "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale",
                       "Sigmoid", "Split", "TanH", "Threshold"]

_OWN_PARAM = {"Pooling": "pooling_param", "Crop": "crop_param"}


class UndefinedMapException(Exception):
    """The layer has no coordinate map (e.g. InnerProduct)."""


class AxisMismatchException(Exception):
    """Two maps act on different axes and cannot be composed."""


def _fields(fn) -> dict:
    """The layer's spatial fields, given flat or inside its parameter message."""
    return fn.params.get(_OWN_PARAM.get(fn.type_name, "convolution_param"), fn.params)


def conv_params(fn):
    """(axis, stride, effective kernel extent (k - 1) * dilation + 1, pad) of a
    Convolution, Deconvolution, Im2col or Pooling layer."""
    params = _fields(fn)
    if len({"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(params)):
        raise AssertionError("cropping does not support legacy _h/_w params")
    if "kernel_size" not in params:
        raise UndefinedMapException(f"{fn.type_name} layer without kernel_size (global "
                                    "pooling) has no coordinate map")
    kernel = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (params.get("axis", 1), np.array(params.get("stride", 1), ndmin=1),
            (kernel - 1) * dilation + 1, np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn):
    """(axis, offset) of a Crop layer, with Caffe's defaults (axis 2, offset 0)."""
    params = _fields(fn)
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn):
    """The map from a layer's bottom coordinates to its top coordinates."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, kernel, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (kernel - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, kernel, pad = conv_params(fn)
        return axis, stride, (kernel - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset   # axis - 1: the last non-spatial axis, as conv's
    raise UndefinedMapException(f"{fn.type_name} has no coordinate map")


def compose(base_map, next_map):
    """base_map followed by next_map: scales multiply, next's shift scales by base's."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException(f"maps on axis {ax1} and axis {ax2} do not compose")
    return ax, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    """The map back from output to input coordinates."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _steps_back(top):
    """(bottom, map from bottom to top) for each bottom a map walks through: all of them,
    except a Crop's reference bottom; none when the layer has no map."""
    try:
        step = coord_map(top.fn)
    except UndefinedMapException:
        return []
    bottoms = top.fn.inputs[:1] if top.fn.type_name == "Crop" else top.fn.inputs
    return [(bottom, step) for bottom in bottoms]


def coord_map_from_to(top_from, top_to):
    """The map from `top_from`'s coordinates to `top_to`'s, through their nearest common
    ancestor; RuntimeError when no spatial path joins them."""
    from_maps, frontier = {top_from: (None, 1, 0)}, [top_from]
    while frontier:
        top = frontier.pop()
        for bottom, step in _steps_back(top):
            from_maps[bottom] = compose(from_maps[top], step)
            frontier.append(bottom)
    to_maps, frontier = {top_to: (None, 1, 0)}, [top_to]
    while frontier:
        top = frontier.pop(0)
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        for bottom, step in _steps_back(top):
            to_maps[bottom] = compose(to_maps[top], step)
            frontier.append(bottom)
    raise RuntimeError("Could not compute map between tops; are they connected by "
                       "spatial layers?")


def crop(top_from, top_to):
    """A Crop layer cutting `top_from` to `top_to`'s extent at the offset their coordinate
    map gives; AssertionError when the scales differ or the offset is negative or
    fractional."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    assert np.all(a == 1), f"scale mismatch on crop (a = {a})"
    assert np.all(b <= 0), f"cannot crop negative offset (b = {b})"
    assert np.all(np.round(b) == b), f"cannot crop noninteger offset (b = {b})"
    offset = [int(v) for v in -np.round(np.array(b, ndmin=1))]
    axis = 2 if ax is None else ax + 1   # None: no spatial layer between, nothing moves
    return L.Crop(top_from, top_to, crop_param=dict(axis=int(axis), offset=offset))
