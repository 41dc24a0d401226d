"""Deploy-net facts read from the prototxt alone: Caffe shapes per layer."""
from __future__ import annotations

from runner.proto import filter_net
from runner.shapes import LayerShapes, Shape, infer_layer


def layer_shapes(net) -> list[tuple[object, LayerShapes]]:
    """Each TEST-phase layer with its Caffe shapes (tops and learnable blobs), in order."""
    blobs: dict[str, Shape] = {}
    walked = []
    for lp in filter_net(net, "TEST").layer:
        missing = [b for b in lp.bottom if b not in blobs]
        if missing:
            raise ValueError(f"layer '{lp.name}' reads blob '{missing[0]}', "
                             "which no earlier layer produces")
        shapes = infer_layer(lp, [blobs[b] for b in lp.bottom])
        blobs.update(zip(lp.top, shapes.tops))
        walked.append((lp, shapes))
    return walked
