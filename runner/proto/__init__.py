"""Caffe's schema and files: text/binary I/O, legacy upgrades, NetState filtering.

`caffe_pb2` is generated from caffe.proto (field names and numbers are BVLC Caffe's).
"""
from runner.proto import caffe_pb2
from runner.proto.binary import (read_binary, read_blobproto, read_caffemodel,
                                 read_file_bytes, read_solverstate, write_binary)
from runner.proto.blobs import array_to_blob, blob_shape, blob_to_array
from runner.proto.errors import ProtoError
from runner.proto.netstate import (check_bottoms, filter_net, layer_included, phase_value,
                                   state_meets_rule)
from runner.proto.textio import (parse_net_text, parse_solver_text, parse_text, read_net,
                                 read_solver, read_text, to_text, write_text)
from runner.proto.upgrade import loss_normalization, upgrade_net, upgrade_solver

__all__ = [
    "caffe_pb2", "ProtoError",
    "parse_text", "read_text", "parse_net_text", "read_net", "parse_solver_text", "read_solver",
    "to_text", "write_text",
    "read_file_bytes", "read_binary", "write_binary", "read_caffemodel", "read_blobproto", "read_solverstate",
    "blob_to_array", "array_to_blob", "blob_shape",
    "filter_net", "check_bottoms", "state_meets_rule", "layer_included", "phase_value",
    "upgrade_net", "upgrade_solver", "loss_normalization",
]
