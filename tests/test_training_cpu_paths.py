"""CPU training paths: channels_last with InnerProducts on oneDNN keeps Caffe's numbers
(the solver's SGD from the same weights and batches against the reference, NCHW with
F.linear: the loss within 1e-5 at every iteration, the weights within 1e-5 of the blob's
largest after 1 iteration and after 6, and no farther than the reference from itself
under a 1e-7 perturbation); under --amp on a CPU with native bf16 convolutions run in
bf16 and InnerProducts in fp32, on one without, training is fp32 and says why."""
import types

import pytest
import torch

from bench.bench_converter import converted_net
from bench.bench_training import channels_last_net, loss_gaps, perturbed, sgd_trajectories
from runner.layers import onednn_linear
from runner.precision import cpu_bf16_supported
from runner.proto import caffe_pb2
from runner.solver.step import TrainingStep


def test_fashion_mnist_cnds8_fast_path_matches_the_reference_over_6_iterations():
    torch.manual_seed(0)
    nchw = converted_net("models/fashion-mnist-cnds8/train_val.prototxt", 8, 1, 28)
    nhwc = channels_last_net(nchw)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 28, 28, generator=gen)
    label = torch.randint(0, 10, (8,), generator=gen).float()
    fc7 = nchw.layers["fc7"].blobs[0]
    assert fc7.numel() >= onednn_linear.MIN_WEIGHT_ELEMENTS, "no InnerProduct takes oneDNN at batch 8"
    before = nchw.learnable_params()[0][1].detach().clone()
    gaps, losses = sgd_trajectories([(nchw, {"data": x, "label": label}, True),
                                    (nhwc, {"data": x.contiguous(memory_format=torch.channels_last),
                                            "label": label}, False),
                                    (perturbed(nchw), {"data": x, "label": label}, True)], 6)
    assert not torch.equal(before, nchw.learnable_params()[0][1].detach()), "training moved nothing"
    assert losses[-1][0] < losses[0][0], f"the loss did not fall: {losses}"
    assert loss_gaps(losses)[0] <= 1e-5, f"channels_last's loss left the reference's: {losses}"
    assert nhwc.learnable_params()[0][1].is_contiguous(memory_format=torch.channels_last)
    assert gaps[0][0] <= 1e-5 and gaps[-1][0] <= 1e-5, f"the fast path drifted: {gaps}"
    assert 0 < gaps[-1][1], "the perturbation changed nothing"
    assert gaps[-1][0] <= 2 * gaps[-1][1], f"channels_last / perturbed NCHW gap: {gaps[-1]}"


def cpu_bf16(monkeypatch, supported: bool | None) -> None:
    """Make oneDNN report native bf16 or not on this CPU (None: torch without the check)."""
    if supported is None:
        monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace())
    else:
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: supported)


@pytest.mark.parametrize("supported", [True, False, None])
def test_cpu_bf16_supported_asks_onednn(monkeypatch, supported):
    cpu_bf16(monkeypatch, supported)
    assert cpu_bf16_supported() is bool(supported)


@pytest.mark.parametrize("supported", [False, None])
def test_amp_on_a_cpu_without_native_bf16_trains_in_fp32_and_says_why(monkeypatch, supported):
    cpu_bf16(monkeypatch, supported)
    net = converted_net("models/fashion-mnist-cnds8/train_val.prototxt", 4, 1, 28)
    param = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", type="SGD")
    warned = []
    train = TrainingStep(net, param, seed=1, amp=True, on_warning=warned.append)
    assert len(warned) == 1 and "no native bf16" in warned[0] and "training in fp32" in warned[0]
    assert "AVX512-BF16" in warned[0] and "reference path" in warned[0]
    assert not train.amp
    with train.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with pytest.warns(UserWarning, match="no native bf16"):     # without a log: a Python warning
        TrainingStep(net, param, seed=1, amp=True)


def test_amp_on_the_cpu_keeps_inner_products_in_fp32(monkeypatch):
    cpu_bf16(monkeypatch, True)
    net = converted_net("models/fashion-mnist-cnds8/train_val.prototxt", 4, 1, 28)
    param = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", type="SGD")
    warned = []
    train = TrainingStep(net, param, seed=1, amp=True, on_warning=warned.append)
    assert train.amp and not warned
    batch = {"data": torch.rand(4, 1, 28, 28), "label": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    with train.autocast():
        blobs = net(batch)
        assert torch.is_autocast_enabled("cpu"), "autocast is back on after each InnerProduct"
    types = {lp.top[0]: lp.type for lp in net.net_param.layer}
    conv = next(b for b, t in types.items() if t == "Convolution")
    fcs = [b for b, t in types.items() if t == "InnerProduct"]
    assert blobs[conv].dtype == torch.bfloat16
    assert fcs and all(blobs[b].dtype == torch.float32 for b in fcs)
    loss = train(iter([batch]), 0)
    assert torch.isfinite(torch.tensor(loss))
    assert all(p.grad is None or p.grad.dtype == torch.float32 for _, p, _, _ in net.learnable_params())
