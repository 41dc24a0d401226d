"""The SolverParameter as Caffe's Solver::Init reads it: checks, defaults, and which
NetParameter (with which NetState) each train and test net is built from.

Paths (net, train_net, test_net, snapshot_prefix, data sources) are used as written,
i.e. relative to the working directory, as Caffe uses them.
"""
from __future__ import annotations

from dataclasses import dataclass

from runner.solver.detection_eval import AP_VERSIONS
from runner.proto import caffe_pb2, read_net, read_solver, upgrade_solver
from runner.solver.errors import SolverConfigError

@dataclass
class NetSpec:
    """A net to build: its NetParameter, where it came from, and its NetState."""
    param: caffe_pb2.NetParameter
    origin: str
    phase: str
    stages: tuple[str, ...]
    level: int


def load_solver_param(path: str) -> caffe_pb2.SolverParameter:
    """Read a solver prototxt (legacy solver_type upgraded, snapshot_prefix defaulted
    as Caffe does) and apply Solver::Init's checks."""
    param = read_solver(path)
    check_solver_param(param, path)
    return param


def prepare_solver_param(param, where: str = "solver") -> None:
    """Checks and upgrades for a SolverParameter built in code rather than read."""
    upgrade_solver(param, where)
    check_solver_param(param, where)


def check_solver_param(param, where: str = "solver") -> None:
    """The CHECKs of Solver::Init/InitTestNets, as errors naming the field."""
    def fail(msg):
        raise SolverConfigError(f"{where}: {msg}")
    if param.average_loss < 1:
        fail("average_loss should be >= 1")
    if param.iter_size < 1:
        fail("iter_size should be >= 1")
    if param.snapshot < 0:
        fail("snapshot should be >= 0")
    if param.max_iter < 0:
        fail(f"max_iter should be >= 0, got {param.max_iter}")
    for i, n in enumerate(param.test_iter):
        if n <= 0:
            fail(f"test_iter[{i}] should be > 0, got {n}")
    n_train = sum(param.HasField(f) for f in ("net", "net_param", "train_net", "train_net_param"))
    if n_train != 1:
        fail("specify exactly one train net with one of the fields net, net_param, "
             f"train_net, train_net_param (found {n_train})")
    n_generic = param.HasField("net") + param.HasField("net_param")
    n_test = len(param.test_net) + len(param.test_net_param)
    if n_generic and len(param.test_iter) < n_test:
        fail("test_iter must be specified for each test network")
    if not n_generic and len(param.test_iter) != n_test:
        fail(f"test_iter must be specified for each test network "
             f"({n_test} test nets, {len(param.test_iter)} test_iter)")
    n_instances = len(param.test_iter)
    if param.test_state and len(param.test_state) != n_instances:
        fail("test_state must be unspecified or specified once per test net")
    if n_instances and param.test_interval <= 0:
        fail("test_interval must be > 0 when there are test nets")
    if param.eval_type not in ("classification", "detection"):
        fail(f"Unknown evaluation type: {param.eval_type} (eval_type is \"classification\" "
             f"or \"detection\")")
    if param.eval_type == "detection" and param.ap_version not in AP_VERSIONS:
        fail(f"Unknown ap_version: {param.ap_version} (one of {', '.join(AP_VERSIONS)})")


def _state(phase: int, net_param, override) -> tuple[str, tuple[str, ...], int]:
    """NetState precedence: solver default phase < net's own state < solver's state."""
    state = caffe_pb2.NetState(phase=phase)
    state.MergeFrom(net_param.state)
    if override is not None:
        state.MergeFrom(override)
    return caffe_pb2.Phase.Name(state.phase), tuple(state.stage), state.level


def train_net_spec(param) -> NetSpec:
    if param.HasField("train_net_param"):
        net, origin = param.train_net_param, "train_net_param"
    elif param.HasField("train_net"):
        net, origin = read_net(param.train_net), f"train_net file: {param.train_net}"
    elif param.HasField("net_param"):
        net, origin = param.net_param, "net_param"
    else:
        net, origin = read_net(param.net), f"net file: {param.net}"
    phase, stages, level = _state(caffe_pb2.TRAIN, net, param.train_state)
    return NetSpec(net, origin, phase, stages, level)


def test_net_specs(param) -> list[NetSpec]:
    """One spec per test_iter entry, in Caffe's order: test_net_param, test_net, then
    the generic net (net_param / net) for the remaining test_iter entries."""
    sources = [(p, "test_net_param") for p in param.test_net_param]
    sources += [(read_net(f), f"test_net file: {f}") for f in param.test_net]
    remaining = len(param.test_iter) - len(sources)
    if remaining > 0 and param.HasField("net_param"):
        sources += [(param.net_param, "net_param")] * remaining
    elif remaining > 0 and param.HasField("net"):
        net = read_net(param.net)
        sources += [(net, f"net file: {param.net}")] * remaining
    specs = []
    for i, (net, origin) in enumerate(sources):
        override = param.test_state[i] if param.test_state else None
        phase, stages, level = _state(caffe_pb2.TEST, net, override)
        specs.append(NetSpec(net, origin, phase, stages, level))
    return specs
