"""FlowNet 2.0's Caffe layers (lmb-freiburg/flownet2) against OpenCV's Caffe importer where it
runs them (Correlation, FlowWarp, Accum; 4.14 cannot create ChannelNorm, and its
DataAugmentation returns values of order 1e16 for a FlowNet-shaped mean), cv2.resize for
Resample's plain cases, and loop-by-loop numpy transcriptions of the fork's CUDA kernels,
forward and backward, everywhere; then a small FlowNet-shaped net against OpenCV (with the
transcribed Resample registered in OpenCV as a Python layer) and a fork-encoded .caffemodel."""
import math

import cv2
import numpy as np
import pytest
import torch

from runner import Net
from runner.fillers import sample
from runner.proto import caffe_pb2, parse_net_text
from runner.shapes import ShapeError
from runner.weights import load_caffemodel, save_caffemodel

F32 = np.float32


def _net(layer: str, *shapes) -> str:
    names = ["a", "b", "c"][:len(shapes)]
    dims = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in shapes)
    tops = " ".join(f'top: "{n}"' for n in names)
    return f'name: "flownet"\nlayer {{ name: "in" type: "Input" {tops} input_param {{ {dims} }} }}\n{layer}\n'


def _ours(text, inputs, grad=None):
    net = Net(parse_net_text(text))
    tensors = {k: torch.from_numpy(v).requires_grad_(grad is not None) for k, v in inputs.items()}
    out = net(tensors)["o"]
    if grad is None:
        return out.detach().numpy()
    out.backward(torch.from_numpy(grad))
    return out.detach().numpy(), [None if tensors[k].grad is None else tensors[k].grad.numpy() for k in inputs]


def _opencv(text, inputs, tmp_path, model=None):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    net = cv2.dnn.readNetFromCaffe(str(path), *([str(model)] if model else []))
    for name, value in inputs.items():
        net.setInput(value, name)
    return net.forward()


def _rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


# ---- Correlation: the fork's kernels on its padded NHWC copies -----------------------------

def _rearranged(x, pad_y, pad_x):
    """blob_rearrange_kernel2: zero-padded, (N, H, W, C)."""
    n, c, h, w = x.shape
    out = np.zeros((n, h + 2 * pad_y, w + 2 * pad_x, c), F32)
    out[:, pad_y:pad_y + h, pad_x:pad_x + w] = x.transpose(0, 2, 3, 1)
    return out


