"""The probe on generated nets: it recognises them, renders each round's branches with the
generator, its CLI writes probe.csv and the plots, and its BRANCHES value (and
BRANCHES=auto) feed `make net`'s generator CLI."""
import csv
import json
import functools
import re
from pathlib import Path

import numpy as np
import pytest

import generator.probe
from generator.architectures import NetConfig
from generator.cli import main as generator_main
from generator.probe.__main__ import main as probe_main
from generator.probe.gradients import GradientRecord
from generator.probe.placement import ProbeRound, place_branches
from generator.probe.report import panel_convs
from generator.probe.probed_net import ProbedNet, conv_layers, generated_config, render_train_val
from runner.deep_supervision import is_aux
from runner.proto import read_net

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["DEPTH=6", "DATASET=fashion-mnist", "WIDTH=0.125"]
PNG = b"\x89PNG\r\n\x1a\n"


def _render(tmp_path, *settings) -> Path:
    assert generator_main([*SMALL, *settings, "--out", str(tmp_path / "models")]) == 0
    return next((tmp_path / "models").glob("*/train_val.prototxt"))


def _tapped_convs(net) -> list[str]:
    """Bottom blob of each branch's first layer (pool_ds<j>), in j order."""
    pools = {int(lp.name[len("pool_ds"):]): lp.bottom[0] for lp in net.layer
             if re.fullmatch(r"pool_ds\d+", lp.name)}
    return [pools[j] for j in sorted(pools)]


def test_committed_cnds_net_is_recognised_and_rendered_with_branches():
    net = read_net(ROOT / "models/fashion-mnist-cnds13/train_val.prototxt")
    net.layer[0].data_param.batch_size = 8          # the given data layers are kept
    target = ProbedNet(net)
    assert target.config == NetConfig(dataset="fashion-mnist", variant="cnn", depth=13, width=0.25)
    assert target.depth == 13
    plain = target.net_with(())
    assert not any(is_aux(lp.name) for lp in plain.layer)
    branched = target.net_with((4, 7, 10))
    assert branched.layer[0].data_param.batch_size == 8
    convs = conv_layers(branched)
    assert _tapped_convs(branched) == [convs[3], convs[6], convs[9]]


@pytest.mark.parametrize("width", [0.3, 0.7, 1.0])
def test_generated_nets_are_recognised_at_any_width(width):
    config = NetConfig(dataset="fashion-mnist", variant="cnn", depth=8, width=width)
    found = generated_config(render_train_val(config))
    assert found is not None
    assert render_train_val(found) == render_train_val(config)


def test_a_net_the_generator_did_not_render_is_not_recognised():
    net = render_train_val(NetConfig(dataset="fashion-mnist", variant="cnn", depth=8))
    assert generated_config(net) is not None
    edited = type(net)()
    edited.CopyFrom(net)
    next(lp for lp in edited.layer if lp.name == "conv3_1").convolution_param.num_output += 8
    assert generated_config(edited) is None
    edited.CopyFrom(net)
    next(lp for lp in edited.layer if lp.name == "conv3_1").convolution_param.kernel_size[0] = 5
    assert generated_config(edited) is None
    edited.CopyFrom(net)
    edited.name = "my-net"
    assert generated_config(edited) is None


