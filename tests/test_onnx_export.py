"""ONNX export checked by ONNX Runtime: every blob of the exported graph equals our forward
within 1e-4 of the largest value, for every committed deploy net, the sample nets and a
BVLC-style net with the layers whose ONNX form needs care; the graph passes onnx.checker."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_oracle_opencv import randomize, smallest_input
from test_ssd_opencv import ssd300_deploy

from runner import Net
from runner.onnx_export import OnnxExportError, build_model
from runner.proto import read_net, to_text

ROOT = Path(__file__).resolve().parents[1]
NETS = ROOT / "tests" / "data" / "nets"
MODEL_NETS = sorted(ROOT.glob("models/*/deploy.prototxt"))
SAMPLE_NETS = [NETS / f"{name}.prototxt" for name in
               ("onnx_bvlc_style", "caffenet_like", "vgg_like", "googlenet_inception", "resnet_block")]


def run_onnx(model: onnx.ModelProto, inputs: dict) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: v.numpy() for k, v in inputs.items()})))


def computed_blobs(net: Net) -> list[str]:
    """Every blob some layer writes (its final value), in order."""
    return list(dict.fromkeys(top for _, _, tops in net.layer_steps() for top in tops))


def assert_matches(net: Net, model: onnx.ModelProto, inputs: dict, label: str) -> None:
    with torch.no_grad():
        ours = net(inputs)
    theirs = run_onnx(model, inputs)
    for name, got in theirs.items():
        expected = ours[name].detach().numpy()
        assert got.shape == expected.shape, f"{label}: blob '{name}' shape {got.shape} != {expected.shape}"
        scale = max(float(np.abs(expected).max()), 1e-30)
        err = float(np.abs(got - expected).max())
        assert err <= 1e-4 * scale, f"{label}: blob '{name}' differs by {err:.3g} (max |ours| {scale:.3g})"


def random_inputs(net: Net, gen: torch.Generator, batch: int | None = None) -> dict:
    inputs = {}
    for name in net.input_names:
        shape = list(net.blob_shapes[name])
        if batch is not None:
            shape[0] = batch
        inputs[name] = torch.randn(shape, generator=gen)
    return inputs


def export_and_compare(prototxt: Path, seed: int = 0, leave_out=()) -> onnx.ModelProto:
    net = Net(prototxt, phase="TEST")
    gen = torch.Generator().manual_seed(seed)
    randomize(net, gen)
    wanted = [b for b in computed_blobs(net) if b not in leave_out]
    model = build_model(net, outputs=wanted)
    assert [o.name for o in model.graph.output] == wanted
    onnx.checker.check_model(model, full_check=True)
    assert_matches(net, model, random_inputs(net, gen), prototxt.name)
    return model


@pytest.mark.parametrize("prototxt", SAMPLE_NETS, ids=lambda p: p.stem)
def test_sample_nets_match_onnxruntime(prototxt):
    export_and_compare(prototxt)


NEURONS = """
layer { name: "data" type: "Input" top: "data" top: "gain" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } shape { dim: 3 dim: 4 } } }
layer { name: "scaled" type: "Scale" bottom: "data" bottom: "gain" top: "scaled" }
layer { name: "shifted" type: "Bias" bottom: "scaled" top: "shifted" }
layer { name: "split" type: "Split" bottom: "shifted" top: "s1" top: "s2" top: "s3" top: "s4" top: "s5" top: "s6" }
layer { name: "abs" type: "AbsVal" bottom: "s1" top: "abs" }
layer { name: "power" type: "Power" bottom: "abs" top: "power" power_param { power: 1.5 scale: 0.5 shift: 0.25 } }
layer { name: "exp" type: "Exp" bottom: "s2" top: "exp" exp_param { base: 2 scale: 0.3 shift: 0.1 } }
layer { name: "log" type: "Log" bottom: "exp" top: "log" log_param { base: 10 scale: 2 shift: 1 } }
layer { name: "elu" type: "ELU" bottom: "s3" top: "elu" elu_param { alpha: 0.7 } }
layer { name: "bnll" type: "BNLL" bottom: "s4" top: "bnll" }
layer { name: "swish" type: "Swish" bottom: "s5" top: "swish" swish_param { beta: 1.5 } }
layer { name: "clip" type: "Clip" bottom: "s6" top: "clip" clip_param { min: -0.5 max: 0.5 } }
layer { name: "thr" type: "Threshold" bottom: "clip" top: "thr" threshold_param { threshold: 0.1 } }
layer { name: "sig" type: "Sigmoid" bottom: "swish" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "elu" top: "tanh" }
layer { name: "all" type: "Concat" bottom: "power" bottom: "log" bottom: "tanh" bottom: "bnll" bottom: "sig" bottom: "thr" top: "all" }
layer { name: "tiled" type: "Tile" bottom: "all" top: "tiled" tile_param { axis: 2 tiles: 2 } }
layer { name: "sum" type: "Reduction" bottom: "tiled" top: "sum" reduction_param { operation: SUMSQ axis: 2 coeff: 0.5 } }
layer { name: "mean" type: "Reduction" bottom: "tiled" top: "mean" reduction_param { operation: MEAN axis: 1 } }
layer { name: "relu6" type: "ReLU6" bottom: "tiled" top: "relu6" }
layer { name: "norm_all" type: "Normalize" bottom: "relu6" top: "norm_all"
  norm_param { across_spatial: true channel_shared: true scale_filler { type: "constant" value: 3 } } }
