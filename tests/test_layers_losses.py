"""Euclidean, SigmoidCrossEntropy, Hinge, Infogain, MultinomialLogistic and Contrastive
losses against numpy transcriptions of Caffe's forward and backward code."""
import numpy as np
import pytest
import torch

from runner.layers.common import LOG_THRESHOLD
from runner.proto import caffe_pb2

from layer_helpers import layer_from_text


def loss_layer(text, shapes):
    layer = layer_from_text(f'name: "loss" top: "loss" {text}', shapes).double()
    assert layer.is_loss
    return layer


def value_and_grads(layer, *bottoms):
    (loss,) = layer(*bottoms)
    assert loss.dim() == 0
    loss.backward()
    return loss.item(), [b.grad for b in bottoms]


def test_euclidean_loss():
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss, (ga, gb) = value_and_grads(loss_layer('type: "EuclideanLoss"', [a.shape, b.shape]), a, b)
    diff = (a - b).detach()
    assert loss == pytest.approx((diff ** 2).sum().item() / 8)
    assert torch.allclose(ga, diff / 4) and torch.allclose(gb, -diff / 4)


def sigmoid_ce_reference(x, t, ignore, norm_mode):
    """Forward/Backward of SigmoidCrossEntropyLossLayer (ignore_label, normalisation)."""
    valid = np.ones_like(x, dtype=bool) if ignore is None else t.astype(int) != ignore
    pos = (x >= 0).astype(float)
    ll = x * (t - pos) - np.log(1 + np.exp(x - 2 * x * pos))
    count = valid.sum()
    norm = {"BATCH_SIZE": x.shape[0], "VALID": count, "FULL": x.size, "NONE": 1}[norm_mode]
    norm = max(1.0, norm)
    grad = np.where(valid, 1 / (1 + np.exp(-x)) - t, 0) / norm
    return -(ll * valid).sum() / norm, grad


@pytest.mark.parametrize("params,ignore,mode", [("", None, "BATCH_SIZE"),
                                                ("loss_param { ignore_label: -1 }", -1, "BATCH_SIZE"),
                                                ("loss_param { ignore_label: -1 normalization: VALID }", -1, "VALID"),
                                                ("loss_param { normalize: true }", None, "VALID"),
                                                ("loss_param { normalization: FULL }", None, "FULL")])
