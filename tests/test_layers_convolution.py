"""Convolution and Deconvolution equal direct numpy sums (Caffe's im2col/col2im math):
group, dilation, per-axis kernel/stride/pad, bias_term, channel axis, N-d, shared
weights over several bottoms; gradients checked in float64."""
import numpy as np
import pytest
import torch

from layer_helpers import layer_from_text

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def conv2d_reference(x, w, b, stride, pad, dil, group):
    """out[n, o, i, j] = sum over the o's group channels and kernel taps of x * w (+ b)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dil
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((n, o, oh, ow))
    og = o // group
    for oc in range(o):
        g = oc // og
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, g * cg:(g + 1) * cg,
                           i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw]
                out[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3))
    return out if b is None else out + b[None, :, None, None]


def deconv2d_reference(x, w, b, stride, pad, dil, group):
    """Scatter every input pixel times the kernel into the output, then crop the pad."""
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dil
    cg = c // group
    full = np.zeros((n, og * group, sh * (h - 1) + dh * (kh - 1) + 1, sw * (wd - 1) + dw * (kw - 1) + 1))
    for g in range(group):
        xs = x[:, g * cg:(g + 1) * cg]
        for a in range(kh):
            for k in range(kw):
                contrib = np.einsum("nchw,co->nohw", xs, w[g * cg:(g + 1) * cg, :, a, k])
                full[:, g * og:(g + 1) * og, a * dh:a * dh + sh * (h - 1) + 1:sh,
                     k * dw:k * dw + sw * (wd - 1) + 1:sw] += contrib
    out = full[:, :, ph:full.shape[2] - ph, pw:full.shape[3] - pw]
    return out if b is None else out + b[None, :, None, None]


def make(kind, params, shapes, bottoms=1):
    names = "".join(f' bottom: "b{i}" top: "t{i}"' for i in range(bottoms))
    layer = layer_from_text(f'name: "c" type: "{kind}"{names} convolution_param {{ {params} }}', shapes)
    layer.double()
    with torch.no_grad():
        for blob in layer.blobs:
            blob.copy_(torch.randn(blob.shape, dtype=torch.float64))
    return layer


# (convolution_param, stride, pad, dilation, group, input shape)
CASES = [
    ("num_output: 4 kernel_size: 3", (1, 1), (0, 0), (1, 1), 1, (2, 3, 6, 7)),
    ("num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2", (2, 2), (1, 1), (1, 1), 2, (2, 4, 7, 6)),
    ("num_output: 6 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 0 group: 3",
     (2, 1), (2, 0), (1, 1), 3, (1, 3, 6, 5)),
    ("num_output: 2 kernel_size: 3 dilation: 2 pad: 2 bias_term: false", (1, 1), (2, 2), (2, 2), 1, (2, 2, 7, 7)),
    ("num_output: 2 kernel_size: 2 kernel_size: 3 stride: 2 stride: 1 pad: 1 pad: 0",
     (2, 1), (1, 0), (1, 1), 1, (1, 2, 5, 6)),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_convolution_matches_direct_sum(case):
    text, stride, pad, dil, group, shape = case
    layer = make("Convolution", text, [shape])
    x = torch.randn(shape, dtype=torch.float64)
    (y,) = layer(x)
    w = layer.blobs[0].detach().numpy()
    b = layer.blobs[1].detach().numpy() if layer.bias_term else None
    expected = conv2d_reference(x.numpy(), w, b, stride, pad, dil, group)
    assert tuple(y.shape) == expected.shape == layer.top_shapes[0]
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_deconvolution_matches_scatter_sum(case):
    text, stride, pad, dil, group, shape = case
    layer = make("Deconvolution", text, [shape])
    x = torch.randn(shape, dtype=torch.float64)
    (y,) = layer(x)
    w = layer.blobs[0].detach().numpy()
    assert w.shape[0] == shape[1]  # Caffe's deconv weight: (C_in, num_output / group, kh, kw)
    b = layer.blobs[1].detach().numpy() if layer.bias_term else None
    expected = deconv2d_reference(x.numpy(), w, b, stride, pad, dil, group)
    assert tuple(y.shape) == expected.shape == layer.top_shapes[0]
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-10, atol=1e-10)


def test_channel_axis_other_than_one():
    layer = make("Convolution", "num_output: 3 kernel_size: 2 axis: 2", [(2, 3, 4, 5, 5)])
    x = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64)
    (y,) = layer(x)
    assert tuple(y.shape) == layer.top_shapes[0] == (2, 3, 3, 4, 4)
    w, b = (blob.detach().numpy() for blob in layer.blobs)
    flat = conv2d_reference(x.reshape(6, 4, 5, 5).numpy(), w, b, (1, 1), (0, 0), (1, 1), 1)
    np.testing.assert_allclose(y.detach().numpy(), flat.reshape(2, 3, 3, 4, 4), rtol=1e-10, atol=1e-10)


def test_three_spatial_axes_sum_of_planar_convolutions():
    layer = make("Convolution", "num_output: 2 kernel_size: 2 kernel_size: 3 kernel_size: 3 pad: 0 "
                                "pad: 1 pad: 1", [(1, 2, 4, 5, 5)])
    x = torch.randn(1, 2, 4, 5, 5, dtype=torch.float64)
    (y,) = layer(x)
    w, b = (blob.detach().numpy() for blob in layer.blobs)
    assert tuple(y.shape) == layer.top_shapes[0] == (1, 2, 3, 5, 5)
    for z in range(3):
        planes = sum(conv2d_reference(x[:, :, z + t].numpy(), w[:, :, t], None, (1, 1), (1, 1), (1, 1), 1)
                     for t in range(2))
        np.testing.assert_allclose(y[:, :, z].detach().numpy(), planes + b[None, :, None, None],
                                   rtol=1e-10, atol=1e-10)


def test_several_bottoms_share_the_weights():
    layer = make("Convolution", "num_output: 2 kernel_size: 3", [(3, 2, 5, 4)] * 2, bottoms=2)
    a, b = torch.randn(2, 3, 2, 5, 4, dtype=torch.float64)
    ya, yb = layer(a, b)
    assert [tuple(ya.shape), tuple(yb.shape)] == layer.top_shapes == [(3, 2, 3, 2)] * 2
    assert torch.allclose(layer(b)[0], yb)
    with pytest.raises(ValueError, match="same shape"):
        make("Convolution", "num_output: 2 kernel_size: 3", [(1, 2, 5, 5), (1, 2, 6, 5)], bottoms=2)


def test_default_and_given_fillers():
    plain = layer_from_text('name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 }',
                            [(1, 1, 2, 2)])
    assert [(f.type, f.value) for f in plain.blob_fillers()] == [("constant", 0.0), ("constant", 0.0)]
    given = layer_from_text('name: "c" type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 2 '
                            'bias_term: false weight_filler { type: "bilinear" } }', [(1, 2, 2, 2)])
    assert [f.type for f in given.blob_fillers()] == ["bilinear"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_convolution_gradients_float64(kind, device):
    layer = make(kind, "num_output: 4 kernel_size: 2 stride: 2 pad: 1 dilation: 1 group: 2",
                 [(1, 2, 4, 3)]).to(device)
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    weight, bias = (blob.detach().clone().requires_grad_() for blob in layer.blobs)

    def run(x, weight, bias):
        return torch.func.functional_call(layer, {"blobs.0": weight, "blobs.1": bias}, (x,))[0]

    assert torch.autograd.gradcheck(run, (x, weight, bias))
