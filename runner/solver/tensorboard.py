"""Optional TensorBoard scalars of a training run (`solve.py --tensorboard DIR`): the
smoothed loss and learning rate per iteration, every test output, the auxiliary loss
weights. The Caffe log and its PNG stay the record; this only mirrors them."""
from __future__ import annotations

from runner.solver.errors import SolverConfigError


class NoScalars:
    """Stands in when no TensorBoard directory is given: every call does nothing."""

    def add(self, tag: str, value: float, iteration: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardScalars(NoScalars):
    """Scalars into TensorBoard event files under `log_dir`."""

    def __init__(self, log_dir: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SolverConfigError(
                "--tensorboard needs the tensorboard package: pip install 'caffe-ds[tensorboard]' "
                "(or pip install tensorboard)") from None
        self._writer = SummaryWriter(log_dir)

    def add(self, tag: str, value: float, iteration: int) -> None:
        self._writer.add_scalar(tag, value, iteration)

    def close(self) -> None:
        self._writer.close()


def scalars_for(log_dir: str | None, is_root: bool) -> NoScalars:
    """The writer for a run: TensorBoard on rank 0 when a directory is given."""
    return TensorBoardScalars(log_dir) if log_dir and is_root else NoScalars()