layer { name: "norm_pos" type: "Normalize" bottom: "data" top: "norm_pos" norm_param { across_spatial: false channel_shared: false } }
layer { name: "perm" type: "Permute" bottom: "norm_pos" top: "perm" permute_param { order: 0 order: 3 order: 1 order: 2 } }
"""


def test_neuron_scale_bias_reduction_and_ssd_elementwise_layers(tmp_path):
    prototxt = tmp_path / "neurons.prototxt"
    prototxt.write_text(NEURONS)
    model = export_and_compare(prototxt)
    ops = {n.op_type for n in model.graph.node}
    assert {"Abs", "Pow", "Exp", "Log", "Elu", "Softplus", "Sigmoid", "Clip", "Greater", "Tanh",
            "Tile", "ReduceSumSquare", "ReduceMean", "Div", "Transpose"} <= ops


def test_bvlc_style_net_uses_the_ops_that_need_care():
    """The test net exercises what it claims: the AVE divisor correction, the MAX pads,
    grouped (de)convolution, both LRN regions and the per-axis softmax."""
    model = export_and_compare(NETS / "onnx_bvlc_style.prototxt")
    ops = [n.op_type for n in model.graph.node]
    for op in ("LRN", "AveragePool", "MaxPool", "ConvTranspose", "BatchNormalization", "Slice",
               "Split", "Concat", "Max", "Flatten", "Reshape", "Softmax", "Pad", "Gemm", "PRelu"):
        assert op in ops, op
    groups = [a.i for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")
              for a in n.attribute if a.name == "group"]
    assert groups == [2, 2]
    inits = {i.name for i in model.graph.initializer}
    assert any("area_over_divisor" in name for name in inits)  # ceil-mode AVE with padding


FORKS = """
layer { name: "data" type: "Input" top: "data" top: "rois"
  input_param { shape { dim: 2 dim: 6 dim: 9 dim: 11 } shape { dim: 4 dim: 5 } } }
layer { name: "shuffle" type: "ShuffleChannel" bottom: "data" top: "shuffle" shuffle_channel_param { group: 3 } }
layer { name: "zoom" type: "Interp" bottom: "shuffle" top: "zoom" interp_param { zoom_factor: 2 } }
layer { name: "cropped" type: "Interp" bottom: "data" top: "cropped" interp_param { height: 5 width: 4 pad_beg: -2 pad_end: -1 } }
layer { name: "like" type: "Interp" bottom: "data" bottom: "cropped" top: "like" }
layer { name: "pool" type: "ROIPooling" bottom: "zoom" bottom: "rois" top: "pool"
  roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.5 } }
