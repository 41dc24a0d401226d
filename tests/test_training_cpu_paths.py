"""CPU training paths: channels_last keeps Caffe's numbers (after 10 SGD iterations of the
solver's TrainingStep from the same weights and batches, every weight within 1e-5 of the
NCHW net's, relative to the blob's largest); under --amp on the CPU convolutions run in
bf16 and InnerProducts in fp32."""
import copy

import torch

from bench.bench_converter import converted_net
from bench.bench_training import weights_gap_after_sgd
from runner.proto import caffe_pb2
from runner.solver.step import TrainingStep


def test_fashion_mnist_cnds8_channels_last_matches_nchw_after_10_iterations():
    torch.manual_seed(0)
    nchw = converted_net("models/fashion-mnist-cnds8/train_val.prototxt", 8, 1, 28)
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 28, 28, generator=gen)
    label = torch.randint(0, 10, (8,), generator=gen).float()
    before = nchw.learnable_params()[0][1].detach().clone()
    gap = weights_gap_after_sgd(nchw, nhwc, {"data": x, "label": label},
                                {"data": x.contiguous(memory_format=torch.channels_last),
                                 "label": label})
    assert not torch.equal(before, nchw.learnable_params()[0][1].detach()), "training moved nothing"
    assert nhwc.learnable_params()[0][1].is_contiguous(memory_format=torch.channels_last)
    assert gap <= 1e-5, f"channels_last drifted from NCHW by {gap:.2g} in 10 iterations"


def test_amp_on_the_cpu_keeps_inner_products_in_fp32():
    net = converted_net("models/fashion-mnist-cnds8/train_val.prototxt", 4, 1, 28)
    param = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", type="SGD")
    train = TrainingStep(net, param, seed=1, amp=True)
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
