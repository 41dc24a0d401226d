"""The command line as Caffe users know it: train from a solver file, resume, fine-tune
from weights, test and time; signals; a diverging run stops and keeps its last good
snapshot; train and test write their JSON results."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import torch
import pytest

from runner.proto import blob_to_array, read_caffemodel
from runner.solve import main
from runner.solver import SolverDiverged, SolverOptions, layout

from solver_helpers import classifier_net, make_lmdb, make_solver

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    train_db = make_lmdb(root / "train_lmdb", 24)
    test_db = make_lmdb(root / "test_lmdb", 8, seed=1)
    (root / "net.prototxt").write_text(classifier_net(train_db, batch=4, test_source=test_db))
    (root / "solver.prototxt").write_text(f'''net: "{root}/net.prototxt"
test_iter: 2
test_interval: 5
base_lr: 0.05
lr_policy: "fixed"
momentum: 0.9
display: 5
max_iter: 10
snapshot: 5
snapshot_prefix: "{root}/snap/small"
random_seed: 3
solver_mode: CPU
''')
    return root


@pytest.fixture(scope="module")
def trained(files):
    """The weights after 10 iterations of `files`' solver, in a folder of their own (so
    that tests reading them do not depend on another test's run, wherever pytest runs it)."""
    solver = (files / "solver.prototxt").read_text().replace(f"{files}/snap/", f"{files}/trained/")
    (files / "trained_solver.prototxt").write_text(solver)
    assert main([str(files / "trained_solver.prototxt")]) == 0
    return files / "trained" / "small_iter_10.caffemodel"


