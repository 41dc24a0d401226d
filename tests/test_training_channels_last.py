"""Training in channels_last keeps Caffe's numbers: after 10 SGD iterations of the solver's
TrainingStep from the same weights and batches, every weight is within 1e-5 (relative to
the blob's largest) of the NCHW net's."""
import copy

import torch

from bench.bench_converter import converted_net
from bench.bench_training import weights_gap_after_sgd


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
