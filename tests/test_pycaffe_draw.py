"""caffe.draw and the draw_net CLI: pycaffe's labels and phase filter, PNG/SVG through
Graphviz, and one clear error when pydot or dot is missing."""
import pathlib
import shutil
import subprocess
import sys

import pytest

import caffe
import caffe.draw
from caffe import layers as L
from caffe import params as P
from caffe.proto import caffe_pb2
from caffe.draw_net import main as draw_net_main
from runner.proto import write_text

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (apt-get install graphviz)")


def net_param():
    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=16, backend=P.Data.LMDB, source="x", ntop=2,
                             include=dict(phase=caffe.proto.caffe_pb2.TRAIN))
    n.conv1 = L.Convolution(n.data, kernel_size=5, stride=2, pad=1, num_output=20,
                            param=[dict(lr_mult=1), dict(lr_mult=2)])
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, kernel_size=3, stride=2, pool=P.Pooling.AVE)
    n.ip = L.InnerProduct(n.pool1, num_output=10)
    n.acc = L.Accuracy(n.ip, n.label, include=dict(phase=caffe_pb2.TEST))
    net = n.to_proto()
    net.name = "tiny"
    return net


def dot_source(net, **kw):
    return caffe.draw.get_pydot_graph(net, kw.pop("rankdir", "LR"), **kw).to_string()


def test_labels_colours_and_edges():
    text = dot_source(net_param(), display_lrm=True)
    assert 'digraph tiny {' in text and "rankdir=LR" in text
    assert (r'"conv1\n(Convolution)\nkernel size: 5\nstride: 2\npad: 1\nlr mult: 1.0, 2.0" '
            '[shape=record, fillcolor="#FF5050", style=filled]') in text
    assert r'"relu1\n(ReLU)" [shape=record, fillcolor="#90EE90"' in text      # in place
    assert r'"pool1\n(Pooling AVE)\nkernel size: 3\nstride: 2\npad: 0"' in text
    assert 'label="Batch 16"' in text and 'label=20' in text and 'label=10' in text
    assert "octagon" in text
    vertical = dot_source(net_param(), rankdir="TB")
    assert '"conv1 (Convolution) kernel size: 5 stride: 2 pad: 1"' in vertical


def test_phase_filter_follows_include_rules():
    train, test, both = (dot_source(net_param(), phase=p) for p in (caffe_pb2.TRAIN,
                                                                     caffe_pb2.TEST, None))
    assert "(Data)" in train and "(Accuracy)" not in train
    assert "(Data)" not in test and "(Accuracy)" in test
    assert "(Data)" in both and "(Accuracy)" in both


def test_lr_mult_needs_a_learning_layer():
    layer = net_param().layer[2]
    with pytest.raises(ValueError, match="ReLU layers do not have a learning rate"):
        caffe.draw.get_layer_lr_mult(layer)


@needs_dot
def test_draw_png_svg_and_raw(tmp_path):
    net = net_param()
    assert caffe.draw.draw_net(net, "LR").startswith(b"\x89PNG\r\n\x1a\n")
    caffe.draw.draw_net_to_file(net, str(tmp_path / "net.svg"), "TB", caffe_pb2.TEST)
    svg = (tmp_path / "net.svg").read_text()
    assert "<svg" in svg and "acc" in svg and "Batch 16" not in svg
    caffe.draw.draw_net_to_file(net, tmp_path / "net.raw")
    assert (tmp_path / "net.raw").read_text().startswith("digraph tiny {")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.raw", "net.svg"]  # no temporaries
    with pytest.raises(caffe.draw.GraphvizError,
                       match='dot -Tbmpx failed: .*"bmpx" not recognized'):
        caffe.draw.draw_net(net, "LR", "bmpx")


@needs_dot
def test_draw_net_cli_writes_png_and_svg(tmp_path, capsys):
    write_text(net_param(), tmp_path / "train_val.prototxt")
    assert draw_net_main([str(tmp_path / "train_val.prototxt"), str(tmp_path / "a.png")]) == 0
    assert capsys.readouterr().out == f"Drawing net to {tmp_path / 'a.png'}\n"
    assert (tmp_path / "a.png").read_bytes().startswith(b"\x89PNG")
    script = pathlib.Path(sys.executable).parent / "caffe-ds-draw-net"    # the console script
    done = subprocess.run([str(script), "--rankdir", "TB",
                           "--phase", "TRAIN", "--display_lrm",
                           str(tmp_path / "train_val.prototxt"), str(tmp_path / "a.svg")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    svg = (tmp_path / "a.svg").read_text()
    assert "lr mult: 1.0, 2.0" in svg and "Accuracy" not in svg


def test_cli_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "a" type: "ReLU" bottom: "x" top: "x" }\nlayer { nme: "b" }\n')
    assert draw_net_main([str(bad), str(tmp_path / "out.png")]) == 1
    assert f"error: {bad}:2:" in capsys.readouterr().err
    write_text(net_param(), tmp_path / "ok.prototxt")
    assert draw_net_main([str(tmp_path / "ok.prototxt"), str(tmp_path / "noext")]) == 1
    assert "noext: no extension to name the image format" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_missing_dot_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))       # no dot anywhere on PATH
    with pytest.raises(caffe.draw.GraphvizError,
                       match="needs Graphviz's dot program.*apt-get install graphviz"):
        caffe.draw.draw_net(net_param(), "LR", "png")


def test_missing_pydot_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydot", None)  # import pydot now raises ImportError
    with pytest.raises(caffe.draw.GraphvizError,
                       match="needs the pydot package: pip install pydot"):
        caffe.draw.draw_net(net_param(), "LR")
