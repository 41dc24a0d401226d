"""`caffe test`: score trained weights on a net for N batches, per batch and averaged."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from runner.solver.batches import BatchStream
from runner.solver.caffe_log import CaffeLog, cfloat


@dataclass
class Scores:
    """What `caffe test` ends with: the mean of every output element, and the mean loss."""
    outputs: dict[str, list[float]]
    loss: float


@torch.no_grad()
def score_net(net, iterations: int, device: torch.device, log: CaffeLog) -> Scores:
    """Caffe's `test` command on a built net; returns the averaged outputs and loss."""
    net.to(device)
    batches = BatchStream(net.sources, device)
    log.info("caffe.cpp:290", f"Running for {iterations} iterations.")
    sums: dict[str, torch.Tensor] = {}
    loss = 0.0
    for i in range(iterations):
        blobs = net(next(batches))
        loss += float(net.objective(blobs))
        for name in net.output_names:
            values = blobs[name].detach().double().reshape(-1).cpu()
            if name in sums and sums[name].numel() != values.numel():
                raise ValueError(
                    f"{net.origin}: output '{name}' has {values.numel()} values in batch {i} but "
                    f"{sums[name].numel()} before; `test` averages outputs of a fixed size (a "
                    "DetectionEvaluate net is scored by the solver's test pass with "
                    "eval_type: \"detection\")")
            sums[name] = sums[name] + values if name in sums else values
            for score in values.tolist():
                log.info("caffe.cpp:313", f"Batch {i}, {name} = {cfloat(score)}")
    log.info("caffe.cpp:318", f"Loss: {cfloat(loss / iterations)}")
    means = {}
    for name in net.output_names:
        weight = net.loss_weights.get(name, 0.0)
        means[name] = (sums[name] / iterations).tolist()
        for mean in means[name]:
            suffix = f" (* {cfloat(weight)} = {cfloat(weight * mean)} loss)" if weight else ""
            log.info("caffe.cpp:330", f"{name} = {cfloat(mean)}{suffix}")
    return Scores(means, loss / iterations)
