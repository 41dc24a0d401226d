"""SSD's layers (weiliu89/caffe) and ReLU6 against loop-by-loop transcriptions of the
fork's C++ (tests/ssd_reference.py): Normalize and Permute forward and backward, PriorBox
boxes, DetectionOutput decoding and NMS; Normalize's scale blob through a .caffemodel."""
import numpy as np
import pytest
import ssd_reference as ref
import torch

from runner import Net
from runner.layers import bbox
from runner.layers.normalization import _NormalizeFunction
from runner.proto import caffe_pb2, read_caffemodel
from runner.shapes import ShapeError

from layer_helpers import layer_from_text


# ---- Normalize ---------------------------------------------------------------------

def _normalize(shape, across_spatial, channel_shared, eps=1e-10):
    text = (f'name: "norm" type: "Normalize" norm_param {{ across_spatial: {str(across_spatial).lower()} '
            f'channel_shared: {str(channel_shared).lower()} eps: {eps} }}')
    return layer_from_text(text, [shape]).double()


@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (3, 6, 7), (4, 8)])
@pytest.mark.parametrize("across_spatial", [True, False])
@pytest.mark.parametrize("channel_shared", [True, False])
def test_normalize_forward_and_backward_match_the_fork(shape, across_spatial, channel_shared):
    gen = torch.Generator().manual_seed(1)
    layer = _normalize(shape, across_spatial, channel_shared, eps=1e-3)
    with torch.no_grad():
        layer.blobs[0].copy_(torch.rand(layer.blobs[0].shape, generator=gen, dtype=torch.float64) * 20 + 1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    (y,) = layer(x)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    y.backward(g)

    x3 = x.detach().numpy().reshape(shape[0], shape[1], -1)
    scale = layer.blobs[0].detach().numpy()
    expected, norms = ref.normalize_forward(x3, scale.reshape(-1), across_spatial, np.float32(1e-3))
    np.testing.assert_allclose(y.detach().numpy(), expected.reshape(shape), rtol=1e-12)
    dx, dscale = ref.normalize_backward(x3, scale.reshape(-1), expected, g.numpy().reshape(x3.shape),
                                        norms, across_spatial)
    np.testing.assert_allclose(x.grad.numpy(), dx.reshape(shape), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(), dscale.reshape(scale.shape), rtol=1e-10)


@pytest.mark.parametrize("across_spatial", [True, False])
def test_normalize_shared_scale_gradient_is_the_true_gradient(across_spatial):
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, s: _NormalizeFunction.apply(a, s, across_spatial, 1e-3), (x, scale))


def test_normalize_by_hand():
    # one pixel (3, 4) across channels: norm 5, scale 20 -> (12, 16)
    layer = _normalize((1, 2, 1, 1), across_spatial=False, channel_shared=True, eps=0)
    with torch.no_grad():
        layer.blobs[0].fill_(20)
    (y,) = layer(torch.tensor([3.0, 4.0], dtype=torch.float64).reshape(1, 2, 1, 1))
    assert y.flatten().tolist() == pytest.approx([12.0, 16.0])


NORM_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 3 dim: 3 } } }
layer { name: "shared" type: "Normalize" bottom: "data" top: "a" }
layer { name: "per_channel" type: "Normalize" bottom: "data" top: "b"
        norm_param { across_spatial: false channel_shared: false scale_filler { type: "constant" value: 20 } } }