def test_sigmoid_cross_entropy(params, ignore, mode):
    x = (torch.randn(3, 4, dtype=torch.float64) * 5).requires_grad_()
    with torch.no_grad():
        x[0, 0] = 0.0  # Caffe's gradient at 0 is sigmoid(0) - t
    t = torch.rand(3, 4, dtype=torch.float64)
    t[1, :2] = -1
    layer = loss_layer(f'type: "SigmoidCrossEntropyLoss" {params}', [x.shape, t.shape])
    loss, (gx, _) = value_and_grads(layer, x, t)
    ref, ref_grad = sigmoid_ce_reference(x.detach().numpy(), t.numpy(), ignore, mode)
    assert loss == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(gx.numpy(), ref_grad, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(norm):
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    label = torch.tensor([0.0, 3.0, 4.0, 1.0], dtype=torch.float64)
    layer = loss_layer(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}', [x.shape, label.shape])
    loss, (gx, _) = value_and_grads(layer, x, label)
    sign = -np.ones((4, 5))
    sign[np.arange(4), label.long().numpy()] = 1
    margin = np.maximum(0, 1 - sign * x.detach().numpy())
    ref = (margin if norm == "L1" else margin ** 2).sum() / 4
    grad = -sign * (np.sign(margin) if norm == "L1" else 2 * margin) / 4
    assert loss == pytest.approx(ref)
    np.testing.assert_allclose(gx.numpy(), grad, rtol=1e-12)


def infogain_reference(x, labels, h, ignore):
    """Current InfogainLossLayer: internal softmax, log clipped at 1e-20, VALID normaliser."""
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss, count, grad = 0.0, 0, np.zeros_like(x)
    for i, lab in enumerate(labels.astype(int)):
        if ignore is not None and lab == ignore:
            continue
        loss -= (h[lab] * np.log(np.maximum(p[i], LOG_THRESHOLD))).sum()
        grad[i] = p[i] * h[lab].sum() - h[lab]
        count += 1
    return loss / max(1, count), grad / max(1, count)


def test_infogain_loss_with_matrix_bottom_and_ignore():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        x[0] = torch.tensor([0.0, -100.0, 0.0])  # p[1] underflows below the clip
    labels = torch.tensor([1.0, 2.0, 0.0, 2.0], dtype=torch.float64)
    h = torch.rand(3, 3, dtype=torch.float64) + torch.eye(3, dtype=torch.float64)
    layer = loss_layer('type: "InfogainLoss" loss_param { ignore_label: 0 }', [x.shape, labels.shape, (1, 1, 3, 3)])
    loss, (gx, _, _) = value_and_grads(layer, x, labels, h.reshape(1, 1, 3, 3))
    ref, ref_grad = infogain_reference(x.detach().numpy(), labels.numpy(), h.numpy(), 0)
    assert loss == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(gx.numpy(), ref_grad, rtol=1e-10, atol=1e-14)


def test_infogain_loss_reads_binaryproto_source(tmp_path):
    h = np.array([[1.0, 0.5], [0.25, 2.0]])
    blob = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[1, 1, 2, 2]), data=h.flatten().tolist())
    path = tmp_path / "H.binaryproto"
    path.write_bytes(blob.SerializeToString())
    x = torch.randn(3, 2, dtype=torch.float64)
    labels = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    layer = loss_layer(f'type: "InfogainLoss" infogain_loss_param {{ source: "{path}" }}', [x.shape, labels.shape])
    (loss,) = layer(x, labels)
    assert loss.item() == pytest.approx(infogain_reference(x.numpy(), labels.numpy(), h, None)[0])
    with pytest.raises(ValueError, match="cannot read infogain matrix"):
        loss_layer('type: "InfogainLoss" infogain_loss_param { source: "/no/such/H.binaryproto" }',
                   [x.shape, labels.shape])


def test_multinomial_logistic_loss_clips_value_and_gradient():
    prob = torch.tensor([[0.2, 0.8], [0.0, 1.0], [0.6, 0.4]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    layer = loss_layer('type: "MultinomialLogisticLoss"', [prob.shape, labels.shape])
    loss, (gp, _) = value_and_grads(layer, prob, labels)
    assert loss == pytest.approx(-(np.log(0.8) + np.log(LOG_THRESHOLD) + np.log(0.6)) / 3)
    expected = torch.tensor([[0, -1 / 0.8], [-1 / LOG_THRESHOLD, 0], [-1 / 0.6, 0]], dtype=torch.float64) / 3
    assert torch.allclose(gp, expected)


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_and_caffes_gradient(legacy):
    a = torch.randn(5, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    margin = 2.0
    layer = loss_layer(f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: {margin} '
                       f'legacy_version: {str(legacy).lower()} }}', [a.shape, b.shape, y.shape])
    loss, (ga, gb, _) = value_and_grads(layer, a, b, y)
    diff = (a - b).detach().reshape(5, 3).numpy()
    dist_sq = (diff ** 2).sum(1)
    ref, grad = 0.0, np.zeros_like(diff)
    for i in range(5):
        if y[i]:
            ref += dist_sq[i]
            grad[i] = diff[i] / 5
        elif legacy:
            ref += max(margin - dist_sq[i], 0)
            grad[i] = -diff[i] / 5 if margin - dist_sq[i] > 0 else 0
        else:
            dist = np.sqrt(dist_sq[i])
            ref += max(margin - dist, 0) ** 2
            grad[i] = -(margin - dist) / (dist + 1e-4) * diff[i] / 5 if margin - dist > 0 else 0
    assert loss == pytest.approx(ref / 10)
    np.testing.assert_allclose(ga.reshape(5, 3).numpy(), grad, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(gb.reshape(5, 3).numpy(), -grad, rtol=1e-10, atol=1e-15)
