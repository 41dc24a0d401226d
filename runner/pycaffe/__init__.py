"""pycaffe's Python interface (`import caffe`), served by this project's engine.

Installed under the import name `caffe`; import it as `caffe`, never as `runner.pycaffe`,
so each of its modules exists once. It computes nothing itself: every name here calls
runner's Net, solvers, data and schema.
"""
from runner.blob import Blob
from runner.data.prefetch import set_default_workers
from runner.layers import layer_type_list
from runner.layers.python_layer import PythonLayer as Layer

from . import coord_map, draw, io, proto
from .glog import init_log, log
from .mode import has_nccl, set_device, set_mode_cpu, set_mode_gpu, set_random_seed
from .net import TEST, TRAIN, Net
from .classifier import Classifier
from .detector import Detector
from .net_spec import NetSpec, layers, params, to_proto
from .solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver,
                     SGDSolver, get_solver)
from .timer import Timer

__version__ = "1.0.0"

# Data layers read in this process unless RUNNER_DATA_WORKERS asks for workers: worker
# processes re-import the main script, and pycaffe scripts have no __main__ guard.
set_default_workers(0)
