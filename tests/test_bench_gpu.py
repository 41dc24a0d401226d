"""bench/gpu.py: without CUDA it stops with one clear line; its measurements run on any
device (here the CPU, on the small Fashion-MNIST net) and its FLOP count is the nets' own."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu
from generator.summary import aux_cost, shape_table
from runner.proto import read_net

REPO = Path(__file__).resolve().parents[1]
SMALL = "models/fashion-mnist-cnds8/train_val.prototxt"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_without_cuda_it_says_so_and_exits_2(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench.gpu", "--out", str(tmp_path / "g.md")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "no CUDA device" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "g.md").exists()


def test_flops_per_image_are_deploy_plus_branch_macs():
    deploy = read_net(str(REPO / "models/fashion-mnist-cnds8/deploy.prototxt"))
    train = read_net(str(REPO / SMALL))
    batch = 4
    rows = shape_table(train, "TRAIN", {"data": (batch, 1, 28, 28), "label": (batch,)})
    _, _, branch_macs = aux_cost(rows, batch)
    expected = sum(r.macs for r in shape_table(deploy, "TEST")) + branch_macs
    assert gpu.forward_macs_per_image(SMALL, 1, 28) == expected


def test_training_throughput_measures_real_steps():
    r = gpu.train_throughput(torch.device("cpu"), 2, 0.0, model=SMALL, channels=1, side=28,
                             min_iters=1)
    assert r["iters"] >= 1 and r["images_per_s"] > 0


@pytest.mark.parametrize("bytes_to_device", [True, False])
def test_data_throughput_reads_the_jpeg_lmdb(bytes_to_device):
    r = gpu.data_throughput(torch.device("cpu"), 4, 0.2, images=12, workers=1,
                            bytes_to_device=bytes_to_device)
    assert r["images_per_s"] > 0 and r["workers"] == 1 and r["main_cpu_us"] > 0


def test_a_failing_measurement_becomes_a_row():
    def compile_bug():
        raise AssertionError("tiling_utils: unexpected stride\nsecond line")
    assert gpu.measured_row("compile", compile_bug, lambda r: ("x", "y")) == \
        ("compile", "failed", "AssertionError: tiling_utils: unexpected stride")
    assert gpu.measured_row("ok", lambda: 3, lambda r: (f"{r} images/s", "d")) == \
        ("ok", "3 images/s", "d")
