"""Accuracy counts as Caffe's accuracy_layer.cpp (top-k with ties against, ignore_label,
per-class top, spatial axis); ArgMax orders ties as Caffe's partial_sort on pairs."""
import numpy as np
import pytest
import torch

from layer_helpers import layer_from_text


def accuracy_reference(scores, labels, top_k, ignore):
    """Caffe's loop: correct when fewer than top_k other classes score >= the true one."""
    outer, channels, inner = scores.shape
    hits, seen, correct, count = np.zeros(channels), np.zeros(channels), 0, 0
    for i in range(outer):
        for j in range(inner):
            lab = int(labels[i, j])
            if ignore is not None and lab == ignore:
                continue
            seen[lab] += 1
            better = -1
            for k in range(channels):
                better += scores[i, k, j] >= scores[i, lab, j]
            if better < top_k:
                correct += 1
                hits[lab] += 1
            count += 1
    per_class = np.where(seen > 0, hits / np.maximum(seen, 1), 0)
    return (correct / count if count else 0.0), per_class


def accuracy(params, shapes, tops=1):
    names = ' top: "acc"' + (' top: "per_class"' if tops > 1 else "")
    return layer_from_text(f'name: "acc" type: "Accuracy"{names} accuracy_param {{ {params} }}', shapes)


def test_ties_count_against_the_true_class():
    scores = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.7, 0.7], [0.9, 0.1, 0.0]])
    labels = torch.tensor([0.0, 1.0, 0.0])
    (top1,) = accuracy("top_k: 1", [scores.shape, labels.shape])(scores, labels)
    (top2,) = accuracy("top_k: 2", [scores.shape, labels.shape])(scores, labels)
    assert top1.item() == pytest.approx(1 / 3)  # only the third sample: ties lose
    assert top2.item() == pytest.approx(1.0)


@pytest.mark.parametrize("top_k", [1, 3])
@pytest.mark.parametrize("ignore", [None, 1])
def test_spatial_accuracy_with_ignore_and_per_class(top_k, ignore):
    scores = torch.randint(0, 3, (3, 5, 2, 2)).float()  # many ties
    labels = torch.randint(0, 5, (3, 2, 2)).float()
    params = f"top_k: {top_k}" + (f" ignore_label: {ignore}" if ignore is not None else "")
    layer = accuracy(params, [scores.shape, labels.shape], tops=2)
    acc, per_class = layer(scores, labels)
    ref, ref_per_class = accuracy_reference(scores.reshape(3, 5, 4).numpy(), labels.reshape(3, 4).numpy(),
                                            top_k, ignore)
    assert acc.dim() == 0 and acc.item() == pytest.approx(ref)
    np.testing.assert_allclose(per_class.numpy(), ref_per_class, rtol=1e-6)
    assert layer.top_shapes == [(), (5,)]


def test_accuracy_other_axis_and_nothing_counted():
    scores = torch.randn(4, 2, 3)  # classes on axis 2
    labels = torch.randint(0, 3, (4, 2)).float()
    (acc,) = accuracy("axis: 2", [scores.shape, labels.shape])(scores, labels)
    ref, _ = accuracy_reference(scores.reshape(8, 3, 1).numpy(), labels.reshape(8, 1).numpy(), 1, None)
    assert acc.item() == pytest.approx(ref)
    ignored = torch.full((4, 2), 2.0)
    (none,) = accuracy("axis: 2 ignore_label: 2", [scores.shape, ignored.shape])(scores, ignored)
    assert none.item() == 0.0


def argmax(params, shape):
    return layer_from_text(f'name: "am" type: "ArgMax" argmax_param {{ {params} }}', [shape])


def test_argmax_ties_take_the_larger_index_first():
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, 0.0]])
    (top,) = argmax("top_k: 2", x.shape)(x)
    assert top.shape == (2, 1, 2)
    assert top[:, 0].tolist() == [[2.0, 1.0], [2.0, 1.0]]


def test_argmax_out_max_val_layouts():
    x = torch.randn(2, 3, 2, 2)
    layer = argmax("top_k: 3 out_max_val: true", x.shape)
    (top,) = layer(x)
    assert tuple(top.shape) == layer.top_shapes[0] == (2, 2, 3, 1)
    flat = x.reshape(2, -1)
    values, index = flat.sort(dim=1, descending=True)
    assert torch.equal(top[:, 0, :, 0], index[:, :3].float())
    assert torch.equal(top[:, 1, :, 0], values[:, :3])
    (along,) = argmax("axis: 1 top_k: 2 out_max_val: true", x.shape)(x)
    assert torch.equal(along, x.sort(dim=1, descending=True)[0][:, :2])
    (indices,) = argmax("axis: 1", x.shape)(x)
    assert torch.equal(indices, x.argmax(dim=1, keepdim=True).float())


def test_argmax_top_k_bounds():
    with pytest.raises(ValueError, match="top_k"):
        argmax("top_k: 5", (2, 4))
