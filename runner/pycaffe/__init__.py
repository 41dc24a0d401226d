"""pycaffe's Python interface (`import caffe`), served by this project's engine.

Installed under the import name `caffe`; import it as `caffe`, never as `runner.pycaffe`,
so each of its modules exists once. It computes nothing itself: every name here calls
runner's Net, solvers, data and schema.
"""
from . import coord_map, draw, io, proto
from .net_spec import NetSpec, layers, params, to_proto
from .timer import Timer

__version__ = "1.0.0"
