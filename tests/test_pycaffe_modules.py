"""caffe's module surface from this side of the facade: caffe.proto is runner's schema
module under pycaffe's name, __version__, and caffe.Timer's start/stop/ms rules."""
import time

import pytest

import caffe
import runner.proto


def test_proto_is_one_module_object_by_every_import():
    import caffe.proto.caffe_pb2 as dotted
    from caffe.proto import caffe_pb2 as from_package
    assert dotted is from_package is caffe.proto.caffe_pb2 is runner.proto.caffe_pb2
    assert caffe.proto.caffe_pb2.NetParameter is runner.proto.caffe_pb2.NetParameter


def test_version_is_pycaffes():
    assert caffe.__version__ == "1.0.0"


def test_timer_measures_start_to_stop():
    timer = caffe.Timer()
    with pytest.warns(UserWarning, match="never been run"):
        assert timer.ms == 0
    timer.start()
    time.sleep(0.02)
    timer.start()                  # no-op while running: the interval keeps its start
    time.sleep(0.02)
    timer.stop()
    first = timer.ms
    assert 35 <= first < 1000
    time.sleep(0.02)
    assert timer.ms == first       # stopped: reading again changes nothing
    timer.start()
    assert timer.ms < first        # reading a running timer stops it
