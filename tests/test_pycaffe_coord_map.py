"""caffe.coord_map: maps through conv/pool/deconv and `crop` on an FCN-like net, offsets
worked out by hand, and the crop run in runner.Net."""
import numpy as np
import pytest
import torch

import caffe
from caffe import layers as L
from caffe import params as P
from caffe.coord_map import coord_map_from_to, crop
from runner import Net
from runner.proto import parse_net_text, to_text


def fcn(size=64, pad=100):
    """FCN-32s in miniature: a padded conv, a 2x pool, a 1x1 score, a 2x upsampling."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, size, size]))
    n.conv1 = L.Convolution(n.data, kernel_size=3, pad=pad, num_output=2,
                            weight_filler=dict(type="gaussian", std=0.1))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.score = L.Convolution(n.pool1, kernel_size=1, num_output=3,
                            weight_filler=dict(type="gaussian", std=0.1))
    n.upscore = L.Deconvolution(n.score, convolution_param=dict(
        kernel_size=4, stride=2, num_output=3, bias_term=False,
        weight_filler=dict(type="gaussian", std=0.1)))
    return n


def test_fcn_crop_offset_by_hand():
    # Each layer maps its bottom coordinate x to a*x + b on its top:
    #   conv1: a = 1, b = p - (k-1)/2 = 99;  pool (k2 s2): a = 1/2, b = (0 - 1/2)/2 = -1/4;
    #   deconv (k4 s2): a = 2, b = (4-1)/2 = 3/2.  upscore -> data: a = 2 * 1/2 * 1 = 1,
    #   b = 3/2 + 2 * (-1/4) + 1 * 99 = 100, so upscore[i + 100] sits over data[i]; the
    #   map from upscore back to data is its inverse, data = upscore - 100.
    n = fcn()
    ax, a, b = coord_map_from_to(n.upscore, n.data)
    assert (ax, float(a[0]), float(b[0])) == (1, 1.0, -100.0)
    n.crop = crop(n.upscore, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and list(layer.bottom) == ["upscore", "data"]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [100]

    net = Net(parse_net_text(to_text(n.to_proto())), phase="TEST")
    blobs = net({"data": torch.randn(1, 1, 64, 64)})
    # 64 + 200 - 2 = 262 -> pool 131 -> deconv (131 - 1) * 2 + 4 = 264
    assert blobs["upscore"].shape == (1, 3, 264, 264)
    assert blobs["crop"].shape == (1, 3, 64, 64)
    assert torch.equal(blobs["crop"], blobs["upscore"][:, :, 100:164, 100:164])


def test_pass_through_and_pooling_param_form():
    n = fcn(pad=1)
    n.drop = L.Dropout(n.upscore)
    n.pool2 = L.Pooling(n.data, pooling_param=dict(kernel_size=2, stride=2, pad=0,
                                                   pool=P.Pooling.MAX))
    ax, a, b = coord_map_from_to(n.drop, n.data)
    # ReLU and Dropout pass through; b = 3/2 + 2 * (-1/4) + (1 - 1) = 1: data = drop - 1
    assert (float(a[0]), float(b[0])) == (1.0, -1.0)
    ax, a, b = coord_map_from_to(n.pool2, n.data)
    # pool2[i] covers data[2i], data[2i + 1]: its centre is data coordinate 2i + 1/2
    assert (float(a[0]), float(b[0])) == (2.0, 0.5)


def test_crop_refuses_what_cannot_be_cropped():
    n = fcn(pad=0)
    # deconv pad 3, conv pad 0: b = 3/2 - 3 + 2 * (-1/4) + (0 - 1) = -3: `up` starts 3
    # pixels inside data
    n.up = L.Deconvolution(n.score, convolution_param=dict(kernel_size=4, stride=2, pad=3,
                                                           num_output=3))
    with pytest.raises(AssertionError, match=r"negative offset \(b = \[3\.\]\)"):
        crop(n.up, n.data)
    with pytest.raises(AssertionError, match="scale mismatch"):
        crop(n.score, n.data)      # score is at half resolution
    n.ip = L.InnerProduct(n.upscore, num_output=2)
    with pytest.raises(RuntimeError, match="connected by spatial layers"):
        coord_map_from_to(n.ip, n.data)
    n.gpool = L.Pooling(n.data, global_pooling=True)
    with pytest.raises(RuntimeError):
        coord_map_from_to(n.gpool, n.data)


def test_crop_of_a_top_onto_itself_is_the_identity():
    n = fcn()
    n.same = crop(n.conv1, n.conv1)
    layer = n.to_proto().layer[-1]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [0]
    assert np.all(coord_map_from_to(n.conv1, n.conv1)[1] == 1)
