"""The probe on generated nets: it recognises them, renders each round's branches with the
generator, its CLI writes probe.csv and the plots, and its BRANCHES value (and
BRANCHES=auto) feed `make net`'s generator CLI."""
import csv
import re
from pathlib import Path

import pytest

import generator.probe
from generator.architectures import NetConfig
from generator.cli import main as generator_main
from generator.probe.__main__ import main as probe_main
from generator.probe.prepare import conv_layers, is_aux
from generator.probe.target import ProbeTarget, generated_config, render_train_val
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
    target = ProbeTarget(net)
    assert target.config == NetConfig(dataset="fashion-mnist", variant="cnn", depth=13, width=0.25)
    assert target.depth == 13
    plain = target.net_with(())
    assert not any(is_aux(lp.name) for lp in plain.layer)
    branched = target.net_with((4, 7, 10))
    assert branched.layer[0].data_param.batch_size == 8
    convs = conv_layers(branched)
    assert _tapped_convs(branched) == [convs[3], convs[6], convs[9]]


def test_a_net_the_generator_did_not_render_is_not_recognised():
    net = render_train_val(NetConfig(dataset="fashion-mnist", variant="cnn", depth=8))
    assert generated_config(net) is not None
    edited = type(net)()
    edited.CopyFrom(net)
    next(lp for lp in edited.layer if lp.name == "conv3_1").convolution_param.num_output += 8
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
    taps = tuple(int(k) for k in value.split(","))
    assert taps and all(1 <= k < 6 for k in taps)

    with open(out / "probe.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["branches", "iteration", "layer", "mean_abs_grad"]
    rounds = sorted({r["branches"] for r in rows})
    assert "none" in rounds
    assert {r["iteration"] for r in rows} == {str(i) for i in range(iters)}
    assert all(float(r["mean_abs_grad"]) >= 0 for r in rows)
    plain_layers = {r["layer"] for r in rows if r["branches"] == "none"}
    assert {"conv1", "fc6", "fc8"} <= plain_layers and not any(is_aux(n) for n in plain_layers)
    assert (out / "probe.png").read_bytes().startswith(PNG)
    if len(rounds) > 1:
        assert (out / "probe_before_after.png").read_bytes().startswith(PNG)

    rendered = read_net(_render(tmp_path / "cnds", "VARIANT=cnds", f"BRANCHES={value}"))
    convs = conv_layers(rendered)
    assert _tapped_convs(rendered) == [convs[k - 1] for k in taps]


def test_make_net_branches_auto_runs_the_probe(tmp_path, monkeypatch, capsys):
    calls = []

    def quick(net, config=None, **options):
        calls.append(config)
        return suggest(net, config, iters=1, synthetic=True, batch=2, max_branches=1)

    suggest = generator.probe.suggest_branches
    monkeypatch.setattr(generator.probe, "suggest_branches", quick)
    rendered = read_net(_render(tmp_path, "VARIANT=cnds", "BRANCHES=auto"))
    assert len(calls) == 1
    printed = capsys.readouterr().out
    assert "probe (" not in printed            # progress goes to stderr, not into the report
    taps = _tapped_convs(rendered)
    assert len(taps) == 1 and taps[0] in conv_layers(rendered)[:-1]


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
