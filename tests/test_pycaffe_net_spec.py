"""caffe.NetSpec / layers / params / to_proto: pycaffe's naming, ntop, in_place and field
routing; the prototxt it writes parses back through our schema and runs in runner.Net."""
import numpy as np
import pytest
import torch

import caffe
from caffe import layers as L
from caffe import params as P
from runner import Net
from runner.proto import caffe_pb2, parse_net_text, to_text


def small_net():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 6, 6]))
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=2, pad=1,
                           weight_filler=dict(type="constant", value=1),
                           bias_filler=dict(type="constant", value=0.5),
                           param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)])
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.relu = L.ReLU(n.pool, in_place=True)
    n.ip = L.InnerProduct(n.relu, num_output=3, weight_filler=dict(type="constant", value=0.1))
    n.prob = L.Softmax(n.ip)
    return n


def test_named_layers_route_fields_to_their_messages():
    proto = small_net().to_proto()
    assert [layer.name for layer in proto.layer] == ["data", "conv", "pool", "relu", "ip", "prob"]
    conv = proto.layer[1]
    assert list(conv.bottom) == ["data"] and list(conv.top) == ["conv"]
    assert list(conv.convolution_param.kernel_size) == [3]          # repeated: 3 -> [3]
    assert list(conv.convolution_param.pad) == [1]
    assert conv.convolution_param.weight_filler.value == 1           # dict -> message
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]  # list of dicts
    assert proto.layer[2].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    relu = proto.layer[3]
    assert list(relu.bottom) == list(relu.top) == ["pool"]            # in place
    assert list(proto.layer[4].bottom) == ["pool"]                    # reads the in-place top


def test_written_prototxt_parses_back_and_runs_in_runner_net():
    text = to_text(small_net().to_proto())
    param = parse_net_text(text, "netspec")
    assert to_text(param) == text
    net = Net(param, phase="TEST")
    x = torch.arange(72, dtype=torch.float32).reshape(2, 1, 6, 6) / 72
    blobs = net({"data": x})
    # by hand: conv of ones + 0.5 bias = 3x3 box sum (zero padded); max over 2x2 cells
    box = torch.nn.functional.conv2d(x, torch.ones(1, 1, 3, 3), padding=1) + 0.5
    pooled = torch.nn.functional.max_pool2d(box, 2)
    assert torch.allclose(blobs["pool"][:, 0], pooled[:, 0], atol=1e-5)
    assert torch.allclose(blobs["pool"][:, 1], pooled[:, 0], atol=1e-5)
    ip = 0.1 * blobs["pool"].reshape(2, -1).sum(1, keepdim=True).expand(2, 3)
    assert torch.allclose(blobs["prob"], torch.softmax(ip, 1), atol=1e-6)


def test_anonymous_tops_get_type_counter_names():
    data, label = L.DummyData(shape=[dict(dim=[1, 1, 4, 4]), dict(dim=[1])], ntop=2)
    conv = L.Convolution(data, kernel_size=1, num_output=1)
    loss = L.EuclideanLoss(L.Convolution(conv, kernel_size=1, num_output=1), data)
    proto = loss.to_proto()
    assert [(l.name, list(l.top)) for l in proto.layer] == [
        ("DummyData1", ["DummyData1", "DummyData2"]),
        ("Convolution1", ["Convolution1"]),
        ("Convolution2", ["Convolution2"]),
        ("EuclideanLoss1", ["EuclideanLoss1"])]
    assert list(proto.layer[3].bottom) == ["Convolution2", "DummyData1"]
    assert caffe.to_proto(loss) == proto


def test_zero_top_layers_and_layer_fields():
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=dict(dim=[2, 3]), ntop=2)
    n.silence = L.Silence(n.label, ntop=0)
    n.loss = L.EuclideanLoss(n.data, n.data, loss_weight=0.25,
                             include=dict(phase=caffe_pb2.TEST))
    proto = n.to_proto()
    silence = proto.layer[1]
    assert silence.name == "silence" and list(silence.top) == []
    assert list(silence.bottom) == ["label"]
    assert list(proto.layer[2].loss_weight) == [0.25]
    assert proto.layer[2].include[0].phase == caffe_pb2.TEST
    net = Net(parse_net_text(to_text(proto)), phase="TEST")
    assert [lp.name for lp in net.net_param.layer] == ["data", "silence", "loss"]


