"""Binary files: .caffemodel, .binaryproto and .solverstate round-trip byte for byte;
blobs convert to numpy with Caffe's shape rules (legacy 4D dims, double_data)."""
import numpy as np
import pytest

from runner.proto import (ProtoError, array_to_blob, blob_shape, blob_to_array, caffe_pb2,
                          read_binary, read_blobproto, read_caffemodel, read_net,
                          read_solverstate, write_binary)
from test_proto_text_roundtrip import DATA


def _rewrite_is_byte_exact(msg, path, reader):
    write_binary(msg, path)
    first = path.read_bytes()
    back = reader(path)
    assert back == msg
    write_binary(back, path)
    assert path.read_bytes() == first
    return back


def test_caffemodel_with_blobs_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    net = read_net(DATA / "googlenet_deploy.prototxt")
    for layer in net.layer:
        if layer.type == "Convolution":
            out = layer.convolution_param.num_output
            layer.blobs.append(array_to_blob(rng.standard_normal((out, 2, 3, 3))))
            layer.blobs.append(array_to_blob(rng.standard_normal(out)))
    back = _rewrite_is_byte_exact(net, tmp_path / "w.caffemodel", read_caffemodel)
    conv = next(layer for layer in back.layer if layer.name == "inception_3a/3x3")
    assert blob_to_array(conv.blobs[0]).shape == (128, 2, 3, 3)


def test_v1_caffemodel_is_upgraded_on_read(tmp_path):
    v1 = caffe_pb2.NetParameter(name="old")
    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    v1.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT,
                  blobs=[array_to_blob(weights)], blobs_lr=[1, 2])
    v1.input.append("data")  # an input without dims: Caffe just drops it
    write_binary(v1, tmp_path / "old.caffemodel")
    net = read_caffemodel(tmp_path / "old.caffemodel")
    assert not net.layers and not net.input
    assert (net.layer[0].name, net.layer[0].type) == ("ip", "InnerProduct")
    np.testing.assert_array_equal(blob_to_array(net.layer[0].blobs[0]), weights)
    assert read_caffemodel(tmp_path / "old.caffemodel", upgrade=False) == v1


def test_binaryproto_mean_round_trips_with_legacy_dims(tmp_path):
    mean = np.random.default_rng(2).uniform(0, 255, (3, 4, 5)).astype(np.float32)
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=4, width=5, data=mean.ravel())
    back = _rewrite_is_byte_exact(blob, tmp_path / "mean.binaryproto", read_blobproto)
    assert blob_shape(back) == (1, 3, 4, 5)
    np.testing.assert_array_equal(blob_to_array(back)[0], mean)


def test_solverstate_round_trips(tmp_path):
    history = [array_to_blob(np.full((2, 2), 0.5)), array_to_blob(np.zeros(3))]
    state = caffe_pb2.SolverState(iter=1200, learned_net="snap_iter_1200.caffemodel",
                                  history=history, current_step=2)
    back = _rewrite_is_byte_exact(state, tmp_path / "snap_iter_1200.solverstate", read_solverstate)
    assert back.iter == 1200 and back.current_step == 2
    np.testing.assert_array_equal(blob_to_array(back.history[0]), np.full((2, 2), 0.5, np.float32))


def test_legacy_dims_win_over_shape_as_in_caffe():
    blob = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3, data=range(6))
    blob.shape.dim.extend([6])
    assert blob_to_array(blob).shape == (1, 1, 2, 3)
    assert blob_to_array(caffe_pb2.BlobProto(height=2)).shape == (0, 0, 2, 0)


def test_double_data_is_used_when_present():
    blob = caffe_pb2.BlobProto(double_data=[0.25, 1e-3], data=[9.0, 9.0])
    blob.shape.dim.append(2)
    np.testing.assert_array_equal(blob_to_array(blob), np.array([0.25, 1e-3], np.float32))


def test_scalar_and_empty_blobs():
    scalar = array_to_blob(np.float32(3.5))
    assert list(scalar.shape.dim) == [] and blob_to_array(scalar) == np.float32(3.5)
    empty = array_to_blob(np.zeros((0, 4)))
    assert blob_to_array(empty).shape == (0, 4)


