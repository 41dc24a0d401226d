""".caffemodel in and out: round trip, V1 legacy weights, Caffe's matching rules and errors."""
from pathlib import Path

import pytest
import torch

from runner import Net
from runner.proto import caffe_pb2, read_caffemodel
from runner.weights import WeightsError

NETS = Path(__file__).parent / "data" / "nets"
LENET = NETS / "lenet.prototxt"


def lenet(**kw) -> Net:
    return Net(LENET, phase="TEST", **kw)


def blobs_of(net: Net) -> dict[str, list[torch.Tensor]]:
    return {key: [b.detach().clone() for b in layer.blobs] for key, layer in net.layers.items() if len(layer.blobs)}


def test_export_load_reexport_is_identical(tmp_path):
    torch.manual_seed(0)
    first = lenet()
    first.save_caffemodel(tmp_path / "a.caffemodel")
    torch.manual_seed(1)
    second = lenet(weights=tmp_path / "a.caffemodel")
    for key, tensors in blobs_of(first).items():
        for a, b in zip(tensors, blobs_of(second)[key]):
            assert torch.equal(a, b)
    second.save_caffemodel(tmp_path / "b.caffemodel")
    assert (tmp_path / "a.caffemodel").read_bytes() == (tmp_path / "b.caffemodel").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob(".*tmp"))


def test_export_layout_is_caffes(tmp_path):
    net = lenet()
    net.save_caffemodel(tmp_path / "w.caffemodel")
    saved = caffe_pb2.NetParameter.FromString((tmp_path / "w.caffemodel").read_bytes())
    assert saved.name == "LeNet"
    assert [lp.name for lp in saved.layer] == ["data", "conv1", "pool1", "ip1", "relu1", "ip2", "prob"]
    conv = saved.layer[1]
    assert (conv.type, list(conv.bottom), list(conv.top), conv.phase) == ("Convolution", ["data"], ["conv1"], caffe_pb2.TEST)
    assert [list(b.shape.dim) for b in conv.blobs] == [[8, 1, 5, 5], [8]]
    assert [list(b.shape.dim) for b in saved.layer[3].blobs] == [[32, 8 * 12 * 12], [32]]
    assert conv.convolution_param.num_output == 8 and conv.param[1].lr_mult == 2
    assert list(conv.blobs[1].data) == net.layers["conv1"].blobs[1].detach().tolist()
    assert not any(len(lp.blobs) for lp in saved.layer if lp.name in ("data", "pool1", "relu1", "prob"))


def legacy(blob: caffe_pb2.BlobProto, dims) -> caffe_pb2.BlobProto:
    old = caffe_pb2.BlobProto(data=blob.data)
    old.num, old.channels, old.height, old.width = dims
    return old


def test_v1_net_and_v1_weights_compute_like_v2(tmp_path):
    torch.manual_seed(0)
    v2 = lenet()
    v2.save_caffemodel(tmp_path / "v2.caffemodel")
    current = read_caffemodel(tmp_path / "v2.caffemodel")
    old = caffe_pb2.NetParameter(name="LeNetV1")
    v1_types = {"Convolution": caffe_pb2.V1LayerParameter.CONVOLUTION,
                "InnerProduct": caffe_pb2.V1LayerParameter.INNER_PRODUCT}
    for lp in current.layer:
        if lp.type not in v1_types:
            continue
        entry = old.layers.add(name=lp.name, type=v1_types[lp.type])
        for blob in lp.blobs:
            dims = list(blob.shape.dim)
            entry.blobs.append(legacy(blob, [1] * (4 - len(dims)) + dims))  # IP weight as (1,1,N,K)
    (tmp_path / "v1.caffemodel").write_bytes(old.SerializeToString())
    v1 = Net(NETS / "lenet_v1.prototxt", phase="TEST", weights=tmp_path / "v1.caffemodel")
    assert [lr for *_, lr, _ in v1.learnable_params()] == [1, 2, 1, 2, 1, 1]
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(v1({"data": x})["prob"], v2({"data": x})["prob"], rtol=0, atol=0)


def with_blob(path: Path, layer: str, index: int, blob: caffe_pb2.BlobProto, out: Path) -> Path:
    param = read_caffemodel(path)
    target = next(lp for lp in param.layer if lp.name == layer)
    target.blobs[index].CopyFrom(blob)
    out.write_bytes(param.SerializeToString())
    return out


