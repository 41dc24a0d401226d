"""bench/bench_inference.py runs at tiny settings and prints rows `make bench` reads, with
their target; the benchmark nets are what bench/nets/write_nets.py renders and load in OpenCV."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from bench import run_all
from runner.proto import to_text

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> list:
    proc = subprocess.run([sys.executable, "-m", f"bench.{script[:-3]}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_all.parse_output(script, proc.stdout, run_all.docstring_target(REPO / "bench" / script))


def test_inference_benchmark_prints_ratios_against_opencv():
    rows = run("bench_inference.py", "--iters", "1", "--warmup", "0", "--nets", "SqueezeNet 1.1",
               "--batches", "1")
    assert [r.case for r in rows] == ["SqueezeNet 1.1 batch 1",
                                      "SqueezeNet 1.1 batch 1, adaptive threads",
                                      "SqueezeNet 1.1 batch 1, 1 core busy, "
                                      f"{len(run_all.os.sched_getaffinity(0))} threads",
                                      "SqueezeNet 1.1 batch 1, 1 core busy, adaptive threads"]
    assert all(r.ratio > 0 and str(r.target) == "<= 0.8" for r in rows)
    assert "largest difference from OpenCV" in rows[0].figure and "threads)" in rows[1].figure
    gap = float(rows[0].figure.split("from OpenCV ")[1].split()[0])
    assert gap <= 1e-4, "ours and OpenCV's importer disagree"


@pytest.mark.parametrize("name", ["googlenet", "resnet50", "squeezenet"])
def test_benchmark_nets_load_in_opencv(name):
    net = cv2.dnn.readNetFromCaffe(str(REPO / "bench/nets" / f"{name}.prototxt"))
    assert len(net.getLayerNames()) > 50


def test_benchmark_nets_are_what_write_nets_renders():
    spec = importlib.util.spec_from_file_location("write_nets", REPO / "bench/nets/write_nets.py")
    write_nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(write_nets)
    for name, build in write_nets.NETS.items():
        assert to_text(build()) == (REPO / "bench/nets" / f"{name}.prototxt").read_text(), name