def test_array_to_blob_matches_extend():
    array = np.random.default_rng(3).standard_normal((3, 2, 2)).astype(np.float32)
    slow = caffe_pb2.BlobProto(data=array.ravel().tolist())
    slow.shape.dim.extend(array.shape)
    assert array_to_blob(array).SerializeToString() == slow.SerializeToString()
    assert array_to_blob(array.transpose(2, 0, 1)).data[1] == array.transpose(2, 0, 1).ravel()[1]


def test_count_mismatch_names_the_blob():
    blob = caffe_pb2.BlobProto(data=[1, 2, 3])
    blob.shape.dim.extend([2, 2])
    with pytest.raises(ProtoError, match=r"conv1 blob 0: shape \(2, 2\) holds 4 values but data has 3"):
        blob_to_array(blob, "conv1 blob 0")


def test_binary_errors_name_the_file_and_the_expected_type(tmp_path):
    with pytest.raises(ProtoError, match=r"missing.caffemodel: cannot read: No such file"):
        read_caffemodel(tmp_path / "missing.caffemodel")
    corrupt = tmp_path / "corrupt.caffemodel"
    corrupt.write_bytes(b"\x0a\xff\xff")
    with pytest.raises(ProtoError, match=r"corrupt.caffemodel: not a binary caffe.NetParameter"):
        read_caffemodel(corrupt)
    text = tmp_path / "deploy.caffemodel"
    text.write_bytes((DATA / "googlenet_deploy.prototxt").read_bytes())
    with pytest.raises(ProtoError, match=r"deploy.caffemodel: not a binary caffe.NetParameter"):
        read_caffemodel(text)
    wrong_type = tmp_path / "net.binaryproto"
    write_binary(caffe_pb2.NetParameter(name="net"), wrong_type)
    with pytest.raises(ProtoError, match=r"net.binaryproto: not a binary caffe.BlobProto \(it has field numbers \[1\]"):
        read_blobproto(wrong_type)
    assert read_binary(wrong_type, caffe_pb2.NetParameter).name == "net"


def test_required_fields_are_checked_on_write_and_read(tmp_path):
    net = caffe_pb2.NetParameter()
    net.layer.add(name="clip1", type="Clip").clip_param.min = 0
    with pytest.raises(ProtoError, match=r"c.caffemodel: missing required fields: layer\[0\].clip_param.max"):
        write_binary(net, tmp_path / "c.caffemodel")
    assert not (tmp_path / "c.caffemodel").exists()
    (tmp_path / "c.caffemodel").write_bytes(net.SerializePartialToString())
    with pytest.raises(ProtoError, match=r"c.caffemodel: missing required fields: .*\(layer 'clip1'\)"):
        read_caffemodel(tmp_path / "c.caffemodel")


def test_a_forks_parameter_at_clip_params_number_is_dropped_with_a_warning(tmp_path):
    """ChWick's ctc branch stores ctc_loss_param at 148, BVLC's clip_param: a CTCLoss layer
    of its .caffemodel reads as carrying a clip_param without min and max. Its blobs load;
    the field is dropped with a warning; a Clip layer missing them is still refused."""
    net = caffe_pb2.NetParameter(name="ocr")
    ip = net.layer.add(name="ip", type="InnerProduct")
    ip.blobs.add().data.extend([1.0, 2.0])
    ctc = net.layer.add(name="loss", type="CTCLoss")
    chwick_ctc_loss_param = bytes([0x10, 0x02])                  # blank_index (its field 2): 2
    ctc.ParseFromString(ctc.SerializeToString() + bytes([0xA2, 0x09, len(chwick_ctc_loss_param)])
                        + chwick_ctc_loss_param)                 # field 148, length-delimited
    assert ctc.HasField("clip_param") and not ctc.clip_param.IsInitialized()
    path = tmp_path / "ocr.caffemodel"
    path.write_bytes(net.SerializePartialToString())
    with pytest.warns(UserWarning, match=r"ocr.caffemodel: layer 'loss' \(CTCLoss\) carries field 148"):
        loaded = read_caffemodel(path)
    assert list(loaded.layer[0].blobs[0].data) == [1.0, 2.0]
    assert not loaded.layer[1].HasField("clip_param")
    ctc.type = "Clip"
    path.write_bytes(net.SerializePartialToString())
    with pytest.raises(ProtoError, match=r"missing required fields: .*\(layer 'loss'\)"):
        read_caffemodel(path)
