"""`caffe time`: per-layer forward and backward milliseconds of a net's TRAIN pass.

Forward time per layer comes from module forward hooks; backward time from module
backward hooks (from the moment the gradient of a layer's tops is ready to the moment
its bottoms' gradients are). Data layers are timed as the fetch of their batch. On
CUDA every mark synchronises, so the numbers are per layer, not overlapped.
"""
from __future__ import annotations

import time
import warnings
from collections import defaultdict

import torch

from runner.solver.batches import BatchStream
from runner.solver.caffe_log import CaffeLog, cfloat


class LayerTimer:
    """Accumulates forward/backward seconds per layer of a Net.

    A layer's backward ends when the gradients of its bottoms and of its own blobs are
    all in place; for the first layer (no bottom needs a gradient) only the blobs count.
    """

    def __init__(self, net, device: torch.device):
        self.device = device
        self.forward = defaultdict(float)
        self.backward = defaultdict(float)
        self._started = {}
        self._backward_marks: dict[str, list[float]] = defaultdict(list)
        self.handles = []
        for layer in net.layers.values():
            name = layer.name
            self.handles += [
                layer.register_forward_pre_hook(self._mark_start("f", name)),
                layer.register_forward_hook(self._mark_forward_end(name)),
                layer.register_full_backward_pre_hook(self._mark_start("b", name)),
                layer.register_full_backward_hook(self._mark_backward(name)),
            ]
            for blob in layer.blobs:
                if blob.requires_grad:
                    self.handles.append(
                        blob.register_post_accumulate_grad_hook(self._mark_backward(name)))

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _mark_start(self, kind, name):
        def hook(*_):
            self._started.setdefault((kind, name), self.now())
        return hook

    def _mark_forward_end(self, name):
        def hook(*_):
            self.forward[name] += self.now() - self._started.pop(("f", name))
        return hook

    def _mark_backward(self, name):
        def hook(*_):
            self._backward_marks[name].append(self.now())
        return hook

    def end_backward(self) -> None:
        """After each backward pass: add each layer's start-to-last-mark time."""
        for name, marks in self._backward_marks.items():
            start = self._started.pop(("b", name), None)
            if start is not None:
                self.backward[name] += max(marks) - start
        self._backward_marks.clear()
        self._started.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def time_net(net, iterations: int, device: torch.device, log: CaffeLog) -> dict:
    """Caffe's `time` command on a built net; returns the averages in ms."""
    net.to(device)
    batches = BatchStream(net.sources, device)
    data_names = [getattr(s, "name", f"data{i}") for i, s in enumerate(net.sources)]
    params = [p for _, p, _, _ in net.learnable_params()]
    log.info("caffe.cpp:352", "Performing Forward")
    blobs = net(next(batches))
    loss = net.objective(blobs)
    log.info("caffe.cpp:354", f"Initial loss: {cfloat(loss.detach())}")
    log.info("caffe.cpp:355", "Performing Backward")
    if loss.requires_grad:
        loss.backward()
    timer = LayerTimer(net, device)
    data_time = 0.0
    forward_time = backward_time = 0.0
    log.info("caffe.cpp:363", "*** Benchmark begins ***")
    log.info("caffe.cpp:364", f"Testing for {iterations} iterations.")
    total_start = timer.now()
    try:
        with warnings.catch_warnings():
            # the first layer's backward hook fires early; its blobs' hooks mark its end
            warnings.filterwarnings("ignore", "Full backward hook is firing")
            for j in range(iterations):
                for p in params:
                    p.grad = None
                start = timer.now()
                batch = next(batches)
                data_time += timer.now() - start
                blobs = net(batch)
                loss = net.objective(blobs)
                mid = timer.now()
                forward_time += mid - start
                if loss.requires_grad:
                    loss.backward()
                end = timer.now()
                timer.end_backward()
                backward_time += end - mid
                log.info("caffe.cpp:391", f"Iteration: {j + 1} forward-backward time: "
                                          f"{cfloat((end - start) * 1e3)} ms.")
    finally:
        timer.remove()
    total = timer.now() - total_start
    per = 1e3 / iterations
    log.info("caffe.cpp:394", "Average time per layer: ")
    for name in data_names:
        log.info("caffe.cpp:397", f"{name:>10}\tforward: {cfloat(data_time / len(data_names) * per)} ms.")
        log.info("caffe.cpp:400", f"{name:>10}\tbackward: 0 ms.")
    for layer in net.layers.values():
        log.info("caffe.cpp:397", f"{layer.name:>10}\tforward: {cfloat(timer.forward[layer.name] * per)} ms.")
        log.info("caffe.cpp:400", f"{layer.name:>10}\tbackward: {cfloat(timer.backward[layer.name] * per)} ms.")
    result = {"forward": forward_time * per, "backward": backward_time * per,
              "forward_backward": total * per, "total": total * 1e3,
              "layers": {n: (timer.forward[n] * per, timer.backward[n] * per)
                         for n in (layer.name for layer in net.layers.values())}}
    log.info("caffe.cpp:403", f"Average Forward pass: {cfloat(result['forward'])} ms.")
    log.info("caffe.cpp:405", f"Average Backward pass: {cfloat(result['backward'])} ms.")
    log.info("caffe.cpp:407", f"Average Forward-Backward: {cfloat(result['forward_backward'])} ms.")
    log.info("caffe.cpp:409", f"Total Time: {cfloat(result['total'])} ms.")
    log.info("caffe.cpp:410", "*** Benchmark ends ***")
    return result
