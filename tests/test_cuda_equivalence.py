"""On a CUDA device the converted nets compute what they compute on the CPU: every blob of
every committed deploy net, the TRAIN nets' losses and weight gradients (auxiliary
branches included), and several steps of Caffe's update rules. The CPU results are the
ones the OpenCV oracle checks (tests/test_net_opencv_oracle*.py), so these tests carry
that check over to the GPU. Caffe computes in IEEE fp32, so TF32 is off
(runner/precision.py); with it on, convolutions differ by about 1e-3.

Skipped where torch sees no CUDA device; they run on a GPU machine (README, "GPU")."""
import copy
from pathlib import Path

import pytest
import torch

from runner import Net
from runner.precision import use_caffe_precision
from runner.proto import caffe_pb2, read_net
from runner.solver.updates import make_update

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device; run on a GPU machine")

ROOT = Path(__file__).resolve().parents[1]
DEPLOYS = sorted(p.parent.name for p in (ROOT / "models").glob("*/deploy.prototxt"))
RTOL = 1e-4


def randomize(net: Net, seed: int) -> None:
    """He-scaled gaussian weights and small biases, so activations stay O(1) with depth."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers.values():
            for blob in layer.blobs:
                fan_in = blob[0].numel() if blob.dim() > 1 else 1
                std = (2.0 / fan_in) ** 0.5 if blob.dim() > 1 else 0.01
                blob.copy_(torch.randn(blob.shape, generator=gen) * std)


def assert_close(name: str, cpu: torch.Tensor, cuda: torch.Tensor) -> None:
    cuda = cuda.detach().float().cpu()
    cpu = cpu.detach().float()
    scale = cpu.abs().max().item()
    err = (cuda - cpu).abs().max().item()
    assert err <= RTOL * scale + 1e-7, f"{name}: max |cuda - cpu| {err:.3g}, max |cpu| {scale:.3g}"


def train_net(model: str, batch: int) -> Net:
    """The TRAIN net of models/<model>/train_val.prototxt, its Data layer made an Input."""
    param = read_net(str(ROOT / "models" / model / "train_val.prototxt"))
    data = next(lp for lp in param.layer if lp.type == "Data")
    crop = data.transform_param.crop_size
    deploy = read_net(str(ROOT / "models" / model / "deploy.prototxt"))
    shape = list(next(lp for lp in deploy.layer if lp.type == "Input").input_param.shape[0].dim)
    side = crop or shape[2]
    inp = caffe_pb2.LayerParameter(name="data", type="Input", top=list(data.top))
    inp.input_param.shape.add(dim=[batch, shape[1], side, side])
    inp.input_param.shape.add(dim=[batch])
    layers = [inp] + [lp for lp in param.layer if lp.type != "Data"]
    param.ClearField("layer")
    param.layer.extend(layers)
    return Net(param, phase="TRAIN")


@pytest.fixture(autouse=True)
def caffe_precision():
    use_caffe_precision()
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


@pytest.mark.parametrize("model", DEPLOYS)
def test_every_blob_of_each_deploy_net_matches_the_cpu(model):
    cpu = Net(ROOT / "models" / model / "deploy.prototxt")
    randomize(cpu, seed=len(model))
    gpu = copy.deepcopy(cpu).cuda()
    shape = cpu.blob_shapes[cpu.input_names[0]]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 50
    with torch.no_grad():
        want = cpu({cpu.input_names[0]: x})
        got = gpu({cpu.input_names[0]: x.cuda()})
    assert set(got) == set(want)
    for name in want:
        assert got[name].device.type == "cuda"
        assert_close(f"{model} blob {name}", want[name], got[name])
    probs = got["prob"]
    assert torch.allclose(probs.sum(1), torch.ones(probs.shape[0], device="cuda"), atol=1e-5)


@pytest.mark.parametrize("model,batch", [("fashion-mnist-cnds13", 8), ("imagenet-cnds8", 2)])
def test_train_losses_and_every_weight_gradient_match_the_cpu(model, batch):
    cpu = train_net(model, batch)
    randomize(cpu, seed=3)
    gpu = copy.deepcopy(cpu).cuda()
    shape = cpu.blob_shapes["data"]
    classes = cpu.blob_shapes[next(lp.bottom[0] for lp in cpu.net_param.layer
                                   if lp.type == "SoftmaxWithLoss")][1]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 50
    label = torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(3)).float()
    losses = {}
    for net, device in ((cpu, "cpu"), (gpu, "cuda")):
        torch.manual_seed(7)   # Dropout masks: compared with dropout off below
        for layer in net.layers.values():
            if layer.type == "Dropout":
                layer.eval()
        blobs = net({"data": x.to(device), "label": label.to(device)})
        net.objective(blobs).backward()
        losses[device] = {top: blobs[top] for top in net.loss_weights}
    assert any(top.endswith("_ds1") for top in losses["cpu"]), "no auxiliary loss in a CNDS net"
    for top in losses["cpu"]:
        assert_close(f"{model} loss {top}", losses["cpu"][top], losses["cuda"][top])
    for (name, p_cpu, *_), (_, p_gpu, *_) in zip(cpu.learnable_params(), gpu.learnable_params()):
        assert p_cpu.grad is not None and p_cpu.grad.abs().max() > 0, name
        assert_close(f"{model} d loss / d {name}", p_cpu.grad, p_gpu.grad)


@pytest.mark.parametrize("solver_type", ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_update_rules_step_the_same_on_the_gpu(solver_type):
    """The same gradients in, the same weights out. (Gradients from the two devices differ
    by float rounding, which AdaGrad, RMSProp and Adam magnify where a gradient is near
    zero, since they divide by its running size; the previous test covers gradients.)"""
    cpu = train_net("fashion-mnist-cnds8", 4)
    randomize(cpu, seed=5)
    gpu = copy.deepcopy(cpu).cuda()
    param = caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=0.0005, delta=1e-8,
                                      momentum2=0.999, rms_decay=0.98)
    if solver_type in ("AdaGrad", "RMSProp"):
        param.momentum = 0.0          # Caffe refuses momentum with these two
    if solver_type == "AdaDelta":
        param.momentum, param.base_lr = 0.95, 1.0
    sides = [(cpu, "cpu", make_update(solver_type, cpu.learnable_params(), param)),
             (gpu, "cuda", make_update(solver_type, gpu.learnable_params(), param))]
    gen = torch.Generator().manual_seed(4)
    for it in range(5):
        grads = [torch.randn(p.shape, generator=gen) * 10.0 ** -(i % 4)
                 for i, (_, p, *_) in enumerate(cpu.learnable_params())]
        for net, device, update in sides:
            for (_, p, *_), g in zip(net.learnable_params(), grads):
                p.grad = g.to(device, copy=True)   # updates work on the grad in place
            update.apply(0.01, it)
    for (name, p_cpu, *_), (_, p_gpu, *_) in zip(cpu.learnable_params(), gpu.learnable_params()):
        assert_close(f"{solver_type} {name} after 5 updates", p_cpu, p_gpu)


def test_ssd_detector_matches_the_cpu(tmp_path):
    """An SSD300-shaped net (tests/test_ssd_opencv.py): features and priors match; the
    GPU's DetectionOutput top lives on the GPU and equals the CPU layer's on the same blobs."""
    from test_ssd_opencv import ssd300_deploy

    (tmp_path / "ssd.prototxt").write_text(ssd300_deploy(batch=1))
    cpu = Net(tmp_path / "ssd.prototxt")
    randomize(cpu, seed=5)
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(1, 3, 300, 300, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = cpu({"data": x}), gpu({"data": x.cuda()})
    for name in ("conv4_3_norm", "mbox_loc", "mbox_conf_flatten", "mbox_priorbox"):
        assert_close(f"ssd blob {name}", want[name], got[name])
    detections = got["detection_out"]
    assert detections.device.type == "cuda" and detections.shape[2] > 1
    inputs = [got[name].cpu() for name in ("mbox_loc", "mbox_conf_flatten", "mbox_priorbox")]
    (expected,) = cpu.layers["detection_out"](*inputs)
    assert torch.equal(detections.cpu(), expected)
