"""InnerProduct (axis, transpose), Scale and Bias (blob or second bottom, axis, num_axes,
bias_term, default fillers), Embed; gradients checked in float64."""
import numpy as np
import pytest
import torch

from layer_helpers import layer_from_text

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make(text, shapes, seed_blobs=True):
    layer = layer_from_text(f'name: "a" {text}', shapes).double()
    if seed_blobs:
        with torch.no_grad():
            for blob in layer.blobs:
                blob.copy_(torch.randn(blob.shape, dtype=torch.float64))
    return layer


def gradcheck_with_blobs(layer, bottoms):
    blobs = [b.detach().clone().requires_grad_() for b in layer.blobs]
    n = len(bottoms)

    def run(*args):
        params = {f"blobs.{i}": b for i, b in enumerate(args[n:])}
        return torch.func.functional_call(layer, params, tuple(args[:n]))[0]

    return torch.autograd.gradcheck(run, (*bottoms, *blobs))


def test_inner_product_axis_and_transpose():
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    layer = make('type: "InnerProduct" inner_product_param { num_output: 5 }', [x.shape])
    w, b = (blob.detach().numpy() for blob in layer.blobs)
    assert w.shape == (5, 12)
    np.testing.assert_allclose(layer(x)[0].detach().numpy(), x.reshape(2, 12).numpy() @ w.T + b)
    at2 = make('type: "InnerProduct" inner_product_param { num_output: 3 axis: 2 transpose: true bias_term: false }',
               [x.shape])
    (y,) = at2(x)
    assert at2.blobs[0].shape == (4, 3) and tuple(y.shape) == at2.top_shapes[0] == (2, 3, 3)
    np.testing.assert_allclose(y.detach().numpy(), x.reshape(2, 3, 4).numpy() @ at2.blobs[0].detach().numpy())


@pytest.mark.parametrize("device", DEVICES)
def test_inner_product_gradient(device):
    layer = make('type: "InnerProduct" inner_product_param { num_output: 3 transpose: true }', [(2, 2, 2)]).to(device)
    x = torch.randn(2, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    assert gradcheck_with_blobs(layer, [x])


def test_scale_blob_axis_num_axes_and_bias():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    layer = make('type: "Scale" scale_param { axis: 1 num_axes: 2 bias_term: true }', [x.shape])
    s, b = (blob.detach() for blob in layer.blobs)
    assert s.shape == b.shape == (3, 4)
    assert torch.allclose(layer(x)[0], x * s[:, :, None] + b[:, :, None])
    whole = make('type: "Scale" scale_param { axis: 0 num_axes: -1 }', [x.shape])
    assert torch.allclose(whole(x)[0], x * whole.blobs[0].detach())
    scalar = make('type: "Scale" scale_param { num_axes: 0 }', [x.shape])
    assert scalar.blobs[0].shape == () and torch.allclose(scalar(x)[0], x * scalar.blobs[0].detach())
    small = make('type: "Scale" scale_param { axis: -1 bias_term: true }', [(2, 2, 3)])
    assert gradcheck_with_blobs(small, [torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)])


def test_scale_from_second_bottom_with_bias():
    x, s = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    layer = make('type: "Scale" scale_param { bias_term: true }', [x.shape, s.shape])
    assert [tuple(b.shape) for b in layer.blobs] == [(3, 4)]
    assert torch.allclose(layer(x, s)[0], x * s + layer.blobs[0].detach())
    xg, sg = x.clone().requires_grad_(), s.clone().requires_grad_()
    assert gradcheck_with_blobs(layer, [xg, sg])
    with pytest.raises(ValueError, match="does not match"):
        make('type: "Scale"', [x.shape, (4, 4)])


def test_scale_and_bias_default_fillers():
    scale = make('type: "Scale" scale_param { bias_term: true }', [(2, 3)], seed_blobs=False)
    assert [(f.type, f.value) for f in scale.blob_fillers()] == [("constant", 1.0), ("constant", 0.0)]
    given = make('type: "Scale" scale_param { filler { type: "gaussian" std: 0.1 } }', [(2, 3)], seed_blobs=False)
    assert given.blob_fillers()[0].type == "gaussian"
    bias = make('type: "Bias"', [(2, 3)], seed_blobs=False)
    assert [(f.type, f.value) for f in bias.blob_fillers()] == [("constant", 0.0)]


def test_bias_blob_and_bottom():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    layer = make('type: "Bias" bias_param { axis: 2 }', [x.shape])
    assert torch.allclose(layer(x)[0], x + layer.blobs[0].detach())
    assert gradcheck_with_blobs(layer, [x])
    b = torch.randn(2, 3, dtype=torch.float64)
    two = make('type: "Bias" bias_param { axis: 0 }', [x.shape, b.shape])
    assert torch.allclose(two(x, b)[0], x + b[:, :, None])


def test_embed_lookup_bias_and_gradient():
    layer = make('type: "Embed" embed_param { input_dim: 5 num_output: 3 }', [(2, 2)])
    assert layer.blobs[0].shape == (5, 3)
    index = torch.tensor([[0.0, 4.0], [2.0, 2.0]], dtype=torch.float64)
    (y,) = layer(index)
    w, b = (blob.detach() for blob in layer.blobs)
    assert y.shape == (2, 2, 3) and torch.allclose(y[1, 0], w[2] + b)
    y.sum().backward()
    assert layer.blobs[0].grad[:, 0].tolist() == [1, 0, 2, 0, 1]
    with pytest.raises(ValueError, match="Embed index"):
        layer(torch.tensor([[5.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
