"""upgrade_net_proto_binary (Caffe's tool): a V1 .caffemodel becomes a current one whose
blobs load into our Net unchanged; bad input is one clear error."""
from pathlib import Path

import numpy as np
import torch

from runner import Net
from runner.proto import caffe_pb2, parse_net_text, read_caffemodel
from runner.tools import upgrade_net_proto_binary

V1_NET = '''name: "old"
input: "data" input_dim: 1 input_dim: 2 input_dim: 5 input_dim: 5
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 3 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "ip" type: INNER_PRODUCT bottom: "conv" top: "ip" inner_product_param { num_output: 4 } }
'''


def legacy_blob(array: np.ndarray) -> caffe_pb2.BlobProto:
    """A blob as V1 Caffe wrote it: num/channels/height/width (biases as (1, 1, 1, N))."""
    n, c, h, w = (1,) * (4 - array.ndim) + array.shape
    blob = caffe_pb2.BlobProto(num=n, channels=c, height=h, width=w)
    blob.data.extend(array.astype(np.float32).reshape(-1).tolist())
    return blob


def v1_caffemodel(path: Path, rng) -> dict[str, list[np.ndarray]]:
    """A V1 binary net with random blobs (InnerProduct weights in the legacy (1,1,N,K) shape)."""
    net = parse_net_text(V1_NET, upgrade=False)
    arrays = {"conv": [rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)],
              "ip": [rng.standard_normal((1, 1, 4, 27)), rng.standard_normal(4)]}
    for layer in net.layers:
        for array in arrays.get(layer.name, []):
            layer.blobs.append(legacy_blob(array))
    path.write_bytes(net.SerializeToString())
    return arrays


def test_v1_caffemodel_is_upgraded_and_loads(tmp_path, capsys):
    arrays = v1_caffemodel(tmp_path / "old.caffemodel", np.random.default_rng(0))
    out = tmp_path / "new.caffemodel"
    assert upgrade_net_proto_binary.main([str(tmp_path / "old.caffemodel"), str(out)]) == 0
    assert "V1 'layers' -> 'layer'" in capsys.readouterr().err
    upgraded = caffe_pb2.NetParameter.FromString(out.read_bytes())
    assert not upgraded.layers and [lp.type for lp in upgraded.layer] == ["Input", "Convolution", "ReLU", "InnerProduct"]
    assert [p.lr_mult for p in upgraded.layer[1].param] == [1, 2]
    assert read_caffemodel(out, upgrade=False) == upgraded
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(V1_NET)
    net = Net(deploy, phase="TEST", weights=out)
    np.testing.assert_array_equal(net.layers["conv"].blobs[0].detach().numpy(), arrays["conv"][0].astype(np.float32))
    np.testing.assert_array_equal(net.layers["ip"].blobs[0].detach().numpy(),
                                  arrays["ip"][0].reshape(4, 27).astype(np.float32))
    assert torch.isfinite(net({"data": torch.randn(1, 2, 5, 5)})["ip"]).all()


def test_current_caffemodel_is_left_as_it_is(tmp_path, capsys):
    v1_caffemodel(tmp_path / "old.caffemodel", np.random.default_rng(1))
    first, second = tmp_path / "a.caffemodel", tmp_path / "b.caffemodel"
    assert upgrade_net_proto_binary.main([str(tmp_path / "old.caffemodel"), str(first)]) == 0
    assert upgrade_net_proto_binary.main([str(first), str(second)]) == 0
    assert "already in the latest format" in capsys.readouterr().err
    assert first.read_bytes() == second.read_bytes()


def test_bad_input_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\x0a\xff\xff not a protobuf")
    assert upgrade_net_proto_binary.main([str(bad), str(tmp_path / "out.caffemodel")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "Traceback" not in err
    assert not (tmp_path / "out.caffemodel").exists()
