"""`python -m generator`: Make-style arguments, one-line errors that write nothing,
folders written whole, and BRANCHES=auto delegating to generator.probe."""
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from generator.cli import main
from runner.proto import read_net, read_solver

ROOT = Path(__file__).resolve().parent.parent

BAD = [
    (["DEPTH=40"], "DEPTH=40"),
    (["DEPTH=eight"], "DEPTH=eight"),
    (["DEPTH=8", "BRANCHES=9"], "BRANCHES: 9"),
    (["DEPTH=8", "BRANCHES=4,8"], "BRANCHES: 8"),
    (["DEPTH=13", "BRANCHES=4,4"], "tapped twice"),
    (["DATASET=mnist"], "DATASET=mnist"),
    (["VARIANT=resnet"], "VARIANT=resnet"),
    (["VARIANT=cnn", "BRANCHES=4"], "VARIANT=cnn"),
    (["VARIANT=cnds", "BRANCHES=none"], "BRANCHES=none"),
    (["ALPHA=-0.3"], "ALPHA=-0.3"),
    (["ALPHA=nan"], "ALPHA=nan"),
    (["WIDTH=0"], "WIDTH=0"),
    (["INIT=xavier"], "INIT=xavier"),
    (["SIZE=3"], "SIZE=3"),
    (["--all", "DEPTH=8"], "--all"),
    (["--epochs", "-1"], "epochs -1"),
    (["--step-at", "1.5"], "step_at 1.5"),
    (["--test-interval", "0"], "test_interval 0"),
    (["--batch", "two"], "--batch"),
]


@pytest.mark.parametrize("argv,names", BAD)
def test_bad_arguments_exit_nonzero_with_one_line_and_write_nothing(argv, names, tmp_path, capsys):
    out = tmp_path / "models"
    assert main([*argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("generator: error: ") and names in lines[0]
    assert not out.exists()


def test_module_entry_point_exits_nonzero_on_bad_depth(tmp_path):
    out = tmp_path / "models"
    result = subprocess.run([sys.executable, "-m", "generator", "DEPTH=40", "VARIANT=", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "generator: error: DEPTH=40: depth must be 5 (CNN-5) or 6..19"]
    assert not out.exists()


def test_empty_values_mean_defaults_and_write_the_three_files(tmp_path, capsys):
    out = tmp_path / "models"
    argv = ["DEPTH=", "VARIANT=", "DATASET=", "BRANCHES=", "ALPHA=", "WIDTH=", "INIT=", "--out", str(out)]
    assert main(argv) == 0
    folder = out / "imagenet-cnds8"
    assert sorted(p.name for p in folder.iterdir()) == ["deploy.prototxt", "solver.prototxt", "train_val.prototxt"]
    text = capsys.readouterr().out
    assert f"wrote {folder}/" in text and re.search(r"^pool5 +Pooling +1x512x4x4 ", text, re.M)
    solver = read_solver(folder / "solver.prototxt")
    assert solver.net == f"{folder}/train_val.prototxt"
    assert solver.snapshot_prefix == f"{folder}/snapshots/imagenet-cnds8"
    assert (folder / "train_val.prototxt").read_text() == (ROOT / "models/imagenet-cnds8/train_val.prototxt").read_text().replace(
        "models/", f"{out}/")


def test_settings_reach_the_net(tmp_path, capsys):
    out = tmp_path / "models"
    assert main(["DEPTH=13", "VARIANT=CNDS", "DATASET=places205", "BRANCHES=7,4", "ALPHA=0.4",
                 "WIDTH=0.5", "INIT=vanilla", "--out", str(out)]) == 0
    net = read_net(out / "places205-cnds13" / "train_val.prototxt")
    layers = {lp.name: lp for lp in net.layer}
    assert layers["pool_ds1"].bottom == ["conv2_3"] and layers["pool_ds2"].bottom == ["conv3_3"]
    assert "pool_ds3" not in layers
    assert [lp.loss_weight for lp in net.layer if lp.name.startswith("loss_ds")] == [[pytest.approx(0.4)]] * 2
    assert layers["conv1"].convolution_param.num_output == 32
    assert layers["fc8"].inner_product_param.num_output == 205
    fillers = [lp.convolution_param.bias_filler for lp in net.layer if lp.type == "Convolution"]
    assert fillers and all(f.value == 0 for f in fillers)


def test_rewrite_keeps_other_files_and_failure_leaves_folder_untouched(tmp_path, capsys):
    out = tmp_path / "models"
    assert main(["DEPTH=8", "--out", str(out)]) == 0
    folder = out / "imagenet-cnds8"
    (folder / "snapshots").mkdir()
    (folder / "readme.md").write_text("zoo entry\n")
    (folder / "deploy.prototxt").write_text("old\n")
    assert main(["DEPTH=8", "--out", str(out)]) == 0
    assert (folder / "readme.md").read_text() == "zoo entry\n" and (folder / "snapshots").is_dir()
    assert (folder / "deploy.prototxt").read_text() != "old\n"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert main(["DEPTH=8", "BRANCHES=8", "--out", str(out)]) == 2
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in out.iterdir()) == ["imagenet-cnds8"]  # no staging left


def test_branches_auto_asks_the_probe_with_the_plain_net(tmp_path, capsys, monkeypatch):
    seen = []

    def suggest_branches(train_val, config):
        seen.append(train_val)
        assert config.name == train_val.name and config.variant == "cnn"   # the settings travel
        return [3, 6]

    monkeypatch.setitem(sys.modules, "generator.probe", types.SimpleNamespace(suggest_branches=suggest_branches))
    out = tmp_path / "models"
    assert main(["DEPTH=8", "BRANCHES=auto", "INIT=vanilla", "--out", str(out)]) == 0
    probe_net, = seen
    assert not [lp.name for lp in probe_net.layer if "_ds" in lp.name]
    assert all(lp.convolution_param.bias_filler.value == 0 for lp in probe_net.layer if lp.type == "Convolution")
    net = read_net(out / "imagenet-cnds8" / "train_val.prototxt")
    layers = {lp.name: lp for lp in net.layer}
    assert layers["pool_ds1"].bottom == ["conv3_1"] and layers["pool_ds2"].bottom == ["conv4_2"]


@pytest.mark.parametrize("module", [None, types.SimpleNamespace()], ids=["absent", "no-suggest_branches"])
def test_branches_auto_without_probe_is_a_clear_error(module, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "generator.probe", module)  # None: the import fails
    out = tmp_path / "models"
    assert main(["DEPTH=8", "BRANCHES=auto", "--out", str(out)]) == 2
    assert "BRANCHES=auto needs the gradient probe" in capsys.readouterr().err
    assert not out.exists()
