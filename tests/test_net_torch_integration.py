"""The built Net is an ordinary nn.Module: printing, devices, channels_last, autocast,
state_dict and torch.compile (traced whole, forward and backward) work unchanged."""
from pathlib import Path

import pytest
import torch

from runner import Net
from runner.proto import parse_net_text

NETS = Path(__file__).parent / "data" / "nets"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def resnet() -> Net:
    torch.manual_seed(0)
    net = Net(NETS / "resnet_block.prototxt", phase="TEST")
    with torch.no_grad():
        for layer in net.layers.values():
            if layer.type == "BatchNorm":
                layer.blobs[1].fill_(1.0)
                layer.blobs[2].fill_(1.0)
            else:
                for blob in layer.blobs:
                    blob.normal_(0, 0.3)
    return net


def test_printing_lists_layers_by_caffe_name_and_type():
    text = repr(Net(NETS / "googlenet_inception.prototxt"))
    lines = text.splitlines()
    assert lines[0] == "Net(name='GoogLeNetInception', phase=TEST, inputs=['data']"
    assert any(line.startswith("  (conv1/7x7_s2): Convolution(name='conv1/7x7_s2'") for line in lines)
    assert any(line.startswith("  (inception_3a/output): Concat(") for line in lines)
    assert len(lines) == 2 + 24  # header, one line per compute layer, closing bracket


def test_layer_names_with_dots_become_valid_module_keys():
    text = (NETS / "lenet.prototxt").read_text().replace('"ip1"', '"ip.1"').replace('"relu1"', '"train"')
    net = Net(parse_net_text(text, "renamed lenet"))
    assert "ip_1" in net.layers and net.layers["ip_1"].name == "ip.1"
    assert "train_" in net.layers
    assert "ip.1" in net({"data": torch.zeros(2, 1, 28, 28)})


@pytest.mark.parametrize("device", DEVICES)
def test_to_device_and_channels_last_keep_the_numbers(device):
    net = resnet()
    x = torch.randn(2, 3, 16, 16)
    ref = net({"data": x})["prob"]
    moved = net.to(device).to(memory_format=torch.channels_last)
    assert next(moved.parameters()).device.type == device
    out = moved({"data": x.to(device).contiguous(memory_format=torch.channels_last)})["prob"]
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-5)


def test_autocast_runs_in_low_precision_close_to_float32():
    net = resnet()
    x = torch.randn(2, 3, 16, 16)
    ref = net({"data": x})["fc10"]
    net.loss_weights.update({"fc10": 1.0, "data": 0.5})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        blobs = net({"data": x})
        loss = net.objective(blobs)  # a bfloat16 top and a float32 one
    out = blobs["fc10"]
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() <= 0.05 * ref.abs().max()
    torch.testing.assert_close(loss.float(), ref.sum() + 0.5 * x.sum(), rtol=0.02, atol=0.1)


def test_state_dict_moves_weights_between_nets():
    a, b = resnet(), Net(NETS / "resnet_block.prototxt")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(a({"data": x})["prob"], b({"data": x})["prob"])


def compiled_matches_eager(net: Net, x: torch.Tensor, **compile_kw) -> None:
    net.loss_weights["ip2"] = 1.0
    compiled = torch.compile(net, backend="aot_eager", **compile_kw)
    blobs = compiled({"data": x})
    net.objective(blobs).backward()
    grad = net.layers["conv1"].blobs[0].grad.clone()
    net.zero_grad()
    eager = net({"data": x})
    net.objective(eager).backward()
    torch.testing.assert_close(blobs["prob"], eager["prob"])
    torch.testing.assert_close(grad, net.layers["conv1"].blobs[0].grad)


def test_torch_compile_works_on_a_fresh_net():
    torch._dynamo.reset()
    compiled_matches_eager(Net(NETS / "lenet.prototxt", phase="TRAIN"), torch.randn(2, 1, 28, 28))


def test_torch_compile_traces_the_whole_forward_in_one_graph_once_shapes_are_seen():
    torch._dynamo.reset()
    net = Net(NETS / "lenet.prototxt", phase="TRAIN")
    x = torch.randn(2, 1, 28, 28)
    net({"data": x})  # layers cache their per-shape plans on the first pass
    compiled_matches_eager(net, x, fullgraph=True)


def test_replaced_parameters_are_what_learnable_params_and_caffemodel_io_see(tmp_path):
    a, b = resnet(), Net(NETS / "resnet_block.prototxt")
    b.load_state_dict(a.state_dict(), assign=True)  # new Parameter objects in b
    ids = {id(p) for p in b.parameters()}
    assert all(id(p) in ids for _, p, _, _ in b.learnable_params())
    b.save_caffemodel(tmp_path / "b.caffemodel")
    a.save_caffemodel(tmp_path / "a.caffemodel")
    assert (tmp_path / "a.caffemodel").read_bytes() == (tmp_path / "b.caffemodel").read_bytes()
