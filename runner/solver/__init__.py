"""Caffe's solver on our Net: update rules, lr policies, the training step, the
train/test/snapshot loop, and the deep-supervision schedule of auxiliary loss weights."""
from runner.solver.config import load_solver_param
from runner.solver.errors import SolverConfigError, SolverDiverged
from runner.solver.loop import Solver, SolverOptions
from runner.solver.step import TrainingStep

__all__ = ["Solver", "SolverOptions", "SolverConfigError", "SolverDiverged", "TrainingStep",
           "load_solver_param"]