layer { name: "up" type: "Upsample" bottom: "cropped" top: "up" upsample_param { scale: 2 } }
layer { name: "twice" type: "Concat" bottom: "data" bottom: "shuffle" top: "twice" }
layer { name: "spread" type: "Reorg" bottom: "twice" top: "spread" reorg_param { stride: 2 reverse: true } }
layer { name: "four" type: "Concat" bottom: "spread" bottom: "spread" bottom: "spread" bottom: "spread" top: "four" }
layer { name: "blocks" type: "Reorg" bottom: "four" top: "blocks" reorg_param { stride: 2 } }
"""


def test_fork_layers_match_onnxruntime(tmp_path):
    """ShuffleChannel, Interp (zoom, crop, a second bottom's size), ROIPooling, Upsample
    by a scale and Reorg both ways; the graph keeps its batch free (Resize's sizes come from the input's
    shape)."""
    prototxt = tmp_path / "forks.prototxt"
    prototxt.write_text(FORKS)
    net = Net(prototxt, phase="TEST")
    model = build_model(net, outputs=computed_blobs(net))
    onnx.checker.check_model(model, full_check=True)
    assert {"Transpose", "Resize", "MaxRoiPool"} <= {n.op_type for n in model.graph.node}
    modes = {a.s for n in model.graph.node if n.op_type == "Resize" for a in n.attribute if a.name == "mode"}
    assert modes == {b"linear", b"nearest"}
    gen = torch.Generator().manual_seed(4)
    rois = torch.tensor([[0, 0, 0, 30, 20], [1, 3, 5, 12, 9], [1, -4, 2, 60, 60], [0, 40, 40, 50, 50]],
                        dtype=torch.float32)
    assert_matches(net, model, {"data": torch.randn(2, 6, 9, 11, generator=gen), "rois": rois}, "forks")


@pytest.mark.parametrize("prototxt", MODEL_NETS, ids=lambda p: p.parent.name)
def test_committed_deploy_nets_match_onnxruntime(prototxt, tmp_path):
    """ImageNet-size nets at the smallest input their shapes allow (keeps the suite fast)."""
    export_and_compare(smallest_input(prototxt, tmp_path))


@pytest.mark.parametrize("name", ["imagenet-cnn5", "imagenet-cnds8"])
def test_imagenet_layouts_at_their_own_input_size(name):
    """227x227 as committed: every pooling size of the CNN-5 and the stage family
    (112 -> 56 -> 28 -> 14 -> 7 -> 4, the same at every depth) as Caffe rounds it."""
    export_and_compare(ROOT / "models" / name / "deploy.prototxt")


def test_every_committed_deploy_net_is_covered():
    assert len(MODEL_NETS) >= 15


def test_batch_axis_is_symbolic(tmp_path):
    """A graph exported at batch 2 runs a batch of 5 as our net built for 5 does."""
    net = Net(NETS / "onnx_bvlc_style.prototxt", phase="TEST")
    gen = torch.Generator().manual_seed(1)
    randomize(net, gen)
    model = build_model(net)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    weights = tmp_path / "w.caffemodel"
    net.save_caffemodel(weights)
    param = read_net(NETS / "onnx_bvlc_style.prototxt")
    param.layer[0].input_param.shape[0].dim[0] = 5
    (tmp_path / "b5.prototxt").write_text(to_text(param))
    net5 = Net(tmp_path / "b5.prototxt", phase="TEST", weights=weights)
    assert_matches(net5, model, random_inputs(net5, gen), "batch 5")


def test_reshape_across_batch_fixes_the_batch(tmp_path):
    prototxt = tmp_path / "fold.prototxt"
    prototxt.write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 } } }\n'
        'layer { name: "fold" type: "Reshape" bottom: "data" top: "fold" reshape_param { shape { dim: -1 dim: 4 } } }\n')
    model = export_and_compare(prototxt)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert "fold" in model.doc_string


MORE_LAYERS = """
layer { name: "data" type: "Input" top: "data" top: "ids" input_param { shape { dim: 2 dim: 3 dim: 7 dim: 6 } shape { dim: 2 dim: 4 } } }
layer { name: "mvn" type: "MVN" bottom: "data" top: "mvn" }
layer { name: "mvn_all" type: "MVN" bottom: "data" top: "mvn_all" mvn_param { across_channels: true normalize_variance: false } }
layer { name: "spp" type: "SPP" bottom: "mvn" top: "spp" spp_param { pyramid_height: 3 pool: MAX } }
layer { name: "spp_ave" type: "SPP" bottom: "mvn_all" top: "spp_ave" spp_param { pyramid_height: 2 pool: AVE } }
layer { name: "top3" type: "ArgMax" bottom: "spp" top: "top3" argmax_param { top_k: 3 out_max_val: true } }
layer { name: "best" type: "ArgMax" bottom: "data" top: "best" argmax_param { axis: 1 top_k: 2 } }
layer { name: "embed" type: "Embed" bottom: "ids" top: "embed"
  embed_param { input_dim: 10 num_output: 5 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
"""


def test_mvn_spp_argmax_and_embed(tmp_path):
    prototxt = tmp_path / "more.prototxt"
    prototxt.write_text(MORE_LAYERS)
    net = Net(prototxt, phase="TEST")
    gen = torch.Generator().manual_seed(5)
    randomize(net, gen)
    model = build_model(net, outputs=computed_blobs(net))
    inputs = {"data": torch.randn(2, 3, 7, 6, generator=gen),
              "ids": torch.randint(0, 10, (2, 4), generator=gen).float()}
    assert_matches(net, model, inputs, "more layers")
    tied = {"data": torch.randint(0, 3, (2, 3, 7, 6), generator=gen).float(), "ids": inputs["ids"]}
    assert_matches(net, model, tied, "ties")   # ArgMax breaks ties toward the larger index


def test_layer_without_onnx_form_is_named(tmp_path):
    prototxt = tmp_path / "loss.prototxt"
    prototxt.write_text(
        'layer { name: "data" type: "Input" top: "data" top: "label" '
        'input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }\n'
        'layer { name: "my_loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "loss" }\n')
    with pytest.raises(OnnxExportError, match=r"layer 'my_loss' has type 'SoftmaxWithLoss', which has no ONNX form"):
        Net(prototxt, phase="TEST").export_onnx(tmp_path / "out.onnx")
    assert not list(tmp_path.glob("*.onnx*"))


SEGNET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 11 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" top: "mask" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "up" type: "Upsample" bottom: "pool" bottom: "mask" top: "up" upsample_param { scale: 2 upsample_h: 9 upsample_w: 11 } }
layer { name: "pool3" type: "Pooling" bottom: "conv" top: "pool3" top: "mask3" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "up3" type: "Upsample" bottom: "pool3" bottom: "mask3" top: "up3" upsample_param { upsample_h: 9 upsample_w: 11 } }
layer { name: "pool_far" type: "Pooling" bottom: "data" top: "pool_far" top: "mask_far" pooling_param { pool: MAX kernel_size: 2 stride: 3 } }
"""


def test_segnet_pooling_masks_and_upsample_match_onnxruntime(tmp_path):
    """MAX pooling with Caffe's mask top (ceil rounding, overlapping windows, padding, and a
    window wholly in the padding: mask -1 there) and SegNet's Upsample scattering by it."""
    prototxt = tmp_path / "segnet.prototxt"
    prototxt.write_text(SEGNET)
    model = export_and_compare(prototxt)
    assert {"MaxPool", "ScatterElements"} <= {n.op_type for n in model.graph.node}
    net = Net(prototxt, phase="TEST")
    inputs = {"data": torch.randn(2, 3, 9, 11)}
    with torch.no_grad():
        ours = net(inputs)
    theirs = run_onnx(build_model(net, outputs=["pool_far", "mask_far", "mask3"]), inputs)
    # kernel 2, stride 3: the last row of windows lies past the input (-FLT_MAX, mask -1)
    assert (ours["mask_far"] == -1).any()
    for name in ("pool_far", "mask_far", "mask3"):   # masks exactly; -FLT_MAX swamps the 1e-4 scale
        np.testing.assert_array_equal(theirs[name], ours[name].numpy(), err_msg=name)


def run_export(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.tools.export_onnx", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_export_onnx_command(tmp_path):
    """deploy.prototxt + caffemodel -> out.onnx; ONNX Runtime reproduces the net's output."""
    deploy = ROOT / "models" / "fashion-mnist-cnds8" / "deploy.prototxt"
    net = Net(deploy, phase="TEST")
    gen = torch.Generator().manual_seed(2)
    randomize(net, gen)
    weights = tmp_path / "w.caffemodel"
    net.save_caffemodel(weights)
    out = tmp_path / "model.onnx"
    proc = run_export(deploy, weights, out)
    assert proc.returncode == 0, proc.stderr
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == net.output_names
    assert_matches(net, model, random_inputs(net, gen), "cli")


def test_export_onnx_command_reports_a_bad_layer(tmp_path):
    prototxt = tmp_path / "accuracy.prototxt"
    prototxt.write_text(
        'layer { name: "data" type: "Input" top: "data" top: "label" '
        'input_param { shape { dim: 1 dim: 5 } shape { dim: 1 } } }\n'
        'layer { name: "top1" type: "Accuracy" bottom: "data" bottom: "label" top: "top1" }\n')
    weights = tmp_path / "w.caffemodel"
    Net(prototxt, phase="TEST").save_caffemodel(weights)
    proc = run_export(prototxt, weights, tmp_path / "o.onnx")
    assert proc.returncode == 2
    assert "layer 'top1' has type 'Accuracy'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_pooling_window_past_the_input_gives_caffes_minus_flt_max(tmp_path):
    """Stride beyond the kernel, ceil rounding, no pad: Caffe's last window lies wholly
    outside the input and its MAX is -FLT_MAX; ONNX gets it from an explicit Pad."""
    prototxt = tmp_path / "sparse_pool.prototxt"
    prototxt.write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }\n'
        'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
        'pooling_param { pool: MAX kernel_size: 1 stride: 3 } }\n')
    model = export_and_compare(prototxt)
    assert [n.op_type for n in model.graph.node] == ["Pad", "MaxPool"]
    net = Net(prototxt, phase="TEST")
    assert net.blob_shapes["pool"] == (1, 2, 3, 3)


def test_ssd_layers_up_to_the_detection_output(tmp_path):
    """SSD300 (narrowed): Normalize, Permute, PriorBox (a constant), the heads' Concat and
    Softmax, every blob DetectionOutput reads (DetectionOutput: tests/test_onnx_detection.py)."""
    prototxt = tmp_path / "ssd.prototxt"
    prototxt.write_text(ssd300_deploy())
    model = export_and_compare(prototxt, leave_out=["detection_out"])
    ops = {n.op_type for n in model.graph.node}
    assert {"ReduceSumSquare", "Transpose", "Concat", "Softmax"} <= ops
    priors = [o for o in model.graph.output if o.name == "mbox_priorbox"][0]
    assert priors.type.tensor_type.shape.dim[0].dim_value == 1      # not the batch axis
    loc = [o for o in model.graph.output if o.name == "mbox_loc"][0]
    assert loc.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_a_graph_without_outputs_is_refused(tmp_path):
    """ONNX Runtime cannot load a graph with no outputs (which onnx.checker passes)."""
    prototxt = tmp_path / "empty.prototxt"
    prototxt.write_text('name: "empty"\n')
    with pytest.raises(OnnxExportError, match=r"empty.prototxt: nothing to export: the net has no output blobs"):
        build_model(Net(prototxt, phase="TEST"))
    net = Net(NETS / "caffenet_like.prototxt", phase="TEST")
    with pytest.raises(OnnxExportError, match="nothing to export"):
        build_model(net, outputs=[])


def test_only_the_layers_behind_the_outputs_are_exported():
    net = Net(NETS / "caffenet_like.prototxt", phase="TEST")
    model = build_model(net, outputs=["pool2"])
    assert [o.name for o in model.graph.output] == ["pool2"]
    names = {n.name.split("/")[0] for n in model.graph.node}
    assert names == {"conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2"}


# Layer types (besides losses) that have no ONNX form on purpose, and why.
NO_ONNX_FORM = {
    "Accuracy": "a metric over labels, not part of inference",
    "SegAccuracy": "DeepLab's metric over label images, not part of inference",
    "DetectionEvaluate": "SSD's metric over detections and ground truth, not part of inference",
    "Python": "runs the user's own Python code, which ONNX cannot hold",
    "HDF5Output": "writes a file, a side effect ONNX cannot hold",
    "MatWrite": "DeepLab's: writes .mat files, a side effect ONNX cannot hold",
    "MatRead": "DeepLab's: reads .mat files named by a list, which ONNX cannot hold",
    "DenseCRF": "DeepLab's CRF: a permutohedral lattice built from each image (data-dependent size), as MultiStageMeanfield",
    "LabelsequenceAccuracy": "CRNN's metric over label rows, not part of inference",
    "MultiStageMeanfield": "CRF-RNN's mean field on a permutohedral lattice built per image (a hash of data-dependent size); not converted",
}


def test_every_layer_type_but_losses_and_metrics_has_an_onnx_form():
    """A layer type added later without an ONNX form shows up here."""
    from runner.layers import layer_class, supported_types
    from runner.onnx_export import exportable_types
    from runner.proto import caffe_pb2
    kinds = {name: layer_class(caffe_pb2.LayerParameter(type=name)) for name in supported_types()}
    without = {name for name, cls in kinds.items() if not cls.is_loss} - set(exportable_types())
    assert without == set(NO_ONNX_FORM), (
        f"layer types without an ONNX form: {sorted(without - set(NO_ONNX_FORM))}; give them one "
        f"in runner/onnx_export/ or list them in NO_ONNX_FORM with the reason")


def test_docs_onnx_names_every_layer_type_with_a_form_and_without():
    from runner.onnx_export import exportable_types
    doc = (ROOT / "docs" / "onnx.md").read_text()
    missing = [t for t in [*exportable_types(), *NO_ONNX_FORM] if f"`{t}`" not in doc]
    assert not missing, f"docs/onnx.md does not name {missing}"


def test_reverse_matches_onnxruntime(tmp_path):
    """ChWick's Reverse on the time axis (0, the graph's first) and on a later one."""
    prototxt = tmp_path / "reverse.prototxt"
    prototxt.write_text("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 5 dim: 3 dim: 4 } } }
layer { name: "time" type: "Reverse" bottom: "data" top: "time" }
layer { name: "feature" type: "Reverse" bottom: "time" top: "feature" reverse_param { axis: 2 } }
""")
    model = export_and_compare(prototxt)
    assert [n.op_type for n in model.graph.node].count("Slice") == 2


def test_parameter_im2col_and_flownet_layers_match_onnxruntime(tmp_path):
    """Parameter (a constant), Im2col (2-D, over a 1-D signal, and from axis 2), NegReLU, ChannelNorm and
    Accum (with a reference, and resizing two bottoms to the largest)."""
    prototxt = tmp_path / "more.prototxt"
    prototxt.write_text("""
layer { name: "data" type: "Input" top: "data" top: "small" top: "signal"
  input_param { shape { dim: 2 dim: 3 dim: 6 dim: 7 } shape { dim: 2 dim: 2 dim: 3 dim: 4 } shape { dim: 2 dim: 3 dim: 9 } } }
layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 3 dim: 6 dim: 7 } } }
layer { name: "sum" type: "Bias" bottom: "data" bottom: "p" top: "sum" }
layer { name: "cols" type: "Im2col" bottom: "sum" top: "cols"
  convolution_param { kernel_h: 2 kernel_w: 3 pad_h: 1 stride_w: 2 dilation: 2 } }
