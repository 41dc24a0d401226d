"""What the solver feeds its nets: merged source batches, and shared trained layers."""
from __future__ import annotations

import torch

from runner.solver.errors import SolverConfigError


class BatchStream:
    """One Caffe Forward's inputs per `next()`: every source of a net, merged, on device.

    Sources that can (`to(device)`) make their batches there themselves: a Data layer
    sends its pixels as bytes and finishes them (float, mean, scale) on the device.
    `skip(n)` positions the stream after n batches (a resumed run continues where the
    interrupted one stopped); sources that can seek (`skip_batches`) do so directly.
    """

    def __init__(self, sources, device: torch.device, channels_last: bool = False):
        self.sources = [s.to(device) if hasattr(s, "to") else s for s in sources]
        self.iterators = [iter(s) for s in self.sources]
        self.device = device
        self.channels_last = channels_last

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = {}
        for it in self.iterators:
            batch.update(next(it))
        return {name: self._place(t) for name, t in batch.items()}

    def _place(self, t: torch.Tensor) -> torch.Tensor:
        if self.channels_last and t.dim() == 4 and t.is_floating_point():
            return t.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return t.to(self.device, non_blocking=True)

    def skip(self, n: int) -> None:
        for i, source in enumerate(self.sources):
            if hasattr(source, "skip_batches"):
                source.skip_batches(n)
                self.iterators[i] = iter(source)
            else:
                for _ in range(n):
                    next(self.iterators[i])


def share_trained_layers(test_net, train_net) -> int:
    """Caffe's Net::ShareTrainedLayersWith: layers of `test_net` named like a layer of
    `train_net` use the train layer's blobs (the same tensors). Returns how many."""
    trained = {}
    for layer in train_net.layers.values():
        trained.setdefault(layer.name, layer)
    shared = 0
    for layer in test_net.layers.values():
        source = trained.get(layer.name)
        if source is None or not len(layer.blobs):
            continue
        if len(source.blobs) != len(layer.blobs):
            raise SolverConfigError(
                f"layer '{layer.name}': the test net has {len(layer.blobs)} blobs, the train "
                f"net {len(source.blobs)}; cannot share trained layers")
        for j, (mine, theirs) in enumerate(zip(layer.blobs, source.blobs)):
            if mine.shape != theirs.shape:
                raise SolverConfigError(
                    f"Cannot share param {j} weights from layer '{layer.name}'; shape mismatch. "
                    f"Source param shape is {list(theirs.shape)}; target param shape is "
                    f"{list(mine.shape)}")
        layer.blobs = source.blobs
        shared += 1
    return shared
