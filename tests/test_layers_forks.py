"""Fork layers beyond SSD: ShuffleChannel (ShuffleNet forks), Reorg (YOLO v2 ports), BN (SegNet),
Interp (DeepLab, PSPNet),
ROIPooling (Fast/Faster R-CNN), the MobileNet forks' depthwise convolutions and Axpy
(SENet), against OpenCV's Caffe importer where it reads them, and against loop-by-loop numpy
transcriptions of the forks' C++ (forward and backward) or a hand computation elsewhere,
OpenCV's gaps included (Interp's shrink_factor and pads; its Axpy fails on 4.14)."""
import sys

import cv2
import numpy as np
import pytest
import torch

from runner import Net
from runner.shapes import ShapeError
from runner.proto import parse_net_text

F32 = np.float32


def _net(layer: str, *shapes, second: str = "rois") -> str:
    names = ["data", second, "third"][:len(shapes)]
    dims = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in shapes)
    tops = " ".join(f'top: "{n}"' for n in names)
    return f'name: "fork"\nlayer {{ name: "in" type: "Input" {tops} input_param {{ {dims} }} }}\n{layer}\n'


def _ours(text, inputs, grad_of=None):
    net = Net(parse_net_text(text))
    tensors = {k: torch.from_numpy(v).requires_grad_(k == "data") for k, v in inputs.items()}
    out = net(tensors)["o"]
    if grad_of is None:
        return out.detach().numpy()
    out.backward(torch.from_numpy(grad_of))
    return out.detach().numpy(), tensors["data"].grad.numpy()


