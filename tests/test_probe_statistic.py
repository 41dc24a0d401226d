"""The probe's statistic: mean |dE/dW| of each weight blob on the summed objective, before
the update, equals the same number computed by hand with torch.autograd.grad; and the
second iteration sees the weights after one Caffe SGD step (weight decay in the update,
not in the statistic); and rounds with a branch start from the plain net's trunk weights."""
import pytest
import torch
import torch.nn.functional as F

from generator.probe.gradients import initial_blobs, record_gradients
from runner import Net
from runner.deep_supervision import without_aux
from runner.proto import caffe_pb2, parse_net_text

TINY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 3 dim: 2 dim: 6 dim: 6 } shape { dim: 3 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 3 kernel_size: 3
    weight_filler { type: "gaussian" std: 0.4 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.4 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"
  inner_product_param { num_output: 5
    weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "fc_ds1" type: "InnerProduct" bottom: "conv1" top: "fc_ds1"
  inner_product_param { num_output: 5
    weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0 } } }
layer { name: "loss_ds1" type: "SoftmaxWithLoss" bottom: "fc_ds1" bottom: "label"
  top: "loss_ds1" loss_weight: 0.3 }
"""
SEED = 7
LR, MOMENTUM, DECAY = 0.1, 0.9, 0.05


def _objective(w, x, y):
    """The tiny net by hand: loss + 0.3 * loss_ds1, each Caffe's VALID-normalised softmax loss."""
    c1 = F.relu(F.conv2d(x, w["conv1"][0], w["conv1"][1]))
    c2 = F.relu(F.conv2d(c1, w["conv2"][0], w["conv2"][1], padding=1))
    main = F.cross_entropy(F.linear(c2.flatten(1), *w["fc"]), y)
    aux = F.cross_entropy(F.linear(c1.flatten(1), *w["fc_ds1"]), y)
    return main + 0.3 * aux


def test_statistic_equals_autograd_by_hand_over_two_sgd_iterations():
    param = parse_net_text(TINY, "tiny")
    gen = torch.Generator().manual_seed(3)
    batch = {"data": torch.randn(3, 2, 6, 6, generator=gen), "label": torch.tensor([0.0, 3.0, 4.0])}
    solver = caffe_pb2.SolverParameter(type="SGD", base_lr=LR, lr_policy="fixed",
                                       momentum=MOMENTUM, weight_decay=DECAY)
    record = record_gradients(param, solver, 2, inputs=lambda net: iter([batch, batch]), seed=SEED)

    torch.manual_seed(SEED)   # the same fillers the probe drew
    initial = Net(param, phase="TRAIN")
    w = {layer.name: [b.detach().clone().requires_grad_() for b in layer.blobs]
         for layer in initial.layers.values() if len(layer.blobs)}
    names = list(w)
    assert record.layers == names
    y = batch["label"].long()
    expected = []
    for _ in range(2):
        flat = [t for name in names for t in w[name]]
        grads = torch.autograd.grad(_objective(w, batch["data"], y), flat)
        g = dict(zip(names, zip(grads[0::2], grads[1::2])))
        expected.append([g[name][0].abs().mean().item() for name in names])
        # Caffe's SGD from a zero history: v = lr * (g + decay * w); w -= v (every blob lr_mult 1).
        w = {name: [(t - LR * (gt + DECAY * t)).detach().requires_grad_()
                    for t, gt in zip(w[name], g[name])] for name in names}
    torch.testing.assert_close(torch.tensor(record.values), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=0)
    assert (record.values[1] != record.values[0]).all()   # the update happened in between


def test_rounds_share_the_trunk_start_so_layers_above_a_branch_match_the_plain_net():
    # the generator's layout: the branch follows conv1 in prototxt order, so its fillers
    # are drawn before conv2's and would shift every trunk layer above it
    layers = TINY.strip().split("\nlayer")
    branch = [lp for lp in layers if "_ds1" in lp]
    trunk = [lp for lp in layers if "_ds1" not in lp]
    text = "\nlayer".join(trunk[:3] + branch + trunk[3:])
    branched = parse_net_text(text, "tiny-branched")
    plain = without_aux(branched)
    gen = torch.Generator().manual_seed(5)
    batch = {"data": torch.randn(3, 2, 6, 6, generator=gen), "label": torch.tensor([1.0, 2.0, 0.0])}
    solver = caffe_pb2.SolverParameter(type="SGD", base_lr=LR, lr_policy="fixed")
    run = lambda net, start: record_gradients(  # noqa: E731
        net, solver, 1, inputs=lambda _: iter([batch]), seed=SEED, start=start)
    before = run(plain, None)
    after = run(branched, initial_blobs(plain, SEED))
    unshared = run(branched, None)
    stat = lambda rec, name: rec.values[0][rec.layers.index(name)]  # noqa: E731
    for name in ("conv2", "fc"):          # above the branch: the aux loss does not reach them
        assert stat(after, name) == pytest.approx(stat(before, name), rel=1e-6)
        assert stat(unshared, name) != pytest.approx(stat(before, name), rel=1e-3)
    assert stat(after, "conv1") != pytest.approx(stat(before, "conv1"), rel=1e-3)