def test_python_layer_and_enum_strings():
    top = L.Python(L.Input(shape=dict(dim=[1])), module="my_layers", layer="Double",
                   param_str="{'k': 2}")
    layer = top.to_proto().layer[1]
    assert (layer.python_param.module, layer.python_param.layer,
            layer.python_param.param_str) == ("my_layers", "Double", "{'k': 2}")
    assert P.Pooling.AVE == caffe_pb2.PoolingParameter.AVE
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    pool = L.Pooling(L.Input(shape=dict(dim=[1, 1, 2, 2])), pool="AVE", kernel_size=2)
    assert pool.to_proto().layer[1].pooling_param.pool == caffe_pb2.PoolingParameter.AVE


def test_deconvolution_fields_go_to_convolution_param():
    up = L.Deconvolution(L.Input(shape=dict(dim=[1, 1, 2, 2])), kernel_size=4, stride=2,
                         num_output=1)
    layer = up.to_proto().layer[1]
    assert list(layer.convolution_param.kernel_size) == [4]
    assert list(layer.convolution_param.stride) == [2]
    rect = L.Convolution(L.Input(shape=dict(dim=[1, 1, 5, 5])), kernel_size=(3, 5),
                         num_output=1).to_proto().layer[1]
    assert list(rect.convolution_param.kernel_size) == [3, 5]


def test_in_place_keeps_one_top_per_bottom_index():
    x = L.Input(shape=dict(dim=[1, 2, 3, 3]))
    s = L.Input(shape=dict(dim=[2]))
    proto = L.Scale(x, s, axis=1, in_place=True).to_proto()
    assert list(proto.layer[2].bottom) == ["Input1", "Input2"]
    assert list(proto.layer[2].top) == ["Input1"]
    with pytest.raises(ValueError, match="in_place"):
        L.Slice(x, ntop=2, in_place=True)


def test_bad_input_is_named():
    tops = L.DummyData(ntop=2)
    with pytest.raises(TypeError,
                       match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(tops, ntop=0)
    x = L.Input(shape=dict(dim=[1]))
    with pytest.raises(AttributeError, match="^layer 'Convolution1' \\(Convolution\\) field "
                       "'kernal_size': no such field in LayerParameter nor in "
                       "ConvolutionParameter$"):
        L.Convolution(x, kernal_size=3).to_proto()
    with pytest.raises(AttributeError, match="'silence' .*field 'axis': no such field in "
                                             "LayerParameter$"):
        n = caffe.NetSpec()
        n.silence = L.Silence(x, axis=1, ntop=0)
        n.to_proto()
    with pytest.raises(AttributeError, match="field 'weight_filler': .*typ"):
        L.Convolution(x, weight_filler=dict(typ="xavier")).to_proto()
    with pytest.raises(TypeError, match="'Convolution1' .*field 'num_output'"):
        L.Convolution(x, num_output="ten").to_proto()
    with pytest.raises(AttributeError, match="PoolingParameter has no value 'MAXIMUM'.*MAX"):
        P.Pooling.MAXIMUM
    n = caffe.NetSpec()
    n.pair = L.DummyData(ntop=2)
    with pytest.raises(TypeError, match="'pair' holds a tuple of 2 tops"):
        n.to_proto()
    with pytest.raises(AttributeError, match="no top 'missing'"):
        n.missing


def test_item_access_matches_attributes():
    n = caffe.NetSpec()
    n["data"] = L.Input(shape=dict(dim=[1, 1, 2, 2]))
    n.relu = L.ReLU(n["data"])
    assert n.data is n["data"] and n.tops["relu"] is n.relu
    assert [l.name for l in n.to_proto().layer] == ["data", "relu"]
    assert np.array_equal(list(n.to_proto().layer[0].input_param.shape[0].dim), [1, 1, 2, 2])


def test_netspec_file_loads_in_caffe_net(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(str(small_net().to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    assert list(net._layer_names) == ["data", "conv", "pool", "relu", "ip", "prob"]
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    x = np.random.default_rng(0).random((2, 1, 6, 6)).astype(np.float32)
    out = net.forward(data=x)
    expected = Net(small_net().to_proto(), phase="TEST")({"data": torch.from_numpy(x)})
    assert np.allclose(out["prob"], expected["prob"].detach().numpy(), atol=1e-6)
