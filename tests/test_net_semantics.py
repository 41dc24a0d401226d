"""runner.Net follows Caffe's Net::Init: filtering, wiring, sharing, propagate_down, losses."""
import pytest
import torch
import torch.nn.functional as F

from runner import Net
from runner.graph import NetBuildError
from runner.layers.base import UnsupportedLayerError
from runner.proto import ProtoError, parse_net_text
from runner.shapes import ShapeError

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }\n'


def net_of(body: str, phase="TEST", **kw) -> Net:
    return Net(parse_net_text(body), phase=phase, **kw)


def ip(name, bottom, top, n=3, extra=""):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" {extra} '
            f'inner_product_param {{ num_output: {n} weight_filler {{ type: "gaussian" std: 0.5 }} '
            'bias_filler { type: "uniform" min: -1 max: 1 } } }\n')


def test_include_exclude_by_phase_stage_and_level():
    body = INPUT + (
        ip("always", "data", "a")
        + ip("train_only", "data", "b", extra="include { phase: TRAIN }")
        + ip("test_only", "data", "c", extra="include { phase: TEST }")
        + ip("not_deploy", "data", "d", extra='exclude { stage: "deploy" }')
        + ip("deep", "data", "e", extra="include { min_level: 2 }")
        + ip("no_aux", "data", "f", extra='include { not_stage: "aux" phase: TEST }'))
    assert list(net_of(body, "TRAIN").layers) == ["always", "train_only", "not_deploy"]
    assert list(net_of(body, "TEST").layers) == ["always", "test_only", "not_deploy", "no_aux"]
    assert list(net_of(body, 1, stages=["deploy", "aux"]).layers) == ["always", "test_only"]
    assert list(net_of(body, 0, level=3).layers) == ["always", "train_only", "not_deploy", "deep"]


def test_phase_sets_training_mode():
    body = INPUT + ip("fc", "data", "fc")
    assert net_of(body, "TRAIN").training and net_of(body, "TRAIN").layers["fc"].training
    assert not net_of(body, "TEST").training


def test_in_place_tops_and_outputs_are_caffes():
    body = INPUT + ip("fc", "data", "fc") + (
        'layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" }\n'
        'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n'
        'layer { name: "act" type: "TanH" bottom: "fc" top: "act" }\n')
    net = net_of(body)
    x = torch.randn(2, 6)
    blobs = net({"data": x})
    w, b = (p for _, p, _, _ in net.learnable_params())
    fc = torch.relu(x @ w.T + b)
    torch.testing.assert_close(blobs["fc"], fc)
    torch.testing.assert_close(blobs["prob"], torch.softmax(fc, 1))
    assert net.output_names == ["act", "prob"]  # unconsumed tops, in name order as Caffe
    assert net.blob_shapes == {"data": (2, 6), "fc": (2, 3), "prob": (2, 3), "act": (2, 3)}


def test_shared_params_are_one_parameter_and_accumulate_gradients():
    shared = 'param { name: "w" } param { name: "b" }'
    body = INPUT + ip("ip1", "data", "y1", extra=shared) + ip("ip2", "data", "y2", extra=shared) + (
        'layer { name: "sq" type: "Power" bottom: "y2" top: "y2sq" power_param { power: 2 } }\n')
    net = net_of(body)
    assert net.layers["ip1"].blobs[0] is net.layers["ip2"].blobs[0]
    names = [n for n, *_ in net.learnable_params()]
    assert names == ["ip1/w", "ip1/b"]
    x = torch.randn(2, 6)
    net.loss_weights.update({"y1": 1.0, "y2sq": 0.5})
    net.objective(net({"data": x})).backward()
    w, b = (p.detach().clone().requires_grad_() for _, p, _, _ in net.learnable_params())
    y = x @ w.T + b
    (y.sum() + 0.5 * (y ** 2).sum()).backward()
    torch.testing.assert_close(net.layers["ip1"].blobs[0].grad, w.grad)
    torch.testing.assert_close(net.layers["ip1"].blobs[1].grad, b.grad)


def test_permissive_sharing_reshapes_and_strict_mismatch_fails():
    owner = ip("ip1", "data", "y1", n=4, extra='param { name: "w" } param { name: "b1" }')
    other = ('layer { name: "ip2" type: "InnerProduct" bottom: "data" top: "y2" '
             'param { name: "w" share_mode: PERMISSIVE } '
             'inner_product_param { num_output: 4 transpose: true bias_term: false } }\n')
    net = net_of(INPUT + owner + other)
    x = torch.randn(2, 6)
    w = net.layers["ip1"].blobs[0]
    torch.testing.assert_close(net({"data": x})["y2"], x @ w.detach().reshape(6, 4))
    assert len(net.learnable_params()) == 2
    with pytest.raises(NetBuildError, match=r"layer 'ip2'.*shared param 'w'.*\[6, 4\].*'ip1'.*\[4, 6\]"):
        net_of(INPUT + owner + other.replace(" share_mode: PERMISSIVE", ""))
    with pytest.raises(NetBuildError, match="equal counts"):
        net_of(INPUT + owner + other.replace("num_output: 4", "num_output: 5"))


