"""HDF5 weights (Caffe's Net::ToHDF5 layout, /data/<layer>/<blob index>) load wherever
weights are loaded, told from a .caffemodel by their content as Caffe's
CopyTrainedLayersFrom does (H5Fis_hdf5): Net(weights=...), `solve.py test --weights`, and
pycaffe's Net(prototxt, weights, phase), copy_from and load_hdf5. Files are written here
with h5py directly, in Caffe's layout, not by our writer. A malformed file is an error
naming the file, the layer and the blob."""
import logging

import caffe
import h5py
import numpy as np
import pytest
import torch

from runner import Net
from runner.proto import ProtoError, read_caffemodel
from runner.solve import main
from runner.weights import WeightsError

NET = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  param { name: "shared_w" } convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "conv_b" type: "Convolution" bottom: "data" top: "conv_b"
  param { name: "shared_w" } convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "sum" type: "Eltwise" bottom: "conv" bottom: "conv_b" top: "sum" }
layer { name: "ip" type: "InnerProduct" bottom: "sum" top: "ip" inner_product_param { num_output: 4 } }
"""
BLOBS = {"conv": [(3, 1, 3, 3), (3,)], "conv_b": [(3,)], "ip": [(4, 48), (4,)]}   # conv_b's weight is conv's


@pytest.fixture
def files(tmp_path):
    """The net, HDF5 weights in Caffe's layout (conv_b leaves out the weight it shares,
    as Caffe's ToHDF5 writes it) and the values written."""
    rng = np.random.default_rng(0)
    values = {layer: [rng.standard_normal(s).astype(np.float32) for s in shapes]
              for layer, shapes in BLOBS.items()}
    net, weights = tmp_path / "net.prototxt", tmp_path / "small_iter_10.caffemodel.h5"
    net.write_text(NET)
    with h5py.File(weights, "w") as f:
        f.create_group("diff")
        for layer, blobs in values.items():
            group = f.create_group(f"data/{layer}")
            for j, blob in enumerate(blobs, start=1 if layer == "conv_b" else 0):
                group.create_dataset(str(j), data=blob)
    return net, weights, values


def _expected(values):
    return {"conv": values["conv"], "conv_b": [values["conv"][0], values["conv_b"][0]],
            "ip": values["ip"]}


def test_net_weights_take_hdf5_and_match_the_file(files):
    net_path, weights, values = files
    net = Net(str(net_path), weights=str(weights))
    for lp, _, slots in net.layer_blobs():
        for slot, want in zip(slots, _expected(values).get(lp.name, [])):
            np.testing.assert_array_equal(slot.param.detach().numpy(), want)


def test_pycaffe_constructor_copy_from_and_load_hdf5_take_hdf5(files):
    net_path, weights, values = files
    legacy = caffe.Net(str(net_path), str(weights), caffe.TEST)
    named = caffe.Net(str(net_path), caffe.TEST, weights=str(weights))
    copied = caffe.Net(str(net_path), caffe.TEST)
    copied.copy_from(str(weights))
    loaded = caffe.Net(str(net_path), caffe.TEST)
    loaded.load_hdf5(str(weights))
    for net in (legacy, named, copied, loaded):
        for layer, want in _expected(values).items():
            for blob, value in zip(net.params[layer], want):
                np.testing.assert_array_equal(blob.data, value)


def test_hdf5_and_caffemodel_give_the_same_forward_and_test_command(files, tmp_path, capsys):
    net_path, weights, _ = files
    from_h5 = caffe.Net(str(net_path), str(weights), caffe.TEST)
    model = str(tmp_path / "same.caffemodel")
    from_h5.save(model)
    from_proto = caffe.Net(str(net_path), model, caffe.TEST)
    x = np.random.default_rng(1).standard_normal((2, 1, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(from_h5.forward(data=x)["ip"].copy(),
                                  from_proto.forward(data=x)["ip"].copy())
    train_val = tmp_path / "train_val.prototxt"
    train_val.write_text(NET.replace(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 6 dim: 6 } } }',
        'layer { name: "data" type: "DummyData" top: "data" dummy_data_param { shape { dim: 2 dim: 1 dim: 6 dim: 6 } '
        'data_filler { type: "constant" value: 0.5 } } }'))
    scores = []
    for path in (str(weights), model):
        assert main(["test", "--model", str(train_val), "--weights", path, "--iterations", "1"]) == 0
        scores.append(sorted(line.split("] ")[-1] for line in capsys.readouterr().err.splitlines()
                             if "] ip = " in line))
    assert scores[0] == scores[1] and scores[0]
    assert (weights.parent / "small_iter_10_test.json").exists()   # <name>.caffemodel.h5's


def _write(path, build):
    with h5py.File(path, "w") as f:
        build(f)
    return path


def _copy_of(weights):
    def build(f):
        with h5py.File(weights) as source:
            source.copy("data", f)
    return build


