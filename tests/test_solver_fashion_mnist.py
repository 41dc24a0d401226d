"""End to end: the Fashion-MNIST CNDS-8 (models/fashion-mnist-cnds8) trained by our
solver on real Fashion-MNIST records learns: the train loss falls, the test loss falls
and the test accuracy rises well above chance (0.1), with the auxiliary loss weight
decaying per epoch as Eq. 2 says.

To fit a test's time budget the run is short: 150 iterations of 16 images from a
1000-image training LMDB built here with the project's importer; the net, its fillers
and the solver's other settings are the committed ones.
"""
import re
from pathlib import Path

import pytest

from runner.proto import read_net, read_solver
from runner.solver import Solver, SolverOptions
from runner.solver.aux_weight_schedule import aux_weight
from runner.tools.fashion_mnist import SOURCE_DIR, import_fashion_mnist

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "fashion-mnist-cnds8"
TRAIN_IMAGES, BATCH, ITERS = 1000, 16, 150

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    if not Path(SOURCE_DIR).is_dir():
        pytest.skip(f"Fashion-MNIST is not installed ({SOURCE_DIR}; apt-get install dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("fashion") / "fashion-mnist"
    import_fashion_mnist(out, limit=TRAIN_IMAGES)
    return out


def short_run(data: Path, prefix: Path):
    net = read_net(MODEL / "train_val.prototxt")
    for lp in net.layer:
        if lp.type == "Data":
            split = "train" if "train" in lp.data_param.source else "test"
            lp.data_param.source = str(data / f"{split}_lmdb")
            lp.transform_param.mean_file = str(data / "mean.binaryproto")
            if split == "train":
                lp.data_param.batch_size = BATCH
    param = read_solver(MODEL / "solver.prototxt")
    param.ClearField("net")
    param.net_param.CopyFrom(net)
    param.max_iter, param.test_iter[:], param.test_interval = ITERS, [5], 75
    param.display, param.snapshot, param.random_seed = 25, 0, 1
    param.snapshot_prefix = str(prefix)
    return param


def test_cnds8_learns_on_fashion_mnist(data_dir, tmp_path):
    solver = Solver(short_run(data_dir, tmp_path / "cnds8"), SolverOptions(progress=False))
    assert "loss_ds1" in solver.schedule.alpha0            # the generator's aux branch
    solver.solve()
    log = (tmp_path / "cnds8.log").read_text()

    smoothed = [float(v) for v in re.findall(r"iters\), loss = ([\d.e+-]+)", log)]
    assert len(smoothed) == ITERS // 25
    assert min(smoothed[-2:]) < smoothed[0] - 0.3
    accuracy = [float(v) for v in re.findall(r"Test net output #\d+: accuracy = ([\d.e+-]+)", log)]
    test_loss = [float(v) for v in re.findall(r"Test net output #\d+: loss = ([\d.e+-]+)", log)]
    assert len(accuracy) == len(test_loss) == 3           # iterations 0, 75, 150
    assert accuracy[0] < 0.2 and accuracy[-1] > 0.3
    assert test_loss[-1] < test_loss[0] - 0.3

    # Eq. 2 over N = 150 * 16 / 1000 = 2.4 epochs: epochs begin at iterations 63 and 125
    alpha0 = solver.schedule.alpha0["loss_ds1"]
    logged = {int(i): float(w) for i, w in re.findall(r"Iteration (\d+), aux loss_ds1 weight = ([\d.e+-]+)", log)}
    assert logged == pytest.approx({0: alpha0, 63: aux_weight(alpha0, 1, 2.4, "eq2"),
                                    125: aux_weight(alpha0, 2, 2.4, "eq2")}, rel=1e-5)
    assert (tmp_path / "cnds8_iter_150.caffemodel").exists()
    assert (tmp_path / "cnds8_training.png").exists()
