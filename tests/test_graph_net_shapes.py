"""One walk infers every blob's shape (runner.graph.infer_net_shapes): the converter's Net,
the generator's tables and the zoo's architecture table all read it, so they agree; a
bottom that no earlier layer produces is named in the error."""
from pathlib import Path

import pytest

from generator.summary import shape_table
from runner import Net
from runner.graph import infer_net_shapes
from runner.proto import filter_net, parse_net_text, read_net
from runner.shapes import LayerShapes, ShapeError
from runner.zoo.describe import architecture_table

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model", ["fashion-mnist-cnds8", "imagenet-cnn5"])
def test_net_table_and_zoo_read_the_same_shapes(model):
    deploy = read_net(str(ROOT / "models" / model / "deploy.prototxt"))
    shapes = infer_net_shapes(filter_net(deploy, "TEST"))
    assert Net(deploy, phase="TEST").blob_shapes == shapes.blobs
    rows = shape_table(deploy, "TEST")
    assert [(r.name, list(r.tops), list(r.blobs)) for r in rows] == \
        [(lp.name, [tuple(t) for t in s.tops], [tuple(b) for b in s.blobs]) for lp, s in shapes.layers]
    fc = next(r for r in rows if r.type == "InnerProduct")
    assert f"| {fc.name} | InnerProduct | {'×'.join(map(str, fc.tops[0]))} | {fc.params:,} |" \
        in architecture_table(deploy)


def test_a_bottom_nobody_produces_is_named():
    net = parse_net_text('''
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "dat" top: "conv"
  convolution_param { num_output: 2 kernel_size: 3 } }''', "miswired")
    with pytest.raises(ShapeError, match="layer 'conv' reads blob 'dat'"):
        infer_net_shapes(net)


@pytest.mark.parametrize("loss, axis_field", [("SoftmaxWithLoss", "softmax_param"),
                                              ("Accuracy", "accuracy_param")])
def test_a_label_count_that_does_not_match_the_predictions_is_refused_at_build(loss, axis_field):
    """Caffe's Reshape CHECK: one label per prediction, all axes but the class axis."""
    def net(label_dims, axis=1):
        return parse_net_text(f'''
layer {{ name: "data" type: "Input" top: "scores" top: "label"
  input_param {{ shape {{ dim: 4 dim: 3 dim: 5 }} shape {{ {" ".join(f"dim: {d}" for d in label_dims)} }} }} }}
layer {{ name: "loss" type: "{loss}" bottom: "scores" bottom: "label" top: "out"
  {axis_field} {{ axis: {axis} }} }}''', "labels")
    infer_net_shapes(net([4, 5]))            # 4 x 5 predictions of 3 classes
    infer_net_shapes(net([4, 3], axis=2))    # 4 x 3 predictions of 5 classes
    with pytest.raises(ShapeError, match=rf"layer 'loss' \({loss}\): bottom 'label' holds 2 "
                                         r"labels for predictions of shape \[4, 3, 5\] \(class "
                                         r"axis 1\), which need 20: one per prediction"):
        infer_net_shapes(net([2]))


def test_an_in_place_top_keeps_its_last_shape_and_make_overrides_the_rule():
    net = parse_net_text('''
layer { name: "data" type: "Data" top: "data" top: "label" }
layer { name: "pool" type: "Pooling" bottom: "data" top: "data"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }''', "in-place")
    given = {"data": (2, 3, 9, 9), "label": (2,)}
    def data_tops(lp, _bottoms):
        return LayerShapes([given[t] for t in lp.top]) if lp.type == "Data" else None

    shapes = infer_net_shapes(net, data_tops)
    assert shapes.blobs == {"data": (2, 3, 5, 5), "label": (2,)}   # ceil((9-2)/2)+1 = 5

