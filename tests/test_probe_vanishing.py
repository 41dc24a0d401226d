"""Vanishing detection and the placement rule: a deep toy stack with the plain init
(gaussian std 0.01, zero biases) vanishes, the same stack with xavier/msra does not;
the rule averages over iterations and chooses each tap as the deepest one whose probe lifts
the convs below it (unit tests on fake probes)."""
import numpy as np
import pytest

from generator.probe.gradients import GradientRecord, record_gradients
from generator.probe.placement import ProbeRound, place_branches
from generator.probe.probed_net import ProbedNet, SyntheticInput, conv_layers, train_net
from generator.probe.rounds import ProbeOptions, search
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
    placement = search(ProbedNet(net), options, log=lambda _: None)
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


def _fake(lifts, vanish=range(1, 14), n=13):
    """A probe of an n-conv net whose convs `vanish` when plain; a branch after t lifts
    the convs j for which lifts(t, j) holds."""
    def probe(taps):
        lifted = {j for t in taps for j in range(1, n + 1) if lifts(t, j)}
        row = [1e-9 if k in vanish and k not in lifted else 1e-5 for k in range(1, n + 1)]
        return _round([row, row], taps)
    return probe


def test_nothing_vanishing_gets_no_branch_from_one_probe():
    placement = place_branches(_fake(lambda t, j: True, vanish=()), 13, 1e-7, max_branches=3)
    assert [r.taps for r in placement.rounds] == [()]
    assert placement.branches_value == "none"
    assert placement.reason == "no conv layer vanishes"
    assert placement.after is None


def test_paper_style_bottom_group_is_tapped_at_its_deepest_conv_with_one_probe():
    # convs 1..4 vanish and a branch after conv t lifts every conv up to t: the paper's case
    seen = []
    placement = place_branches(_fake(lambda t, j: j <= t, vanish=range(1, 5)), 13, 1e-7,
                               max_branches=3, report=lambda r, why: seen.append(why))
    assert [r.taps for r in placement.rounds] == [(), (4,)]
    assert placement.taps == (4,)
    assert placement.reason == "no conv layer above conv 4 vanishes"
    assert placement.after.taps == (4,)
    assert "a branch after conv 4 lifts every conv in 1..4" in seen


def test_all_vanishing_stack_gets_the_deepest_tap_that_lifts_the_convs_below_it():
    # every conv vanishes; only a branch after conv 1..3 reaches back, and only 2 convs down
    placement = place_branches(_fake(lambda t, j: t <= 3 and t - 2 <= j <= t), 13, 1e-7,
                               max_branches=3)
    probed = [r.taps for r in placement.rounds]
    assert probed[:2] == [(), (12,)]                    # the paper's tap is tried first
    assert (3,) in probed and (4,) in probed            # 3 lifts 1..3, 4 does not
    assert placement.taps == (3,)
    assert "no branch after any conv in 4..12 lifts" in placement.reason
    assert len(probed) <= 1 + 2 * 5                     # a binary search, not a scan


def test_all_vanishing_stack_where_no_branch_lifts_gets_none_and_says_why():
    placement = place_branches(_fake(lambda t, j: False), 13, 1e-7, max_branches=3)
    assert placement.taps == ()
    assert "no branch after any conv in 1..12 lifts" in placement.reason
    assert "after conv 1 leaves it at 1.0e-09" in placement.reason
    assert (1,) in [r.taps for r in placement.rounds]
    assert placement.after.taps == (12,)                # the paper's tap, for the plot


def _reaches_three_down(t, j):
    """A branch after conv t lifts convs t-3..t."""
    return t - 3 <= j <= t


def test_rounds_add_one_branch_each_until_nothing_vanishes():
    placement = place_branches(_fake(_reaches_three_down, vanish=range(1, 11)), 13, 1e-7,
                               max_branches=5)
    assert placement.taps == (4, 8, 10)
    assert placement.branches_value == "4,8,10"
    assert placement.reason == "no conv layer above conv 10 vanishes"
    assert placement.rounds[-1].taps == (4, 8, 10)


def test_rounds_stop_at_the_branch_limit():
    placement = place_branches(_fake(_reaches_three_down, vanish=range(1, 11)), 13, 1e-7,
                               max_branches=2)
    assert placement.taps == (4, 8)
    assert "convs 9,10 still vanish, but the limit of 2 branches" in placement.reason
    assert placement.after.taps == (4, 8)


def test_only_the_last_conv_vanishing_cannot_be_tapped():
    placement = place_branches(_fake(lambda t, j: True, vanish=(13,)), 13, 1e-7, max_branches=3)
    assert placement.taps == () and len(placement.rounds) == 1
    assert "the last conv cannot be tapped" in placement.reason