def test_script_trains_and_resumes_from_the_repo_root(files):
    """`python runner/solve.py` as a script (runner/ must not shadow stdlib modules)."""
    run = subprocess.run([sys.executable, "runner/solve.py", str(files / "solver.prototxt"),
                          "--iterations", "5"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Optimization Done." in run.stderr
    assert (files / "snap" / "small_iter_5.caffemodel").exists()
    first = json.loads((files / "snap" / "small_result.json").read_text())
    assert (first["status"], first["iterations"], first["max_iter"]) == ("done", 5, 5)
    assert first["snapshots"] == [str(files / "snap" / "small_iter_5.caffemodel")]
    assert main([str(files / "solver.prototxt"), "--snapshot",
                 str(files / "snap" / "small_iter_5.solverstate")]) == 0
    log = (files / "snap" / "small.log").read_text()
    assert "Iteration 0, Testing net (#0)" in log                  # the first run's lines kept
    assert "Restoring previous solver status from" in log
    assert (files / "snap" / "small_iter_10.solverstate").exists()
    # the result of the resumed run counts both attempts, and its test scores are the log's
    result = json.loads((files / "snap" / "small_result.json").read_text())
    assert [(a["from_iteration"], a["to_iteration"], a["status"]) for a in result["attempts"]] == \
        [(0, 5, "done"), (5, 10, "done")]
    assert result["wall_seconds"] == pytest.approx(sum(a["wall_seconds"] for a in result["attempts"]))
    assert all(a["cpu_seconds"] > 0 for a in result["attempts"])
    assert result["snapshots"][-1] == str(files / "snap" / "small_iter_10.caffemodel")
    tests = re.findall(r"Iteration (\d+), Testing net \(#0\)\n(?:.*\n)*?.*Test net output #0: "
                       r"accuracy = ([\d.e+-]+)", log)
    accuracy = result["tests"][0]
    assert accuracy["iteration"] == 10 == int(tests[-1][0])
    assert accuracy["final"]["accuracy"] == pytest.approx(float(tests[-1][1]), rel=1e-5)
    best = max(float(a) for _, a in tests)
    assert accuracy["best"]["accuracy"]["value"] == pytest.approx(best, rel=1e-5)


def test_weights_and_snapshot_together_are_refused(files, capsys):
    assert main(["train", "--solver", str(files / "solver.prototxt"), "--weights", "a.caffemodel",
                 "--snapshot", "b.solverstate"]) == 2
    assert "Give a snapshot to resume training or weights to finetune but not both" in capsys.readouterr().err


def test_finetune_starts_from_the_given_weights(files, trained, tmp_path):
    source = read_caffemodel(trained)
    solver = make_solver(classifier_net(files / "train_lmdb", batch=4), tmp_path / "ft",
                         SolverOptions(progress=False, weights=[str(trained)]),
                         max_iter=0)
    got = [w.detach().numpy() for _, w, _, _ in solver.net.learnable_params()]
    want = [blob_to_array(b) for layer in source.layer for b in layer.blobs]
    assert all(np.array_equal(g.reshape(-1), w.reshape(-1)) for g, w in zip(got, want))


def test_test_command_scores_the_weights(files, trained, capsys):
    assert main(["test", "--model", str(files / "net.prototxt"), "--weights",
                 str(trained), "--iterations", "2"]) == 0
    err = capsys.readouterr().err
    batches = [float(v) for v in re.findall(r"Batch \d, accuracy = ([\d.e+-]+)", err)]
    assert len(batches) == 2
    mean = float(re.search(r"\] accuracy = ([\d.e+-]+)", err).group(1))
    assert mean == pytest.approx(sum(batches) / 2, rel=1e-5)
    assert re.search(r"\] loss = [\d.e+-]+ \(\* 1 = [\d.e+-]+ loss\)", err)
    result = json.loads((trained.parent / "small_iter_10_test.json").read_text())
    assert result["outputs"]["accuracy"] == pytest.approx(mean, rel=1e-5)
    assert result["iterations"] == 2 and result["weights"] == [str(trained)]
    assert main(["test", "--model", str(files / "net.prototxt"), "--weights",
                 str(trained), "--iterations", "1",
                 "--result", str(files / "one.json")]) == 0
    assert json.loads((files / "one.json").read_text())["iterations"] == 1


def test_caffes_single_dash_gflags_spelling_is_accepted(files, trained, tmp_path, capsys):
    """`caffe train -solver s.prototxt -weights w`, `-iterations=2`, as Caffe's tutorials
    write them; a negative count is still a value, refused as one."""
    solver = (files / "solver.prototxt").read_text().replace(f"{files}/snap/", f"{tmp_path}/")
    (tmp_path / "solver.prototxt").write_text(solver)
    assert main(["train", "-solver", str(tmp_path / "solver.prototxt"), "-weights", str(trained),
                 "-iterations=2", "-sighup_effect", "none"]) == 0
    assert (tmp_path / "small_iter_2.caffemodel").exists()
    assert main(["test", "-model", str(files / "net.prototxt"), f"-weights={trained}",
                 "-iterations", "1", "-phase", "TEST", "-gpu", "all"]) == 0
    assert "accuracy = " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["time", "-model", str(files / "net.prototxt"), "-iterations", "-1"])
    assert "argument --iterations/-iterations: must be >= 1, got -1" in capsys.readouterr().err


def test_device_query_is_caffes_fourth_command(capsys, monkeypatch):
    """`solve.py device_query` runs runner.tools.device_query (tests/test_tools_device_query.py)."""
    fake = types.SimpleNamespace(major=9, minor=0, name="Fake GPU", total_memory=80 << 30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: fake)
    assert main(["device_query", "-gpu", "1"]) == 0
    err = capsys.readouterr().err
    assert "Querying GPUs 1" in err and "Name:                          Fake GPU" in err


def test_time_command_reports_every_layer(files, capsys):
    assert main(["time", "--model", str(files / "net.prototxt"), "--iterations", "2"]) == 0
    err = capsys.readouterr().err
    for layer in ("data", "conv1", "relu1", "pool1", "ip", "loss"):
        assert re.search(rf"\s{layer}\tforward: [\d.e+-]+ ms\.", err), layer
        assert re.search(rf"\s{layer}\tbackward: [\d.e+-]+ ms\.", err), layer
    assert "Average Forward-Backward:" in err and "*** Benchmark ends ***" in err


def test_sighup_snapshots_and_sigint_stops(files, tmp_path):
    solver = make_solver(classifier_net(files / "train_lmdb", batch=4), tmp_path / "s",
                         max_iter=100000, snapshot=0)
    pid, before = os.getpid(), signal.getsignal(signal.SIGINT)
    timers = [threading.Timer(1.0, os.kill, (pid, signal.SIGHUP)),
              threading.Timer(2.0, os.kill, (pid, signal.SIGINT))]
    for t in timers:
        t.start()
    solver.solve()
    for t in timers:
        t.join()
    snaps = sorted(int(p.name.split("_")[-1].split(".")[0]) for p in tmp_path.glob("s_iter_*.caffemodel"))
    assert len(snaps) == 2 and snaps[0] < snaps[1] == solver.iter < 100000
    log = (tmp_path / "s.log").read_text()
    assert "Optimization stopped early." in log and "Optimization Done." not in log
    assert signal.getsignal(signal.SIGINT) is before   # handlers given back


def test_diverging_run_stops_and_keeps_the_last_good_snapshot(files, tmp_path):
    solver = make_solver(classifier_net(files / "train_lmdb", batch=4), tmp_path / "s",
                         base_lr=1e6, lr_policy='"step"', stepsize=4, gamma=1000, max_iter=50,
                         snapshot=2, momentum=0.0)
    with pytest.raises(SolverDiverged, match=r"Iteration \d+: the (loss is|weights contain) .*nan"
                       r"|Iteration \d+: the (loss is|weights contain)") as err:
        solver.solve()
    last = sorted(tmp_path.glob("s_iter_*.caffemodel"))
    assert last, "a snapshot before the divergence"
    for path in last:
        for layer in read_caffemodel(path).layer:
            for blob in layer.blobs:
                assert np.isfinite(blob_to_array(blob)).all()
    assert str(last[-1]).replace(".caffemodel", ".solverstate") in str(err.value)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_amp_and_channels_last_train_on_the_cpu(files, tmp_path, monkeypatch, native_bf16):
    """--amp (bf16 autocast) and --channels-last (here measured faster): same loop, float32
    weights, finite loss; on a CPU without native bf16, fp32 and one warning line in the
    log saying why."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native_bf16)
    monkeypatch.setattr(layout, "training_pass_seconds",
                        lambda net, device: {"channels_last": 1.0, "NCHW": 2.0})
    solver = make_solver(classifier_net(files / "train_lmdb", batch=4), tmp_path / "s",
                         SolverOptions(progress=False, amp=True, channels_last=True),
                         max_iter=3, display=1)
    assert solver.train_step.amp is native_bf16
    warnings = [line for line in (tmp_path / "s.log").read_text().splitlines()
                if line.startswith("W") and "bf16" in line]
    assert len(warnings) == (0 if native_bf16 else 1)
    assert native_bf16 or "no native bf16" in warnings[0] and "training in fp32" in warnings[0]
    start = [w.detach().clone() for _, w, _, _ in solver.net.learnable_params()]
    solver.solve()
    conv = solver.net.layers["conv1"].blobs[0]
    assert conv.dtype == torch.float32 and conv.is_contiguous(memory_format=torch.channels_last)
    assert all(not torch.equal(a, w) for a, (_, w, _, _) in zip(start, solver.net.learnable_params()))
    losses = [float(v) for v in re.findall(r"iters\), loss = ([\d.e+-]+)", (tmp_path / "s.log").read_text())]
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_a_torch_compile_failure_is_one_clear_error(files, monkeypatch, capsys):
    class InductorError(RuntimeError):
        """Stands for torch._inductor.exc.InductorError (seen with torch 2.11 on a GPU)."""
    InductorError.__module__ = "torch._inductor.exc"

    def broken_compile(model, *args, **kwargs):
        def run(*a, **k):
            raise InductorError("AssertionError: \n\nSet TORCHDYNAMO_VERBOSE=1 for the internal stack trace")
        return run
    monkeypatch.setattr(torch, "compile", broken_compile)
    assert main([str(files / "solver.prototxt"), "--iterations", "1", "--compile"]) == 2
    err = capsys.readouterr().err
    assert "error: torch.compile failed (InductorError: AssertionError:" in err
    assert "run without --compile" in err and "Traceback" not in err