def _geometry(shape, k, md, pad, s1, s2, one_d, single_direction=0):
    n, c, h, w = shape
    kr, radius = (k - 1) // 2, md // s2
    ph, pw = (h if one_d else h + 2 * pad), w + 2 * pad
    tw = math.ceil((pw - 2 * (md + kr)) / s1)
    th = math.ceil((ph - 2 * (kr if one_d else md + kr)) / s1)
    if one_d:
        grid = radius + 1 if single_direction != 0 else 2 * radius + 1
        shift = 0 if single_direction == 1 else -radius
        offsets = [(0, (tc % grid + shift) * s2) for tc in range(grid)]
    else:
        grid = 2 * radius + 1
        offsets = [((tc // grid - radius) * s2, (tc % grid - radius) * s2) for tc in range(grid * grid)]
    return kr, ph, pw, th, tw, offsets


def correlate_kernel(a, b, k, md, pad, s1, s2, subtract=False, one_d=False, single_direction=0):
    """CorrelateData / CorrelateDataSubtract (and corr1d's), loop by loop."""
    kr, ph, pw, th, tw, offsets = _geometry(a.shape, k, md, pad, s1, s2, one_d, single_direction)
    r0, r1 = _rearranged(a, 0 if one_d else pad, pad), _rearranged(b, 0 if one_d else pad, pad)
    n, c = a.shape[:2]
    top = np.zeros((n, len(offsets), th, tw), F32)
    for item in range(n):
        for y in range(th):
            for x in range(tw):
                x1, y1 = x * s1 + md, y * s1 + (0 if one_d else md)   # upper-left corner
                for tc, (s2p, s2o) in enumerate(offsets):
                    total = F32(0)
                    for j in range(k):
                        for i in range(k):
                            for ch in range(c):
                                p = r0[item, y1 + j, x1 + i, ch]
                                q = r1[item, y1 + s2p + j, x1 + s2o + i, ch]
                                total += abs(p - q) if subtract else p * q
                    top[item, tc, y, x] = total / F32(k * k * c)
    return top


def _ceil_div(v, s):
    return -((-v) // s)


def correlate_backward_kernel(a, b, top_diff, k, md, pad, s1, s2, subtract=False, one_d=False):
    """CorrelateDataBackward0/1 (and their Subtract versions, and corr1d's), loop by loop:
    for each bottom position the ranges xmin..xmax, ymin..ymax of top positions whose
    window covers it, clamped."""
    kr, ph, pw, th, tw, offsets = _geometry(a.shape, k, md, pad, s1, s2, one_d)
    pad_y, oy = (0, 0) if one_d else (pad, md)
    r0, r1 = _rearranged(a, pad_y, pad), _rearranged(b, pad_y, pad)
    n, c, h, w = a.shape
    d0, d1 = np.zeros_like(a), np.zeros_like(b)
    sumelems = F32(k * k * c)
    for item in range(n):
        for ch in range(c):
            for mm in range(h):
                for ll in range(w):
                    l, m = ll + pad, mm + pad_y
                    # bottom 0
                    total = F32(0)
                    xmin, xmax = _ceil_div(l - 2 * kr - md, s1), (l - md) // s1
                    ymin, ymax = _ceil_div(m - 2 * kr - oy, s1), (m - oy) // s1
                    if xmax >= 0 and ymax >= 0 and xmin <= tw - 1 and ymin <= th - 1:
                        xmin, xmax, ymin, ymax = max(0, xmin), min(tw - 1, xmax), max(0, ymin), min(th - 1, ymax)
                        for tc, (s2p, s2o) in enumerate(offsets):
                            if subtract:
                                p, q = r0[item, m + s2p, l + s2o, ch], r1[item, m + s2p, l + s2o, ch]
                                factor = F32(1) if p >= q else F32(-1)
                            else:
                                factor = r1[item, m + s2p, l + s2o, ch]
                            for y in range(ymin, ymax + 1):
                                for x in range(xmin, xmax + 1):
                                    total += top_diff[item, tc, y, x] * factor
                    d0[item, ch, mm, ll] = total / sumelems
                    # bottom 1
                    total = F32(0)
                    for tc, (s2p, s2o) in enumerate(offsets):
                        xmin, xmax = _ceil_div(l - 2 * kr - md - s2o, s1), (l - md - s2o) // s1
                        ymin, ymax = _ceil_div(m - 2 * kr - oy - s2p, s1), (m - oy - s2p) // s1
                        if xmax >= 0 and ymax >= 0 and xmin <= tw - 1 and ymin <= th - 1:
                            xmin, xmax, ymin, ymax = max(0, xmin), min(tw - 1, xmax), max(0, ymin), min(th - 1, ymax)
                            if subtract:
                                p, q = r0[item, m - s2p, l - s2o, ch], r1[item, m - s2p, l - s2o, ch]
                                factor = F32(-1) if p >= q else F32(1)
                            else:
                                factor = r0[item, m - s2p, l - s2o, ch]
                            for y in range(ymin, ymax + 1):
                                for x in range(xmin, xmax + 1):
                                    total += top_diff[item, tc, y, x] * factor
                    d1[item, ch, mm, ll] = total / sumelems
    return d0, d1


def _corr_layer(kind, k, md, pad, s1, s2, extra=""):
    return (f'layer {{ name: "c" type: "{kind}" bottom: "a" bottom: "b" top: "o" correlation_param {{ '
            f'pad: {pad} kernel_size: {k} max_displacement: {md} stride_1: {s1} stride_2: {s2} {extra} }} }}')


CORR_CASES = [  # kernel, max_displacement, pad, stride_1, stride_2
    (1, 2, 2, 1, 1), (3, 2, 3, 2, 1), (1, 4, 4, 1, 2), (3, 2, 1, 1, 2), (1, 3, 0, 2, 3)]


@pytest.mark.parametrize("k, md, pad, s1, s2", CORR_CASES)
def test_correlation_equals_the_kernel_and_opencv(tmp_path, k, md, pad, s1, s2):
    a, b = _rand(0, 2, 3, 8, 9), _rand(1, 2, 3, 8, 9)
    text = _net(_corr_layer("Correlation", k, md, pad, s1, s2), a.shape, b.shape)
    ours = _ours(text, {"a": a, "b": b})
    want = correlate_kernel(a, b, k, md, pad, s1, s2)
    assert ours.shape == want.shape
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours, _opencv(text, {"a": a, "b": b}, tmp_path), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("subtract", [False, True])
@pytest.mark.parametrize("k, md, pad, s1, s2", CORR_CASES[:4])
def test_correlation_backward_is_the_forks(k, md, pad, s1, s2, subtract):
    a, b = _rand(2, 2, 2, 7, 8), _rand(3, 2, 2, 7, 8)
    b[0, 0, 3, 3] = a[0, 0, 3, 3]   # an equal pair: the fork's sign is +1 there
    kind = "correlation_type: SUBTRACT" if subtract else ""
    text = _net(_corr_layer("Correlation", k, md, pad, s1, s2, kind), a.shape, b.shape)
    top = correlate_kernel(a, b, k, md, pad, s1, s2, subtract=subtract)
    grad = _rand(4, *top.shape)
    out, (da, db) = _ours(text, {"a": a, "b": b}, grad)
    np.testing.assert_allclose(out, top, rtol=1e-5, atol=1e-6)
    want_a, want_b = correlate_backward_kernel(a, b, grad, k, md, pad, s1, s2, subtract=subtract)
    np.testing.assert_allclose(da, want_a, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(db, want_b, rtol=1e-4, atol=1e-6)


def test_subtract_backward_is_not_the_gradient():
    """The fork reads both blobs at one position for the sign: a's diff is not autograd's."""
    a, b = _rand(5, 1, 2, 6, 6), _rand(6, 1, 2, 6, 6)
    text = _net(_corr_layer("Correlation", 1, 1, 1, 1, 1, "correlation_type: SUBTRACT"), a.shape, b.shape)
    grad = _rand(7, 1, 9, 6, 6)
    _, (da, _) = _ours(text, {"a": a, "b": b}, grad)
    ta, tb = (torch.from_numpy(v).requires_grad_() for v in (a, b))
    pa, pb = torch.nn.functional.pad(ta, (1, 1, 1, 1)), torch.nn.functional.pad(tb, (1, 1, 1, 1))
    true = torch.cat([(pa[:, :, 1:7, 1:7] - pb[:, :, 1 + dy:7 + dy, 1 + dx:7 + dx]).abs().mean(1, keepdim=True)
                      for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 1)
    true.backward(torch.from_numpy(grad))
    assert np.abs(da - ta.grad.numpy()).max() > 1e-3


@pytest.mark.parametrize("extra", ["", "single_direction: 1", "single_direction: 2", "correlation_type: SUBTRACT"])
def test_correlation1d_equals_the_kernel_forward_and_backward(extra):
    a, b = _rand(8, 2, 2, 5, 9), _rand(9, 2, 2, 5, 9)
    k, md, pad, s1, s2 = 3, 3, 3, 1, 1
    text = _net(_corr_layer("Correlation1D", k, md, pad, s1, s2, extra), a.shape, b.shape)
    sd = 1 if "single_direction: 1" in extra else 2 if "2" in extra else 0
    subtract = "SUBTRACT" in extra
    top = correlate_kernel(a, b, k, md, pad, s1, s2, subtract=subtract, one_d=True, single_direction=sd)
    grad = _rand(10, *top.shape)
    out, (da, db) = _ours(text, {"a": a, "b": b}, grad)
    assert out.shape == top.shape == (2, 4 if sd else 7, 3, 7)
    np.testing.assert_allclose(out, top, rtol=1e-5, atol=1e-6)
    if not sd:
        want_a, want_b = correlate_backward_kernel(a, b, grad, k, md, pad, s1, s2, subtract=subtract, one_d=True)
        np.testing.assert_allclose(da, want_a, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(db, want_b, rtol=1e-4, atol=1e-6)


def test_correlation_refusals():
    shape = (1, 2, 5, 5)
    with pytest.raises(ShapeError, match="single_direction -1.*reads before the start"):
        Net(parse_net_text(_net(_corr_layer("Correlation1D", 1, 2, 2, 1, 1, "single_direction: -1"), shape, shape)))
    with pytest.raises(ShapeError, match="kernel_size 2 must be odd"):
        Net(parse_net_text(_net(_corr_layer("Correlation", 2, 2, 2, 1, 1), shape, shape)))
    with pytest.raises(ShapeError, match="do not fit"):
        Net(parse_net_text(_net(_corr_layer("Correlation", 1, 4, 0, 1, 1), shape, shape)))
    with pytest.raises(ShapeError, match="needs correlation_param.kernel_size and max_displacement"):
        Net(parse_net_text(_net('layer { name: "c" type: "Correlation" bottom: "a" bottom: "b" top: "o" '
                                'correlation_param { max_displacement: 1 } }', shape, shape)))


# ---- Resample ------------------------------------------------------------------------------

def _cuda_round(v):
    """CUDA's round(): halves away from zero."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def resample_kernel(x, h_out, w_out, kind, antialias):
    """NearestNeighborKernel / InterpolationKernel, loop by loop (float32 arithmetic)."""
    n, c, h, w = x.shape
    fx, fy = F32(w) / F32(w_out), F32(h) / F32(h_out)
    flat = x.reshape(-1)
    out = np.zeros((n, c, h_out, w_out), F32)
    aa = (fx > 1 or fy > 1) and antialias
    ax, ay = F32(1) / (fx if aa else F32(1)), F32(1) / (fy if aa else F32(1))
    width = 4 if kind == "CUBIC" else 2
    rx = 2 if fx < 1 else math.ceil(F32(width) / ax)
    ry = 2 if fy < 1 else math.ceil(F32(width) / ay)

    def coeff(v):
        if kind == "CUBIC":
            v = abs(v)
            return v * v * (F32(1.5) * v - F32(2.5)) + F32(1) if v <= 1 else \
                v * (v * (F32(-0.5) * v + F32(2.5)) - F32(4)) + F32(2) if v < 2 else F32(0)
        return v + F32(1) if -1 <= v < 0 else F32(1) - v if 0 <= v <= 1 else F32(0)

    for cn in range(n * c):
        for yo in range(h_out):
            for xo in range(w_out):
                x_in = F32(xo) * fx + fy / F32(2) - F32(0.5)
                y_in = F32(yo) * fy + fx / F32(2) - F32(0.5)
                xr, yr = _cuda_round(float(x_in)), _cuda_round(float(y_in))
                if kind == "NEAREST":
                    out.reshape(n * c, h_out, w_out)[cn, yo, xo] = flat[cn * h * w + yr * w + xr]
                    continue
                total = wsum = F32(0)
                for yy in range(yr - ry, yr + ry + 1):
                    for xx in range(xr - rx, xr + rx + 1):
                        if yy < 0 or xx < 0 or yy >= h or xx >= w:
                            continue
                        wgt = ax * coeff(ax * (x_in - F32(xx))) * ay * coeff(ay * (y_in - F32(yy)))
                        total += wgt * flat[cn * h * w + yy * w + xx]
                        wsum += wgt
                out.reshape(n * c, h_out, w_out)[cn, yo, xo] = 0 if not wsum else total / wsum
    return out


def _resample_layer(kind, antialias, h=None, w=None, second=False):
    size = "" if second else f"height: {h} width: {w}"
    bottom = 'bottom: "a" bottom: "b"' if second else 'bottom: "a"'
    return (f'layer {{ name: "r" type: "Resample" {bottom} top: "o" resample_param {{ type: {kind} '
            f'antialias: {str(antialias).lower()} {size} }} }}')


@pytest.mark.parametrize("kind", ["LINEAR", "CUBIC", "NEAREST"])
@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("size", [(5, 7), (13, 11), (4, 16), (9, 10)])
def test_resample_equals_the_kernel(kind, antialias, size):
    x = _rand(11, 2, 2, 9, 10)
    text = _net(_resample_layer(kind, antialias, *size), x.shape)
    np.testing.assert_allclose(_ours(text, {"a": x}), resample_kernel(x, *size, kind, antialias),
                               rtol=1e-5, atol=2e-6)


def test_resample_plain_cases_equal_cv2_resize():
    x = _rand(12, 1, 3, 6, 8)
    up = _ours(_net(_resample_layer("LINEAR", True, 12, 16), x.shape), {"a": x})
    for c in range(3):
        np.testing.assert_allclose(up[0, c], cv2.resize(x[0, c], (16, 12), interpolation=cv2.INTER_LINEAR),
                                   rtol=1e-5, atol=1e-6)
    down = _ours(_net(_resample_layer("NEAREST", False, 3, 4), x.shape), {"a": x})
    for c in range(3):
        np.testing.assert_array_equal(down[0, c], cv2.resize(x[0, c], (4, 3), interpolation=cv2.INTER_NEAREST_EXACT))
    same = _ours(_net(_resample_layer("NEAREST", False, second=True), x.shape, x.shape), {"a": x, "b": x})
    np.testing.assert_array_equal(same, x)   # FlowNet2's Resample3/4: NEAREST to the reference's size


def test_resample_passes_no_gradient_and_refuses_area():
    x = _rand(13, 1, 1, 4, 4)
    net = Net(parse_net_text(_net(_resample_layer("LINEAR", True, 2, 2), x.shape)))
    t = torch.from_numpy(x).requires_grad_()
    assert not net({"a": t})["o"].requires_grad
    with pytest.raises(ShapeError, match="AREA"):
        Net(parse_net_text(_net(_resample_layer("AREA", True, 2, 2), x.shape)))


# ---- FlowWarp ------------------------------------------------------------------------------

def flow_warp_kernel(image, flow, fill=0.0):
    n, c, h, w = image.shape
    out = np.full(image.shape, fill, F32)
    for item in range(n):
        for y in range(h):
            for x in range(w):
                x2, y2 = F32(x) + flow[item, 0, y, x], F32(y) + flow[item, 1, y, x]
                if x2 >= 0 and y2 >= 0 and x2 < w and y2 < h:
                    left, top = int(x2), int(y2)
                    right, bottom = min(left + 1, w - 1), min(top + 1, h - 1)
                    alpha, beta = x2 - F32(left), y2 - F32(top)
                    for ch in range(c):
                        img = image[item, ch]
                        out[item, ch, y, x] = ((1 - alpha) * (1 - beta) * img[top, left] + alpha * (1 - beta) * img[top, right]
                                               + (1 - alpha) * beta * img[bottom, left] + alpha * beta * img[bottom, right])
    return out


def flow_warp_backward_kernel(image, flow, top_diff):
    """flow_warp_backward_kernel_no_smem, loop by loop."""
    n, c, h, w = image.shape
    d_image, d_flow = np.zeros_like(image), np.zeros_like(flow)
    for item in range(n):
        for y in range(h):
            for x in range(w):
                x2, y2 = F32(x) + flow[item, 0, y, x], F32(y) + flow[item, 1, y, x]
                if not (x2 >= 0 and y2 >= 0 and x2 < w and y2 < h):
                    continue
                left, top = int(x2), int(y2)
                right, bottom = min(left + 1, w - 1), min(top + 1, h - 1)
                alpha, beta = x2 - F32(left), y2 - F32(top)
                for ch in range(c):
                    g = top_diff[item, ch, y, x]
                    d_image[item, ch, top, left] += g * (1 - alpha) * (1 - beta)
                    d_image[item, ch, top, right] += g * alpha * (1 - beta)
                    d_image[item, ch, bottom, left] += g * (1 - alpha) * beta
                    d_image[item, ch, bottom, right] += g * alpha * beta
                gamma, total = F32(bottom) - y2, F32(0)
                for ch in range(c):
                    img = image[item, ch]
                    temp = gamma * (img[top, right] - img[top, left]) + (1 - gamma) * (img[bottom, right] - img[bottom, left])
                    total += top_diff[item, ch, y, x] * temp
                d_flow[item, 0, y, x] = total
                gamma, total = F32(right) - x2, F32(0)
                for ch in range(c):
                    img = image[item, ch]
                    temp = gamma * (img[bottom, left] - img[top, left]) + (1 - gamma) * (img[bottom, right] - img[top, right])
                    total += top_diff[item, ch, y, x] * temp
                d_flow[item, 1, y, x] = total
    return d_image, d_flow


def _flow(seed, n, h, w, spread=3.0):
    flow = _rand(seed, n, 2, h, w) * F32(spread)
    flow[0, 0, 0, 0], flow[0, 1, 0, 0] = w - 1.0, 0.25   # lands on the last column (clamped right)
    flow[0, 0, 1, 1], flow[0, 1, 1, 1] = 0.5, h - 2.0     # lands on the last row (clamped bottom)
    flow[0, 0, 2, 2] = np.nan
    return flow


def test_flow_warp_equals_opencv_and_the_kernels(tmp_path):
    image, flow = _rand(14, 2, 3, 6, 7), _flow(15, 2, 6, 7)
    text = _net('layer { name: "w" type: "FlowWarp" bottom: "a" bottom: "b" top: "o" }', image.shape, flow.shape)
    grad = _rand(16, *image.shape)
    out, (d_image, d_flow) = _ours(text, {"a": image, "b": flow}, grad)
    np.testing.assert_allclose(out, flow_warp_kernel(image, flow), rtol=1e-5, atol=1e-6)
    finite = flow.copy()
    finite[0, 0, 2, 2] = 0.5
    np.testing.assert_allclose(_ours(text, {"a": image, "b": finite}),
                               _opencv(text, {"a": image, "b": finite}, tmp_path), rtol=1e-5, atol=1e-6)
    want_image, want_flow = flow_warp_backward_kernel(image, flow, grad)
    np.testing.assert_allclose(d_image, want_image, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_flow, want_flow, rtol=1e-5, atol=1e-5)
    assert np.isfinite(d_image).all() and np.isfinite(d_flow).all()


def test_flow_warp_nan_fill():
    image, flow = _rand(17, 1, 2, 4, 5), _rand(18, 1, 2, 4, 5) * F32(4)
    text = _net('layer { name: "w" type: "FlowWarp" bottom: "a" bottom: "b" top: "o" '
                'flow_warp_param { fill_value: NOT_A_NUMBER } }', image.shape, flow.shape)
    out = _ours(text, {"a": image, "b": flow})
    np.testing.assert_allclose(out, flow_warp_kernel(image, flow, np.nan), rtol=1e-5, atol=1e-6)
    assert np.isnan(out).any() and not np.isnan(out).all()


# ---- ChannelNorm ---------------------------------------------------------------------------

def test_channel_norm_equals_the_forks_forward_and_backward():
    x = _rand(19, 2, 3, 4, 5)
    x[0, :, 1, 1] = 0
    text = _net('layer { name: "n" type: "ChannelNorm" bottom: "a" top: "o" }', x.shape)
    grad = _rand(20, 2, 1, 4, 5)
    out, (dx,) = _ours(text, {"a": x}, grad)
    norm = np.sqrt((x * x).sum(1, keepdims=True))
    np.testing.assert_allclose(out, norm, rtol=1e-6)
    np.testing.assert_allclose(dx, grad * x / (norm + F32(1e-9)), rtol=1e-6)   # NormBackward
    assert (dx[0, :, 1, 1] == 0).all()


# ---- Accum ---------------------------------------------------------------------------------

def accum_kernel(bottoms, h, w):
    """UpscaleFeatures, loop by loop (the clamped neighbours carry weight 0)."""
    outs = []
    for b in bottoms:
        n, c, bh, bw = b.shape
        out = np.zeros((n, c, h, w), F32)
        for item in range(n):
            for ch in range(c):
                for dh in range(h):
                    for dw in range(w):
                        xpos = F32(dw) / F32(w - 1) * F32(bw - 1)
                        ypos = F32(dh) / F32(h - 1) * F32(bh - 1)
                        tlx, tly = int(np.floor(xpos)), int(np.floor(ypos))
                        trx, bly = min(tlx + 1, bw - 1), min(tly + 1, bh - 1)
                        xd, yd = xpos - F32(tlx), ypos - F32(tly)
                        img = b[item, ch]
                        out[item, ch, dh, dw] = ((1 - xd) * (1 - yd) * img[tly, tlx] + xd * yd * img[bly, trx]
                                                 + (1 - xd) * yd * img[bly, tlx] + xd * (1 - yd) * img[tly, trx])
        outs.append(out)
    return np.concatenate(outs, 1)


def accum_backward_kernel(top_diff, shape):
    """DownscaleFeatures, loop by loop."""
    n, c, bh, bw = shape
    th, tw = top_diff.shape[2:]
    ws, hs = F32(tw - 1) / F32(bw - 1), F32(th - 1) / F32(bh - 1)
    wr, hr = math.ceil(ws), math.ceil(hs)
    out = np.zeros(shape, F32)
    for item in range(n):
        for ch in range(c):
            for y in range(bh):
                for x in range(bw):
                    topx, topy = F32(x) / F32(bw - 1) * F32(tw - 1), F32(y) / F32(bh - 1) * F32(th - 1)
                    ix, iy = _cuda_round(float(topx)), _cuda_round(float(topy))
                    total = F32(0)
                    for yo in range(-hr, hr + 1):
                        for xo in range(-wr, wr + 1):
                            tx, ty = ix + xo, iy + yo
                            if 0 <= tx < tw and 0 <= ty < th:
                                weight = max(F32(0), F32(1) - abs(F32(tx) - topx) / ws) * \
                                    max(F32(0), F32(1) - abs(F32(ty) - topy) / hs)
                                total += top_diff[item, ch, ty, tx] * weight
                    out[item, ch, y, x] = total
    return out


def test_accum_with_reference_equals_opencv_and_the_kernels(tmp_path):
    flow, ref = _rand(21, 2, 2, 4, 5), _rand(22, 2, 3, 9, 13)
    text = _net('layer { name: "acc" type: "Accum" bottom: "a" bottom: "b" top: "o" '
                'accum_param { have_reference: true } }', flow.shape, ref.shape)
    grad = _rand(23, 2, 2, 9, 13)
    out, (d_flow, d_ref) = _ours(text, {"a": flow, "b": ref}, grad)
    np.testing.assert_allclose(out, accum_kernel([flow], 9, 13), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, _opencv(text, {"a": flow, "b": ref}, tmp_path), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_flow, accum_backward_kernel(grad, flow.shape), rtol=1e-4, atol=1e-5)
    assert d_ref is None   # the reference only gives the size


@pytest.mark.parametrize("param, size", [("", (6, 8)), ("top_height: 10 top_width: 12", (10, 12)),
                                         ("top_height: 10 top_width: 8", (6, 8)),
                                         ("size_divisible_by: 4", (6, 8)),   # 8 x 8 is not wider than 8
                                         ("size_divisible_by: 5", (10, 10))])
def test_accum_sizes_and_concatenation(tmp_path, param, size):
    a, b = _rand(24, 1, 2, 6, 5), _rand(25, 1, 1, 3, 8)
    text = _net(f'layer {{ name: "acc" type: "Accum" bottom: "a" bottom: "b" top: "o" accum_param {{ {param} }} }}',
                a.shape, b.shape)
    out = _ours(text, {"a": a, "b": b})
    assert out.shape == (1, 3, *size)
    np.testing.assert_allclose(out, accum_kernel([a, b], *size), rtol=1e-5, atol=1e-6)
    if param in ("", "top_height: 10 top_width: 12"):
        np.testing.assert_allclose(out, _opencv(text, {"a": a, "b": b}, tmp_path), rtol=1e-5, atol=1e-6)


# ---- DataAugmentation ----------------------------------------------------------------------

def _aug_layer(extra="recompute_mean: 1000 mean_per_pixel: false"):
    return (f'layer {{ name: "aug" type: "DataAugmentation" bottom: "a" top: "o" '
            f'augmentation_param {{ augment_during_test: true {extra} }} }}')


def _caffemodel(path, name, blobs):
    model = caffe_pb2.NetParameter()
    layer = model.layer.add(name=name, type="DataAugmentation")
    for blob in blobs:
        b = layer.blobs.add()
        b.shape.dim.extend(blob.shape)
        b.data.extend(blob.ravel().tolist())
    path.write_bytes(model.SerializeToString())
    return path


def test_data_augmentation_deploy_subtracts_the_stored_channel_mean(tmp_path):
    x = _rand(26, 2, 3, 4, 5) + F32(0.5)
    stored = [np.full((1, 1, 1, 1), 5000, F32), _rand(27, 1, 3, 4, 5), np.array([[[[0.4]], [[0.45]], [[0.41]]]], F32)]
    model = _caffemodel(tmp_path / "aug.caffemodel", "aug", stored)
    text = _net(_aug_layer(), x.shape)
    net = Net(parse_net_text(text))
    load_caffemodel(net, model)
    out = net({"a": torch.from_numpy(x)})["o"].numpy()
    np.testing.assert_allclose(out, x - stored[2], rtol=1e-6)
    assert net.layers["aug"].blobs[0].item() == 5001   # the count moves; the means stay past recompute_mean


def test_data_augmentation_recomputes_its_mean_and_adjusts_stored_blobs(tmp_path):
    x1, x2 = _rand(28, 2, 3, 4, 5), _rand(29, 1, 3, 4, 5)
    net = Net(parse_net_text(_net(_aug_layer("recompute_mean: 2 mean_per_pixel: true"), (2, 3, 4, 5))))
    out1 = net({"a": torch.from_numpy(x1)})["o"].numpy()
    mean1 = x1.mean(0, keepdims=True)
    np.testing.assert_allclose(out1, x1 - mean1, rtol=1e-5, atol=1e-6)
    x2b = np.concatenate([x2, x2])
    net({"a": torch.from_numpy(x2b)})
    mean2 = (mean1 + x2) / 2
    np.testing.assert_allclose(net.layers["aug"].blobs[1].detach().numpy(), mean2, rtol=1e-5, atol=1e-6)
    out3 = net({"a": torch.from_numpy(x1)})["o"].numpy()   # count 3 > 2: the mean stays
    np.testing.assert_allclose(out3, x1 - mean2, rtol=1e-5, atol=1e-6)
    # a stored per-pixel mean of another size: its channel average spread over the pixels
    stored = [np.full((1, 1, 1, 1), 7, F32), _rand(30, 1, 3, 6, 7), np.zeros((1, 3, 1, 1), F32)]
    load_caffemodel(net, _caffemodel(tmp_path / "m.caffemodel", "aug", stored))
    avg = stored[1].reshape(3, -1).mean(1).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(net.layers["aug"].blobs[2].detach().numpy(), avg, rtol=1e-6)
    np.testing.assert_allclose(net.layers["aug"].blobs[1].detach().numpy(), np.broadcast_to(avg, (1, 3, 4, 5)), rtol=1e-6)


def test_for_inference_leaves_the_augmentation_count_and_mean_as_they_were():
    """Building the inference form runs the net several times; the count and the running
    mean (blobs the forward changes) are put back."""
    x = _rand(31, 2, 3, 4, 5)
    net = Net(parse_net_text(_net(_aug_layer("recompute_mean: 2 mean_per_pixel: true"), (2, 3, 4, 5))))
    fast = net.for_inference(example={"a": torch.from_numpy(_rand(32, 2, 3, 4, 5))})
    assert net.layers["aug"].blobs[0].item() == 0 and net.layers["aug"].blobs[1].abs().max() == 0
    out = fast({"a": torch.from_numpy(x)})["o"].numpy()
    np.testing.assert_allclose(out, x - x.mean(0, keepdims=True), rtol=1e-5, atol=1e-6)


def test_data_augmentation_refuses_cropping_and_passes_no_gradient():
    with pytest.raises(ShapeError, match="crop_width and crop_height.*not supported"):
        Net(parse_net_text(_net(_aug_layer("crop_width: 4 crop_height: 4 mirror { rand_type: 'bernoulli' }"),
                                (1, 3, 6, 6))))
    net = Net(parse_net_text(_net(_aug_layer("mean: 0.1 mean: 0.2 mean: 0.3 mean_per_pixel: false"), (1, 3, 2, 2))))
    x = torch.ones(1, 3, 2, 2, requires_grad=True)
    out = net({"a": x})["o"]
    assert not out.requires_grad
    np.testing.assert_allclose(out.numpy()[0, :, 0, 0], [0.9, 0.8, 0.7], rtol=1e-6)
    assert all(not p.requires_grad for p in net.layers["aug"].blobs)


# ---- NegReLU, L1Loss -----------------------------------------------------------------------

def test_neg_relu_equals_the_fork():
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]], F32)
    text = _net('layer { name: "r" type: "NegReLU" bottom: "a" top: "o" relu_param { negative_slope: 0.25 } }', x.shape)
    grad = np.ones_like(x)
    out, (dx,) = _ours(text, {"a": x}, grad)
    np.testing.assert_array_equal(out, np.minimum(x, 0) + F32(0.25) * np.maximum(x, 0))
    np.testing.assert_array_equal(dx, (x < 0) + F32(0.25) * (x >= 0))


def l1_loss_fork(a, b, p):
    """The fork's L1LossLayer Forward_gpu / Backward_gpu, step by step (diff of top 1)."""
    d = a - b if b is not None else a.copy()
    mask = (d == d).astype(F32)
    n, c = d.shape[:2]
    norm = F32((mask * mask).sum()) / F32(c) if p.get("normalize_by_num_entries") else F32(n)
    d = np.where(mask > 0.5, d, 0).astype(F32)
    if p.get("l2_per_location"):
        w = F32(1) / F32(c) if p.get("l2_prescale_by_channels") else F32(1)
        summed = (d * d).sum(1, keepdims=True) * w
        plateau_mask = np.ones_like(summed)
        if p.get("plateau", 0) > 0:
            plateau_mask = (np.abs(summed) >= F32(p["plateau"]) ** 2).astype(F32)
            summed = summed * plateau_mask
        root = np.sqrt(summed + F32(p.get("epsilon", 0.01)))
        loss = root.sum() / norm
        d_sum = (F32(1) / norm) * F32(0.5) * root / (summed + F32(p.get("epsilon", 0.01))) * plateau_mask
        grad = d_sum * w * 2 * d
    else:
        if p.get("plateau", 0) > 0:
            mask = np.where(np.abs(d) < F32(p["plateau"]), 0, mask)
        d = np.where(mask > 0.5, d, 0)
        sign = np.where(d > 0, F32(1), F32(-1))
        loss = (d * sign).sum() / norm
        grad = (F32(1) / norm) * sign
    grad = np.where(mask > 0.5, grad, 0)
    return F32(loss), grad.astype(F32)


@pytest.mark.parametrize("param", [{}, {"plateau": 0.5}, {"normalize_by_num_entries": True},
                                   {"l2_per_location": True}, {"l2_per_location": True, "plateau": 1.0},
                                   {"l2_per_location": True, "l2_prescale_by_channels": True, "epsilon": 0.1}])
def test_l1_loss_equals_the_fork(param):
    a, b = _rand(31, 2, 3, 4, 4), _rand(32, 2, 3, 4, 4)
    b[0, 0, 0, :2] = np.nan
    a[1, 1, 1, 1] = b[1, 1, 1, 1]   # a zero difference: the fork's sign is -1 there
    fields = " ".join(f"{k}: {str(v).lower()}" for k, v in param.items())
    text = _net(f'layer {{ name: "l" type: "L1Loss" bottom: "a" bottom: "b" top: "o" l1_loss_param {{ {fields} }} }}',
                a.shape, b.shape)
    loss, (da, db) = _ours(text, {"a": a, "b": b}, np.array(1.0, F32))
    want_loss, want_grad = l1_loss_fork(a, b, param)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(da, want_grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, -want_grad, rtol=1e-5, atol=1e-7)
    if not param:
        assert da[1, 1, 1, 1] == -0.5   # -1 / N


# ---- a FlowNet-shaped net, and the diagonal filler -----------------------------------------

class _ChannelNormForOpenCV:
    """ChannelNorm for cv2.dnn (4.14 cannot create it): the fork's NormForward."""

    def __init__(self, params, blobs):
        pass

    def getMemoryShapes(self, inputs):
        return [[inputs[0][0], 1, *inputs[0][2:]]]

    def forward(self, inputs):
        return [np.sqrt((inputs[0] * inputs[0]).sum(1, keepdims=True))]


FLOWNET_NET = """
layer { name: "conv1" type: "Convolution" bottom: "a" bottom: "b" top: "f0" top: "f1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "corr" type: "Correlation" bottom: "f0" bottom: "f1" top: "corr"
        correlation_param { pad: 2 kernel_size: 1 max_displacement: 2 stride_1: 1 stride_2: 2 } }
layer { name: "relu" type: "ReLU" bottom: "corr" top: "corr" relu_param { negative_slope: 0.1 } }
layer { name: "cat" type: "Concat" bottom: "corr" bottom: "f0" top: "cat" }
layer { name: "flow" type: "Convolution" bottom: "cat" top: "flow_small"
        convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { name: "scale" type: "Power" bottom: "flow_small" top: "flow_scaled" power_param { scale: 4.0 } }
layer { name: "up" type: "Resample" bottom: "flow_scaled" bottom: "a" top: "flow_r" resample_param { type: LINEAR } }
layer { name: "acc" type: "Accum" bottom: "flow_scaled" bottom: "a" top: "flow" accum_param { have_reference: true } }
layer { name: "warp" type: "FlowWarp" bottom: "b" bottom: "flow" top: "warped" }
layer { name: "diff" type: "Eltwise" bottom: "a" bottom: "warped" top: "diff" eltwise_param { operation: SUM coeff: 1 coeff: -1 } }
layer { name: "norm" type: "ChannelNorm" bottom: "diff" top: "err" }
layer { name: "o" type: "Concat" bottom: "flow" bottom: "err" top: "o" }
"""


def test_a_flownet_shaped_net_equals_opencv(tmp_path):
    """Convolution on both images, Correlation, a flow, Accum to the image size, FlowWarp,
    Eltwise and ChannelNorm against OpenCV (ChannelNorm registered in it as the fork's
    NormForward); the Resample branch against the kernel transcription, as OpenCV maps
    Resample to its own Resize, which samples at x * fx (no half-pixel offset), not the fork's."""
    a, b = _rand(33, 1, 3, 12, 16), _rand(34, 1, 3, 12, 16)
    text = _net(FLOWNET_NET, a.shape, b.shape)
    net = Net(parse_net_text(text))
    with torch.no_grad():
        for i, blob in enumerate(p for layer in net.layers.values() for p in layer.blobs):
            blob.copy_(torch.from_numpy(_rand(40 + i, *blob.shape) * F32(0.3)))
    model = tmp_path / "flow.caffemodel"
    save_caffemodel(net, model)
    blobs = net({"a": torch.from_numpy(a), "b": torch.from_numpy(b)})
    ours = blobs["o"].detach().numpy()
    cv2.dnn_registerLayer("ChannelNorm", _ChannelNormForOpenCV)
    try:
        theirs = _opencv(text, {"a": a, "b": b}, tmp_path, model)
    finally:
        cv2.dnn_unregisterLayer("ChannelNorm")
    assert ours.shape == (1, 3, 12, 16)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    assert np.abs(ours[:, 2]).max() > 0.1 and np.abs(ours[:, :2]).max() > 1   # a real flow and warp error
    flow = blobs["flow_scaled"].detach().numpy()
    np.testing.assert_allclose(blobs["flow_r"].numpy(), resample_kernel(flow, 12, 16, "LINEAR", True),
                               rtol=1e-5, atol=1e-5)


def test_one_bottom_eltwise_sum_with_a_coeff_scales_as_flownets_caffe():
    """FlowNet 2.0's deploy nets scale by a one-bottom Eltwise (its MinBottomBlobs is 1)."""
    x = _rand(35, 1, 2, 3, 3)
    text = _net('layer { name: "e" type: "Eltwise" bottom: "a" top: "o" eltwise_param { operation: SUM coeff: 20.0 } }',
                x.shape)
    np.testing.assert_allclose(_ours(text, {"a": x}), x * F32(20), rtol=1e-6)
    with pytest.raises(Exception, match="takes at least 2 bottom"):
        Net(parse_net_text(_net('layer { name: "e" type: "Eltwise" bottom: "a" top: "o" }', x.shape)))


def test_diagonal_filler_is_flownets():
    p = caffe_pb2.FillerParameter(type="diagonal", diag_val=[2.0, 0.5])
    blob = sample((3, 3, 2, 2), p).numpy()
    want = np.zeros((3, 3, 2, 2), F32)
    want[0, 0], want[1, 1], want[2, 2] = 0.5, 0.125, 0.25
    np.testing.assert_array_equal(blob, want)


def test_a_fork_encoded_caffemodel_loads(tmp_path):
    """augmentation_param is 149 in the fork's own .caffemodel (upsample_param here): it
    parses as unknown or mismatched fields, and the blobs still load."""
    model = caffe_pb2.NetParameter()
    layer = model.layer.add(name="aug", type="DataAugmentation")
    for blob in (np.full((1, 1, 1, 1), 5000, F32), np.zeros((1, 3, 8, 8), F32), np.array([1, 2, 3], F32).reshape(1, 3, 1, 1)):
        b = layer.blobs.add()
        b.shape.dim.extend(blob.shape)
        b.data.extend(blob.ravel().tolist())
    inner = (b"\x20\x01" + b"\x28\xe8\x07" + b"\x38\x00" + b"\x12\x03abc"   # fields 4, 5, 7; 2 as a string
             + b"\x52\x0b\x0a\x09bernoulli")                               # 10: a RandomGeneratorParameter
    raw = bytearray(layer.SerializeToString()) + b"\xaa\x09" + bytes([len(inner)]) + inner
    model.ClearField("layer")
    net_bytes = b"\xa2\x06" + bytes(_varint(len(raw))) + bytes(raw)   # NetParameter.layer = 100
    path = tmp_path / "fork.caffemodel"
    path.write_bytes(net_bytes)
    net = Net(parse_net_text(_net(_aug_layer(), (1, 3, 4, 4))))
    load_caffemodel(net, path)
    np.testing.assert_array_equal(net.layers["aug"].blobs[2].detach().numpy().ravel(), [1, 2, 3])
    out = net({"a": torch.zeros(1, 3, 4, 4)})["o"].numpy()
    np.testing.assert_array_equal(out[0, :, 0, 0], [-1, -2, -3])


def _varint(v):
    out = []
    while True:
        byte, v = v & 0x7F, v >> 7
        out.append(byte | (0x80 if v else 0))
        if not v:
            return out
