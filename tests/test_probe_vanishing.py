"""Vanishing detection and the placement rule: a deep toy stack with the plain init
(gaussian std 0.01, zero biases) vanishes, the same stack with xavier/msra does not;
the rule averages over iterations, taps the deepest vanishing conv and stops as documented."""
import numpy as np
import pytest

from generator.probe.gradients import GradientRecord, record_gradients
from generator.probe.placement import ProbeRound, next_tap, place_branches
from generator.probe.prepare import SyntheticInput, conv_layers, train_net
from generator.probe.run import ProbeOptions, search
from generator.probe.target import ProbeTarget
from runner.proto import caffe_pb2, parse_net_text

N_CONVS = 12


def toy_stack(filler: str) -> caffe_pb2.NetParameter:
    """N_CONVS 3x3 conv-ReLU layers of 8 channels on 8x8 input, then a 5-way classifier."""
    layers = ['layer { name: "data" type: "Input" top: "data" top: "label" input_param { '
              'shape { dim: 2 dim: 4 dim: 8 dim: 8 } shape { dim: 2 } } }']
    bottom = "data"
    for k in range(1, N_CONVS + 1):
        layers.append(
            f'layer {{ name: "conv{k}" type: "Convolution" bottom: "{bottom}" top: "conv{k}" '
            f'convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 '
            f'weight_filler {{ type: "{filler}" }} bias_filler {{ type: "constant" }} }} }}\n'
            f'layer {{ name: "relu{k}" type: "ReLU" bottom: "conv{k}" top: "conv{k}" }}')
        bottom = f"conv{k}"
    layers.append(f'layer {{ name: "fc" type: "InnerProduct" bottom: "{bottom}" top: "fc" '
                  'inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }')
    layers.append('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }')
    return parse_net_text(f'name: "toy"\n' + "\n".join(layers), "toy")


def _probe_as_given(net: caffe_pb2.NetParameter) -> ProbeRound:
    """Two SGD iterations on synthetic batches, keeping the net's own fillers."""
    synthetic = SyntheticInput(batch=2, shape=(4, 8, 8))
    train, scale = synthetic.replace_sources(train_net(net, None))
    record = record_gradients(train, ProbeOptions().solver, 2, inputs=lambda built:
                              synthetic.batches("data", "label", scale, 5))
    return ProbeRound((), record, conv_layers(net))


@pytest.mark.parametrize("filler", ["xavier", "msra"])
def test_healthy_init_does_not_vanish(filler):
    probe = _probe_as_given(toy_stack(filler))
    assert probe.vanishing(1e-7) == []
    assert min(probe.conv_means()) > 1e-5


def test_plain_init_vanishes_and_is_forced_even_over_msra_fillers():
    net = toy_stack("msra")   # the probe replaces these with gaussian std 0.01, zero bias
    options = ProbeOptions(iters=1, synthetic=True, batch=2, input_shape=(4, 8, 8))
    placement = search(ProbeTarget(net), options, log=lambda _: None)
    (plain,) = placement.rounds
    assert plain.vanishing(1e-7) == list(range(1, N_CONVS + 1))
    assert max(plain.conv_means()) < 1e-10
    # every conv vanishes; the deepest a branch can tap is the last-but-one
    assert placement.taps == (N_CONVS - 1,)
    assert "not rendered by the generator" in placement.reason


def _round(convs_by_iteration, taps=()) -> ProbeRound:
    values = np.array(convs_by_iteration, dtype=float)
    names = [f"c{k}" for k in range(1, values.shape[1] + 1)]
    return ProbeRound(tuple(taps), GradientRecord(names, values, [0.0] * len(values), 0.0), names)


def test_vanishing_uses_the_mean_over_iterations_not_the_last_iteration():
    r = _round([[1e-6, 1e-9], [1e-9, 1e-9], [1e-9, 1e-6]])
    # conv 1 ends below the threshold but its mean (3.3e-7) is above; conv 2 likewise
    assert r.vanishing(1e-7) == []
    assert r.vanishing(4e-7) == [1, 2]


@pytest.mark.parametrize("vanishing,taps,tap,why", [
    ([], (), None, "no conv layer vanishes"),
    ([1, 2, 5], (), 5, "conv 5 is the deepest"),
    ([1, 2, 13], (), 12, "conv 13 is the deepest"),      # the last conv cannot be tapped
    ([1, 7], (7, 10), None, "conv 7 is tapped already"),
])
def test_next_tap_is_the_deepest_vanishing_conv(vanishing, taps, tap, why):
    k, reason = next_tap(vanishing, taps, n_convs=13)
    assert k == tap
    assert why in reason


def _fake_probe(taps):
    """Convs 1..10 of 13 vanish; a branch after conv t lifts convs t-3..t."""
    lifted = {j for t in taps for j in range(t - 3, t + 1)}
    row = [1e-9 if k <= 10 and k not in lifted else 1e-5 for k in range(1, 14)]
    return _round([row, row], taps)


def test_rounds_add_one_branch_each_until_nothing_vanishes():
    seen = []
    placement = place_branches(_fake_probe, 13, 1e-7, max_branches=5,
                               report=lambda r, why: seen.append((r.taps, why)))
    assert [r.taps for r in placement.rounds] == [(), (10,), (6, 10), (2, 6, 10)]
    assert placement.taps == (2, 6, 10)
    assert placement.branches_value == "2,6,10"
    assert placement.reason == "no conv layer vanishes"
    assert seen[0][1].endswith("add a branch after conv 10")


def test_rounds_stop_at_the_branch_limit():
    placement = place_branches(_fake_probe, 13, 1e-7, max_branches=2)
    assert placement.taps == (6, 10)
    assert "limit of 2 branches" in placement.reason
    assert placement.rounds[-1].vanishing(1e-7) == [1, 2]


def test_a_branch_that_lifts_nothing_is_dropped():
    dead = lambda taps: _round([[1e-12] * 13], taps)  # noqa: E731  (every conv vanishes, always)
    placement = place_branches(dead, 13, 1e-7, max_branches=3)
    assert [r.taps for r in placement.rounds] == [(), (12,)]
    assert placement.taps == ()
    assert placement.branches_value == "none"
    assert "after conv 12 lifts no conv layer" in placement.reason
