"""Eltwise (coeffs, PROD, MAX and Caffe's gradient routing on ties), Concat, Slice points,
Split, Flatten, Reshape 0/-1, Crop offsets, Tile, Reduction, Silence."""
import numpy as np
import pytest
import torch

from layer_helpers import layer_from_text


def make(text, shapes, tops=1):
    names = "".join(f' top: "t{i}"' for i in range(tops))
    return layer_from_text(f'name: "p"{names} {text}', shapes).double()


def test_eltwise_sum_with_coefficients_and_gradients():
    a, b, c = (torch.randn(2, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    layer = make('type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }', [a.shape] * 3)
    (y,) = layer(a, b, c)
    assert torch.allclose(y, a - 0.5 * b + 2 * c)
    y.sum().backward()
    assert [t.grad.unique().item() for t in (a, b, c)] == [1.0, -0.5, 2.0]


def test_eltwise_prod_and_gradcheck():
    a, b = (torch.randn(2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    layer = make('type: "Eltwise" eltwise_param { operation: PROD }', [a.shape] * 2)
    assert torch.allclose(layer(a, b)[0], a * b)
    assert torch.autograd.gradcheck(lambda x, y: layer(x, y)[0], (a, b))


def test_eltwise_max_routes_gradient_as_caffes_mask():
    a = torch.tensor([1.0, 5.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([1.0, 4.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([0.0, 5.0, 2.5, 3.0], dtype=torch.float64, requires_grad=True)
    (y,) = make('type: "Eltwise" eltwise_param { operation: MAX }', [a.shape] * 3)(a, b, c)
    assert y.tolist() == [1.0, 5.0, 2.5, 3.0]
    y.sum().backward()
    # a tie of bottoms 0 and 1 goes to 1; a later bottom wins only when strictly greater
    assert a.grad.tolist() == [0, 1, 0, 0]
    assert b.grad.tolist() == [1, 0, 0, 1]
    assert c.grad.tolist() == [0, 0, 1, 0]


def test_eltwise_rejects_bad_coefficients():
    with pytest.raises(ValueError, match="one coeff per bottom"):
        make('type: "Eltwise" eltwise_param { coeff: 1 }', [(2,), (2,)])
    with pytest.raises(ValueError, match="only for SUM"):
        make('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 2 }', [(2,), (2,)])


def test_concat_axis_and_legacy_concat_dim():
    a, b = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 1, 4, dtype=torch.float64)
    assert torch.equal(make('type: "Concat"', [a.shape, b.shape])(a, b)[0], torch.cat([a, b], 1))
    c = torch.randn(2, 3, 2, dtype=torch.float64)
    layer = make('type: "Concat" concat_param { concat_dim: 2 }', [a.shape, c.shape])
    assert layer.top_shapes == [(2, 3, 6)] and torch.equal(layer(a, c)[0], torch.cat([a, c], 2))


def test_slice_points_and_equal_split():
    x = torch.arange(2 * 7 * 2, dtype=torch.float64).reshape(2, 7, 2)
    tops = make('type: "Slice" slice_param { slice_point: 1 slice_point: 4 }', [x.shape], tops=3)(x)
    assert [t.shape[1] for t in tops] == [1, 3, 3]
    assert torch.equal(tops[1], x[:, 1:4])
    halves = make('type: "Slice" slice_param { axis: -1 }', [x.shape], tops=2)(x)
    assert torch.equal(halves[0], x[..., :1]) and torch.equal(halves[1], x[..., 1:])


def test_split_gradients_add_up():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    a, b = make('type: "Split"', [x.shape], tops=2)(x)
    (2 * a + 3 * b).sum().backward()
    assert torch.all(x.grad == 5)


def test_flatten_and_reshape_rules():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    assert make('type: "Flatten"', [x.shape])(x)[0].shape == (2, 60)
    assert make('type: "Flatten" flatten_param { axis: 1 end_axis: 2 }', [x.shape])(x)[0].shape == (2, 12, 5)
    layer = make('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 10 } }', [x.shape])
    (y,) = layer(x)
    assert y.shape == (2, 6, 10) == layer.top_shapes[0]
    assert torch.equal(y.flatten(), x.flatten())
    part = make('type: "Reshape" reshape_param { axis: 1 num_axes: 2 shape { dim: -1 } }', [x.shape])
    assert part(x)[0].shape == (2, 12, 5)
    batch = torch.randn(7, 3, 4, 5, dtype=torch.float64)  # a different batch size reshapes too
    assert layer(batch)[0].shape == (7, 6, 10)


def test_crop_offsets():
    x = torch.arange(2 * 3 * 6 * 7, dtype=torch.float64).reshape(2, 3, 6, 7)
    ref = torch.zeros(1, 1, 3, 4, dtype=torch.float64)
    (one,) = make('type: "Crop" crop_param { offset: 2 }', [x.shape, ref.shape])(x, ref)
    assert torch.equal(one, x[:, :, 2:5, 2:6])
    (each,) = make('type: "Crop" crop_param { offset: 1 offset: 3 }', [x.shape, ref.shape])(x, ref)
    assert torch.equal(each, x[:, :, 1:4, 3:7])
    ref1 = torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    (deep,) = make('type: "Crop" crop_param { axis: 1 offset: 1 offset: 0 offset: 2 }', [x.shape, ref1.shape])(x, ref1)
    assert torch.equal(deep, x[:, 1:3, 0:3, 2:6])
    with pytest.raises(ValueError, match="exceeds"):
        make('type: "Crop" crop_param { offset: 4 }', [x.shape, ref.shape])
    xg = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    cropper = make('type: "Crop" crop_param { offset: 1 }', [xg.shape, (1, 1, 2, 2)])
    cropper(xg, torch.zeros(1, 1, 2, 2))[0].sum().backward()
    assert xg.grad.sum().item() == 4 and xg.grad[0, 0, 1:3, 1:3].sum().item() == 4


def test_tile_repeats_blocks_from_axis():
    x = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    (y,) = make('type: "Tile" tile_param { axis: 1 tiles: 2 }', [x.shape])(x)
    assert y.tolist() == [[0, 1, 2, 0, 1, 2], [3, 4, 5, 3, 4, 5]]
    (z,) = make('type: "Tile" tile_param { axis: 0 tiles: 2 }', [x.shape])(x)
    assert torch.equal(z, torch.cat([x, x]))


@pytest.mark.parametrize("op,formula", [("SUM", lambda f: f.sum(1)), ("ASUM", lambda f: np.abs(f).sum(1)),
                                        ("SUMSQ", lambda f: (f * f).sum(1)), ("MEAN", lambda f: f.mean(1))])
def test_reduction(op, formula):
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    layer = make(f'type: "Reduction" reduction_param {{ operation: {op} axis: 1 coeff: 2 }}', [x.shape])
    (y,) = layer(x)
    assert tuple(y.shape) == layer.top_shapes[0] == (2,)
    np.testing.assert_allclose(y.detach().numpy(), 2 * formula(x.detach().numpy().reshape(2, -1)))
    assert torch.autograd.gradcheck(lambda t: layer(t)[0], (x,))
    (whole,) = make(f'type: "Reduction" reduction_param {{ operation: {op} }}', [x.shape])(x)
    assert whole.dim() == 0


def test_silence_has_no_tops():
    layer = layer_from_text('name: "s" type: "Silence" bottom: "a"', [(2, 3)])
    assert layer(torch.zeros(2, 3)) == ()


@pytest.mark.parametrize("text,shapes,tops", [
    ('type: "Concat" concat_param { axis: 2 }', [(1, 2, 3), (1, 2, 1)], 1),
    ('type: "Slice" slice_param { axis: 1 slice_point: 1 }', [(2, 3, 2)], 2),
    ('type: "Tile" tile_param { axis: 1 tiles: 3 }', [(2, 2, 2)], 1),
    ('type: "Flatten"', [(2, 2, 2)], 1),
    ('type: "Reshape" reshape_param { shape { dim: -1 dim: 2 } }', [(2, 2, 2)], 1),
    ('type: "Eltwise" eltwise_param { operation: MAX }', [(2, 3), (2, 3), (2, 3)], 1),
])
def test_plumbing_gradients_float64(text, shapes, tops):
    layer = make(text, shapes, tops=tops)
    xs = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    assert torch.autograd.gradcheck(lambda *t: layer(*t), tuple(xs))
