"""The report's verdicts are rules on the numbers: rows aggregate over seeds (mean,
half-range), differences must beat the margin and the spreads, "poorly" means near chance."""
from dataclasses import replace

import pytest

from reproduce.claims import (HELD, INCONCLUSIVE, NOT_HELD, UNTESTED, Judge, ProbeSummary,
                              row_stats)
from reproduce.config import Claims

CLAIMS = Claims(margin=0.5, poor_within=10.0, paper_gap_8=1.0)


def result(label, variant, depth, seed, top1, init_from=None, params=100, top5=None):
    return {"label": label, "variant": variant, "depth": depth, "seed": seed,
            "top1_error": top1, "top5_error": top5, "init_from": init_from,
            "pretrain_only": False, "params": params, "macs": 10 * params}


def table(**errors):
    """Rows CNN-8, CNDS-8, CNN-8 (from CNN-6), CNDS-13 ... from {key: [errors per seed]}."""
    spec = {"cnn8": ("CNN-8", "cnn", 8, None), "cnds8": ("CNDS-8", "cnds", 8, None),
            "base8": ("CNN-8 (from CNN-6)", "cnn", 8, "CNN-6"),
            "cnn13": ("CNN-13", "cnn", 13, None), "cnds13": ("CNDS-13", "cnds", 13, None)}
    out = []
    for key, values in errors.items():
        label, variant, depth, source = spec[key]
        out += [result(label, variant, depth, seed, v, source, params=100 + 50 * (depth == 13))
                for seed, v in enumerate(values, start=1)]
    return row_stats(out)


def verdict(verdicts, start):
    return next(v for v in verdicts if v.claim.startswith(start))


def test_rows_are_mean_and_half_range_over_seeds():
    rows = table(cnn8=[80.0, 84.0, 82.0])
    assert rows[0].seeds == 3
    assert rows[0].top1 == pytest.approx(82.0) and rows[0].top1_spread == pytest.approx(2.0)
    assert table(cnn8=[70.0])[0].top1_spread == 0.0


def test_deep_supervision_claims_held():
    v = Judge(table(cnn8=[89.5, 90.0], cnds8=[20.0, 21.0], base8=[22.0, 22.4],
                    cnn13=[90.0, 90.0], cnds13=[18.0, 18.2]), CLAIMS, 10).verdicts()
    assert verdict(v, "(a) CNN-8").status == HELD          # 89.75 >= 90 - 10
    assert verdict(v, "(b) deep supervision fixes CNN-8").status == HELD
    c = verdict(v, "(c) CNDS-8 beats")
    assert c.status == HELD and "CNN-8 (from CNN-6)" in c.evidence   # the paper's baseline
    assert "gap +1.70 points" in c.evidence
    assert verdict(v, "(c) deeper").status == HELD


def test_a_gap_inside_the_spread_does_not_count():
    # CNDS-8 is 1.0 lower on average, but the half-ranges add up to 0.6 + 0.6 = 1.2
    v = Judge(table(cnn8=[30.0, 31.2], cnds8=[29.0, 30.2]), CLAIMS, 10).verdicts()
    assert verdict(v, "(a) CNN-8").status == NOT_HELD      # 30.6 is far from chance
    assert verdict(v, "(b)").status == NOT_HELD
    assert verdict(v, "(c) CNDS-8 beats").status == NOT_HELD
    assert verdict(v, "(c) deeper").status == UNTESTED


def test_comparisons_between_nets_near_chance_are_inconclusive():
    v = Judge(table(cnn8=[90.0], cnds8=[85.0], cnds13=[89.0]), CLAIMS, 10).verdicts()
    assert verdict(v, "(b)").status == INCONCLUSIVE        # both within 10 points of 90
    assert verdict(v, "(c) CNDS-8 beats").status == INCONCLUSIVE
    assert verdict(v, "(c) deeper").status == INCONCLUSIVE
    v = Judge(table(cnn8=[90.0], cnds8=[79.0]), CLAIMS, 10).verdicts()
    assert verdict(v, "(b)").status == HELD                # lower, and off the plateau
    v = Judge(table(cnn8=[50.0], cnds8=[49.8]), CLAIMS, 10).verdicts()
    assert verdict(v, "(b)").status == NOT_HELD            # trained, but not lower by the margin


def test_different_deploy_cost_fails_the_same_cost_claim():
    cnds8, wider = table(cnds8=[20.0], cnn13=[40.0])
    # a CNN-8 row whose deploy net had the 13-layer net's size
    c = Judge([cnds8, replace(wider, depth=8)], CLAIMS, 10).cnds8_beats_cnn8()
    assert c.status == NOT_HELD and "deploy costs differ" in c.evidence


def test_probe_verdict_lists_vanishing_layers():
    probe = ProbeSummary("CNN-8", 20, 1e-7, ["conv1", "conv2"], 2, "7", [])
    v = Judge(table(cnn8=[90.0]), CLAIMS, 10, probe).verdicts()
    g = verdict(v, "(a) gradients vanish")
    assert g.status == HELD and "conv1, conv2" in g.evidence and "were none" in g.evidence
    quiet = ProbeSummary("CNN-8", 20, 1e-7, [], 1, "none", [])
    assert verdict(Judge(table(cnn8=[90.0]), CLAIMS, 10, quiet).verdicts(),
                   "(a) gradients").status == NOT_HELD


def test_another_init_leaves_the_claims_about_the_standard_init_untested():
    rows = table(cnn8=[12.0, 12.4], cnds8=[10.0, 10.2], cnn13=[11.0], cnds13=[9.0, 9.1])
    v = Judge(rows, CLAIMS, 10, standard_init=False).verdicts()
    for claim in ("(a) CNN-8", "(b) deep supervision fixes CNN-8", "(a) CNN-13", "(b) deep supervision fixes CNN-13"):
        assert verdict(v, claim).status == UNTESTED
        assert "another initialisation" in verdict(v, claim).evidence
    assert verdict(v, "(c) CNDS-8 beats").status == HELD     # 2.1 points, spreads 0.2 + 0.1
    assert verdict(v, "(c) deeper").status == HELD


def test_probe_verdict_when_no_probed_branch_lifted_anything():
    probe = ProbeSummary("CNN-8", 20, 1e-7, ["conv1", "conv2"], 4, "none", ["conv1", "conv2"])
    g = verdict(Judge(table(cnn8=[90.0]), CLAIMS, 10, probe).verdicts(), "(a) gradients vanish")
    assert g.status == HELD and "none of the 3 branch placements probed lifted them" in g.evidence


def test_the_probe_summary_compares_with_the_suggested_round():
    from reproduce.figures import summarize_probe

    def probe(labels, branches):
        return {"iters": 20, "threshold": 1e-7, "branches": branches,
                "rounds": [{"branches": b, "vanishing": [f"conv{i}"]} for i, b in enumerate(labels)]}
    summary = summarize_probe(probe(["none", "7", "4", "2", "2,3"], "2"), "CNN-8")
    assert (summary.branches, summary.vanishing, summary.vanishing_after) == ("2", ["conv0"], ["conv3"])
    assert summary.rounds == 5
    assert summarize_probe(probe(["none", "7"], "none"), "CNN-8").branches == "none"
    assert summarize_probe(probe(["none", "7"], "3"), "CNN-8").branches == "7"   # not probed