layer { name: "cols1d" type: "Im2col" bottom: "signal" top: "cols1d" convolution_param { kernel_size: 3 pad: 2 stride: 2 } }
layer { name: "rows" type: "Im2col" bottom: "data" top: "rows" convolution_param { axis: 2 kernel_size: 3 pad: 1 } }
layer { name: "neg" type: "NegReLU" bottom: "sum" top: "neg" relu_param { negative_slope: 0.25 } }
layer { name: "norm" type: "ChannelNorm" bottom: "neg" top: "norm" }
layer { name: "up" type: "Accum" bottom: "small" bottom: "norm" top: "up" accum_param { have_reference: true } }
layer { name: "both" type: "Accum" bottom: "norm" bottom: "small" top: "both" accum_param { size_divisible_by: 5 } }
""")
    model = export_and_compare(prototxt)
    assert {"Conv", "Where", "ReduceSumSquare", "Resize"} <= {n.op_type for n in model.graph.node}


FLOWNET = """
layer { name: "data" type: "Input" top: "img0" top: "img1" top: "edge_flow"
  input_param { shape { dim: 2 dim: 3 dim: 12 dim: 16 } shape { dim: 2 dim: 3 dim: 12 dim: 16 }
                shape { dim: 2 dim: 2 dim: 12 dim: 16 } } }
