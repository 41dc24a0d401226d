"""The probe trains through the Solver's own training step: from the same seed on the same
net (dropout, random crops and mirrors, iter_size 2, clipping, a step lr policy) five probe
iterations leave exactly the weights that five Solver iterations leave."""
import torch

from generator.probe.gradients import probe_net, record_training
from runner.solver.batches import BatchStream
from solver_helpers import classifier_net, make_lmdb, make_solver


def test_probe_and_solver_reach_identical_weights_after_five_iterations(tmp_path):
    source = make_lmdb(tmp_path / "train_lmdb", 24, side=10)
    net_text = classifier_net(source, 4, crop=8, mirror=True, dropout=0.5)
    solver = make_solver(net_text, tmp_path / "snap" / "s", max_iter=5, iter_size=2,
                         clip_gradients=0.5, lr_policy='"step"', stepsize=2, gamma=0.5,
                         snapshot_after_train="false")
    start = {name: p.detach().clone() for name, p, *_ in solver.net.learnable_params()}
    solver.solve()

    net = probe_net(solver.param.net_param, solver.seed)
    for name, p, *_ in net.learnable_params():
        assert torch.equal(p, start[name]), f"{name}: the probe drew other initial weights"
    record = record_training(net, solver.param, 5, BatchStream(net.sources, torch.device("cpu")),
                             seed=solver.seed)
    assert len(record.losses) == 5
    probed = dict((name, p) for name, p, *_ in net.learnable_params())
    for name, p, *_ in solver.net.learnable_params():
        assert not torch.equal(p, start[name]), f"{name}: the solver did not train it"
        assert torch.equal(probed[name], p), \
            f"{name}: max |probe - solver| {(probed[name] - p).abs().max().item():.3g}"