def test_mismatched_blobs_name_layer_index_and_shapes(tmp_path):
    good = tmp_path / "good.caffemodel"
    lenet().save_caffemodel(good)
    wrong = caffe_pb2.BlobProto()
    wrong.shape.dim.extend([8, 1, 3, 3])
    wrong.data.extend([0.0] * 72)
    bad = with_blob(good, "conv1", 0, wrong, tmp_path / "bad.caffemodel")
    with pytest.raises(WeightsError, match=r"bad.caffemodel: layer 'conv1' blob 0: shape mismatch: the file has "
                                           r"\[8, 1, 3, 3\], the net expects \[8, 1, 5, 5\]"):
        lenet(weights=bad)
    old_ok = with_blob(good, "conv1", 1, legacy(read_caffemodel(good).layer[1].blobs[1], [1, 1, 1, 8]),
                       tmp_path / "legacy_bias.caffemodel")
    lenet(weights=old_ok)
    old_bad = with_blob(good, "conv1", 1, legacy(read_caffemodel(good).layer[1].blobs[1], [1, 1, 8, 1]),
                        tmp_path / "legacy_bad.caffemodel")
    with pytest.raises(WeightsError, match=r"layer 'conv1' blob 1: .*\[1, 1, 8, 1\] \(legacy"):
        lenet(weights=old_bad)
    short = caffe_pb2.BlobProto()
    short.shape.dim.append(8)
    short.data.extend([0.0] * 7)
    with pytest.raises(WeightsError, match="layer 'conv1' blob 1.*8 values but data has 7"):
        lenet(weights=with_blob(good, "conv1", 1, short, tmp_path / "short.caffemodel"))
    param = read_caffemodel(good)
    del param.layer[3].blobs[1]
    (tmp_path / "nobias.caffemodel").write_bytes(param.SerializeToString())
    with pytest.raises(WeightsError, match=r"layer 'ip1' has 1 blob\(s\), the net's has 2"):
        lenet(weights=tmp_path / "nobias.caffemodel")


def test_unknown_layers_skipped_missing_layers_need_allow_missing(tmp_path):
    torch.manual_seed(0)
    source = lenet()
    param = source.to_net_parameter()
    param.layer[5].name = "classifier_renamed"  # fine-tuning: a new head
    extra = param.layer.add(name="not_in_net", type="InnerProduct")
    extra.blobs.add().data.append(1.0)
    with pytest.raises(WeightsError, match=r"no blobs for layer\(s\) \['ip2'\].*allow_missing=True"):
        lenet(weights=param)
    torch.manual_seed(1)
    tuned = lenet()
    fresh = tuned.layers["ip2"].blobs[0].detach().clone()
    assert tuned.load_caffemodel(param, allow_missing=True) == ["ip2"]
    assert torch.equal(tuned.layers["ip2"].blobs[0], fresh)
    assert torch.equal(tuned.layers["ip1"].blobs[0], source.layers["ip1"].blobs[0])


def test_several_weight_files_load_in_order(tmp_path):
    torch.manual_seed(0)
    a = lenet()
    a.save_caffemodel(tmp_path / "a.caffemodel")
    torch.manual_seed(1)
    b = lenet()
    head = b.to_net_parameter()
    del head.layer[:5]  # keep only ip2 (and prob)
    (tmp_path / "head.caffemodel").write_bytes(head.SerializeToString())
    both = lenet(weights=[tmp_path / "a.caffemodel", tmp_path / "head.caffemodel"])
    assert torch.equal(both.layers["conv1"].blobs[0], a.layers["conv1"].blobs[0])
    assert torch.equal(both.layers["ip2"].blobs[0], b.layers["ip2"].blobs[0])


def test_repeated_layer_names_build_and_weights_go_to_the_first_as_caffe(tmp_path):
    """Caffe allows two layers of one name (the published CRF-RNN deploy net has three
    'crop' layers); CopyTrainedLayersFrom gives a source layer's blobs to the first target
    of its name, and pycaffe's layer_dict keeps the last."""
    from runner.pycaffe import Net as PyNet

    text = '''name: "twice"
input: "data" input_shape { dim: 1 dim: 2 }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "a" inner_product_param { num_output: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "a" top: "b" inner_product_param { num_output: 2 } }
layer { name: "act" type: "ReLU" bottom: "b" top: "b" }
layer { name: "act" type: "Sigmoid" bottom: "b" top: "c" }
'''
    path = tmp_path / "twice.prototxt"
    path.write_text(text)
    weights = caffe_pb2.NetParameter(name="twice")
    source = weights.layer.add(name="fc", type="InnerProduct")
    source.blobs.add(shape=caffe_pb2.BlobShape(dim=[2, 2])).data.extend([1, 2, 3, 4])
    source.blobs.add(shape=caffe_pb2.BlobShape(dim=[2])).data.extend([5, 6])
    (tmp_path / "w.caffemodel").write_bytes(weights.SerializeToString())
    net = Net(path, weights=tmp_path / "w.caffemodel")
    first, second = [layer for layer in net.layers.values() if layer.type == "InnerProduct"]
    assert first.blobs[0].tolist() == [[1, 2], [3, 4]] and first.blobs[1].tolist() == [5, 6]
    assert second.blobs[1].tolist() == [0, 0]          # untouched: its bias filler's zeros
    out = net({"data": torch.tensor([[1.0, -1.0]])})
    expected = torch.sigmoid(torch.relu(second(first(torch.tensor([[1.0, -1.0]]))[0])[0]))
    assert torch.allclose(out["c"], expected)
    py = PyNet(str(path), str(tmp_path / "w.caffemodel"), 1)
    assert list(py._layer_names) == ["input", "fc", "fc", "act", "act"]
    assert py.layer_dict["act"].type == "Sigmoid"
    with pytest.raises(WeightsError, match="two layers with blobs are named 'fc'"):
        py.save_hdf5(str(tmp_path / "w.h5"))
    assert not (tmp_path / "w.h5").exists()