layer { name: "mean0" type: "DataAugmentation" bottom: "img0" top: "img0_aug"
  augmentation_param { recompute_mean: 3 mean_per_pixel: false } }
layer { name: "mean1" type: "DataAugmentation" bottom: "img1" top: "img1_aug"
  augmentation_param { recompute_mean: 3 mean_per_pixel: true } }
layer { name: "fixed" type: "DataAugmentation" bottom: "img1" top: "img1_fixed"
  augmentation_param { mean: 0.4 mean: 0.5 mean: 0.6 } }
layer { name: "conv" type: "Convolution" bottom: "img0_aug" bottom: "img1_aug" top: "f0" top: "f1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "corr" type: "Correlation" bottom: "f0" bottom: "f1" top: "corr"
  correlation_param { pad: 3 kernel_size: 3 max_displacement: 2 stride_1: 2 stride_2: 1 } }
layer { name: "corr_sub" type: "Correlation" bottom: "f0" bottom: "f1" top: "corr_sub"
  correlation_param { pad: 2 kernel_size: 1 max_displacement: 2 stride_2: 2 correlation_type: SUBTRACT } }
layer { name: "corr1d" type: "Correlation1D" bottom: "f0" bottom: "f1" top: "corr1d"
  correlation_param { pad: 2 kernel_size: 1 max_displacement: 2 single_direction: 1 } }
