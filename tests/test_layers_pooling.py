"""Pooling equals a numpy transcription of Caffe's pooling_layer.cpp loops: output size
(ceil/floor, last-window clip when any pad), AVE divisor counting padding, MAX mask."""
import math

import numpy as np
import pytest
import torch

from runner.layers.common import FLT_MAX
from runner.layers.vision import _caffe_pool

from layer_helpers import layer_from_text

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def caffe_pool_reference(x, kernel, stride, pad, method="MAX", ceil=True):
    """Caffe's PoolingLayer::Reshape + Forward_cpu, loop for loop (x: N, C, H, W)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    rnd = math.ceil if ceil else math.floor
    oh = int(rnd((h + 2 * ph - kh) / sh)) + 1
    ow = int(rnd((w + 2 * pw - kw) / sw)) + 1
    if ph or pw:
        if (oh - 1) * sh >= h + ph:
            oh -= 1
        if (ow - 1) * sw >= w + pw:
            ow -= 1
    top = np.zeros((n, c, oh, ow))
    mask = np.full((n, c, oh, ow), -1.0)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            if method == "MAX":
                he, we = min(hs + kh, h), min(ws + kw, w)
                hs, ws = max(hs, 0), max(ws, 0)
                best = np.full((n, c), -FLT_MAX)
                for y in range(hs, he):
                    for z in range(ws, we):
                        better = x[:, :, y, z] > best
                        best = np.where(better, x[:, :, y, z], best)
                        mask[:, :, i, j] = np.where(better, y * w + z, mask[:, :, i, j])
                top[:, :, i, j] = best
            else:
                he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                with np.errstate(invalid="ignore"):
                    top[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / size
    return top, mask


def pool_layer(params: str, shape, tops=1):
    extra = "".join(f' top: "t{i}"' for i in range(tops))
    return layer_from_text(f'name: "pool" type: "Pooling"{extra} pooling_param {{ {params} }}',
                           [shape])


# (pooling_param text, kernel, stride, pad, ceil, input H, W)
CASES = [
    ("kernel_size: 3 stride: 2", (3, 3), (2, 2), (0, 0), True, 7, 7),
    ("kernel_size: 3 stride: 2", (3, 3), (2, 2), (0, 0), True, 6, 8),       # ceil > floor
    ("kernel_size: 3 stride: 2 round_mode: FLOOR", (3, 3), (2, 2), (0, 0), False, 6, 8),
    ("kernel_size: 3 stride: 2 pad: 1", (3, 3), (2, 2), (1, 1), True, 6, 7),
    ("kernel_size: 2 stride: 2 pad: 1", (2, 2), (2, 2), (1, 1), True, 5, 5),  # clipped
    ("kernel_size: 3 stride: 3 pad: 2", (3, 3), (3, 3), (2, 2), True, 7, 8),  # pad > k/2
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 1",
     (3, 2), (2, 1), (0, 1), True, 6, 5),                                      # any-pad clip
    ("kernel_size: 4 stride: 3 pad: 1 round_mode: FLOOR", (4, 4), (3, 3), (1, 1), False, 9, 10),
    ("kernel_size: 5 stride: 1 pad: 2", (5, 5), (1, 1), (2, 2), True, 5, 6),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_pooling_matches_caffe_loops(case, method):
    text, kernel, stride, pad, ceil, h, w = case
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    layer = pool_layer(f"pool: {method} {text}", x.shape).double()
    expected, _ = caffe_pool_reference(x.numpy(), kernel, stride, pad, method, ceil)
    (top,) = layer(x)
    assert tuple(top.shape) == expected.shape == layer.top_shapes[0]
    np.testing.assert_allclose(top.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_no_grad_cpu_pooling_through_channels_last_is_caffe_and_the_nchw_path(case, method):
    """Without autograd, wide CPU inputs pool through channels_last: Caffe's values and
    mask (ties included: integer inputs), bit for bit what the NCHW kernels give."""
    text, kernel, stride, pad, ceil, h, w = case
    x = torch.randint(-3, 4, (2, 16, h, w)).float()
    tops = 2 if method == "MAX" else 1
    layer = pool_layer(f"pool: {method} {text}", x.shape, tops=tops)
    with torch.no_grad():
        fast = layer(x)
    nchw = layer(x.requires_grad_())
    x.requires_grad_(False)
    ref_top, ref_mask = caffe_pool_reference(x.double().numpy(), kernel, stride, pad, method, ceil)
    np.testing.assert_allclose(fast[0].numpy(), ref_top, rtol=1e-6, atol=1e-6)
    if method == "MAX":
        np.testing.assert_array_equal(fast[1].numpy(), ref_mask)
    for a, b in zip(fast, nchw):
        assert a.is_contiguous() and torch.equal(a, b.detach())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_max_pooling_with_a_gradient_through_channels_last_is_caffe_and_the_nchw_path(case):
    """With autograd, wide CPU MAX pooling runs forward and backward in channels_last where
    torch's kernel takes the geometry as it is: the top and the bottom gradient are bit
    for bit the NCHW kernels', and Caffe's (the top's diff added at the mask, ties
    included)."""
    text, kernel, stride, pad, ceil, h, w = case
    x = torch.randint(-3, 4, (2, 16, h, w)).float().requires_grad_()
    layer = pool_layer(f"pool: MAX {text}", x.shape)
    (top,) = layer(x)
    plan = layer._plan(h, w)
    assert ("MaxPoolThroughChannelsLast" in type(top.grad_fn).__name__) == plan.native
    grad = torch.randn(top.shape, generator=torch.Generator().manual_seed(0))
    top.backward(grad)
    x_nchw = x.detach().clone().requires_grad_()
    (top_nchw,) = _caffe_pool(x_nchw, plan, is_max=True, with_mask=False)
    top_nchw.backward(grad)
    assert top.is_contiguous() and torch.equal(top, top_nchw)
    assert x.grad.is_contiguous() and torch.equal(x.grad, x_nchw.grad)
    _, mask = caffe_pool_reference(x.detach().double().numpy(), kernel, stride, pad, "MAX", ceil)
    caffe_grad = np.zeros((2, 16, h * w))
    for n in range(2):
        for c in range(16):
            np.add.at(caffe_grad[n, c], mask[n, c].astype(int).ravel(),
                      grad[n, c].double().numpy().ravel())
    np.testing.assert_allclose(x.grad.reshape(2, 16, -1).numpy(), caffe_grad, rtol=1e-6, atol=1e-6)


def test_pool_output_sizes_by_hand():
    # 5 + 2 - 2 = 5, ceil(5/2) + 1 = 4, but window 3 would start at 6 >= 5 + 1: clipped to 3
    assert pool_layer("pool: MAX kernel_size: 2 stride: 2 pad: 1", (1, 1, 5, 5)).top_shapes[0] == (1, 1, 3, 3)
    # ceil((6 - 3) / 2) + 1 = 3 windows; FLOOR gives 2
    assert pool_layer("pool: MAX kernel_size: 3 stride: 2", (1, 1, 6, 6)).top_shapes[0] == (1, 1, 3, 3)
    assert pool_layer("pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR",
                      (1, 1, 6, 6)).top_shapes[0] == (1, 1, 2, 2)
    # pad only on w still clips h: ceil((5 - 1) / 3) + 1 = 3, window 2 starts at 6 >= 5
    assert pool_layer("pool: MAX kernel_h: 1 kernel_w: 2 stride: 3 pad_h: 0 pad_w: 1",
                      (1, 1, 5, 5)).top_shapes[0] == (1, 1, 2, 2)


def test_ave_divisor_counts_padding_and_clips_to_padded_input():
    x = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4)
    (top,) = pool_layer("pool: AVE kernel_size: 3 stride: 2 pad: 1", x.shape).double()(x)
    # windows start at -1, 1, 3; sizes clipped to [.., 5): 3, 3, 2 per axis
    assert top.shape == (1, 1, 3, 3)
    assert top[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 4 + 5) / 9)
    assert top[0, 0, 0, 2].item() == pytest.approx((3 + 7) / 6)
    assert top[0, 0, 2, 2].item() == pytest.approx(15 / 4)
    assert top[0, 0, 1, 1].item() == pytest.approx(sum([5, 6, 7, 9, 10, 11, 13, 14, 15]) / 9)


def test_window_past_the_input_gives_caffe_values():
    # pad 0, k 1, s 2 on 4 rows: ceil(3/2) + 1 = 3 windows, the last starts at row 4
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    (top,) = pool_layer("pool: MAX kernel_size: 1 stride: 2", x.shape).double()(x)
    assert top.shape == (1, 2, 3, 3)
    assert torch.all(top[:, :, 2, :] == -FLT_MAX)
    assert torch.equal(top[:, :, :2, :2], x[:, :, ::2, ::2])


def test_global_pooling():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    (mx,) = pool_layer("pool: MAX global_pooling: true", x.shape).double()(x)
    (av,) = pool_layer("pool: AVE global_pooling: true", x.shape).double()(x)
    assert torch.allclose(mx[..., 0, 0], x.amax(dim=(2, 3)))
    assert torch.allclose(av[..., 0, 0], x.mean(dim=(2, 3)))


@pytest.mark.parametrize("text", ["kernel_size: 3 stride: 2", "kernel_size: 2 stride: 2 pad: 1",
                                  "kernel_size: 3 stride: 3 pad: 2"])
def test_max_mask_top_is_caffe_index(text):
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64)
    layer = pool_layer(f"pool: MAX {text}", x.shape, tops=2).double()
    p = layer.lp.pooling_param
    k, s, q = p.kernel_size, p.stride, p.pad
    top, mask = layer(x)
    ref_top, ref_mask = caffe_pool_reference(x.numpy(), (k, k), (s, s), (q, q), "MAX")
    np.testing.assert_allclose(top.numpy(), ref_top)
    np.testing.assert_array_equal(mask.numpy(), ref_mask)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("text", ["kernel_size: 3 stride: 2 pad: 1", "kernel_size: 3 stride: 3 pad: 2",
                                  "kernel_size: 2 stride: 2 round_mode: FLOOR"])
def test_pooling_gradient_float64(text, method, device):
    x = torch.randn(1, 1, 5, 6, dtype=torch.float64, device=device, requires_grad=True)
    layer = pool_layer(f"pool: {method} {text}", x.shape).double().to(device)
    assert torch.autograd.gradcheck(lambda t: layer(t)[0], (x,))


def test_pooling_float32_matches_float64():
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    layer = pool_layer("pool: AVE kernel_size: 3 stride: 3 pad: 2", x.shape)
    (y32,) = layer(x.float())
    (y64,) = layer.double()(x)
    assert y32.dtype == torch.float32
    assert torch.allclose(y32.double(), y64, atol=1e-6)


def test_stochastic_and_ave_mask_are_refused():
    with pytest.raises(ValueError, match="STOCHASTIC"):
        pool_layer("pool: STOCHASTIC kernel_size: 2", (1, 1, 4, 4))
    with pytest.raises(ValueError, match="mask"):
        pool_layer("pool: AVE kernel_size: 2", (1, 1, 4, 4), tops=2)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("height,size", [(1, (5, 6)), (3, (13, 11)), (2, (8, 8))])
def test_spp_levels_are_caffe_poolings_flattened_and_concatenated(method, height, size):
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    layer = layer_from_text(f'name: "spp" type: "SPP" spp_param {{ pyramid_height: {height} pool: {method} }}',
                            [x.shape]).double()
    (top,) = layer(x)
    assert tuple(top.shape) == layer.top_shapes[0]
    levels = []
    for level in range(height):
        bins = 2 ** level
        kernel = [-(-n // bins) for n in size]
        pad = [(k * bins - n + 1) // 2 for k, n in zip(kernel, size)]
        pooled, _ = caffe_pool_reference(x.detach().numpy(), kernel, kernel, pad, method)
        assert pooled.shape[2:] == (bins, bins)
        levels.append(pooled)
    expected = levels[0] if height == 1 else np.concatenate([p.reshape(2, -1) for p in levels], axis=1)
    # atol: an average near 0 of unit-scale float64 values differs by summation order (~1e-17)
    np.testing.assert_allclose(top.detach().numpy(), expected, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: layer(t)[0], (x,), fast_mode=True)
