"""A batch of 0, which Caffe's Blob::Reshape allows (CHECK_GE(shape[i], 0)): a Net built
with a 0 batch runs forward and backward through every layer below and gives empty tops,
and each loss the value Caffe's arithmetic gives with num = 0. A 0 anywhere but the batch
axis is still refused at build, naming the layer (its bottoms are too small for it)."""
import math
import re
from pathlib import Path

import pytest
import torch

from runner import Net
from runner.graph import NetBuildError
from runner.proto import parse_net_text

ROOT = Path(__file__).resolve().parents[1]
DATA = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 0 dim: 4 dim: 6 dim: 6 } } }\n'
LABEL = 'layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 0 } } }\n'
FLAT = ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param '
        '{ num_output: 5 weight_filler { type: "xavier" } } }\n')
FILLED = 'weight_filler { type: "xavier" }'

# type -> (layer body after name/type; bottoms taken from FLAT's "ip" when it reads "ip")
LAYERS = {
    "Convolution": f'bottom: "data" convolution_param {{ num_output: 3 kernel_size: 3 pad: 1 {FILLED} }}',
    "Deconvolution": f'bottom: "data" convolution_param {{ num_output: 3 kernel_size: 2 stride: 2 {FILLED} }}',
    "Pooling MAX": 'bottom: "data" pooling_param { pool: MAX kernel_size: 3 stride: 2 }',
    "Pooling AVE": 'bottom: "data" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }',
    "Pooling global": 'bottom: "data" pooling_param { pool: AVE global_pooling: true }',
    "SPP": 'bottom: "data" spp_param { pyramid_height: 2 }',
    "InnerProduct": f'bottom: "data" inner_product_param {{ num_output: 3 {FILLED} }}',
    "ReLU": 'bottom: "data"', "Sigmoid": 'bottom: "data"', "TanH": 'bottom: "data"',
    "PReLU": 'bottom: "data"', "ELU": 'bottom: "data"', "AbsVal": 'bottom: "data"',
    "Dropout": 'bottom: "data"',
    "BatchNorm": 'bottom: "data" batch_norm_param { use_global_stats: true }',
    "Scale": 'bottom: "data" scale_param { bias_term: true }', "Bias": 'bottom: "data"',
    "LRN": 'bottom: "data"', "MVN": 'bottom: "data"', "Softmax": 'bottom: "data"',
    "Normalize": 'bottom: "data"', "Permute": 'bottom: "data" permute_param { order: 0 order: 2 order: 3 order: 1 }',
    "Eltwise": 'bottom: "data" bottom: "data" eltwise_param { operation: SUM coeff: 1 coeff: -2 }',
    "Concat": 'bottom: "data" bottom: "data"',
    "Slice": 'bottom: "data" top: "b" slice_param { slice_point: 1 }',
    "Split": 'bottom: "data" top: "b"', "Flatten": 'bottom: "data"',
    "Reshape": 'bottom: "data" reshape_param { shape { dim: 0 dim: 2 dim: 72 } }',
    "Crop": 'bottom: "data" bottom: "data" crop_param { axis: 2 }',
    "Tile": 'bottom: "data" tile_param { axis: 1 tiles: 2 }',
    "ArgMax": 'bottom: "ip" argmax_param { top_k: 2 }',
    "Reduction": 'bottom: "data" reduction_param { axis: 1 operation: SUMSQ }',
    "Im2col": 'bottom: "data" convolution_param { kernel_size: 2 }',
}

# loss type -> (layer body, the loss Caffe computes at num = 0)
LOSSES = {
    # normalised by get_normalizer, which never goes below 1: 0 / 1
    "SoftmaxWithLoss": ('bottom: "ip" bottom: "label"', 0.0),
    "SigmoidCrossEntropyLoss": ('bottom: "ip" bottom: "ip_target"', 0.0),
    "InfogainLoss": ('bottom: "ip" bottom: "label" bottom: "H"', 0.0),
    # Accuracy: count == 0 gives 0
    "Accuracy": ('bottom: "ip" bottom: "label"', 0.0),
    # divided by num in float: 0 / 0 (Caffe's Hinge and MultinomialLogistic losses also
    # divide count / num as ints first, which traps there; the float quotient is NaN)
    "EuclideanLoss": ('bottom: "ip" bottom: "ip_target"', math.nan),
    "ContrastiveLoss": ('bottom: "ip" bottom: "ip_target" bottom: "label"', math.nan),
    "HingeLoss": ('bottom: "ip" bottom: "label"', math.nan),
    "MultinomialLogisticLoss": ('bottom: "prob" bottom: "label"', math.nan),
}
SIDE_INPUTS = (
    'layer { name: "t" type: "Input" top: "ip_target" input_param { shape { dim: 0 dim: 5 } } }\n'
    'layer { name: "H" type: "Input" top: "H" input_param { shape { dim: 1 dim: 1 dim: 5 dim: 5 } } }\n'
    'layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }\n')