def test_cli_writes_csv_and_plots_and_its_branches_parse_in_make_net(tmp_path, capsys):
    train_val = _render(tmp_path, "VARIANT=cnn")
    out = tmp_path / "probe"
    iters = 2
    assert probe_main([str(train_val), "--iters", str(iters), "--synthetic", "--batch", "2",
                       "--max-branches", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    value = re.search(r"^BRANCHES=(\S+)$", printed, re.M).group(1)
    # std 0.01 kills this narrow net everywhere: every conv vanishes in the plain net
    assert "conv  1 conv1" in printed and "-> convs 1,2,3,4,5,6 vanish" in printed

    with open(out / "probe.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["branches", "iteration", "layer", "mean_abs_grad"]
    probed = list(dict.fromkeys(r["branches"] for r in rows))
    assert probed[:2] == ["none", "5"]          # the plain net, then the paper's tap
    assert {r["iteration"] for r in rows} == {str(i) for i in range(iters)}
    assert all(float(r["mean_abs_grad"]) >= 0 for r in rows)
    plain_layers = {r["layer"] for r in rows if r["branches"] == "none"}
    assert {"conv1", "fc6", "fc8"} <= plain_layers and not any(is_aux(n) for n in plain_layers)
    assert (out / "probe.png").read_bytes().startswith(PNG)
    assert (out / "probe_before_after.png").read_bytes().startswith(PNG)
    # the suggestion is evidence: its own probe has every conv up to its deepest tap above
    # the threshold, which the plain net had below it
    convs = conv_layers(read_net(train_val))
    means = {(r["branches"], r["layer"]): [] for r in rows}
    for r in rows:
        means[r["branches"], r["layer"]].append(float(r["mean_abs_grad"]))
    if value != "none":
        assert value in probed
        for name in convs[:max(map(int, value.split(",")))]:
            assert np.mean(means[value, name]) >= 1e-7 > np.mean(means["none", name])

    # probe.json holds the same rounds, statistics, verdicts and suggestion as data
    result = json.loads((out / "probe.json").read_text())
    assert result["branches"] == value and [r["branches"] for r in result["rounds"]] == probed
    assert result["suggested_branches"] == ([] if value == "none" else [int(k) for k in value.split(",")])
    assert (result["iters"], result["threshold"], result["batch"]) == (iters, 1e-7, 2)
    for r in result["rounds"]:
        assert list(r["conv_means"]) == convs
        for name, mean in r["conv_means"].items():
            assert mean == pytest.approx(np.mean(means[r["branches"], name]), rel=1e-5)
        assert r["vanishing"] == [n for n in convs if np.mean(means[r["branches"], n]) < 1e-7]
    assert {"probe.csv", "probe.png", "probe.json"} <= set(result["files"])
    assert result["wall_seconds"] > 0 and result["cpu_seconds"] > 0

    variant = "cnn" if value == "none" else "cnds"
    rendered = read_net(_render(tmp_path / variant, f"VARIANT={variant}", f"BRANCHES={value}"))
    taps = [] if value == "none" else [int(k) for k in value.split(",")]
    assert _tapped_convs(rendered) == [conv_layers(rendered)[k - 1] for k in taps]

    # a one-round probe into the same folder leaves no stale before/after plot behind
    assert probe_main([str(train_val), "--iters", "1", "--synthetic", "--batch", "2",
                       "--max-branches", "0", "--out", str(out)]) == 0
    assert "limit of 0 branches" in capsys.readouterr().out
    assert not (out / "probe_before_after.png").exists()


def test_a_suggested_branches_value_renders_those_branches_in_make_net(tmp_path):
    names = [f"c{k}" for k in range(1, 7)]

    def fake(taps):
        """Convs 1..4 of 6 vanish; a branch after conv t lifts convs t-1 and t."""
        row = [1e-9 if k <= 4 and not any(t - 1 <= k <= t for t in taps) else 1e-5
               for k in range(1, 7)]
        return ProbeRound(taps, GradientRecord(names, np.array([row]), [0.0], 0.0), names)

    placement = place_branches(fake, 6, 1e-7, max_branches=3)
    assert placement.branches_value == "2,4"
    rendered = read_net(_render(tmp_path, "VARIANT=cnds", f"BRANCHES={placement.branches_value}"))
    convs = conv_layers(rendered)
    assert _tapped_convs(rendered) == [convs[1], convs[3]]


def test_make_net_branches_auto_runs_the_probe_and_uses_its_taps(tmp_path, monkeypatch, capsys):
    calls = []

    def probe_then_fixed(net, config=None, **options):
        """The real probe (one quick round), then taps standing in for its suggestion."""
        calls.append(generator.probe.search(
            ProbedNet(net, config), generator.probe.ProbeOptions(
                iters=1, synthetic=True, batch=2, max_branches=0), log=lambda _: None))
        return (3,)

    monkeypatch.setattr(generator.probe, "suggest_branches", probe_then_fixed)
    rendered = read_net(_render(tmp_path, "VARIANT=cnds", "BRANCHES=auto"))
    (placement,) = calls
    assert placement.rounds[0].convs == conv_layers(rendered)
    assert "probe (" not in capsys.readouterr().out   # progress goes to stderr
    assert _tapped_convs(rendered) == [conv_layers(rendered)[2]]


def test_make_net_branches_auto_with_no_suggestion_fails_cleanly(tmp_path, capsys):
    quick = functools.partial(generator.probe.suggest_branches, iters=1, synthetic=True, batch=2,
                              max_branches=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generator.probe, "suggest_branches", quick)
        assert generator_main([*SMALL, "VARIANT=cnds", "BRANCHES=auto", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.splitlines()[-1]     # after the probe's progress bar
    assert error.startswith("generator: error: BRANCHES=auto: the probe suggests no branch: ")
    assert "the limit of 0 branches is reached" in error
    assert not any(tmp_path.iterdir())


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert probe_main([str(tmp_path / "missing.prototxt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("probe: error:") and "missing.prototxt" in err
    train_val = _render(tmp_path, "VARIANT=cnn")
    text = train_val.read_text().replace("data/fashion-mnist/train_lmdb", "data/nowhere_lmdb")
    train_val.write_text(text)
    net = read_net(train_val)
    with pytest.raises(ValueError, match="nowhere_lmdb not found"):
        generator.probe.suggest_branches(net, synthetic=False, iters=1)


@pytest.mark.parametrize("taps,convs", [((4, 7, 10), [1, 4, 7, 10]), ((2,), [1, 2, 3, 4]),
                                        ((12,), [1, 5, 8, 12]), ((1,), [1, 2, 3, 4]),
                                        ((1, 3), [1, 2, 3, 4]), ((5,), [1, 2, 4, 5])])
def test_before_after_panels_spread_from_conv1_to_the_deepest_tap_then_above_it(taps, convs):
    assert panel_convs(taps, 13) == convs
    assert panel_convs((1,), 2) == [1, 2]