@pytest.mark.parametrize("build, message", [
    (lambda f: f.create_group("weights"), r"no /data group \(not a Caffe HDF5 weights file\)"),
    (lambda f: f.create_dataset("data", data=1), r"no /data group"),
    (lambda f: f.create_dataset("data/ip", data=np.zeros(3)),
     r"/data/ip is not a group of blobs \(/data/<layer>/<index>\)"),
    (lambda f: [f.create_dataset(f"data/ip/{j}", data=np.zeros(3)) for j in range(3)],
     r"layer 'ip' has 3 blob\(s\), the net's has 2 \[\[4, 48\], \[4\]\] \(incompatible number of blobs\)"),
    (lambda f: f.create_dataset("data/ip/1", data=np.zeros(4)),
     r"layer 'ip' blob 0 is missing \(incompatible number of blobs\)"),
    (lambda f: f.create_dataset("data/ip/0", data=np.zeros((4, 47))),
     r"layer 'ip' blob 0: shape mismatch: the file has \[4, 47\], the net expects \[4, 48\]"),
    (lambda f: f.create_dataset("data/ip/0", data=np.array([b"abc"] * 4)),
     r"layer 'ip' blob 0: expected a numeric dataset, got \|S3"),
    (lambda f: f.create_dataset("data/ip/0", shape=(4, 48), dtype="f4"),   # declared, never written
     r"layer 'ip' blob 0: declares 768 bytes of values but stores 0"),
])
def test_malformed_hdf5_weights_name_the_file_layer_and_blob(files, tmp_path, build, message):
    net_path = files[0]
    bad = _write(tmp_path / "bad.h5", build)
    with pytest.raises(WeightsError, match=rf"^{bad}: {message}"):
        Net(str(net_path), weights=str(bad), allow_missing=True)


def test_link_loops_and_corrupt_headers_are_clear_errors(files, tmp_path):
    """h5py raises RuntimeError for these (found by `make fuzz`)."""
    net_path, weights, _ = files

    def looped(f):
        _copy_of(weights)(f)
        del f["data/ip"]
        f["data/ip"] = h5py.SoftLink("/data/ip")
    loop = _write(tmp_path / "loop.h5", looped)
    with pytest.raises(WeightsError, match=rf"^{loop}: cannot read HDF5 weights: .*too many links"):
        Net(str(net_path), weights=str(loop))
    raw = weights.read_bytes()
    second = raw.index(b"SNOD", raw.index(b"SNOD") + 1)   # /data's symbol table node
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(raw[:second] + b"XXXX" + raw[second + 4:])
    with pytest.raises(WeightsError, match=rf"^{corrupt}: cannot read HDF5 weights: .*signature"):
        Net(str(net_path), weights=str(corrupt))


def test_nan_in_hdf5_weights_is_refused_unless_allowed(files, tmp_path, caplog):
    net_path, weights, _ = files

    def with_nan(f):
        _copy_of(weights)(f)
        ip = f["data/ip/0"]
        value = ip[...]
        value[1, 2] = np.nan
        ip[...] = value
    bad = _write(tmp_path / "nan.h5", with_nan)
    with pytest.raises(WeightsError, match=r"layer 'ip' blob 0: 1 of its 192 values are NaN or inf"):
        Net(str(net_path), weights=str(bad))
    with caplog.at_level(logging.WARNING):
        net = Net(str(net_path), weights=str(bad), allow_nonfinite=True)
    (ip,) = [slots for lp, _, slots in net.layer_blobs() if lp.name == "ip"]
    assert int(torch.isnan(ip[0].param).sum()) == 1
    assert "1 of its 192 values are NaN or inf" in caplog.text


def test_truncated_hdf5_and_load_hdf5_of_a_caffemodel_are_clear_errors(files, tmp_path):
    net_path, weights, _ = files
    truncated = tmp_path / "cut.h5"
    truncated.write_bytes(weights.read_bytes()[:3000])
    with pytest.raises(WeightsError, match=rf"^{truncated}: cannot read HDF5 weights: .*truncated"):
        Net(str(net_path), weights=str(truncated))
    net = caffe.Net(str(net_path), str(weights), caffe.TEST)
    model = str(tmp_path / "w.caffemodel")
    net.save(model)
    with pytest.raises(WeightsError, match=rf"^{model}: not an HDF5 file"):
        net.load_hdf5(model)
    with pytest.raises(ProtoError, match=rf"^{weights}: not a binary caffe.NetParameter \(an HDF5 file\)"):
        read_caffemodel(weights)   # what reads only .caffemodel files (zoo publish) says why


def test_a_layer_absent_from_the_file_keeps_its_values_only_where_allowed(files, tmp_path):
    net_path, weights, values = files

    def without_ip(f):
        _copy_of(weights)(f)
        del f["data/ip"]
    partial = _write(tmp_path / "partial.h5", without_ip)
    with pytest.raises(WeightsError, match=r"no blobs for layer\(s\) \['ip'\] of the net"):
        Net(str(net_path), weights=str(partial))
    net = caffe.Net(str(net_path), caffe.TEST)
    before = net.params["ip"][0].data.copy()
    net.load_hdf5(str(partial))
    np.testing.assert_array_equal(net.params["ip"][0].data, before)
    np.testing.assert_array_equal(net.params["conv"][0].data, values["conv"][0])