def _opencv(text, inputs, tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    net = cv2.dnn.readNetFromCaffe(str(path))
    for name, value in inputs.items():
        net.setInput(value, name)
    return net.forward()


# ---- ShuffleChannel -----------------------------------------------------------------------

def test_shuffle_channel_equals_opencv_and_moves_diffs_back(tmp_path):
    text = _net('layer { name: "s" type: "ShuffleChannel" bottom: "data" top: "o" '
                'shuffle_channel_param { group: 3 } }', (2, 6, 3, 4))
    x = np.random.default_rng(0).random((2, 6, 3, 4), F32)
    grad = np.random.default_rng(1).random((2, 6, 3, 4), F32)
    out, dx = _ours(text, {"data": x}, grad)
    np.testing.assert_array_equal(out, _opencv(text, {"data": x}, tmp_path))
    # farmingyard's Resize_cpu: input channel i * 2 + j goes to output channel j * 3 + i
    for i in range(3):
        for j in range(2):
            np.testing.assert_array_equal(out[:, j * 3 + i], x[:, i * 2 + j])
            np.testing.assert_array_equal(dx[:, i * 2 + j], grad[:, j * 3 + i])


def test_shuffle_channel_needs_divisible_channels():
    text = _net('layer { name: "s" type: "ShuffleChannel" bottom: "data" top: "o" '
                'shuffle_channel_param { group: 4 } }', (1, 6, 2, 2))
    with pytest.raises(ShapeError, match=r"layer 's'.*divisible by shuffle_channel_param.group 4"):
        Net(parse_net_text(text))


# ---- Reorg ---------------------------------------------------------------------------------

def reorg_cpu(x, w, h, c, batch, stride, forward):
    """darknet's reorg_cpu (the YOLO v2 ports' copy), loop by loop on flat memory."""
    x, out = x.ravel(), np.zeros(x.size, F32)
    out_c = c // (stride * stride)
    for b in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2, offset = k % out_c, k // out_c
                    w2, h2 = i * stride + offset % stride, j * stride + offset // stride
                    out_index = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
                    if forward:
                        out[out_index] = x[in_index]
                    else:
                        out[in_index] = x[out_index]
    return out


def _reorg_net(shape, stride, reverse=False):
    flag = " reverse: true" if reverse else ""
    return _net(f'layer {{ name: "r" type: "Reorg" bottom: "data" top: "o" '
                f'reorg_param {{ stride: {stride}{flag} }} }}', shape)


def test_reorg_equals_opencv(tmp_path):
    """OpenCV's importer reads Reorg at stride 2 (it ignores reorg_param)."""
    text = _reorg_net((2, 8, 6, 4), 2)
    x = np.random.default_rng(0).random((2, 8, 6, 4), F32)
    out = _ours(text, {"data": x})
    assert out.shape == (2, 32, 3, 2)
    np.testing.assert_array_equal(out, _opencv(text, {"data": x}, tmp_path))


@pytest.mark.parametrize("stride, shape", [(2, (2, 8, 6, 4)), (3, (1, 18, 3, 6))])
@pytest.mark.parametrize("reverse", [False, True])
def test_reorg_forward_and_backward_equal_darknets_loops(stride, shape, reverse):
    """ReorgLayer::Forward_cpu: reorg_cpu over the bottom's (W, H, C, N) with forward flag
    `reverse`; backward: darknet's backward_reorg_layer, the same loop with the flag flipped."""
    n, c, h, w = shape
    x = np.random.default_rng(1).random(shape, F32)
    top = (n, c // stride**2, h * stride, w * stride) if reverse else (n, c * stride**2, h // stride, w // stride)
    grad = np.random.default_rng(2).random(top, F32)
    out, dx = _ours(_reorg_net(shape, stride, reverse), {"data": x}, grad)
    assert out.shape == top
    np.testing.assert_array_equal(out.ravel(), reorg_cpu(x, w, h, c, n, stride, reverse))
    np.testing.assert_array_equal(dx.ravel(), reorg_cpu(grad, w, h, c, n, stride, not reverse))


def test_reorg_follows_a_reshape(tmp_path):
    """pycaffe's blob.reshape + net.reshape(): the new size is rearranged, as the ports'
    Reshape would."""
    import caffe

    path = tmp_path / "reorg.prototxt"
    path.write_text(_reorg_net((1, 4, 2, 2), 2))
    net = caffe.Net(str(path), caffe.TEST)
    x = np.random.default_rng(3).random((3, 8, 4, 6), F32)
    net.blobs["data"].reshape(*x.shape)
    net.reshape()
    out = net.forward(data=x)["o"]
    assert out.shape == (3, 32, 2, 3)
    np.testing.assert_array_equal(out.ravel(), reorg_cpu(x, 6, 4, 8, 3, 2, False))


@pytest.mark.parametrize("shape, param, message", [
    ((1, 6, 4, 4), "stride: 2", r"channels \(6\) divisible by stride\^2 \(4\)"),
    ((1, 8, 5, 4), "stride: 2", r"height and width \(5 x 4\) divisible by reorg_param.stride 2"),
    ((1, 8, 4, 4), "stride: 0", r"stride >= 1, got \[1, 8, 4, 4\] and stride 0"),
    ((8, 4, 4), "stride: 2", r"4-axis bottom"),
    ((1, 18, 3, 3), "stride: 2 reverse: true", r"channels \(18\) divisible by stride\^2 \(4\)"),
])
def test_reorg_checks_its_sizes(shape, param, message):
    text = _net(f'layer {{ name: "r" type: "Reorg" bottom: "data" top: "o" reorg_param {{ {param} }} }}', shape)
    with pytest.raises(ShapeError, match=f"layer 'r'.*{message}"):
        Net(parse_net_text(text))


# ---- BN (SegNet) ---------------------------------------------------------------------------

def segnet_bn_learn(x, scale, shift, dy):
    """BNLayer<float>::Forward_cpu and Backward_cpu in LEARN mode (alexgkendall/caffe-segnet),
    step by step: the spatial then batch means of x and x^2, var = E[x^2] - (EX)^2, x_norm,
    then scale and shift; backward through scale * dy. Returns (y, mean, var, dx, dscale,
    dshift)."""
    n, c, h, w = x.shape
    mean = (x.reshape(n, c, -1).sum(2) * F32(1 / (h * w))).sum(0) * F32(1 / n)
    ex2 = ((x * x).reshape(n, c, -1).sum(2) * F32(1 / (h * w))).sum(0) * F32(1 / n)
    var = ex2 - mean * mean
    std = np.sqrt(var + F32(1e-9)).reshape(1, c, 1, 1)
    x_norm = (x - mean.reshape(1, c, 1, 1)) / std
    y = x_norm * scale.reshape(1, c, 1, 1) + shift.reshape(1, c, 1, 1)
    dscale = (x_norm * dy).sum((0, 2, 3))
    dshift = dy.sum((0, 2, 3))
    g = dy * scale.reshape(1, c, 1, 1)
    dx = x_norm * (x_norm * g).sum((0, 2, 3)).reshape(1, c, 1, 1) + g.sum((0, 2, 3)).reshape(1, c, 1, 1)
    dx = (g - F32(1 / (n * h * w)) * dx) / std
    return y, mean, var, dx, dscale, dshift


def _bn_net(shape, mode="", tops=1):
    extra = "".join(f' top: "{top}"' for top in ("mean", "var")[:tops - 1])
    mode = f" bn_mode: {mode}" if mode else ""
    return _net(f'layer {{ name: "bn" type: "BN" bottom: "data" top: "o"{extra} bn_param {{ '
                f'scale_filler {{ type: "gaussian" std: 1 }} shift_filler {{ type: "gaussian" std: 1 }}{mode} }} }}',
                shape)


def _bn_run(text, x, dy, phase="TEST"):
    """Our BN forward and backward: tops, dx and the two blob diffs."""
    net = Net(parse_net_text(text), phase=phase)
    data = torch.from_numpy(x).requires_grad_()
    tops = net({"data": data})
    tops["o"].backward(torch.from_numpy(dy))
    scale, shift = net.layers["bn"].blobs
    return net, tops, data.grad.numpy(), scale.grad.numpy().ravel(), shift.grad.numpy().ravel()


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_segnet_bn_learn_equals_the_forks_steps_in_both_phases(phase):
    """LEARN normalises by the batch's statistics in TEST too (the fork never reads the
    phase); the mean and variance tops hold them, the variance without the 1e-9."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 4, 5, 6)) * 2 + 1).astype(F32)
    dy = rng.standard_normal(x.shape).astype(F32)
    net, tops, dx, dscale, dshift = _bn_run(_bn_net(x.shape, tops=3), x, dy, phase)
    scale, shift = (b.detach().numpy().ravel() for b in net.layers["bn"].blobs)
    y, mean, var, want_dx, want_dscale, want_dshift = segnet_bn_learn(x, scale, shift, dy)
    np.testing.assert_allclose(tops["o"].detach().numpy(), y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tops["mean"].numpy().ravel(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tops["var"].numpy().ravel(), var, rtol=1e-5)
    assert tops["mean"].shape == tops["var"].shape == (1, 4, 1, 1)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dscale, want_dscale, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dshift, want_dshift, rtol=1e-5, atol=1e-5)


def test_segnet_bn_inference_is_the_scale_and_shift_and_folds(tmp_path):
    """INFERENCE: y = scale * x + shift, with its diffs. Folding the batch's statistics
    into the blobs as SegNet's compute_bn_statistics.py does (new_gamma = gamma /
    sqrt(var + 1e-9), new_beta = beta - gamma * mean / sqrt(var + 1e-9); its m/(m-1)
    unbiasing left out) makes INFERENCE equal LEARN on that batch; for_inference folds
    the layer into the convolution before it and exports to ONNX."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 5)).astype(F32)
    dy = rng.standard_normal(x.shape).astype(F32)
    net, tops, dx, dscale, dshift = _bn_run(_bn_net(x.shape, "INFERENCE"), x, dy)
    scale, shift = (b.detach().numpy().reshape(1, 3, 1, 1) for b in net.layers["bn"].blobs)
    np.testing.assert_allclose(tops["o"].detach().numpy(), x * scale + shift, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, dy * scale, rtol=1e-6)
    np.testing.assert_allclose(dscale, (x * dy).sum((0, 2, 3)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dshift, dy.sum((0, 2, 3)), rtol=1e-5, atol=1e-5)

    conv = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param '
            '{ num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }\n')
    learn_text = _bn_net(x.shape, tops=3).replace('bottom: "data" top: "o"', 'bottom: "conv" top: "o"')
    learn_text = learn_text.replace('layer { name: "bn"', conv + 'layer { name: "bn"')
    learn = Net(parse_net_text(learn_text))
    tops = learn({"data": torch.from_numpy(x)})
    inference = Net(parse_net_text(learn_text.replace(' top: "mean" top: "var"', '')
                                   .replace("std: 1 } }", "std: 1 } bn_mode: INFERENCE }")))
    inference.load_state_dict(learn.state_dict())
    gamma, beta = (b.detach().double() for b in inference.layers["bn"].blobs)
    root = torch.sqrt(tops["var"].double() + 1e-9)
    with torch.no_grad():
        inference.layers["bn"].blobs[0].copy_(gamma / root)
        inference.layers["bn"].blobs[1].copy_(beta - gamma * tops["mean"].double() / root)
    folded = inference({"data": torch.from_numpy(x)})["o"].detach()
    np.testing.assert_allclose(folded.numpy(), tops["o"].detach().numpy(), rtol=1e-4, atol=1e-5)
    fast = inference.for_inference()
    assert "conv+bn" in str(fast)
    np.testing.assert_allclose(fast({"data": torch.from_numpy(x)})["o"].numpy(), folded.numpy(),
                               rtol=1e-5, atol=1e-5)
    from runner.onnx_export import build_model
    import onnxruntime
    session = onnxruntime.InferenceSession(build_model(inference).SerializeToString())
    np.testing.assert_allclose(session.run(None, {"data": x})[0], folded.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("text, message", [
    (_bn_net((1, 2, 3, 3), "INFERENCE", tops=3), r"one top; the batch mean and variance tops exist only in LEARN"),
    (_bn_net((1, 2, 3, 3, 3)), r"2 to 4 axes"),
    (_bn_net((6,)), r"2 to 4 axes"),
])
def test_segnet_bn_checks_its_tops_and_axes(text, message):
    with pytest.raises(ShapeError, match=f"layer 'bn'.*{message}"):
        Net(parse_net_text(text))


def test_segnet_bn_learn_refuses_onnx():
    from runner.onnx_export import OnnxExportError, build_model
    with pytest.raises(OnnxExportError, match="LEARN mode normalises by batch statistics"):
        build_model(Net(parse_net_text(_bn_net((1, 2, 3, 3)))))


def tsn_bn(x, slope, bias, mean, var, eps, momentum, use_running):
    """yjxiong/caffe's BNLayer<float>::Forward_cpu: batch statistics (two-pass, biased) and the
    running update, or the running statistics; returns (y, new running mean, new running var)."""
    c = x.shape[1]
    if use_running:
        m, v = mean, var
    else:
        m = x.transpose(1, 0, 2, 3).reshape(c, -1).mean(1, dtype=np.float64).astype(F32)
        centred = x - m.reshape(1, c, 1, 1)
        v = (centred * centred).transpose(1, 0, 2, 3).reshape(c, -1).mean(1, dtype=np.float64).astype(F32)
        mean = F32(momentum) * mean + F32(1 - momentum) * m
        var = F32(momentum) * var + F32(1 - momentum) * v
    y = slope.reshape(1, c, 1, 1) * (x - m.reshape(1, c, 1, 1)) * \
        np.power(v + F32(eps), F32(-0.5)).reshape(1, c, 1, 1) + bias.reshape(1, c, 1, 1)
    return y, mean, var


def _tsn_net(shape, extra=""):
    return _net(f'layer {{ name: "bn" type: "BN" bottom: "data" top: "o" bn_param {{ '
                f'slope_filler {{ type: "gaussian" std: 1 }} bias_filler {{ type: "gaussian" std: 1 }} '
                f'eps: 0.001 momentum: 0.8 {extra} }} }}', shape)


@pytest.mark.parametrize("phase, frozen", [("TRAIN", False), ("TEST", False), ("TRAIN", True)])
def test_tsn_bn_uses_batch_or_running_statistics_as_the_fork(phase, frozen):
    """TSN's BN (any of its bn_param fields): four (1, C) blobs; TRAIN normalises by the
    batch and moves the running statistics by momentum; TEST and `frozen` use them."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3, 4, 5, 2)) * 3 + 2).astype(F32)
    dy = rng.standard_normal(x.shape).astype(F32)
    net = Net(parse_net_text(_tsn_net(x.shape, "frozen: true" if frozen else "")), phase=phase)
    blobs = net.layers["bn"].blobs
    assert [tuple(b.shape) for b in blobs] == [(1, 4)] * 4
    with torch.no_grad():
        blobs[2].copy_(torch.from_numpy(rng.standard_normal((1, 4)).astype(F32)))
        blobs[3].copy_(torch.from_numpy(rng.random((1, 4)).astype(F32) + 0.5))
    slope, bias, mean, var = (b.detach().numpy().ravel().copy() for b in blobs)
    want, want_mean, want_var = tsn_bn(x, slope, bias, mean, var, 0.001, 0.8, phase == "TEST" or frozen)
    data = torch.from_numpy(x).requires_grad_()
    out = net({"data": data})["o"]
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(blobs[2].detach().numpy().ravel(), want_mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(blobs[3].detach().numpy().ravel(), want_var, rtol=1e-6, atol=1e-7)
    out.backward(torch.from_numpy(dy))
    if phase == "TEST" or frozen:   # an affine map of x: dx = dy * slope / sqrt(var + eps)
        scale = (slope / np.sqrt(var + F32(0.001))).reshape(1, 4, 1, 1)
        np.testing.assert_allclose(data.grad.numpy(), dy * scale, rtol=1e-5, atol=1e-6)
    else:
        m = x.mean((0, 2, 3), keepdims=True)
        std = np.sqrt(((x - m) ** 2).mean((0, 2, 3), keepdims=True) + F32(0.001))
        x_hat, g = (x - m) / std, dy * slope.reshape(1, 4, 1, 1)
        want_dx = (g - g.mean((0, 2, 3), keepdims=True) - x_hat * (g * x_hat).mean((0, 2, 3), keepdims=True)) / std
        np.testing.assert_allclose(data.grad.numpy(), want_dx, rtol=1e-4, atol=1e-5)
    learned = [p.requires_grad for p in net.layers["bn"].blobs]
    assert learned == ([False] * 4 if frozen else [True, True, False, False])


def test_tsn_bn_folds_exports_and_refuses_mixed_fields(tmp_path):
    conv = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param '
            '{ num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }\n')
    text = _tsn_net((2, 3, 5, 5)).replace('bottom: "data" top: "o"', 'bottom: "conv" top: "o"')
    text = text.replace('layer { name: "bn"', conv + 'layer { name: "bn"')
    net = Net(parse_net_text(text))
    with torch.no_grad():
        net.layers["bn"].blobs[2].uniform_(-1, 1)
        net.layers["bn"].blobs[3].uniform_(0.5, 2)
    x = torch.randn(2, 3, 5, 5)
    want = net({"data": x})["o"]
    fast = net.for_inference()
    assert "conv+bn" in str(fast)
    want = want.detach()
    torch.testing.assert_close(fast({"data": x})["o"], want, rtol=1e-5, atol=1e-5)
    from runner.onnx_export import build_model
    import onnxruntime
    session = onnxruntime.InferenceSession(build_model(net).SerializeToString())
    np.testing.assert_allclose(session.run(None, {"data": x.numpy()})[0], want.numpy(), rtol=1e-5, atol=1e-5)
    mixed = _tsn_net((1, 2, 3, 3), "bn_mode: INFERENCE")
    with pytest.raises(ShapeError, match=r"layer 'bn'.*mixes SegNet's BN fields \['bn_mode'\] with TSN's"):
        Net(parse_net_text(mixed))


# ---- Interp -------------------------------------------------------------------------------

def _interp_weights(size_in, size_out):
    """caffe_cpu_interp2's per-axis loop variables, in float."""
    ratio = F32(size_in - 1) / F32(size_out - 1) if size_out > 1 else F32(0)
    for i2 in range(size_out):
        r = ratio * F32(i2)
        i1 = int(r)
        yield i2, i1, 1 if i1 < size_in - 1 else 0, F32(r - F32(i1))


def interp2(x, y0, x0, h1, w1, h2, w2):
    """caffe_cpu_interp2<float, false> on (channels, H, W), from the crop at (y0, x0)."""
    out = np.zeros((x.shape[0], h2, w2), F32)
    if (h1, w1) == (h2, w2):
        return x[:, y0:y0 + h1, x0:x0 + w1].copy()
    for a2, a1, ap, al1 in _interp_weights(h1, h2):
        al0 = F32(1) - al1
        for b2, b1, bp, bl1 in _interp_weights(w1, w2):
            bl0 = F32(1) - bl1
            p = x[:, y0 + a1:, x0 + b1:]
            out[:, a2, b2] = (al0 * (bl0 * p[:, 0, 0] + bl1 * p[:, 0, bp])
                              + al1 * (bl0 * p[:, ap, 0] + bl1 * p[:, ap, bp]))
    return out


def interp2_backward(shape, y0, x0, h1, w1, top_diff):
    """caffe_cpu_interp2_backward<float, false>: the adjoint, accumulated into zeros."""
    c, h2, w2 = top_diff.shape
    diff = np.zeros(shape, F32)
    if (h1, w1) == (h2, w2):
        diff[:, y0:y0 + h1, x0:x0 + w1] += top_diff
        return diff
    for a2, a1, ap, al1 in _interp_weights(h1, h2):
        al0 = F32(1) - al1
        for b2, b1, bp, bl1 in _interp_weights(w1, w2):
            bl0 = F32(1) - bl1
            g = top_diff[:, a2, b2]
            diff[:, y0 + a1, x0 + b1] += al0 * bl0 * g
            diff[:, y0 + a1, x0 + b1 + bp] += al0 * bl1 * g
            diff[:, y0 + a1 + ap, x0 + b1] += al1 * bl0 * g
            diff[:, y0 + a1 + ap, x0 + b1 + bp] += al1 * bl1 * g
    return diff


def _interp_net(param, shape=(2, 3, 5, 6), size=None):
    second = 'bottom: "size" ' if size else ""
    layer = f'layer {{ name: "i" type: "Interp" bottom: "data" {second}top: "o" interp_param {{ {param} }} }}'
    return _net(layer, shape, *([(1, 1, *size)] if size else []), second="size")


@pytest.mark.parametrize("param", ["zoom_factor: 3", "height: 9 width: 11", "height: 3 width: 4",
                                   "height: 1 width: 1", "height: 5 width: 6"])
def test_interp_equals_opencv(tmp_path, param):
    text = _interp_net(param)
    x = np.random.default_rng(2).random((2, 3, 5, 6), F32)
    np.testing.assert_allclose(_ours(text, {"data": x}), _opencv(text, {"data": x}, tmp_path),
                               rtol=0, atol=3e-7)


@pytest.mark.parametrize("param, size, crop, out", [
    ("zoom_factor: 2", None, (0, 5, 6), (9, 11)),
    ("shrink_factor: 2", None, (0, 5, 6), (3, 3)),               # OpenCV gets this one wrong
    ("shrink_factor: 2 zoom_factor: 3", None, (0, 5, 6), (7, 7)),
    ("zoom_factor: 2 pad_beg: -1 pad_end: -1", None, (1, 3, 4), (5, 7)),
    ("height: 4 width: 8 pad_beg: -1", None, (1, 4, 5), (4, 8)),
    ("", (7, 3), (0, 5, 6), (7, 3)),                             # the size of a second bottom
])
def test_interp_forward_and_backward_equal_the_forks_loops(param, size, crop, out):
    text = _interp_net(param, size=size)
    x = np.random.default_rng(3).random((2, 3, 5, 6), F32)
    grad = np.random.default_rng(4).random((2, 3, *out), F32)
    inputs = {"data": x} | ({"size": np.zeros((1, 1, *size), F32)} if size else {})
    top, dx = _ours(text, inputs, grad)
    start, h1, w1 = crop
    assert top.shape == (2, 3, *out)
    flat = x.reshape(6, 5, 6)
    np.testing.assert_allclose(top.reshape(6, *out), interp2(flat, start, start, h1, w1, *out),
                               rtol=0, atol=3e-7)
    np.testing.assert_allclose(dx.reshape(6, 5, 6),
                               interp2_backward((6, 5, 6), start, start, h1, w1, grad.reshape(6, *out)),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("param, message", [
    ("zoom_factor: 2 height: 3 width: 3", "exactly one of zoom_factor and/or shrink_factor"),
    ("", "exactly one of"),
    ("pad_beg: 1 zoom_factor: 2", "only non-positive pad_beg/pad_end"),
    ("pad_beg: -3 pad_end: -3 zoom_factor: 2", "pads leave nothing of a 5 x 6 bottom"),
    ("shrink_factor: 0", "shrink_factor 0 must be >= 1"),
])
def test_interp_refuses_what_the_fork_refuses(param, message):
    with pytest.raises(ShapeError, match=rf"layer 'i'.*{message}"):
        Net(parse_net_text(_interp_net(param)))


# ---- ROIPooling ---------------------------------------------------------------------------

ROIS = np.array([[0, 0, 0, 20, 30], [1, 4, 8, 50, 40], [0, 10, 10, 10, 10], [1, -8, -8, 70, 70],
                 [0, 30, 20, 33, 25], [1, 2, 3, 13, 9], [0, 60, 60, 90, 90]], F32)


def _roi_net(pooled=(3, 4), scale=0.25, rois=len(ROIS)):
    return _net(f'layer {{ name: "p" type: "ROIPooling" bottom: "data" bottom: "rois" top: "o" '
                f'roi_pooling_param {{ pooled_h: {pooled[0]} pooled_w: {pooled[1]} '
                f'spatial_scale: {scale} }} }}', (2, 3, 12, 14), (rois, 5))


def roi_pool(x, rois, ph_n, pw_n, scale):
    """ROIPoolingLayer::Forward_cpu, and the argmax its Backward sends each diff to."""
    n, c, height, width = x.shape
    top = np.zeros((len(rois), c, ph_n, pw_n), F32)
    argmax = -np.ones(top.shape, int)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        sw, sh, ew, eh = (int(np.sign(v) * np.floor(abs(v) + 0.5)) for v in roi[1:] * F32(scale))
        bin_h = F32(max(eh - sh + 1, 1)) / F32(ph_n)
        bin_w = F32(max(ew - sw + 1, 1)) / F32(pw_n)
        for ch in range(c):
            for ph in range(ph_n):
                for pw in range(pw_n):
                    hs = min(max(int(np.floor(F32(ph) * bin_h)) + sh, 0), height)
                    he = min(max(int(np.ceil(F32(ph + 1) * bin_h)) + sh, 0), height)
                    ws = min(max(int(np.floor(F32(pw) * bin_w)) + sw, 0), width)
                    we = min(max(int(np.ceil(F32(pw + 1) * bin_w)) + sw, 0), width)
                    if he <= hs or we <= ws:
                        continue
                    best = -np.finfo(F32).max
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if x[b, ch, h, w] > best:
                                best, argmax[r, ch, ph, pw] = x[b, ch, h, w], h * width + w
                    top[r, ch, ph, pw] = best
    return top, argmax


def roi_pool_backward(x_shape, rois, argmax, top_diff):
    diff = np.zeros(x_shape, F32)
    for r, roi in enumerate(rois):
        for ch, ph, pw in np.ndindex(argmax.shape[1:]):
            if argmax[r, ch, ph, pw] >= 0:
                h, w = divmod(argmax[r, ch, ph, pw], x_shape[3])
                diff[int(roi[0]), ch, h, w] += top_diff[r, ch, ph, pw]
    return diff


@pytest.mark.parametrize("ties", [False, True])
def test_roi_pooling_equals_opencv_and_the_forks_loops(tmp_path, ties):
    rng = np.random.default_rng(5)
    x = rng.random((2, 3, 12, 14), F32)
    if ties:   # whole rows equal, as after a ReLU: the first maximum in scan order wins
        x = np.repeat(np.round(x[..., :1] * 4) / 4, 14, axis=-1)
    grad = rng.random((len(ROIS), 3, 3, 4), F32)
    top, dx = _ours(_roi_net(), {"data": x, "rois": ROIS}, grad)
    expected, argmax = roi_pool(x, ROIS, 3, 4, 0.25)
    np.testing.assert_array_equal(top, expected)
    np.testing.assert_array_equal(top, _opencv(_roi_net(), {"data": x, "rois": ROIS}, tmp_path))
    np.testing.assert_allclose(dx, roi_pool_backward(x.shape, ROIS, argmax, grad), rtol=0, atol=1e-6)
    assert (top[6] == 0).all()   # a region past the map: every bin empty, 0


def test_roi_pooling_checks_its_regions():
    x = np.zeros((2, 3, 12, 14), F32)
    with pytest.raises(ValueError, match=r"layer 'p' \(ROIPooling\): a region's batch index is outside 0\.\.1"):
        _ours(_roi_net(rois=1), {"data": x, "rois": np.array([[2, 0, 0, 4, 4]], F32)})
    bad = _net('layer { name: "p" type: "ROIPooling" bottom: "data" bottom: "rois" top: "o" '
               'roi_pooling_param { pooled_h: 2 pooled_w: 2 } }', (1, 3, 4, 4), (3, 4))
    with pytest.raises(ShapeError, match=r"layer 'p'.*shape \(R, 5\), got \[3, 4\]"):
        Net(parse_net_text(bad))
    zero = _net('layer { name: "p" type: "ROIPooling" bottom: "data" bottom: "rois" top: "o" '
                'roi_pooling_param { pooled_w: 2 } }', (1, 3, 4, 4), (3, 5))
    with pytest.raises(ShapeError, match=r"layer 'p'.*pooled_h > 0 and pooled_w > 0"):
        Net(parse_net_text(zero))


# ---- depthwise convolutions and Axpy --------------------------------------------------------

DEPTHWISE = '''name: "mobile"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 7 dim: 8 } } }
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "data" top: "dw"
  convolution_param { num_output: 9 kernel_size: 3 pad: 1 stride: 2
    weight_filler { type: "xavier" } bias_filler { type: "gaussian" } } }
layer { name: "dw2" type: "DepthwiseConvolution" bottom: "dw" top: "dw2"
  convolution_param { num_output: 4 group: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
'''


def test_depthwise_convolutions_equal_opencv(tmp_path):
    """farmingyard's ConvolutionDepthwise keeps the channels whatever num_output says, one
    (1, k, k) filter each; yonghenglh6's DepthwiseConvolution is the grouped Convolution it
    names. OpenCV is given both as that grouped Convolution (its importer takes
    ConvolutionDepthwise's num_output at its word)."""
    net = Net(parse_net_text(DEPTHWISE))
    assert [tuple(b.shape) for b in net.layers["dw"].blobs] == [(4, 1, 3, 3), (4,)]
    assert net.blob_shapes["dw"] == (2, 4, 4, 4)
    net.save_caffemodel(tmp_path / "w.caffemodel")
    as_grouped = (DEPTHWISE.replace('"DepthwiseConvolution"', '"Convolution"')
                  .replace('type: "ConvolutionDepthwise"', 'type: "Convolution"')
                  .replace("num_output: 9 ", "num_output: 4 group: 4 "))
    (tmp_path / "net.prototxt").write_text(as_grouped)
    x = np.random.default_rng(6).random((2, 4, 7, 8), F32)
    with torch.no_grad():
        ours = net({"data": torch.from_numpy(x)})["dw2"].numpy()
    cv = cv2.dnn.readNetFromCaffe(str(tmp_path / "net.prototxt"), str(tmp_path / "w.caffemodel"))
    cv.setInput(x, "data")
    np.testing.assert_allclose(ours, cv.forward(), rtol=0, atol=2e-6)
    with pytest.raises(ShapeError, match=r"layer 'dw' \(ConvolutionDepthwise\): kernel and stride must be positive"):
        Net(parse_net_text(DEPTHWISE.replace("kernel_size: 3 pad: 1 stride: 2", "kernel_size: 0")))
    fast = net.for_inference(outputs=["dw2"], example={"data": torch.from_numpy(x)})
    np.testing.assert_allclose(fast({"data": torch.from_numpy(x)})["dw2"].numpy(), ours, rtol=0, atol=1e-5)


def test_axpy_forward_and_backward_by_hand():
    text = _net('layer { name: "a" type: "Axpy" bottom: "scale" bottom: "x" bottom: "y" top: "o" }',
                (2, 3), (2, 3, 4, 5), (2, 3, 4, 5)).replace('top: "data" top: "rois" top: "third"',
                                                            'top: "scale" top: "x" top: "y"')
    rng = np.random.default_rng(7)
    a, x, y, g = (rng.random(s, F32) for s in [(2, 3), (2, 3, 4, 5), (2, 3, 4, 5), (2, 3, 4, 5)])
    net = Net(parse_net_text(text))
    ins = {k: torch.from_numpy(v).requires_grad_() for k, v in {"scale": a, "x": x, "y": y}.items()}
    out = net(ins)["o"]
    np.testing.assert_allclose(out.detach().numpy(), a[:, :, None, None] * x + y, rtol=1e-6)
    out.backward(torch.from_numpy(g))
    np.testing.assert_allclose(ins["scale"].grad.numpy(), (x * g).sum((2, 3)), rtol=1e-5)
    np.testing.assert_allclose(ins["x"].grad.numpy(), a[:, :, None, None] * g, rtol=1e-6)
    np.testing.assert_array_equal(ins["y"].grad.numpy(), g)
    with pytest.raises(ShapeError, match=r"layer 'a'.*Axpy takes a \(N, C\[, 1, 1\]\) scale"):
        Net(parse_net_text(text.replace("dim: 2 dim: 3 }", "dim: 2 dim: 5 }", 1)))


# ---- Upsample -----------------------------------------------------------------------------

def test_upsample_by_scale_is_the_yolo_ports_nearest_neighbour():
    text = _net('layer { name: "u" type: "Upsample" bottom: "data" top: "o" upsample_param { scale: 3 } }',
                (2, 3, 4, 5))
    rng = np.random.default_rng(8)
    x, g = rng.random((2, 3, 4, 5), F32), rng.random((2, 3, 12, 15), F32)
    top, dx = _ours(text, {"data": x}, g)
    expected = np.empty((2, 3, 12, 15), F32)
    for h, w in np.ndindex(12, 15):   # the port's loop: output (h, w) reads (h / 3, w / 3)
        expected[:, :, h, w] = x[:, :, h // 3, w // 3]
    np.testing.assert_array_equal(top, expected)
    np.testing.assert_allclose(dx, g.reshape(2, 3, 4, 3, 5, 3).sum((3, 5)), rtol=1e-6)


SEGNET = '''name: "segnet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
  pooling_param { pool: MAX kernel_size: KERNEL stride: 2 } }
layer { name: "up" type: "Upsample" bottom: "pool" bottom: "mask" top: "o"
  upsample_param { PARAM } }
'''


def segnet_upsample(values, mask, height, width):
    """UpsampleLayer::Forward_cpu (SegNet): zeros, then top[mask[i]] = bottom[i] in order."""
    n, c = values.shape[:2]
    top = np.zeros((n, c, height * width), F32)
    for a, b in np.ndindex(n, c):
        for i, idx in enumerate(mask[a, b].reshape(-1).astype(int)):
            top[a, b, idx] = values[a, b].reshape(-1)[i]
    return top.reshape(n, c, height, width)


def _segnet(param, kernel=3):
    return parse_net_text(SEGNET.replace("PARAM", param).replace("KERNEL", str(kernel)))


@pytest.mark.parametrize("param, kernel, size", [("upsample_h: 9 upsample_w: 9", 3, (9, 9)),
                                                 ("scale: 2 pad_out_h: true pad_out_w: true", 2, (9, 9)),
                                                 ("scale_h: 3 scale_w: 3", 3, (12, 12))])
def test_upsample_with_a_pooling_mask_is_segnets_unpooling(param, kernel, size):
    """Overlapping 3x3/2 windows send some maxima to one place twice: the later write wins,
    and each bottom's diff is read back from where it went. (A top of another size than
    the pooled input, as scale 3 here, scrambles the places, as in the fork.)"""
    net = Net(_segnet(param, kernel))
    rng = np.random.default_rng(9)
    x = torch.from_numpy(np.round(rng.random((2, 3, 9, 9), F32) * 8) / 8).requires_grad_()
    blobs = net({"data": x})
    top, pool, mask = (blobs[k].detach().numpy() for k in ("o", "pool", "mask"))
    assert top.shape == (2, 3, *size)
    if kernel == 3:
        assert len(np.unique(mask)) < mask.size        # the case with repeated places
    np.testing.assert_array_equal(top, segnet_upsample(pool, mask, *size))
    g = torch.from_numpy(rng.random((2, 3, *size), F32))
    (dpool,) = torch.autograd.grad(blobs["o"], blobs["pool"], g)
    flat = g.numpy().reshape(2, 3, -1)
    np.testing.assert_array_equal(dpool.numpy(), np.take_along_axis(
        flat, mask.reshape(2, 3, -1).astype(int), 2).reshape(pool.shape))


def test_upsample_checks_its_sizes_and_mask():
    with pytest.raises(ValueError, match=r"layer 'up' \(Upsample\): mask index \d+\.\.\d+ outside the 3 x 3 top"):
        net = Net(_segnet("upsample_h: 3 upsample_w: 3"))
        net({"data": torch.rand(2, 3, 9, 9)})
    for param, message in [("scale: 3 pad_out_h: true", "pad_out_h/pad_out_w need a scale of 2"),
                           ("scale_h: 2", "give upsample_h and upsample_w, or scale, or scale_h and scale_w"),
                           ("scale: 1", r"scales \(1, 1\) must be > 1")]:
        with pytest.raises(ShapeError, match=rf"layer 'up'.*{message}"):
            Net(_segnet(param))


# ---- PSROIPooling -------------------------------------------------------------------------

def psroi_pool(x, rois, dim, groups, scale):
    """R-FCN's PSROIPoolingForward, loop by loop in float, and the (channel, bin) each
    output averages (for the backward: its diff / area to every element of the bin)."""
    n, c, height, width = x.shape
    top = np.zeros((len(rois), dim, groups, groups), F32)
    bins = {}
    for r, roi in enumerate(rois):
        b = int(roi[0])
        cround = lambda v: np.sign(v) * np.floor(abs(v) + 0.5)  # noqa: E731
        sw, sh = F32(cround(roi[1])) * F32(scale), F32(cround(roi[2])) * F32(scale)
        ew, eh = F32(cround(roi[3]) + 1.0) * F32(scale), F32(cround(roi[4]) + 1.0) * F32(scale)
        bin_h = max(eh - sh, F32(0.1)) / F32(groups)
        bin_w = max(ew - sw, F32(0.1)) / F32(groups)
        for ctop, ph, pw in np.ndindex(dim, groups, groups):
            hs = min(max(int(np.floor(F32(ph) * bin_h + sh)), 0), height)
            ws = min(max(int(np.floor(F32(pw) * bin_w + sw)), 0), width)
            he = min(max(int(np.ceil(F32(ph + 1) * bin_h + sh)), 0), height)
            we = min(max(int(np.ceil(F32(pw + 1) * bin_w + sw)), 0), width)
            channel = (ctop * groups + ph) * groups + pw
            if he <= hs or we <= ws:
                continue
            total = F32(0)
            for h in range(hs, he):
                for w in range(ws, we):
                    total += x[b, channel, h, w]
            top[r, ctop, ph, pw] = total / F32((he - hs) * (we - ws))
            bins[r, ctop, ph, pw] = (b, channel, hs, he, ws, we)
    return top, bins


def _psroi_net(rois=len(ROIS)):
    return _net('layer { name: "p" type: "PSROIPooling" bottom: "data" bottom: "rois" top: "o" '
                'psroi_pooling_param { spatial_scale: 0.25 output_dim: 2 group_size: 3 } }',
                (2, 18, 12, 14), (rois, 5))


def test_psroi_pooling_equals_opencv_and_the_forks_loops(tmp_path):
    rng = np.random.default_rng(10)
    x = rng.random((2, 18, 12, 14), F32)
    grad = rng.random((len(ROIS), 2, 3, 3), F32)
    top, dx = _ours(_psroi_net(), {"data": x, "rois": ROIS}, grad)
    expected, bins = psroi_pool(x, ROIS, 2, 3, 0.25)
    np.testing.assert_allclose(top, expected, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(top, _opencv(_psroi_net(), {"data": x, "rois": ROIS}, tmp_path),
                               rtol=2e-6, atol=1e-7)
    diff = np.zeros_like(x)
    for (r, ctop, ph, pw), (b, channel, hs, he, ws, we) in bins.items():
        diff[b, channel, hs:he, ws:we] += grad[r, ctop, ph, pw] / F32((he - hs) * (we - ws))
    np.testing.assert_allclose(dx, diff, rtol=1e-5, atol=1e-7)
    assert (top[6] == 0).all()


def test_psroi_pooling_checks_its_parameters():
    with pytest.raises(ShapeError, match=r"layer 'p'.*has 18 channels; output_dim \* group_size\^2 = 32"):
        Net(parse_net_text(_psroi_net().replace("output_dim: 2", "output_dim: 2 group_size: 4")
                           .replace("group_size: 3 ", "")))
    with pytest.raises(ShapeError, match=r"layer 'p'.*needs spatial_scale \(required in the fork\)"):
        Net(parse_net_text(_psroi_net().replace("spatial_scale: 0.25 ", "")))


def test_fork_layers_follow_a_reshape_as_the_forks_reshape_does(tmp_path):
    """pycaffe's blob.reshape + net.reshape(): each layer sizes its top from the new bottom
    (Interp's sampling, Upsample's size), equal to a net written for that size."""
    import caffe

    body = '''
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "data" top: "dw"
  convolution_param { kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "up" type: "Interp" bottom: "dw" top: "up" interp_param { zoom_factor: 2 pad_beg: -1 } }
layer { name: "near" type: "Upsample" bottom: "up" top: "o" upsample_param { scale: 2 } }
'''
    head = 'name: "r"\nlayer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {} dim: 4 dim: {} dim: {} }} }} }}\n'
    (tmp_path / "small.prototxt").write_text(head.format(1, 7, 8) + body)
    (tmp_path / "large.prototxt").write_text(head.format(2, 5, 11) + body)
    net = caffe.Net(str(tmp_path / "small.prototxt"), caffe.TEST)
    net.save(str(tmp_path / "w.caffemodel"))
    fresh = caffe.Net(str(tmp_path / "large.prototxt"), str(tmp_path / "w.caffemodel"), caffe.TEST)
    x = np.random.default_rng(11).random((2, 4, 5, 11), F32)
    net.blobs["data"].reshape(2, 4, 5, 11)
    net.reshape()
    got = net.forward(data=x)["o"]
    assert got.shape == (2, 4, 2 * (2 * 4 - 1), 2 * (2 * 10 - 1))
    np.testing.assert_array_equal(got, fresh.forward(data=x)["o"])


# ---- SmoothL1Loss -------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True])
def test_smooth_l1_loss_equals_the_forks_formula_and_backward(weighted):
    """py-faster-rcnn's SmoothL1LossLayer with sigma 3 (its RPN's): loss and both diffs,
    bottom i's diff being sign_i * loss_weight / num * f'(x) * w_in * w_out."""
    names = ["pred", "target"] + (["w_in", "w_out"] if weighted else [])
    shapes = " ".join("shape { dim: 3 dim: 8 }" for _ in names)
    text = (f'name: "l1"\nlayer {{ name: "in" type: "Input" {" ".join(f"top: {n!r}" for n in names)} '
            f'input_param {{ {shapes} }} }}\n'.replace("'", '"')
            + f'layer {{ name: "loss" type: "SmoothL1Loss" {" ".join(f"bottom: {n!r}" for n in names)} '
              'top: "loss" loss_weight: 2 smooth_l1_loss_param { sigma: 3 } }'.replace("'", '"'))
    rng = np.random.default_rng(12)
    values = {n: rng.normal(scale=0.3, size=(3, 8)).astype(F32) for n in names}
    if weighted:
        values["w_in"] = (rng.random((3, 8)) > 0.5).astype(F32)
        values["w_out"] = rng.random((3, 8)).astype(F32)
    net = Net(parse_net_text(text), phase="TRAIN")
    ins = {n: torch.from_numpy(v).requires_grad_(n in ("pred", "target")) for n, v in values.items()}
    blobs = net(ins)
    net.objective(blobs).backward()
    w_in, w_out = (values.get("w_in", 1.0), values.get("w_out", 1.0))
    x = w_in * (values["pred"].astype(np.float64) - values["target"])
    small = np.abs(x) < 1 / 9
    errors = np.where(small, 0.5 * 9 * x * x, np.abs(x) - 0.5 / 9) * w_out
    assert float(blobs["loss"].detach()) == pytest.approx(errors.sum() / 3, rel=1e-6)
    slope = np.where(small, 9 * x, np.sign(x)) * w_in * w_out * 2 / 3
    np.testing.assert_allclose(ins["pred"].grad.numpy(), slope, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ins["target"].grad.numpy(), -slope, rtol=1e-5, atol=1e-7)


def test_smooth_l1_loss_checks_its_bottoms():
    text = ('name: "l1"\nlayer { name: "in" type: "Input" top: "a" top: "b" top: "c" '
            'input_param { shape { dim: 3 dim: 8 } shape { dim: 3 dim: 7 } shape { dim: 3 dim: 8 } } }\n'
            'layer { name: "loss" type: "SmoothL1Loss" bottom: "a" bottom: "BOTTOM" top: "loss" }')
    with pytest.raises(ShapeError, match=r"layer 'loss'.*bottom 1 has shape \[3, 7\]; bottom 0 has \[3, 8\]"):
        Net(parse_net_text(text.replace("BOTTOM", "b")))
    with pytest.raises(ShapeError, match=r"layer 'loss'.*takes 2 bottoms, or 4 with inside and outside weights"):
        Net(parse_net_text(text.replace('bottom: "BOTTOM"', 'bottom: "c" bottom: "a"')))


# ---- Proposal -----------------------------------------------------------------------------

SCORES_TOP = 'top: "scores" '


def _proposal_net(post=30, second_top=False):
    a = 9
    return (f'name: "rpn"\nlayer {{ name: "in" type: "Input" top: "cls" top: "bbox" top: "im_info" '
            f'input_param {{ shape {{ dim: 1 dim: {2 * a} dim: 5 dim: 6 }} shape {{ dim: 1 dim: {4 * a} '
            f'dim: 5 dim: 6 }} shape {{ dim: 1 dim: 3 }} }} }}\n'
            f'layer {{ name: "proposal" type: "Proposal" bottom: "cls" bottom: "bbox" bottom: "im_info" '
            f'top: "rois" {SCORES_TOP if second_top else ""}proposal_param {{ feat_stride: 16 '
            f'base_size: 16 min_size: 16 ratio: 0.5 ratio: 1 ratio: 2 scale: 8 scale: 16 scale: 32 '
            f'pre_nms_topn: 6000 post_nms_topn: {post} nms_thresh: 0.7 }} }}\n')


def py_faster_rcnn_proposals(cls, bbox, info, post):
    """proposal_layer.py's forward with generate_anchors.py, bbox_transform_inv, clip_boxes,
    _filter_boxes and py_cpu_nms, written out for one image and the default 9 anchors."""
    base = np.array([0, 0, 15, 15], np.float64)
    w, h = base[2] - base[0] + 1, base[3] - base[1] + 1
    cx, cy = base[0] + 0.5 * (w - 1), base[1] + 0.5 * (h - 1)
    anchors = []
    for ratio in (0.5, 1, 2):
        rw = np.round(np.sqrt(w * h / ratio))
        rh = np.round(rw * ratio)
        for scale in (8, 16, 32):
            sw, sh = rw * scale, rh * scale
            anchors.append([cx - 0.5 * (sw - 1), cy - 0.5 * (sh - 1), cx + 0.5 * (sw - 1), cy + 0.5 * (sh - 1)])
    anchors = np.array(anchors)
    height, width = cls.shape[2:]
    boxes, scores = [], []
    for y, x, k in np.ndindex(height, width, 9):
        ax1, ay1, ax2, ay2 = (anchors[k] + [16 * x, 16 * y, 16 * x, 16 * y]).astype(F32)
        dx, dy, dw, dh = bbox[0, 4 * k:4 * k + 4, y, x]
        aw, ah = ax2 - ax1 + F32(1), ay2 - ay1 + F32(1)
        px, py = dx * aw + (ax1 + F32(0.5) * aw), dy * ah + (ay1 + F32(0.5) * ah)
        pw, ph = np.exp(dw) * aw, np.exp(dh) * ah
        box = np.array([px - F32(0.5) * pw, py - F32(0.5) * ph, px + F32(0.5) * pw, py + F32(0.5) * ph], F32)
        box[0::2] = np.clip(box[0::2], 0, info[1] - 1)
        box[1::2] = np.clip(box[1::2], 0, info[0] - 1)
        if box[2] - box[0] + 1 >= 16 * info[2] and box[3] - box[1] + 1 >= 16 * info[2]:
            boxes.append(box)
            scores.append(cls[0, 9 + k, y, x])
    boxes, scores = np.array(boxes), np.array(scores)
    order = list(scores.argsort()[::-1][:6000])
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        def iou(j):
            iw = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]) + 1)
            ih = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]) + 1)
            area = lambda b: (b[2] - b[0] + 1) * (b[3] - b[1] + 1)  # noqa: E731
            return iw * ih / (area(boxes[i]) + area(boxes[j]) - iw * ih)
        order = [j for j in order if iou(j) <= 0.7]
    keep = keep[:post]
    return np.hstack([np.zeros((len(keep), 1), F32), boxes[keep]]), scores[keep]


