"""Errors the solver raises with a message meant for the user (no traceback needed)."""


class SolverConfigError(ValueError):
    """A SolverParameter, solver state or flag that Caffe would reject (names the field)."""


class SolverDiverged(RuntimeError):
    """The loss or the weights became NaN/inf; the message names the iteration."""
