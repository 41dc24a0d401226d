"""Element-wise layers against Caffe's formulas (numpy), with float64 gradient checks,
Caffe's gradient at the kinks, Dropout's train-time scaling and PReLU's default filler."""
import numpy as np
import pytest
import torch

from layer_helpers import layer_from_text

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def f32(v):
    return float(np.float32(v))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# (layer text, numpy formula)
FORMULAS = [
    ('type: "ReLU"', lambda x: np.maximum(x, 0)),
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', lambda x: np.where(x > 0, x, f32(0.1) * x)),
    ('type: "ELU" elu_param { alpha: 0.5 }', lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
    ('type: "Sigmoid"', sigmoid),
    ('type: "TanH"', np.tanh),
    ('type: "AbsVal"', np.abs),
    ('type: "BNLL"', lambda x: np.where(x > 0, x + np.log1p(np.exp(-x)), np.log1p(np.exp(x)))),
    ('type: "Power" power_param { power: 3 scale: 0.5 shift: 2 }', lambda x: (2 + 0.5 * x) ** 3),
    ('type: "Power" power_param { power: 0 scale: 2 shift: 2 }', lambda x: np.ones_like(x)),
    ('type: "Power" power_param { power: 2 scale: 0 shift: 3 }', lambda x: np.full_like(x, 9.0)),
    ('type: "Exp"', np.exp),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', lambda x: 2 ** (1 + 0.5 * x)),
    ('type: "Log" log_param { shift: 5 }', lambda x: np.log(5 + x)),
    ('type: "Log" log_param { base: 10 scale: 2 shift: 5 }', lambda x: np.log10(5 + 2 * x)),
    ('type: "Threshold" threshold_param { threshold: 0.25 }', lambda x: (x > f32(0.25)).astype(float)),
    ('type: "Clip" clip_param { min: -0.5 max: 0.75 }', lambda x: np.clip(x, -0.5, 0.75)),
    ('type: "Swish" swish_param { beta: 2 }', lambda x: x * sigmoid(2 * x)),
    ('type: "Dropout"', lambda x: x),  # evaluation mode: identity
]


def neuron(text, shape):
    return layer_from_text(f'name: "n" {text}', [shape]).double()


def inputs_away_from_kinks(shape, device="cpu"):
    """Values in +-[0.1, 2] so finite differences never straddle 0 or a clip bound."""
    magnitude = 0.1 + 1.9 * torch.rand(shape, dtype=torch.float64, device=device)
    x = torch.where(torch.rand(shape, device=device) < 0.5, -magnitude, magnitude)
    return torch.where((x - 0.75).abs() < 0.05, x + 0.1, x)


@pytest.mark.parametrize("text,formula", FORMULAS, ids=[t for t, _ in FORMULAS])
def test_neuron_formula(text, formula):
    x = inputs_away_from_kinks((2, 3, 4))
    layer = neuron(text, x.shape).eval()
    (y,) = layer(x)
    assert tuple(y.shape) == layer.top_shapes[0]
    np.testing.assert_allclose(y.numpy(), formula(x.numpy()), rtol=1e-12, atol=1e-12)


DIFFERENTIABLE = [t for t, _ in FORMULAS if "Threshold" not in t and "Dropout" not in t
                  and "power: 0" not in t and "scale: 0" not in t] + ['type: "PReLU"']


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("text", DIFFERENTIABLE)
def test_neuron_gradient_float64(text, device):
    x = inputs_away_from_kinks((2, 3, 2), device).requires_grad_()
    layer = neuron(text, x.shape).to(device)
    blobs = [b.detach().uniform_(-1, 1).requires_grad_() for b in layer.blobs]

    def run(x, *blobs):
        params = {f"blobs.{i}": b for i, b in enumerate(blobs)}
        return torch.func.functional_call(layer, params, (x,))[0]

    assert torch.autograd.gradcheck(run, (x, *blobs))


def test_gradient_at_zero_is_caffes():
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    for text, expected in [('type: "ReLU"', 0.0), ('type: "ReLU" relu_param { negative_slope: 0.25 }', 0.25),
                           ('type: "AbsVal"', 0.0), ('type: "Clip" clip_param { min: 0 max: 1 }', 1.0)]:
        x.grad = None
        neuron(text, x.shape)(x)[0].sum().backward()
        assert torch.all(x.grad == expected), text


def test_prelu_default_filler_and_channel_shared():
    layer = neuron('type: "PReLU"', (2, 3, 4))
    assert [(f.type, f.value) for f in layer.blob_fillers()] == [("constant", 0.25)]
    assert layer.blobs[0].shape == (3,)
    shared = neuron('type: "PReLU" prelu_param { channel_shared: true filler { type: "constant" value: 0.5 } }',
                    (2, 3, 4))
    assert shared.blobs[0].shape == (1,) and shared.blob_fillers()[0].value == 0.5
    with torch.no_grad():
        layer.blobs[0].copy_(torch.tensor([0.1, 0.2, 0.3]))
    x = -torch.ones(2, 3, 4, dtype=torch.float64)
    assert torch.allclose(layer(x)[0][0, :, 0], torch.tensor([-0.1, -0.2, -0.3], dtype=torch.float64))


def test_dropout_scales_kept_units_at_train_and_is_identity_at_eval():
    torch.manual_seed(0)
    x = torch.rand(64, 64, dtype=torch.float64) + 1
    layer = neuron('type: "Dropout" dropout_param { dropout_ratio: 0.75 }', x.shape)
    x.requires_grad_()
    (y,) = layer.train()(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] * 4)
    assert 0.2 < kept.double().mean().item() < 0.3
    y.sum().backward()
    assert torch.equal(x.grad, kept.double() * 4)
    assert torch.equal(layer.eval()(x)[0], x)
    with pytest.raises(ValueError, match="dropout_ratio"):
        neuron('type: "Dropout" dropout_param { dropout_ratio: 1 }', x.shape)


def test_exp_and_log_reject_non_positive_base():
    for text in ('type: "Exp" exp_param { base: 0 }', 'type: "Log" log_param { base: -2 }'):
        with pytest.raises(ValueError, match="base"):
            neuron(text, (2,))
