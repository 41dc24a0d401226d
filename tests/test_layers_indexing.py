"""Filter, BatchReindex, Parameter and Im2col against numpy transcriptions of Caffe's
filter_layer.cpp, batch_reindex_layer.cpp, parameter_layer.hpp and im2col.cpp, forward and
backward (with Caffe's special backward rules), and Parameter's blob through .caffemodel."""
import itertools

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from runner import Net
from layer_helpers import layer_from_text
from runner.proto import caffe_pb2, read_caffemodel


def make(text, shapes, tops=1):
    names = "".join(f' top: "t{i}"' for i in range(tops))
    return layer_from_text(f'name: "p"{names} {text}', shapes).double()


def np_filter(bottoms, selector):
    """filter_layer.cpp: forward, and the backward that copies kept diffs and zeroes the rest."""
    keep = [n for n in range(selector.shape[0]) if selector.reshape(len(selector), -1)[n, 0]]
    tops = [np.stack([b[n] for n in keep]) for b in bottoms]

    def backward(top_diffs):
        diffs = []
        for b, td in zip(bottoms, top_diffs):
            d, nxt = np.zeros_like(b), 0
            for n in range(b.shape[0]):
                if nxt < len(keep) and n == keep[nxt]:
                    d[n] = td[nxt]
                    nxt += 1
            diffs.append(d)
        return diffs
    return tops, backward


def test_filter_forward_and_caffes_backward():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(5, 2, 2))
    selector = np.array([[1.0], [0.0], [2.5], [0.0], [-1.0]])
    layer = make('type: "Filter"', [a.shape, b.shape, selector.shape], tops=2)
    assert layer.top_shapes == [(5, 3), (5, 2, 2)]   # Caffe's first reshape: the full batch
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    ts = torch.tensor(selector, requires_grad=True)
    out = layer(ta, tb, ts)
    ref, backward = np_filter([a, b], selector)
    for o, r in zip(out, ref):
        np.testing.assert_array_equal(o.detach().numpy(), r)
    diffs = [rng.normal(size=r.shape) for r in ref]
    torch.autograd.backward(out, [torch.tensor(d) for d in diffs])
    for t, want in zip((ta, tb), backward(diffs)):
        np.testing.assert_array_equal(t.grad.numpy(), want)
    assert ts.grad is None   # the selector gets no gradient


def test_filter_rejects_a_selector_with_more_than_one_value_per_item():
    with pytest.raises(ValueError, match="selector blob dimensions must be 1"):
        make('type: "Filter"', [(4, 2), (4, 2)])


def np_batch_reindex(x, permut, top_diff):
    """batch_reindex_layer.cpp forward and backward (diffs of repeated items add up)."""
    inner = x[0].size
    out = np.zeros((len(permut),) + x.shape[1:]).reshape(-1)
    diff = np.zeros(x.size)
    flat, td = x.reshape(-1), top_diff.reshape(-1)
    for index in range(out.size):
        n = int(permut[index // inner])
        out[index] = flat[n * inner + index % inner]
        diff[n * inner + index % inner] += td[index]
    return out.reshape((len(permut),) + x.shape[1:]), diff.reshape(x.shape)


def test_batch_reindex_forward_backward_and_truncated_indices():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 2, 3))
    permut = np.array([3.0, 0.0, 3.9, 1.2, 2.0, 0.0])   # Caffe truncates 3.9 to 3
    layer = make('type: "BatchReindex"', [x.shape, permut.shape])
    assert layer.top_shapes == [(6, 2, 3)]
    tx = torch.tensor(x, requires_grad=True)
    (y,) = layer(tx, torch.tensor(permut))
    top_diff = rng.normal(size=y.shape)
    y.backward(torch.tensor(top_diff))
    ref, ref_diff = np_batch_reindex(x, permut, top_diff)
    np.testing.assert_array_equal(y.detach().numpy(), ref)
    np.testing.assert_allclose(tx.grad.numpy(), ref_diff, rtol=1e-15)
    with pytest.raises(ValueError, match="out of range for a batch of 4"):
        layer(tx, torch.tensor([0.0, 4.0, 1.0, 1.0, 1.0, 1.0]))


