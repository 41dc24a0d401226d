"""pycaffe's solvers over runner.solver: the runner's Solve/Step/Test/Snapshot loop and
update rules, with each training and test pass run as Caffe's Forward/Backward through
the pycaffe Net views, so that `solver.net.blobs` show what the last iteration computed
and values written into them (labels, weights) are what it uses."""
from __future__ import annotations

from runner.debug_info import log_norms
from runner.solver import SolverOptions, load_solver_param
from runner.solver import Solver as RunnerSolver
from runner.solver.batches import share_trained_layers
from runner.solver.distributed import DistContext

from .mode import current_device
from .net import Net


class _Loop(RunnerSolver):
    """The runner's Solver whose train and test passes go through pycaffe Net views."""

    def __init__(self, param):
        super().__init__(param, SolverOptions(progress=False), DistContext(device=current_device()))
        self.caffe_net = Net.over(self.net, self.train_batches)
        self.caffe_test_nets = [Net.over(net, batches)
                                for net, batches in zip(self.test_nets, self.test_batches)]
        # the shared training step, its passes run through the Net view
        self.train_step.forward_backward = self._forward_backward
        self.update.update_in_diff = True  # after a step, diffs show the update, as in Caffe

    def _forward_backward(self, batches):
        """Caffe's ForwardBackward iter_size times on the view (whose data layers read
        `batches`): diffs accumulate in the parameters; returns (mean loss, last blobs)."""
        net, last = self.caffe_net, len(self.caffe_net.layers) - 1
        total = 0.0
        for _ in range(self.param.iter_size):
            net._forward(0, last)
            blobs = net.blob_tensors()
            total += self.net.objective(blobs).detach()
            net._backward(last, 0)
            if net._passes.debug_log is not None:  # Caffe's Net::Backward closes with the norms
                log_norms(net._passes.debug_log, [p for _, p, _, _ in self.net.learnable_params()])
        return float(total) / self.param.iter_size, blobs

    def _route_debug_info(self, net, log) -> None:
        """The statistics come from the Net view's layer-by-layer passes."""
        views = [self.caffe_net, *self.caffe_test_nets]
        view = next(v for v in views if v._net is net)
        view._passes.debug_log = log

    def _test_forward(self, k: int) -> dict:
        net = self.caffe_test_nets[k]
        net._forward(0, len(net.layers) - 1)
        return net.blob_tensors()

    def push_host_values(self) -> None:
        """Values written from Python into parameters reach the device before an update."""
        for net in [self.caffe_net, *self.caffe_test_nets]:
            net._sync()

    def device_wrote(self) -> None:
        for net in [self.caffe_net, *self.caffe_test_nets]:
            net._device_wrote()


class Solver:
    """A solver prototxt trained as Caffe trains it; `net` and `test_nets` are Nets."""

    solver_type: str | None = None  # the update rule; None: the file's `type`

    def __init__(self, filename: str):
        param = load_solver_param(filename)
        if self.solver_type is not None:
            param.type = self.solver_type
        self._loop = _Loop(param)
        self.net = self._loop.caffe_net
        self.test_nets = self._loop.caffe_test_nets

    @property
    def iter(self) -> int:
        return self._loop.iter

    @property
    def param(self):
        """The SolverParameter (runner.proto's caffe_pb2 message)."""
        return self._loop.param

    @property
    def lr(self) -> float:
        """The learning rate of the current iteration."""
        return self._loop.lr_policy.rate(self._loop.iter)

    def _run(self, action, *args):
        self._loop.push_host_values()
        try:
            return action(*args)
        finally:
            self._loop.device_wrote()

    def step(self, iters: int) -> None:
        """`iters` iterations: forward/backward, update, test and snapshot when due."""
        self._run(self._loop.step, int(iters))

    def solve(self, resume_file: str | None = None) -> None:
        """Train to max_iter (after restoring `resume_file`), as `caffe train`."""
        self._run(self._loop.solve, resume_file)

    def apply_update(self) -> None:
        """Caffe's ApplyUpdate: the rule on the current diffs at this iteration's rate
        (iter does not advance)."""
        loop = self._loop
        self._run(loop.train_step.apply_update, loop.iter)

    def snapshot(self) -> None:
        self._run(self._loop.snapshot)

    def restore(self, state_file: str) -> None:
        self._run(self._loop.restore, state_file)

    def add_callback(self, on_start, on_gradients_ready) -> None:
        """Call `on_start()` at the start of each iteration (after its test) and
        `on_gradients_ready()` once its diffs are computed, before the update."""
        self._loop.callbacks.append((on_start, on_gradients_ready))

    def share_weights(self, net: Net) -> None:
        """Make `net` use this solver's trained blobs (layers matched by name)."""
        share_trained_layers(net._net, self._loop.net)


class SGDSolver(Solver):
    """Caffe's SGD (whatever `type` the file names; so are the classes below theirs)."""
    solver_type = "SGD"


def _rule_solver(name: str, solver_type: str) -> type:
    return type(name, (SGDSolver,), {"solver_type": solver_type, "__doc__":
                                     f"A solver with Caffe's {solver_type} update rule."})


NesterovSolver = _rule_solver("NesterovSolver", "Nesterov")
AdaGradSolver = _rule_solver("AdaGradSolver", "AdaGrad")
RMSPropSolver = _rule_solver("RMSPropSolver", "RMSProp")
AdaDeltaSolver = _rule_solver("AdaDeltaSolver", "AdaDelta")
AdamSolver = _rule_solver("AdamSolver", "Adam")

SOLVER_CLASSES = {cls.solver_type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver,
                                                   RMSPropSolver, AdaDeltaSolver, AdamSolver)}


def get_solver(filename: str) -> Solver:
    """The solver class the file's `type` names (Caffe's SolverRegistry)."""
    return SOLVER_CLASSES.get(load_solver_param(filename).type, Solver)(filename)