def _run(body: str, phase: str = "TRAIN"):
    net = Net(parse_net_text("force_backward: true\n" + body), phase=phase)
    inputs = {name: torch.zeros(net.blob_shapes[name]) for name in net.input_names}
    if "H" in inputs:
        inputs["H"] = torch.eye(5).reshape(1, 1, 5, 5)
    blobs = net(inputs)
    objective = net.objective(blobs)
    if not objective.requires_grad:   # no loss layer: backpropagate the sum of the tops
        objective = sum(blobs[name].sum() for name in blobs if name not in inputs)
    objective.backward()
    return net, blobs


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_each_layer_runs_a_batch_of_zero(kind):
    layer_type = kind.split()[0]
    body = LAYERS[kind]
    tops = re.findall(r'top: "(\w+)"', body) or ["out"]
    body = re.sub(r'top: "\w+"', "", body)
    top_text = " ".join(f'top: "{t}"' for t in (["out"] + tops if tops != ["out"] else tops))
    text = DATA + (FLAT if '"ip"' in body else "") + (
        f'layer {{ name: "l" type: "{layer_type}" {body} {top_text} }}\n')
    net, blobs = _run(text)
    for name in ["out"] + [t for t in tops if t != "out"]:
        top = blobs[name]
        if layer_type == "Reduction":
            assert tuple(top.shape) == (0,)
        else:
            assert top.shape[0] == 0 and top.numel() == 0, (name, tuple(top.shape))
        assert tuple(top.shape) == tuple(net.blob_shapes[name])


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_each_loss_gives_caffes_value_at_a_batch_of_zero(kind):
    body, expected = LOSSES[kind]
    weight = "" if kind == "Accuracy" else "loss_weight: 1"
    text = DATA + LABEL + FLAT + SIDE_INPUTS + (
        f'layer {{ name: "l" type: "{kind}" {body} top: "out" {weight} }}\n')
    _, blobs = _run(text)
    value = float(blobs["out"].detach())
    assert (math.isnan(value) if math.isnan(expected) else value == expected), value
    if not math.isnan(expected):
        assert math.copysign(1.0, value) == 1.0   # +0: Caffe's log prints 0, not -0


@pytest.mark.parametrize("model", ["models/fashion-mnist-cnds8/deploy.prototxt",
                                   "bench/nets/resnet50.prototxt",
                                   "bench/nets/googlenet.prototxt"])
def test_deploy_nets_built_at_a_batch_of_zero_give_empty_outputs_in_every_form(model, tmp_path):
    """The committed deploy net and the BatchNorm + Scale + Eltwise and Concat + LRN nets:
    the plain Net and its optimised inference forms."""
    text = re.sub(r"(shape\s*\{\s*dim:\s*)\d+", r"\g<1>0", (ROOT / model).read_text(), count=1)
    path = tmp_path / "deploy.prototxt"
    path.write_text(text)
    net = Net(str(path), phase="TEST").eval()
    x = torch.zeros(net.blob_shapes["data"])
    assert x.shape[0] == 0
    classes = net.blob_shapes["prob"][1]
    with torch.no_grad():
        assert tuple(net({"data": x})["prob"].shape) == (0, classes)
        for form in ("folded", "packed"):
            fast = net.for_inference(form=form)
            assert fast.form == form
            assert tuple(fast({"data": x})["prob"].shape) == (0, classes)


def test_an_empty_axis_other_than_the_batch_is_refused_at_build_naming_the_layer():
    """Caffe would build these (a 3x3 pooling of a 2x2 map gives a 0x0 top) and compute
    nothing; a 0 there is a mistake, so it is named."""
    data = 'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {} }} }} }}\n'
    pool = ('layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
            'pooling_param { kernel_size: 3 } }\n')
    with pytest.raises(NetBuildError, match=r"layer 'pool' \(Pooling\): top 'pool' would be empty, "
                                            r"shape \[1, 1, 0, 0\] \(its bottoms are too small for it\)"):
        Net(parse_net_text(data.format("dim: 1 dim: 1 dim: 2 dim: 2") + pool))
    with pytest.raises(NetBuildError, match=r"layer 'data' \(Input\): top 'data' would be empty, "
                                            r"shape \[1, 0, 2, 2\]: only the first axis \(the batch\) "
                                            r"may be 0$"):
        Net(parse_net_text(data.format("dim: 1 dim: 0 dim: 2 dim: 2")))
