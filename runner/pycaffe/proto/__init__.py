"""`caffe.proto.caffe_pb2`: the project's schema module (runner.proto.caffe_pb2) under
pycaffe's name, one module object whichever way it is imported."""
import sys

from runner.proto import caffe_pb2

sys.modules[__name__ + ".caffe_pb2"] = caffe_pb2

__all__ = ["caffe_pb2"]
