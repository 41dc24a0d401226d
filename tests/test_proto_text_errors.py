"""Malformed text prototxt: errors say path:line:column, protobuf's reason and the token."""
import pytest

from runner.proto import ProtoError, read_net, read_solver


def _error(tmp_path, text, reader=read_net):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    with pytest.raises(ProtoError) as err:
        reader(path)
    return str(err.value), str(path)


def test_wrong_enum_value(tmp_path):
    msg, path = _error(tmp_path, 'name: "n"\nlayer {\n  name: "p"\n  pooling_param { pool: MAXX }\n}\n')
    first, source, caret = msg.splitlines()
    assert first == f'{path}:4:25: Enum type "caffe.PoolingParameter.PoolMethod" has no value named MAXX.'
    assert source.strip() == "pooling_param { pool: MAXX }"
    assert caret.index("^") == source.index("MAXX")


def test_unknown_field_name(tmp_path):
    msg, path = _error(tmp_path, 'layer {\n  nme: "conv1"\n}\n')
    assert msg.splitlines()[0] == f'{path}:2:3: Message type "caffe.LayerParameter" has no field named "nme".'


def test_bad_token(tmp_path):
    msg, path = _error(tmp_path, 'layer {\n  name: conv1\n}\n')
    assert msg.splitlines()[0] == f"{path}:2:9: Expected string but found: 'conv1'"


def test_unbalanced_braces_and_out_of_range_value(tmp_path):
    msg, path = _error(tmp_path, 'layer {\n  name: "a"\n')
    assert msg.startswith(f"{path}:") and 'Expected "}"' in msg
    msg, path = _error(tmp_path, 'layer { convolution_param { num_output: -3 } }')
    assert msg.splitlines()[0] == f"{path}:1:41: Value out of range: -3"


def test_repeated_singular_field(tmp_path):
    msg, path = _error(tmp_path, 'base_lr: 0.1\nbase_lr: 0.2\n', read_solver)
    assert msg.splitlines()[0].startswith(f"{path}:2:")
    assert 'should not have multiple "base_lr" fields' in msg


def test_missing_file_and_binary_file(tmp_path):
    with pytest.raises(ProtoError, match=r"nowhere.prototxt: cannot read: No such file or directory"):
        read_net(tmp_path / "nowhere.prototxt")
    binary = tmp_path / "w.prototxt"
    binary.write_bytes(b"\x0a\x04name\x92\xff\x00")
    with pytest.raises(ProtoError, match=r"w.prototxt: not a text prototxt \(byte 6 is not UTF-8\)"):
        read_net(binary)


def test_missing_required_field_is_refused_as_caffe_does(tmp_path):
    msg, path = _error(tmp_path, 'layer { name: "clip1" type: "Clip" clip_param { min: 0 } }')
    assert msg == f"{path}: missing required fields: layer[0].clip_param.max (layer 'clip1')"
