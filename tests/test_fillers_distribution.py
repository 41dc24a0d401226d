"""Caffe's fillers draw from the right distributions (filler.hpp), and bilinear is exact."""
import math

import pytest
import torch
from google.protobuf import text_format

from runner.fillers import FillerError, fill_, sample
from runner.proto import caffe_pb2


def filler(text: str) -> caffe_pb2.FillerParameter:
    return text_format.Parse(text, caffe_pb2.FillerParameter())


def draw(text: str, shape=(64, 32, 3, 3), seed=0) -> torch.Tensor:
    return sample(shape, filler(text), torch.Generator().manual_seed(seed))


def test_default_filler_is_constant_zero():
    assert torch.equal(sample((3, 4), caffe_pb2.FillerParameter()), torch.zeros(3, 4))
    assert torch.equal(draw('type: "constant" value: 2.5', (5,)), torch.full((5,), 2.5))


def test_uniform_moments():
    x = draw('type: "uniform" min: -2 max: 6')
    assert x.min() >= -2 and x.max() <= 6
    assert abs(x.mean().item() - 2.0) < 0.05
    assert abs(x.std().item() - 8 / math.sqrt(12)) < 0.03


def test_gaussian_moments():
    x = draw('type: "gaussian" mean: 0.5 std: 0.1')
    assert abs(x.mean().item() - 0.5) < 0.003
    assert abs(x.std().item() - 0.1) < 0.002


def test_gaussian_sparse_keeps_sparse_over_num_outputs():
    x = draw('type: "gaussian" std: 1 sparse: 16', shape=(64, 4096))
    kept = (x != 0).float().mean().item()
    assert abs(kept - 16 / 64) < 0.01


@pytest.mark.parametrize("norm, n", [("FAN_IN", 32 * 9), ("FAN_OUT", 64 * 9), ("AVERAGE", (32 * 9 + 64 * 9) / 2)])
def test_xavier_and_msra_scale_with_variance_norm(norm, n):
    x = draw(f'type: "xavier" variance_norm: {norm}')
    bound = math.sqrt(3 / n)
    assert x.abs().max() <= bound
    assert abs(x.std().item() - math.sqrt(1 / n)) < 0.03 * math.sqrt(1 / n)
    y = draw(f'type: "msra" variance_norm: {norm}')
    assert abs(y.mean().item()) < 0.05 * math.sqrt(2 / n)
    assert abs(y.std().item() - math.sqrt(2 / n)) < 0.03 * math.sqrt(2 / n)


def test_xavier_on_inner_product_weight_uses_count_over_shape0():
    x = draw('type: "xavier"', shape=(10, 4000))  # fan_in = 4000, as Caffe (count / num)
    assert x.abs().max() <= math.sqrt(3 / 4000)
    assert x.abs().max() > 0.9 * math.sqrt(3 / 4000)


def test_bilinear_is_exact():
    x = draw('type: "bilinear"', shape=(2, 1, 4, 4))
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.equal(x[1, 0], taps[:, None] * taps[None, :])
    # odd kernel: f = 2, c = 3/4 as in Caffe's formula, so the taps are 1/4, 3/4, 3/4
    y = draw('type: "bilinear"', shape=(1, 1, 3, 3))
    taps3 = torch.tensor([0.25, 0.75, 0.75])
    assert torch.equal(y[0, 0], taps3[:, None] * taps3[None, :])


def test_positive_unitball_rows_sum_to_one():
    x = draw('type: "positive_unitball"', shape=(7, 3, 5))
    assert x.min() >= 0
    torch.testing.assert_close(x.view(7, -1).sum(1), torch.ones(7))


def test_seeded_by_torch_rng_and_fill_in_place():
    torch.manual_seed(3)
    a = fill_(torch.empty(4, 5), filler('type: "gaussian" std: 0.01'))
    torch.manual_seed(3)
    b = fill_(torch.empty(4, 5), filler('type: "gaussian" std: 0.01'))
    assert torch.equal(a, b) and a.abs().sum() > 0


@pytest.mark.parametrize("text, shape, words", [
    ('type: "nope"', (3,), "unknown filler type 'nope'"),
    ('type: "xavier" sparse: 3', (3, 4), "sparsity"),
    ('type: "bilinear"', (3, 4), "4-D"),
    ('type: "gaussian" sparse: 9', (3, 4), "exceeds"),
    ('type: "gaussian" std: 0', (3, 4), "std > 0"),
    ('type: "gaussian" std: inf', (3, 4), "finite std > 0, got mean=0.0, std=inf"),
    ('type: "gaussian" mean: -inf', (3, 4), "finite mean"),
    ('type: "uniform" min: -inf max: 1', (3, 4), "finite min <= max, got min=-inf"),
    ('type: "uniform" min: 0 max: nan', (3, 4), "finite min <= max"),
    ('type: "uniform" min: 2 max: 1', (3, 4), "min <= max, got min=2.0, max=1.0"),
])
def test_bad_fillers_are_rejected(text, shape, words):
    with pytest.raises(FillerError, match=words):
        draw(text, shape=shape)