def _rpn_inputs(seed=13):
    rng = np.random.default_rng(seed)
    return (rng.random((1, 18, 5, 6), F32), (rng.normal(size=(1, 36, 5, 6)) * 0.2).astype(F32),
            np.array([[80, 96, 1.0]], F32))


def test_proposal_equals_py_faster_rcnn_and_opencvs_boxes(tmp_path):
    """Our rows equal py-faster-rcnn's, written out above. OpenCV's importer finds the same
    boxes in the same order, but skips py-faster-rcnn's min_size filter and pads its top to
    post_nms_topn rows with empty boxes: every row of OpenCV's that we lack is one of those."""
    cls, bbox, info = _rpn_inputs()
    net = Net(parse_net_text(_proposal_net(second_top=True)))
    out = net({"cls": torch.from_numpy(cls), "bbox": torch.from_numpy(bbox), "im_info": torch.from_numpy(info)})
    rois, scores = out["rois"].numpy(), out["scores"].numpy()
    expected, expected_scores = py_faster_rcnn_proposals(cls, bbox, info[0], 30)
    assert 0 < len(rois) < 30
    np.testing.assert_allclose(rois, expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(scores.ravel(), expected_scores)
    theirs = _opencv(_proposal_net(), {"cls": cls, "bbox": bbox, "im_info": info}, tmp_path)
    matched = [int(np.abs(theirs[:, 1:] - row[1:]).max(1).argmin()) for row in rois]
    assert matched == sorted(matched)
    assert all(np.abs(theirs[m, 1:] - row[1:]).max() < 1e-4 for m, row in zip(matched, rois))
    for k in set(range(len(theirs))) - set(matched):
        x1, y1, x2, y2 = theirs[k, 1:]
        assert min(x2 - x1 + 1, y2 - y1 + 1) < 16, theirs[k]


def test_proposal_checks_its_bottoms():
    with pytest.raises(ShapeError, match=r"layer 'proposal'.*scores \(bottom 0\) must be \(1, 2 x 9 anchors"):
        Net(parse_net_text(_proposal_net().replace("shape { dim: 1 dim: 18", "shape { dim: 2 dim: 18")))


PY_FASTER_RCNN_PROPOSAL = '''layer { name: "proposal" type: "Python" bottom: "cls" bottom: "bbox" bottom: "im_info"
  top: "rois" python_param { module: "rpn.proposal_layer" layer: "ProposalLayer"
    param_str: "'feat_stride': 16" } }
'''


def _py_faster_rcnn_net():
    inputs = _proposal_net().split('layer { name: "proposal"')[0]
    return inputs + PY_FASTER_RCNN_PROPOSAL


def test_py_faster_rcnns_python_proposal_layer_runs_as_the_built_in_one(tmp_path):
    """Without py-faster-rcnn on the path its rpn.proposal_layer runs as Proposal with the
    TEST settings (6000 / 300 boxes), saying so; pycaffe shows it as the Python layer it is."""
    import caffe

    cls, bbox, info = _rpn_inputs()
    inputs = {"cls": torch.from_numpy(cls), "bbox": torch.from_numpy(bbox), "im_info": torch.from_numpy(info)}
    with pytest.warns(UserWarning, match=r"layer 'proposal': Python module rpn.proposal_layer is not "
                                         r"importable; the built-in Proposal computes it .*6000/300"):
        net = Net(parse_net_text(_py_faster_rcnn_net()))
    built_in = Net(parse_net_text(_proposal_net(post=300)))
    np.testing.assert_array_equal(net(inputs)["rois"].numpy(), built_in(inputs)["rois"].numpy())
    with pytest.warns(UserWarning, match="2000 boxes|12000/2000"):
        assert Net(parse_net_text(_py_faster_rcnn_net()), phase="TRAIN").blob_shapes["rois"] == (2000, 5)
    path = tmp_path / "rpn.prototxt"
    path.write_text(_py_faster_rcnn_net())
    with pytest.warns(UserWarning):
        view = caffe.Net(str(path), caffe.TEST)
    assert view.layer_dict["proposal"].type == "Python"
    rois = view.forward(cls=cls, bbox=bbox, im_info=info)["rois"]
    np.testing.assert_array_equal(rois, built_in(inputs)["rois"].numpy())
    with pytest.raises(ValueError, match=r"layer 'proposal' \(Python, rpn.proposal_layer\): param_str "
                                         r"'stride: 16' is not py-faster-rcnn's"):
        Net(parse_net_text(_py_faster_rcnn_net().replace("'feat_stride': 16", "stride: 16")))


def test_an_importable_rpn_proposal_layer_runs_as_the_users_code(tmp_path, monkeypatch):
    package = tmp_path / "rpn"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "proposal_layer.py").write_text(
        "import caffe\n"
        "class ProposalLayer(caffe.Layer):\n"
        "    def setup(self, bottom, top):\n        top[0].reshape(1, 5)\n"
        "    def reshape(self, bottom, top):\n        pass\n"
        "    def forward(self, bottom, top):\n        top[0].data[...] = 7\n"
        "    def backward(self, top, propagate_down, bottom):\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        cls, bbox, info = _rpn_inputs()
        net = Net(parse_net_text(_py_faster_rcnn_net()))
        out = net({"cls": torch.from_numpy(cls), "bbox": torch.from_numpy(bbox), "im_info": torch.from_numpy(info)})
        np.testing.assert_array_equal(out["rois"].numpy(), np.full((1, 5), 7, F32))
    finally:   # the imported package would outlive the path: later nets in this process would find it
        for name in [m for m in sys.modules if m == "rpn" or m.startswith("rpn.")]:
            del sys.modules[name]


def test_region_and_mask_values_outside_the_blob_are_blob_value_errors():
    """A region's batch index or a pooling mask's position past the blob is refused with
    the project's BlobValueError, naming the layer and the values (the forks CHECK)."""
    from runner.layers.common import BlobValueError

    text = _net('layer { name: "r" type: "ROIPooling" bottom: "data" bottom: "rois" top: "o" '
                'roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 1 } }', (2, 3, 4, 4), (1, 5))
    rois = np.array([[-1, 0, 0, 2, 2]], F32)
    with pytest.raises(BlobValueError, match=r"layer 'r' \(ROIPooling\): a region's batch index is outside 0..1: \[-1\]"):
        _ours(text, {"data": np.zeros((2, 3, 4, 4), F32), "rois": rois})
    text = _net('layer { name: "u" type: "Upsample" bottom: "data" bottom: "rois" top: "o" '
                'upsample_param { scale: 2 } }', (1, 1, 2, 2), (1, 1, 2, 2))
    with pytest.raises(BlobValueError, match=r"layer 'u' \(Upsample\): mask index 0..99 outside the 4 x 4 top"):
        _ours(text, {"data": np.ones((1, 1, 2, 2), F32), "rois": np.array([[[[0, 1], [2, 99]]]], F32)})