"""


def test_normalize_scale_blob_fills_saves_and_loads(tmp_path):
    (tmp_path / "n.prototxt").write_text(NORM_NET)
    net = Net(tmp_path / "n.prototxt")
    shared, per_channel = net.layers["shared"].blobs[0], net.layers["per_channel"].blobs[0]
    assert shared.shape == () and shared.item() == 1.0          # default filler: constant 1
    assert per_channel.shape == (4,) and per_channel.tolist() == [20.0] * 4
    with torch.no_grad():
        shared.fill_(7.5)
        per_channel.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    net.save_caffemodel(tmp_path / "n.caffemodel")
    blobs = {lp.name: lp.blobs for lp in read_caffemodel(tmp_path / "n.caffemodel").layer}
    assert not blobs["shared"][0].HasField("shape") and list(blobs["shared"][0].data) == [7.5]
    assert list(blobs["per_channel"][0].shape.dim) == [4]
    again = Net(tmp_path / "n.prototxt", weights=tmp_path / "n.caffemodel")
    assert again.layers["shared"].blobs[0].item() == 7.5
    assert again.layers["per_channel"].blobs[0].tolist() == [1.0, 2.0, 3.0, 4.0]
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(again({"data": x})["b"], net({"data": x})["b"])


# ---- Permute -----------------------------------------------------------------------

@pytest.mark.parametrize("order,expected", [([0, 2, 3, 1], [0, 2, 3, 1]), ([2], [2, 0, 1, 3]),
                                            ([1, 0], [1, 0, 2, 3]), ([], [0, 1, 2, 3])])
def test_permute_forward_and_backward_match_the_fork(order, expected):
    shape = (2, 3, 4, 5)
    text = 'name: "perm" type: "Permute" permute_param { ' + " ".join(f"order: {o}" for o in order) + " }"
    layer = layer_from_text(text, [shape]).double()
    assert layer.order == expected
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    (y,) = layer(x)
    assert tuple(y.shape) == layer.top_shapes[0]
    np.testing.assert_array_equal(y.detach().numpy(), ref.permute_forward(x.detach().numpy(), expected))
    g = torch.randn(y.shape, dtype=torch.float64)
    y.backward(g)
    np.testing.assert_array_equal(x.grad.numpy(), ref.permute_backward(shape, g.numpy(), expected))


@pytest.mark.parametrize("order,message", [("order: 4", "order 4 is not an axis of a 4-D bottom"),
                                           ("order: 1 order: 1", "repeats an axis")])
def test_permute_rejects_bad_orders(order, message):
    with pytest.raises(ShapeError, match=f"layer 'perm'.*{message}"):
        layer_from_text(f'name: "perm" type: "Permute" permute_param {{ {order} }}', [(2, 3, 4, 5)])


# ---- PriorBox ----------------------------------------------------------------------

PRIOR_CASES = [
    # (feature h, w, image h, w, prior_box_param text, reference kwargs)
    (3, 3, 300, 300, "min_size: 30 max_size: 60 aspect_ratio: 2 variance: 0.1 variance: 0.1 "
     "variance: 0.2 variance: 0.2 step: 100", dict(min_sizes=[30], max_sizes=[60], aspect_ratios=[2],
                                                   variances=[0.1, 0.1, 0.2, 0.2], step=100)),
    (5, 4, 64, 48, "min_size: 10.7 min_size: 21 max_size: 20 max_size: 33 aspect_ratio: 2 aspect_ratio: 3 "
     "aspect_ratio: 2.0000001 flip: false clip: true variance: 0.3 offset: 0.25",
     dict(min_sizes=[10.7, 21], max_sizes=[20, 33], aspect_ratios=[2, 3, 2.0000001], flip=False,
          clip=True, variances=[0.3], offset=0.25)),
    (2, 6, 40, 90, "min_size: 16 aspect_ratio: 0.5 aspect_ratio: 1 clip: true",
     dict(min_sizes=[16], aspect_ratios=[0.5, 1], clip=True)),
]


@pytest.mark.parametrize("fh,fw,ih,iw,params,kwargs", PRIOR_CASES)
def test_prior_box_matches_the_fork(fh, fw, ih, iw, params, kwargs):
    layer = layer_from_text(f'name: "pb" type: "PriorBox" prior_box_param {{ {params} }}',
                            [(2, 8, fh, fw), (2, 3, ih, iw)])
    (top,) = layer(torch.zeros(2, 8, fh, fw), torch.zeros(2, 3, ih, iw))
    expected = ref.prior_box(fh, fw, ih, iw, **kwargs)
    assert tuple(top.shape) == layer.top_shapes[0] == expected.shape
    np.testing.assert_array_equal(top.numpy(), expected)


@pytest.mark.parametrize("extra,feature,image,row", [("", (10, 10), (100, 100), 4),
                                                     ("img_size: 100 step: 10", (20, 10), (200, 100), 14)])
def test_prior_box_reproduces_the_forks_own_tests(extra, feature, image, row):
    """Values the fork's test_prior_box_layer.cpp expects (TestCPUAspectRatio and
    TestCPUFixStep): min_size 4, max_size 9, aspect ratio 2 flipped, on a 100-pixel image."""
    text = ('name: "pb" type: "PriorBox" '
            f"prior_box_param {{ min_size: 4 max_size: 9 aspect_ratio: 2 {extra} }}")
    layer = layer_from_text(text, [(10, 10, *feature), (10, 3, *image)])
    (top,) = layer(torch.zeros(10, 10, *feature), torch.zeros(10, 3, *image))
    boxes = top[0, 0].double().reshape(feature[0], feature[1], 4, 4).numpy()
    def cell(x, y):   # min square, max square, 2:1 and 1:2 boxes centred at (x, y)
        r = 2 ** 0.5
        return [[x - 0.02, y - 0.02, x + 0.02, y + 0.02], [x - 0.03, y - 0.03, x + 0.03, y + 0.03],
                [x - 0.02 * r, y - 0.01 * r, x + 0.02 * r, y + 0.01 * r],
                [x - 0.01 * r, y - 0.02 * r, x + 0.01 * r, y + 0.02 * r]]

    np.testing.assert_allclose(boxes[0, 0], cell(0.05, 0.05), atol=1e-6)
    np.testing.assert_allclose(boxes[row, 4], cell(0.45, 0.05 + row * 0.1), atol=1e-6)
    np.testing.assert_allclose(top[0, 1].numpy(), 0.1, atol=1e-6)


def test_prior_box_image_size_and_steps_from_parameters():
    text = ('name: "pb" type: "PriorBox" '
            'prior_box_param { min_size: 8 img_h: 50 img_w: 70 step_h: 9 step_w: 11 }')
    layer = layer_from_text(text, [(1, 2, 4, 5), (1, 3, 10, 10)])
    (top,) = layer(torch.zeros(1, 2, 4, 5), torch.zeros(1, 3, 10, 10))
    # the first cell's square: centre (0.5 * 11, 0.5 * 9), side 8, in a 70 x 50 image
    assert top[0, 0, :4].tolist() == pytest.approx([(5.5 - 4) / 70, (4.5 - 4) / 50,
                                                    (5.5 + 4) / 70, (4.5 + 4) / 50])
    assert top[0, 1].unique().tolist() == pytest.approx([0.1])


@pytest.mark.parametrize("params,message", [
    ("min_size: 30 max_size: 20", "max_size 20 must be greater than min_size 30"),
    ("min_size: 30 variance: 0.1 variance: 0.2", "give 1 or 4 variances"),
    ("min_size: 30 img_size: 300 img_h: 300 img_w: 300", "either img_size or img_h/img_w"),
    ("min_size: -1", "min_size must be positive"),
    ("max_size: 4", "needs at least one min_size"),
])
def test_prior_box_rejects_bad_parameters(params, message):
    with pytest.raises(ValueError, match=f"layer 'pb'.*{message}"):
        layer_from_text(f'name: "pb" type: "PriorBox" prior_box_param {{ {params} }}',
                        [(1, 2, 3, 3), (1, 3, 30, 30)])


# ---- DetectionOutput ---------------------------------------------------------------

def _random_detection_inputs(gen, num, priors, classes, loc_classes, spread=1.0):
    """Priors as centre boxes inside the image, loc offsets, softmax confidences."""
    centre = torch.rand(priors, 2, generator=gen) * 0.8 + 0.1
    half = torch.rand(priors, 2, generator=gen) * 0.2 + 0.05
    boxes = torch.cat([centre - half, centre + half], dim=1).reshape(-1)
    variances = torch.tensor([0.1, 0.1, 0.2, 0.2]).repeat(priors)
    prior = torch.stack([boxes, variances]).reshape(1, 2, -1)
    loc = torch.randn(num, priors * loc_classes * 4, generator=gen) * spread
    conf = torch.softmax(torch.randn(num, priors, classes, generator=gen) * 3, dim=-1).reshape(num, -1)
    return loc, conf, prior


def _detection_layer(priors, classes, num, share_location, **fields):
    nms = {k: fields.pop(k) for k in ("nms_threshold", "top_k", "eta") if k in fields}
    text = ('name: "det" type: "DetectionOutput" detection_output_param { '
            f'num_classes: {classes} share_location: {str(share_location).lower()} '
            + " ".join(f"{k}: {v}" for k, v in fields.items())
            + " nms_param { " + " ".join(f"{k}: {v}" for k, v in nms.items()) + " } }")
    loc_classes = 1 if share_location else classes
    return layer_from_text(text, [(num, priors * loc_classes * 4), (num, priors * classes), (1, 2, priors * 4)])


DETECTION_CASES = [
    dict(code_type="CENTER_SIZE", nms_threshold=0.45, top_k=30, keep_top_k=12, confidence_threshold=0.05),
    dict(code_type="CORNER", nms_threshold=0.3),
    dict(code_type="CORNER_SIZE", variance_encoded_in_target="true", nms_threshold=0.8, eta=0.9),
    dict(code_type="CENTER_SIZE", share_location=False, background_label_id=-1, nms_threshold=0.6,
         top_k=10, keep_top_k=25),
    dict(code_type="CENTER_SIZE", variance_encoded_in_target="true", background_label_id=2,
         confidence_threshold=0.2, eta=0.7, nms_threshold=0.7),
]


@pytest.mark.parametrize("case", DETECTION_CASES)
@pytest.mark.parametrize("block", [bbox.NMS_BLOCK, 7])
def test_detection_output_matches_the_fork(case, block, monkeypatch):
    monkeypatch.setattr(bbox, "NMS_BLOCK", block)   # overlaps in one block, or in many
    case = dict(case)
    share_location = case.pop("share_location", True)
    num, priors, classes = 2, 60, 4
    gen = torch.Generator().manual_seed(len(case))
    loc, conf, prior = _random_detection_inputs(gen, num, priors, classes, 1 if share_location else classes)
    layer = _detection_layer(priors, classes, num, share_location, **case)
    (top,) = layer(loc, conf, prior)

    kwargs = {k: v for k, v in case.items() if k not in ("code_type", "variance_encoded_in_target")}
    expected = ref.detection_output(
        loc.numpy(), conf.numpy(), prior.numpy(), classes, share_location=share_location,
        code_type=caffe_pb2.PriorBoxParameter.CodeType.Value(case["code_type"]),
        variance_encoded_in_target=case.get("variance_encoded_in_target") == "true", **kwargs)
    assert top.shape[2] > num       # NMS kept several boxes per image
    np.testing.assert_array_equal(top.numpy(), expected)


def _fork_test_fixture(share_location):
    """DetectionOutputLayerTest's data (the fork's src/caffe/test): 2 images, 4 priors of
    side 0.3 on a 2x2 grid, 2 classes, loc offsets +-(image + class / 2 + 0.5)."""
    prior = np.zeros((2, 2, 16, 1), np.float32)   # the prior blob as the test shapes it
    half, boxes = np.float32(0.3) / 2, []
    for h in range(2):
        for w in range(2):
            cx, cy = np.float32((w + 0.5) * 0.5), np.float32((h + 0.5) * 0.5)
            boxes += [cx - half, cy - half, cx + half, cy + half]
    prior[0, 0, :, 0], prior[0, 1, :, 0] = boxes, 0.1
    conf = [j * 0.2 if i % 2 == c % 2 else 1 - j * 0.2 for i in range(2) for j in range(4) for c in range(2)]
    loc_classes = 1 if share_location else 2
    loc = [(-1 if axis % 2 else 1) * (i + c / 2 + 0.5)
           for i in range(2) for h in range(2) for w in range(2) for c in range(loc_classes)
           for axis in (w, h, w, h)]
    return (torch.tensor(loc, dtype=torch.float32).reshape(2, -1, 1, 1),
            torch.tensor(conf, dtype=torch.float32).reshape(2, -1, 1, 1), torch.from_numpy(prior))


FORK_TEST_EXPECTATIONS = {   # (share_location, background_label_id, top_k): rows
    (True, 0, -1): ["0 1 1.0 0.15 0.15 0.45 0.45", "0 1 0.8 0.55 0.15 0.85 0.45",
                    "0 1 0.6 0.15 0.55 0.45 0.85", "0 1 0.4 0.55 0.55 0.85 0.85",
                    "1 1 0.6 0.45 0.45 0.75 0.75", "1 1 0.0 0.25 0.25 0.55 0.55"],
    (True, 0, 2): ["0 1 1.0 0.15 0.15 0.45 0.45", "0 1 0.8 0.55 0.15 0.85 0.45",
                   "1 1 0.6 0.45 0.45 0.75 0.75"],
    (False, -1, -1): ["0 0 0.6 0.55 0.55 0.85 0.85", "0 0 0.4 0.15 0.55 0.45 0.85",
                      "0 0 0.2 0.55 0.15 0.85 0.45", "0 0 0.0 0.15 0.15 0.45 0.45",
                      "0 1 1.0 0.20 0.20 0.50 0.50", "0 1 0.8 0.50 0.20 0.80 0.50",
                      "0 1 0.6 0.20 0.50 0.50 0.80", "0 1 0.4 0.50 0.50 0.80 0.80",
                      "1 0 1.0 0.25 0.25 0.55 0.55", "1 0 0.4 0.45 0.45 0.75 0.75",
                      "1 1 0.6 0.40 0.40 0.70 0.70"],
    (False, -1, 2): ["0 0 0.6 0.55 0.55 0.85 0.85", "0 0 0.4 0.15 0.55 0.45 0.85",
                     "0 1 1.0 0.20 0.20 0.50 0.50", "0 1 0.8 0.50 0.20 0.80 0.50",
                     "1 0 1.0 0.25 0.25 0.55 0.55", "1 1 0.6 0.40 0.40 0.70 0.70"],
    (False, 0, -1): ["0 1 1.0 0.20 0.20 0.50 0.50", "0 1 0.8 0.50 0.20 0.80 0.50",
                     "0 1 0.6 0.20 0.50 0.50 0.80", "0 1 0.4 0.50 0.50 0.80 0.80",
                     "1 1 0.6 0.40 0.40 0.70 0.70"],
    (False, 0, 2): ["0 1 1.0 0.20 0.20 0.50 0.50", "0 1 0.8 0.50 0.20 0.80 0.50",
                    "1 1 0.6 0.40 0.40 0.70 0.70"],
}


@pytest.mark.parametrize("share_location,background,top_k", sorted(FORK_TEST_EXPECTATIONS))
def test_detection_output_reproduces_the_forks_own_tests(share_location, background, top_k):
    """The expected rows of the fork's test_detection_output_layer.cpp (CORNER code,
    variance 0.1, nms_threshold 0.1, no confidence threshold)."""
    loc, conf, prior = _fork_test_fixture(share_location)
    nms = "nms_threshold: 0.1" + (f" top_k: {top_k}" if top_k > -1 else "")
    text = ('name: "det" type: "DetectionOutput" detection_output_param { num_classes: 2 '
            f"share_location: {str(share_location).lower()} background_label_id: {background} "
            f"nms_param {{ {nms} }} }}")
    layer = layer_from_text(text, [tuple(loc.shape), tuple(conf.shape), tuple(prior.shape)])
    (top,) = layer(loc, conf, prior)
    expected = np.array([[float(v) for v in row.split()] for row in FORK_TEST_EXPECTATIONS[
        share_location, background, top_k]], np.float32)
    rows = top.reshape(-1, 7).numpy()
    assert rows.shape == expected.shape
    np.testing.assert_array_equal(rows[:, :2], expected[:, :2])
    np.testing.assert_allclose(rows[:, 2:], expected[:, 2:], rtol=0, atol=1e-6)   # the fork's eps


def test_detection_output_nms_by_hand():
    # three priors; box 1 overlaps box 0 (IoU 2/3), box 2 is apart; class 1 scores 0.9, 0.8, 0.7
    prior = torch.tensor([[[0.0, 0.0, 0.5, 0.5, 0.0, 0.1, 0.5, 0.6, 0.6, 0.6, 0.9, 0.9],
                           [0.1] * 12]])
    conf = torch.tensor([[0.1, 0.9, 0.2, 0.8, 0.3, 0.7]])
    layer = _detection_layer(3, 2, 1, True, nms_threshold=0.5, code_type="CORNER")
    (top,) = layer(torch.zeros(1, 12), conf, prior)
    assert top.flatten().tolist() == pytest.approx([0, 1, 0.9, 0.0, 0.0, 0.5, 0.5,
                                                   0, 1, 0.7, 0.6, 0.6, 0.9, 0.9])
    loose = _detection_layer(3, 2, 1, True, nms_threshold=0.7, code_type="CORNER", keep_top_k=2)
    assert loose(torch.zeros(1, 12), conf, prior)[0][0, 0, :, 2].tolist() == pytest.approx([0.9, 0.8])


def test_detection_output_without_detections_writes_one_row_per_image():
    gen = torch.Generator().manual_seed(3)
    loc, conf, prior = _random_detection_inputs(gen, 3, 10, 3, 1)
    layer = _detection_layer(10, 3, 3, True, confidence_threshold=1.5)
    (top,) = layer(loc, conf, prior)
    assert top.reshape(-1, 7).tolist() == [[i, -1, -1, -1, -1, -1, -1] for i in range(3)]


@pytest.mark.parametrize("fields,shapes,message", [
    ("num_classes: 3", [(1, 40), (1, 30), (1, 2, 40)], None),
    ("num_classes: 3", [(1, 44), (1, 30), (1, 2, 40)], "loc bottom .* needs 40 channels"),
    ("num_classes: 4", [(1, 40), (1, 30), (1, 2, 40)], "conf bottom .* needs 40 channels"),
    ("share_location: true", [(1, 40), (1, 30), (1, 2, 40)], "num_classes is required"),
    ("num_classes: 3 visualize: true", [(1, 40), (1, 30), (1, 2, 40)], "visualize and save_output_param"),
    ("num_classes: 3 nms_param { eta: 1.5 }", [(1, 40), (1, 30), (1, 2, 40)], r"eta must be in \(0, 1\]"),
    # the fork skips decoding label -1, its background, then aborts looking for it
    ("num_classes: 3 background_label_id: -1", [(1, 40), (1, 30), (1, 2, 40)],
     "background_label_id -1 with share_location.*Could not find location predictions"),
    ("num_classes: 3 background_label_id: -1 share_location: false", [(1, 120), (1, 30), (1, 2, 40)], None),
])
def test_detection_output_checks_its_bottoms_and_parameters(fields, shapes, message):
    text = f'name: "det" type: "DetectionOutput" detection_output_param {{ {fields} }}'
    if message is None:
        assert layer_from_text(text, shapes).top_shapes == [(1, 1, 1, 7)]
        return
    with pytest.raises(ValueError, match=f"layer 'det'.*{message}"):
        layer_from_text(text, shapes)


# ---- ReLU6 -------------------------------------------------------------------------

def test_relu6_clips_to_0_and_6_with_the_gradient_inside():
    x = torch.tensor([-2.0, 0.0, 0.5, 5.9, 6.0, 9.0], dtype=torch.float64, requires_grad=True)
    (y,) = layer_from_text('name: "r" type: "ReLU6"', [(6,)])(x)
    assert y.tolist() == [0.0, 0.0, 0.5, 5.9, 6.0, 6.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]


def test_relu6_refuses_relu_param():
    with pytest.raises(ValueError, match="layer 'r': ReLU6 takes no relu_param"):
        layer_from_text('name: "r" type: "ReLU6" relu_param { negative_slope: 0.1 }', [(6,)])
