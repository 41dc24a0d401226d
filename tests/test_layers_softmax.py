"""Softmax and SoftmaxWithLoss against a numpy transcription of Caffe's
softmax_loss_layer.cpp: normalisation modes, ignore_label, spatial labels, the FLT_MIN
clip (value only), the gradient (p - onehot) / normaliser and the prob top."""
import math

import numpy as np
import pytest
import torch

from runner.layers.common import FLT_MIN

from layer_helpers import layer_from_text

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def softmax_loss_reference(x, label, axis, ignore, mode):
    """Forward_cpu and Backward_cpu of SoftmaxWithLossLayer (numpy, float64)."""
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    prob = shifted / shifted.sum(axis=axis, keepdims=True)
    outer, channels = int(np.prod(x.shape[:axis])), x.shape[axis]
    inner = int(np.prod(x.shape[axis + 1:]))
    p = prob.reshape(outer, channels, inner)
    labels = label.reshape(outer, inner).astype(int)
    grad = p.copy()
    loss, count = 0.0, 0
    for i in range(outer):
        for j in range(inner):
            lab = labels[i, j]
            if ignore is not None and lab == ignore:
                grad[i, :, j] = 0
                continue
            loss -= np.log(max(p[i, lab, j], FLT_MIN))
            grad[i, lab, j] -= 1
            count += 1
    norm = {"FULL": outer * inner, "VALID": count if ignore is not None else outer * inner,
            "BATCH_SIZE": outer, "NONE": 1}[mode]
    norm = max(1.0, norm)
    return loss / norm, (grad / norm).reshape(x.shape), prob


def loss_layer(params, shapes, tops=1):
    names = ' top: "loss"' + (' top: "prob"' if tops > 1 else "")
    return layer_from_text(f'name: "loss" type: "SoftmaxWithLoss"{names} {params}', shapes).double()


@pytest.mark.parametrize("mode", ["VALID", "FULL", "BATCH_SIZE", "NONE"])
@pytest.mark.parametrize("ignore", [None, 2])
def test_spatial_softmax_loss_normalisation_and_ignore(mode, ignore):
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    label = torch.randint(0, 4, (2, 3, 2)).double()
    label[0, 0, 0] = 2  # make sure the ignored label occurs
    params = f"loss_param {{ normalization: {mode}" + (f" ignore_label: {ignore}" if ignore is not None else "") + " }"
    layer = loss_layer(params, [x.shape, label.shape])
    (loss,) = layer(x, label)
    loss.backward()
    ref_loss, ref_grad, _ = softmax_loss_reference(x.detach().numpy(), label.numpy(), 1, ignore, mode)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), ref_grad, rtol=1e-10, atol=1e-14)


def test_default_is_valid_and_legacy_normalize_false_is_batch_size():
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    label = torch.tensor([[0, 1], [4, 4], [2, 3]], dtype=torch.float64)
    ignore = "loss_param { ignore_label: 4 }"
    (valid,) = loss_layer(ignore, [x.shape, label.shape])(x, label)
    (legacy,) = loss_layer("loss_param { ignore_label: 4 normalize: false }", [x.shape, label.shape])(x, label)
    ref_valid = softmax_loss_reference(x.numpy(), label.numpy(), 1, 4, "VALID")[0]
    ref_batch = softmax_loss_reference(x.numpy(), label.numpy(), 1, 4, "BATCH_SIZE")[0]
    assert valid.item() == pytest.approx(ref_valid) and legacy.item() == pytest.approx(ref_batch)
    assert ref_valid * 4 == pytest.approx(ref_batch * 3)  # 4 valid labels, batch of 3


def test_all_labels_ignored_gives_zero_loss():
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    label = torch.tensor([7.0, 7.0], dtype=torch.float64)
    (loss,) = loss_layer("loss_param { ignore_label: 7 }", [x.shape, label.shape])(x, label)
    loss.backward()
    assert loss.item() == 0 and torch.all(x.grad == 0)
    assert math.copysign(1.0, loss.item()) == 1.0   # Caffe's 0, which its log prints as 0, not -0


def test_log_is_clipped_at_flt_min_but_gradient_is_not():
    x = torch.tensor([[0.0, -200.0, 1.0]], dtype=torch.float64, requires_grad=True)
    label = torch.tensor([1.0], dtype=torch.float64)
    (loss,) = loss_layer("", [x.shape, label.shape])(x, label)
    loss.backward()
    assert loss.item() == pytest.approx(-np.log(FLT_MIN))
    p = torch.softmax(x.detach(), dim=1)
    assert torch.allclose(x.grad, p - torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))


def test_softmax_axis_and_prob_top():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    label = torch.randint(0, 4, (2, 3)).double()
    layer = loss_layer("softmax_param { axis: 2 }", [x.shape, label.shape], tops=2)
    loss, prob = layer(x, label)
    ref_loss, _, ref_prob = softmax_loss_reference(x.numpy(), label.numpy(), 2, None, "VALID")
    assert loss.item() == pytest.approx(ref_loss)
    np.testing.assert_allclose(prob.numpy(), ref_prob, rtol=1e-12)
    assert not prob.requires_grad and layer.is_loss


def test_label_count_mismatch_names_the_layer():
    layer = loss_layer("", [(2, 3), (2,)])
    with pytest.raises(ValueError, match="layer 'loss'.*label"):
        layer(torch.randn(2, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("device", DEVICES)
def test_softmax_default_axis_is_channels_and_gradient(device):
    x = torch.randn(2, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    layer = layer_from_text('name: "sm" type: "Softmax"', [x.shape]).double().to(device)
    (y,) = layer(x)
    assert torch.allclose(y.sum(dim=1), torch.ones(2, 2, dtype=torch.float64, device=device))
    assert torch.autograd.gradcheck(lambda t: layer(t)[0], (x,))
    label = torch.tensor([[0.0, 2.0], [1.0, 1.0]], dtype=torch.float64, device=device)
    lossy = loss_layer("loss_param { ignore_label: 2 }", [x.shape, label.shape]).to(device)
    assert torch.autograd.gradcheck(lambda t: lossy(t, label)[0], (x,))