def np_im2col(x, kernel, stride, pad, dilation):
    """Caffe's im2col_nd_cpu for one image (C x spatial...): rows c * prod(kernel) + k."""
    channels, spatial = x.shape[0], x.shape[1:]
    out = [(s + 2 * p - (d * (k - 1) + 1)) // st + 1
           for s, k, st, p, d in zip(spatial, kernel, stride, pad, dilation)]
    cols = np.zeros((channels * int(np.prod(kernel)), *out))
    for c_col in range(cols.shape[0]):
        c, rest = divmod(c_col, int(np.prod(kernel)))
        offsets = np.unravel_index(rest, kernel)
        for pos in itertools.product(*(range(o) for o in out)):
            src = [q * st - p + k * d for q, st, p, k, d in zip(pos, stride, pad, offsets, dilation)]
            if all(0 <= i < s for i, s in zip(src, spatial)):
                cols[(c_col, *pos)] = x[(c, *src)]
    return cols


@pytest.mark.parametrize("text, shape, geometry", [
    ("kernel_size: 3 stride: 2 pad: 1", (1, 2, 7, 6), ([3, 3], [2, 2], [1, 1], [1, 1])),
    ("kernel_h: 2 kernel_w: 3 pad_h: 1 stride_h: 1 stride_w: 2 dilation: 2", (1, 2, 6, 7), ([2, 3], [1, 2], [1, 0], [2, 2])),
    ("kernel_size: 2 stride: 1 force_nd_im2col: true", (2, 2, 4, 3, 3), ([2, 2, 2], [1] * 3, [0] * 3, [1] * 3)),
    ("kernel_size: 3 pad: 2", (2, 3, 5), ([3], [1], [2], [1])),
])
def test_im2col_equals_caffes_im2col_and_its_backward_is_col2im(text, shape, geometry):
    rng = np.random.default_rng(2)
    x = rng.normal(size=shape)
    layer = make(f'type: "Im2col" convolution_param {{ {text} }}', [shape])
    tx = torch.tensor(x, requires_grad=True)
    (y,) = layer(tx)
    ref = np.stack([np_im2col(img, *geometry) for img in x])
    assert layer.top_shapes == [ref.shape]
    np.testing.assert_array_equal(y.detach().numpy(), ref)
    assert torch.autograd.gradcheck(lambda v: layer(v)[0], (tx,))


def test_parameter_top_is_its_blob_learned_saved_and_reloaded(tmp_path):
    text = '''name: "p" layer { name: "w" type: "Parameter" top: "w"
        parameter_param { shape { dim: 2 dim: 3 } } }
      layer { name: "loss" type: "Reduction" bottom: "w" top: "loss" loss_weight: 1
        reduction_param { operation: SUMSQ } }'''
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TRAIN")
    (blob,) = net.layers["w"].blobs
    assert blob.shape == (2, 3) and torch.count_nonzero(blob) == 0   # Caffe's fresh blob is 0
    with torch.no_grad():
        blob.copy_(torch.arange(6.0).reshape(2, 3))
    blobs = net({})
    assert torch.equal(blobs["w"], blob)
    net.objective(blobs).backward()
    assert torch.equal(blob.grad, 2 * blob.detach())
    path = tmp_path / "p.caffemodel"
    net.save_caffemodel(path)
    assert [list(b.shape.dim) for b in read_caffemodel(str(path)).layer[0].blobs] == [[2, 3]]
    again = Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TEST", weights=str(path))
    assert torch.equal(again({})["w"], blob.detach())


@pytest.mark.parametrize("text, shapes, tops, match", [
    ('type: "BatchReindex"', [(4, 2)], 1, "takes exactly 2 bottom"),
    ('type: "Filter"', [(4, 2)], 1, "takes at least 2 bottom"),
    ('type: "Parameter" parameter_param { shape { dim: 2 } }', [(4, 2)], 1, "takes exactly 0 bottom"),
    ('type: "Im2col" convolution_param { kernel_size: 1 }', [(1, 1, 2, 2)], 2, "takes exactly 1 top"),
    ('type: "LSTMUnit"', [(1, 2, 3), (1, 2, 12)], 2, "takes exactly 3 bottom"),
    ('type: "HDF5Output" hdf5_output_param { file_name: "x.h5" }', [(2, 3)], 0, "takes exactly 2 bottom"),
])
def test_blob_counts_are_caffes(text, shapes, tops, match):
    with pytest.raises(ValueError, match=match):
        make(text, shapes, tops=tops)