def test_propagate_down_false_blocks_that_bottom_only():
    body = INPUT + ip("ip0", "data", "h") + ip("a", "h", "ya") + ip("b", "h", "yb", extra="propagate_down: false")
    net = net_of(body)
    net.loss_weights.update({"ya": 1.0, "yb": 1.0})
    blobs = net({"data": torch.randn(2, 6)})
    net.objective(blobs).backward()
    h = blobs["h"].detach()
    wa = net.layers["a"].blobs[0].detach()
    expected = torch.ones(2, 3) @ wa  # d(sum ya)/dh; the yb path is cut
    torch.testing.assert_close(net.layers["ip0"].blobs[0].grad, expected.T @ blobs["data"])
    assert net.layers["b"].blobs[0].grad is not None  # its own params still learn
    torch.testing.assert_close(net.layers["b"].blobs[0].grad, torch.ones(3, 2) @ h)


def test_loss_weights_default_explicit_and_at_run_time():
    body = ('layer { name: "data" type: "Input" top: "data" top: "label" '
            'input_param { shape { dim: 4 dim: 6 } shape { dim: 4 } } }\n'
            + ip("fc", "data", "fc", extra="loss_weight: 0.25") +
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }\n'
            'layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" }\n')
    net = net_of(body)
    assert net.loss_weights == {"data": 0.0, "label": 0.0, "fc": 0.25, "loss": 1.0, "acc": 0.0}
    x, label = torch.randn(4, 6), torch.tensor([0.0, 2.0, 1.0, 2.0])
    blobs = net({"data": x, "label": label})
    ce = F.cross_entropy(blobs["fc"], label.long())
    torch.testing.assert_close(blobs["loss"], ce)
    torch.testing.assert_close(net.objective(blobs), ce + 0.25 * blobs["fc"].sum())
    net.loss_weights["loss"] = 0.1
    net.loss_weights["fc"] = 0.0
    torch.testing.assert_close(net.objective(blobs), 0.1 * ce)


def test_loss_weight_errors_follow_caffe():
    two_tops = ('layer { name: "data" type: "Input" top: "data" top: "label" '
                'input_param { shape { dim: 4 dim: 6 } shape { dim: 4 } } }\n'
                'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" '
                'top: "loss" top: "prob" }\n')
    with pytest.raises(NetBuildError, match="layer 'loss'.*one loss_weight per top"):
        net_of(two_tops)
    net = net_of(two_tops.replace('top: "prob" }', 'top: "prob" loss_weight: 1 loss_weight: 0 }'))
    assert net.loss_weights["loss"] == 1 and net.loss_weights["prob"] == 0
    with pytest.raises(NetBuildError, match="once per top"):
        net_of(INPUT + ip("fc", "data", "fc", extra="loss_weight: 1 loss_weight: 2"))
    with pytest.raises(NetBuildError, match="rewrites 'fc' in place"):
        net_of(INPUT + ip("fc", "data", "fc", extra="loss_weight: 1")
               + 'layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" }\n')


def test_learnable_params_order_multipliers_and_gradients():
    body = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }\n'
            'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            'param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 } '
            'convolution_param { num_output: 2 kernel_size: 3 } }\n'
            'layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }\n'
            'layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" param { lr_mult: 0 } '
            'scale_param { bias_term: true } }\n')
    net = net_of(body, "TRAIN")
    got = [(n, tuple(p.shape), lr, decay, p.requires_grad) for n, p, lr, decay in net.learnable_params()]
    assert got == [("conv/0", (2, 3, 3, 3), 1, 1, True), ("conv/1", (2,), 2, 0, True),
                   ("bn/0", (2,), 0, 1, False), ("bn/1", (2,), 0, 1, False), ("bn/2", (1,), 0, 1, False),
                   ("sc/0", (2,), 0, 1, False), ("sc/1", (2,), 1, 1, True)]
    with pytest.raises(NetBuildError, match="batch normalization statistics"):
        net_of(body.replace('"BatchNorm" bottom: "conv" top: "conv"', '"BatchNorm" bottom: "conv" top: "conv" param { lr_mult: 1 }'))


