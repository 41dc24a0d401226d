"""The net as probed carries its generator config: given, nothing is rendered to find it;
read off a prototxt alone, the width comes from the architecture's channels and a single
render confirms it (no trial nets)."""
import pytest

import generator.probe.probed_net as probed_net
from generator.architectures import NetConfig
from generator.probe.probed_net import ProbedNet, render_train_val


@pytest.fixture
def renders(monkeypatch):
    calls = []
    real = probed_net.render

    def counting(net, *args, **kwargs):
        calls.append(net.config)
        return real(net, *args, **kwargs)

    monkeypatch.setattr(probed_net, "render", counting)
    return calls


def test_a_given_config_travels_with_the_net(renders):
    config = NetConfig(dataset="fashion-mnist", variant="cnds", depth=8, width=0.3, branches=(2,))
    net = render_train_val(config)
    renders.clear()
    target = ProbedNet(net, config)
    assert renders == []
    assert target.config == NetConfig(dataset="fashion-mnist", variant="cnn", depth=8, width=0.3)
    target.net_with((3,))
    assert [c.branches for c in renders] == [(3,)]   # only the round's own net is rendered


@pytest.mark.parametrize("width", [0.3, 1.0])
def test_a_prototxt_alone_is_recognised_with_one_render(renders, width):
    net = render_train_val(NetConfig(dataset="fashion-mnist", variant="cnn", depth=13, width=width))
    renders.clear()
    target = ProbedNet(net)
    assert target.can_branch and len(renders) == 1
    assert render_train_val(target.config) == net
