"""Net.for_inference(): BatchNorm/Scale folded, convolutions packed with ReLU and sums fused,
and the outputs within 1e-4 of the plain Net on every committed deploy net and on
BatchNorm + Scale + Eltwise nets; a merge that would change what another layer reads is
not made."""
import weakref
from pathlib import Path

import pytest
import torch

from runner import Net
from runner.inference import InferenceNet, freed_after, max_difference, packed
from runner.inference.fold import Step
from runner.inference.packed import PackedConv, PackedLinear
from runner.proto import parse_net_text, read_net
from test_oracle_opencv import MODEL_NETS, SAMPLE_NETS, randomize, smallest_input

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4


def logits_and_outputs(net: Net) -> list[str]:
    """The net's outputs and, for a Softmax output, its input (probabilities saturate)."""
    names = list(net.output_names)
    for lp in net.net_param.layer:
        if lp.type == "Softmax" and lp.top[0] in net.output_names:
            names.append(lp.bottom[0])
    return names


def check_equal(net: Net, seed: int = 0, scale: float = 1.0, **kwargs) -> InferenceNet:
    """The inference form against the plain net on a fresh input (not its build example)."""
    randomize(net, torch.Generator().manual_seed(seed))
    fast = net.for_inference(outputs=logits_and_outputs(net), **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    inputs = {n: torch.randn(net.blob_shapes[n], generator=gen) * scale for n in net.input_names}
    with torch.no_grad():
        want = net(inputs)
    got = fast(inputs)
    assert set(got) == set(fast.output_names)
    diff = max_difference(got, want, fast.output_names)
    assert diff <= TOL, f"{net.origin}: optimised differs from the plain net by {diff:.3g}"
    return fast


def layer_types(fast: InferenceNet) -> list[str]:
    return [getattr(s.layer, "type", type(s.layer).__name__) for s in fast.steps]


@pytest.mark.parametrize("prototxt", MODEL_NETS, ids=lambda p: p.parent.name)
def test_every_committed_deploy_net_matches_the_plain_net(prototxt, tmp_path):
    net = Net(smallest_input(prototxt, tmp_path), phase="TEST")
    fast = check_equal(net, scale=50.0)
    assert fast.form == ("packed" if packed.available() else "folded")
    if packed.available():
        convs = [s.layer for s in fast.steps if isinstance(s.layer, PackedConv)]
        assert convs and all(c.relu for c in convs), "every conv of these nets feeds a ReLU"


@pytest.mark.skipif(not packed.available(), reason="this torch has no oneDNN ops")
@pytest.mark.parametrize("batch", [1, 4])
def test_inner_products_are_packed_with_their_relu(batch):
    param = read_net(ROOT / "models/fashion-mnist-cnds8/deploy.prototxt")
    param.layer[0].input_param.shape[0].dim[0] = batch
    fast = check_equal(Net(param, phase="TEST"), scale=50.0)
    linear = [s.layer for s in fast.steps if isinstance(s.layer, PackedLinear)]
    assert len(linear) == 3 and [p.relu for p in linear] == [True, True, False]
    assert "ReLU" not in layer_types(fast)


@pytest.mark.parametrize("prototxt", SAMPLE_NETS, ids=lambda p: p.stem)
def test_sample_nets_match_the_plain_net(prototxt):
    """CaffeNet-like (grouped convolutions, LRN), GoogLeNet inception, VGG-like, ResNet block."""
    fast = check_equal(Net(prototxt, phase="TEST"), scale=10.0)
    assert fast.form == ("packed" if packed.available() else "folded")


def test_batchnorm_scale_eltwise_net_is_folded_and_fused():
    net = Net(ROOT / "tests/data/nets/resnet_block.prototxt", phase="TEST")
    fast = check_equal(net, scale=3.0)
    types = layer_types(fast)
    assert "BatchNorm" not in types and "Scale" not in types
    if packed.available():
        assert fast.form == "packed"
        assert "Eltwise" not in types, "the residual sum runs inside a convolution"
        assert any(s.layer.add and s.layer.relu for s in fast.steps if isinstance(s.layer, PackedConv))


def test_bench_resnet50_folds_every_batchnorm(tmp_path):
    """The ResNet-50-shaped benchmark net (53 BatchNorm + Scale pairs, 16 sums) at 32x32."""
    text = (ROOT / "bench/nets/resnet50.prototxt").read_text().replace("dim: 224", "dim: 32")
    text = text.replace("kernel_size: 7\n    stride: 1", "kernel_size: 1\n    stride: 1")
    net = Net(parse_net_text(text, "resnet50@32"), phase="TEST")
    fast = check_equal(net)
    assert "BatchNorm" not in layer_types(fast) and "Scale" not in layer_types(fast)
    assert "Eltwise" not in layer_types(fast) or not packed.available()


FOLD_BLOCKED = """
name: "shared"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "bn" }
layer { name: "scale" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true } }
layer { name: "sum" type: "Eltwise" bottom: "conv" bottom: "bn" top: "sum" }
layer { name: "conv2" type: "Convolution" bottom: "sum" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv2" top: "r" }
layer { name: "relu_b" type: "ReLU" bottom: "conv2" top: "r2" }
"""


def test_a_conv_read_by_another_layer_keeps_its_batchnorm():
    net = Net(parse_net_text(FOLD_BLOCKED, "shared"), phase="TEST")
    fast = check_equal(net)
    types = layer_types(fast)
    assert "BatchNorm" in types, "conv's top is also read by 'sum': BatchNorm must stay"
    assert "Scale" in types, "Scale follows the BatchNorm, not a convolution"
    assert types.count("ReLU") == 2, "conv2 feeds two ReLUs: neither is fused into it"


def test_a_kept_blob_is_not_folded_away():
    net = Net(ROOT / "tests/data/nets/resnet_block.prototxt", phase="TEST")
    randomize(net, torch.Generator().manual_seed(3))
    first_conv = next(lp.top[0] for lp in net.net_param.layer if lp.type == "Convolution")
    # 'conv1' is rewritten in place by BatchNorm, Scale and ReLU: its final value (the
    # ReLU's) is what is kept, and it must equal the plain net's
    fast = net.for_inference(outputs=[first_conv] + net.output_names)
    x = {"data": torch.randn(net.blob_shapes["data"])}
    with torch.no_grad():
        want = net(x)
    assert max_difference(fast(x), want, fast.output_names) <= TOL


def test_batch_statistics_are_not_folded():
    text = FOLD_BLOCKED.replace('top: "bn" }', 'top: "bn" batch_norm_param { use_global_stats: false } }')
    net = Net(parse_net_text(text, "batch-stats"), phase="TEST")
    fast = check_equal(net)
    assert "BatchNorm" in layer_types(fast)


def test_bad_arguments_name_the_net():
    net = Net(ROOT / "tests/data/nets/resnet_block.prototxt", phase="TEST")
    with pytest.raises(ValueError, match="resnet_block.prototxt: no blob named \\['nope'\\]"):
        net.for_inference(outputs=["nope"])
    with pytest.raises(ValueError, match="form must be"):
        net.for_inference(form="fastest")
    with pytest.raises(ValueError, match="threads must be"):
        net.for_inference(threads=0)
    fast = net.for_inference()
    with pytest.raises(ValueError, match="resnet_block.prototxt: input blob 'data' has shape"):
        fast({"data": torch.zeros(1, 3, 16, 16)})


def test_forward_restores_the_thread_count():
    net = Net(ROOT / "tests/data/nets/resnet_block.prototxt", phase="TEST")
    before = torch.get_num_threads()
    fast = net.for_inference(threads=1)
    fast({"data": torch.randn(net.blob_shapes["data"])})
    assert torch.get_num_threads() == before


@pytest.mark.skipif(not packed.available(), reason="this torch has no oneDNN ops")
def test_weights_are_packed_for_each_thread_count_a_forward_runs_at():
    """oneDNN's layout depends on the thread count: a forward at a count the weights were
    not packed for packs them again (shared by the fused variants) and gives the same result."""
    net = Net(ROOT / "tests/data/nets/resnet_block.prototxt", phase="TEST")
    randomize(net, torch.Generator().manual_seed(5))
    x = {"data": torch.randn(net.blob_shapes["data"])}
    with torch.no_grad():
        want = net(x)
    fast = net.for_inference(threads=None)
    convs = [s.layer for s in fast.steps if isinstance(s.layer, PackedConv)]
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert max_difference(fast(x), want, fast.output_names) <= TOL
            assert all(threads in c.weights.by_threads for c in convs)
    finally:
        torch.set_num_threads(before)


def test_each_blob_is_dropped_after_its_last_use_and_kept_ones_never():
    identity = torch.nn.Identity()
    steps = [Step("s0", identity, ("data",), ("a",)), Step("s1", identity, ("a",), ("a",)),
             Step("s2", identity, ("a",), ("b",)), Step("s3", identity, ("a",), ("c",)),
             Step("s4", identity, ("b", "c"), ("d",)), Step("s5", identity, ("d",), ("e",))]
    assert freed_after(steps, keep=["d"]) == [("data",), (), (), ("a",), ("b", "c"), ("e",)]
    assert freed_after(steps, keep=["a", "e"]) == [("data",), (), (), (), ("b", "c"), ("d",)]


def test_a_forward_frees_what_no_later_layer_reads():
    net = Net(ROOT / "tests/data/nets/resnet_block.prototxt", phase="TEST")
    randomize(net, torch.Generator().manual_seed(4))
    fast = net.for_inference()
    freed_before_the_end = {name for names in fast._freed[:-1] for name in names}
    producer = next(s for s in fast.steps if freed_before_the_end & set(s.tops))
    which = next(k for k, top in enumerate(producer.tops) if top in freed_before_the_end)
    seen = {}
    producer.layer.register_forward_hook(
        lambda m, args, out: seen.update(early=weakref.ref(out[which])))
    fast.steps[-1].layer.register_forward_hook(
        lambda m, args, out: seen.update(alive=seen["early"]() is not None))
    x = {"data": torch.randn(net.blob_shapes["data"])}
    got = fast(x)
    assert seen["alive"] is False
    with torch.no_grad():
        assert max_difference(got, net(x), fast.output_names) <= TOL


def test_building_leaves_carried_state_and_counters_as_they_were(tmp_path):
    """for_inference's check forwards would advance an LSTM's carried state and a SegAccuracy
    summing over forwards (reset: false); both are put back, so the first forward after
    building computes what the plain net's first forward does."""
    text = '''name: "stateful"
input: "x" input_shape { dim: 3 dim: 2 dim: 4 }
input: "cont" input_shape { dim: 3 dim: 2 }
input: "label" input_shape { dim: 2 dim: 1 dim: 1 dim: 3 }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
  recurrent_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "scores" type: "Permute" bottom: "h" top: "scores" permute_param { order: 1 order: 2 order: 0 } }
layer { name: "grid" type: "Reshape" bottom: "scores" top: "grid" reshape_param { shape { dim: 2 dim: 5 dim: 1 dim: 3 } } }
layer { name: "acc" type: "SegAccuracy" bottom: "grid" bottom: "label" top: "acc" seg_accuracy_param { reset: false } }
'''
    torch.manual_seed(0)
    plain = Net(parse_net_text(text))
    twin = Net(parse_net_text(text))
    twin.load_state_dict(plain.state_dict())
    inputs = {"x": torch.randn(3, 2, 4), "cont": torch.ones(3, 2),
              "label": torch.randint(0, 5, (2, 1, 1, 3)).float()}
    fast = twin.for_inference(outputs=["h", "acc"], example=inputs)
    assert twin.layers["lstm"]._state is None
    assert twin.layers["acc"].confusion.sum() == 0
    with torch.no_grad():
        for _ in range(2):   # the second forward carries the first's state and confusion
            want, got = plain(inputs), fast(inputs)
            assert torch.equal(got["h"], want["h"]) and torch.equal(got["acc"], want["acc"])