def test_layer_blobs_list_every_layer_with_shared_blobs_through_their_owner():
    body = INPUT + ip("a", "data", "a", extra='param { name: "w" } param { name: "b" }') \
        + ip("b", "data", "b", extra='param { name: "w" } param { name: "b" }') \
        + 'layer { name: "relu" type: "ReLU" bottom: "a" top: "a" }\n'
    net = net_of(body)
    entries = net.layer_blobs()
    assert [(lp.name, layer is None, len(slots)) for lp, layer, slots in entries] == \
        [("data", True, 0), ("a", False, 2), ("b", False, 2), ("relu", False, 0)]
    (_, a, a_slots), (_, _, b_slots) = entries[1], entries[2]
    assert [s.param is p for s, p in zip(b_slots, a.blobs)] == [True, True]
    assert [tuple(s.shape) for s in a_slots] == [(3, 6), (3,)]


def test_force_backward_fills_input_gradients():
    body = "force_backward: true\n" + INPUT + ip("fc", "data", "fc", extra="loss_weight: 1")
    net = net_of(body)
    blobs = net({"data": torch.randn(2, 6)})
    net.objective(blobs).backward()
    w = net.layers["fc"].blobs[0].detach()
    torch.testing.assert_close(blobs["data"].grad, torch.ones(2, 3) @ w)


def test_bad_nets_fail_at_build_time_with_the_layer_named():
    with pytest.raises(UnsupportedLayerError, match=r"layer 'roi' has type 'Region'.*supported types: .*Convolution"):
        net_of(INPUT + 'layer { name: "roi" type: "Region" bottom: "data" top: "out" }\n')
    with pytest.raises(ProtoError, match="layer 'fc'.*bottom 'nope'"):
        net_of(INPUT + ip("fc", "nope", "fc"))
    with pytest.raises(ProtoError, match="top 'data' is already produced"):
        net_of(INPUT + ip("fc", "data", "data2") + ip("fc2", "data2", "data"))
    with pytest.raises(ValueError, match="layer 'pool'"):
        net_of(INPUT + 'layer { name: "pool" type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 3 } }\n')
    image = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }\n'
    with pytest.raises(ShapeError, match=r"layer 'c' \(Convolution\): output size \[0, 0\]"):
        net_of(image + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
               'convolution_param { num_output: 2 kernel_size: 5 } }\n')
    with pytest.raises(NetBuildError, match="layer 'c' \\(Convolution\\): blob 0: bilinear filler needs .* square"):
        net_of(image + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param '
               '{ num_output: 2 kernel_h: 3 kernel_w: 2 weight_filler { type: "bilinear" } } }\n')


def test_forward_checks_input_names_and_shapes():
    net = net_of(INPUT + ip("fc", "data", "fc"))
    with pytest.raises(ValueError, match=r"input blob 'data' has shape \[3, 6\].*declares \[2, 6\]"):
        net({"data": torch.randn(3, 6)})
    with pytest.raises(ValueError, match=r"missing \['data'\]"):
        net({})


def test_dummy_data_source_feeds_forward():
    body = ('layer { name: "dummy" type: "DummyData" top: "data" top: "one" dummy_data_param { '
            'shape { dim: 2 dim: 6 } shape { dim: 2 dim: 3 } '
            'data_filler { type: "gaussian" std: 2 } data_filler { type: "constant" value: 1 } } }\n'
            + ip("fc", "data", "fc") +
            'layer { name: "sum" type: "Eltwise" bottom: "fc" bottom: "one" top: "s" }\n')
    net = net_of(body, source_kwargs={"seed": 5})
    assert net.input_names == ["data", "one"] and len(net.sources) == 1
    batches = iter(net.sources[0])
    first, second = next(batches), next(batches)
    assert not torch.equal(first["data"], second["data"])  # gaussian refills every pass
    assert torch.equal(first["one"], torch.ones(2, 3))
    blobs = net(first)
    torch.testing.assert_close(blobs["s"], blobs["fc"] + 1)
    again = iter(net_of(body, source_kwargs={"seed": 5}).sources[0])
    assert torch.equal(next(again)["data"], first["data"])


def test_source_errors_name_the_data_layer():
    body = ('layer { name: "dummy" type: "DummyData" top: "a" top: "b" dummy_data_param { '
            'shape { dim: 2 } data_filler { type: "constant" } data_filler { type: "constant" } '
            'data_filler { type: "constant" } } }\n')
    with pytest.raises(NetBuildError, match=r"layer 'dummy' \(DummyData\): 3 data_filler\(s\) for 2 tops"):
        net_of(body)