layer { name: "flow" type: "Convolution" bottom: "corr_sub" top: "flow"
  convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { name: "scaled" type: "Eltwise" bottom: "flow" top: "scaled" eltwise_param { operation: SUM coeff: 8 } }
layer { name: "up" type: "Resample" bottom: "scaled" bottom: "img0" top: "up" resample_param { type: LINEAR } }
layer { name: "up_cubic" type: "Resample" bottom: "img0" top: "down" resample_param { type: CUBIC antialias: true width: 7 height: 5 } }
layer { name: "up_nearest" type: "Resample" bottom: "scaled" bottom: "img0" top: "near" resample_param { type: NEAREST } }
layer { name: "warp" type: "FlowWarp" bottom: "img1_fixed" bottom: "up" top: "warped" }
layer { name: "warp_nan" type: "FlowWarp" bottom: "img1" bottom: "near" top: "warped_nan"
  flow_warp_param { fill_value: NOT_A_NUMBER } }
layer { name: "warp_edge" type: "FlowWarp" bottom: "img0" bottom: "edge_flow" top: "warped_edge" }
"""


def test_flownet_layers_match_onnxruntime(tmp_path):
    """Correlation (MULTIPLY with stride_1 2, SUBTRACT, 1-D), DataAugmentation (means
    past recompute_mean, per pixel or per channel, and fixed), Resample (LINEAR to a
    reference, CUBIC antialiased down, NEAREST), FlowWarp with flows reaching outside the
    image (zero fill, and NaN fill where the graph must keep NaN) and onto the last row and
    column, where the right and lower neighbours clamp."""
    prototxt = tmp_path / "flownet.prototxt"
    prototxt.write_text(FLOWNET)
    net = Net(prototxt, phase="TEST")
    gen = torch.Generator().manual_seed(6)
    randomize(net, gen)
    with torch.no_grad():
        for name in ("mean0", "mean1"):
            net.layers[name].blobs[0].fill_(3)   # the running mean has settled
    wanted = computed_blobs(net)
    model = build_model(net, outputs=wanted)
    inputs = random_inputs(net, gen)
    target = torch.rand(2, 2, 12, 16, generator=gen) * torch.tensor([17.0, 13.0]).reshape(1, 2, 1, 1) - 0.5
    inputs["edge_flow"] = target - torch.stack(torch.meshgrid(torch.arange(16.0), torch.arange(12.0), indexing="xy"))
    assert ((target[:, 0] > 15) & (target[:, 0] < 16)).sum() > 10
    with torch.no_grad():
        ours = net(inputs)
    theirs = run_onnx(model, inputs)
    assert np.isnan(theirs["warped_nan"]).any() and (np.abs(ours["up"].numpy()) > 16).any()
    np.testing.assert_array_equal(np.isnan(theirs["warped_nan"]), ours["warped_nan"].isnan().numpy())
    for name in wanted:
        got, expected = np.nan_to_num(theirs[name]), ours[name].nan_to_num().numpy()
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), name


def test_data_augmentation_whose_mean_still_moves_is_refused(tmp_path):
    prototxt = tmp_path / "moving.prototxt"
    prototxt.write_text(FLOWNET)
    net = Net(prototxt, phase="TEST")
    with pytest.raises(OnnxExportError, match="layer 'mean0'.*still moves for 3 more forwards"):
        build_model(net, outputs=["img0_aug"])


def test_batch_reindex_and_filter_match_onnxruntime(tmp_path):
    prototxt = tmp_path / "reindex.prototxt"
    prototxt.write_text("""
layer { name: "data" type: "Input" top: "data" top: "permut" top: "labels" top: "selector"
  input_param { shape { dim: 4 dim: 2 dim: 3 } shape { dim: 6 } shape { dim: 4 } shape { dim: 4 dim: 1 } } }
layer { name: "picked" type: "BatchReindex" bottom: "data" bottom: "permut" top: "picked" }
layer { name: "kept" type: "Filter" bottom: "data" bottom: "labels" bottom: "selector" top: "kept" top: "kept_labels" }
""")
    net = Net(prototxt, phase="TEST")
    model = build_model(net, outputs=["picked", "kept", "kept_labels"])
    inputs = {"data": torch.randn(4, 2, 3), "permut": torch.tensor([3.0, 0.0, 3.9, 1.2, 2.0, 0.0]),
              "labels": torch.arange(4.0), "selector": torch.tensor([[1.0], [0.0], [-0.5], [0.0]])}
    assert_matches(net, model, inputs, "BatchReindex (3.9 and 1.2 truncated), Filter")
    assert run_onnx(model, inputs)["kept_labels"].tolist() == [0.0, 2.0]


def test_depthwise_and_axpy_match_onnxruntime(tmp_path):
    prototxt = tmp_path / "mobile.prototxt"
    prototxt.write_text("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 7 dim: 8 } } }
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "data" top: "dw" convolution_param { kernel_size: 3 pad: 1 } }
layer { name: "dw2" type: "DepthwiseConvolution" bottom: "dw" top: "dw2" convolution_param { num_output: 4 group: 4 kernel_size: 1 } }
layer { name: "pool" type: "Pooling" bottom: "dw2" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "axpy" type: "Axpy" bottom: "pool" bottom: "dw2" bottom: "dw" top: "axpy" }
""")
    model = export_and_compare(prototxt)
    assert {"Conv", "Mul", "Add"} <= {n.op_type for n in model.graph.node}
