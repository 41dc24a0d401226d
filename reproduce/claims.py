"""The paper's claims judged by explicit rules on the measured numbers.

Rows are aggregated over seeds (mean and half-range of top-1 error). `a` is *lower than*
`b` when mean(b) - mean(a) exceeds both the margin and the sum of the two half-ranges.
A net *trains poorly* when its top-1 error is within `poor_within` points of chance
(100 * (1 - 1/classes)). A comparison (claims b and c) between rows that all train poorly
is *inconclusive*: no net left the starting plateau, so neither trains better.
docs/reproduce.md states each claim's rule in words.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from reproduce.config import Claims

HELD, NOT_HELD, UNTESTED = "held", "did not hold", "not tested"
# The paper's "standard initialisation" (gaussian std 0.01): claims (a) and (b) are about it.
STANDARD_INITS = ("released", "vanilla")
INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class RowStats:
    """One table row over its seeds."""
    label: str
    variant: str
    depth: int
    init_from: str | None
    pretrain_only: bool
    seeds: int
    top1: float            # mean top-1 error, percent
    top1_spread: float     # half the range over seeds
    top5: float | None
    top5_spread: float | None
    params: int
    macs: int


def spread(values: list[float]) -> float:
    """Half the range: the ± of mean ± spread."""
    return (max(values) - min(values)) / 2 if len(values) > 1 else 0.0


def row_stats(results: list[dict]) -> list[RowStats]:
    """Aggregate per-run results into rows, in the order rows first appear."""
    by_label: dict[str, list[dict]] = {}
    for r in results:
        by_label.setdefault(r["label"], []).append(r)
    rows = []
    for label, runs in by_label.items():
        top1 = [r["top1_error"] for r in runs]
        top5 = [r["top5_error"] for r in runs if r["top5_error"] is not None]
        first = runs[0]
        rows.append(RowStats(
            label, first["variant"], first["depth"], first["init_from"], first["pretrain_only"],
            len(runs), statistics.fmean(top1), spread(top1),
            statistics.fmean(top5) if top5 else None, spread(top5) if top5 else None,
            first["params"], first["macs"]))
    return rows


@dataclass(frozen=True)
class Verdict:
    claim: str
    status: str
    evidence: str


class Judge:
    """Applies the rules of `claims` to the rows of one reproduction."""

    def __init__(self, rows: list[RowStats], claims: Claims, classes: int,
                 probe: "ProbeSummary | None" = None, standard_init: bool = True):
        self.rows, self.claims, self.probe = rows, claims, probe
        self.standard_init = standard_init
        self.chance = 100.0 * (1.0 - 1.0 / classes)

    def find(self, variant: str, depth: int, recipe: bool = False) -> RowStats | None:
        """The row of a net from the plain init (recipe=False) or from a shallower net."""
        for r in self.rows:
            if (r.variant, r.depth, r.init_from is not None) == (variant, depth, recipe) \
                    and not r.pretrain_only:
                return r
        return None

    def lower(self, a: RowStats, b: RowStats) -> bool:
        """a's top-1 error is lower than b's by more than the margin and the spreads."""
        return b.top1 - a.top1 > max(self.claims.margin, a.top1_spread + b.top1_spread)

    def poor(self, r: RowStats) -> bool:
        return r.top1 >= self.chance - self.claims.poor_within

    def status(self, ok: bool, *rows: RowStats) -> str:
        """A comparison's status: inconclusive when every row compared trains poorly."""
        if all(self.poor(r) for r in rows):
            return INCONCLUSIVE
        return HELD if ok else NOT_HELD

    @staticmethod
    def cell(r: RowStats) -> str:
        return f"{r.label} {r.top1:.2f}%" + (f" ± {r.top1_spread:.2f}" if r.seeds > 1 else "")

    def depths(self) -> list[int]:
        return sorted({r.depth for r in self.rows if r.variant == "cnn" and not r.pretrain_only
                       and r.init_from is None})

    def verdicts(self) -> list[Verdict]:
        out = []
        for d in self.depths():
            out += [self.plain_trains_poorly(d), self.supervision_fixes(d)]
        if self.probe is not None:
            out.append(self.gradients_vanish())
        out += [self.cnds8_beats_cnn8(), self.deeper_beats_8()]
        return out

    def other_init(self, claim: str) -> Verdict:
        return Verdict(claim, UNTESTED, "the rows train from another initialisation than the "
                       "paper's gaussian std 0.01, which this claim is about")

    def plain_trains_poorly(self, d: int) -> Verdict:
        claim = f"(a) CNN-{d} from the standard initialisation trains poorly"
        if not self.standard_init:
            return self.other_init(claim)
        cnn = self.find("cnn", d)
        status = HELD if self.poor(cnn) else NOT_HELD
        return Verdict(claim, status, f"{self.cell(cnn)} top-1 error; chance is "
                       f"{self.chance:.2f}%, 'poorly' means within {self.claims.poor_within:g} points of it")

    def supervision_fixes(self, d: int) -> Verdict:
        claim = f"(b) deep supervision fixes CNN-{d}'s training"
        if not self.standard_init:
            return self.other_init(claim)
        cnn, cnds = self.find("cnn", d), self.find("cnds", d)
        if cnds is None:
            return Verdict(claim, UNTESTED, f"no CNDS-{d} row")
        ok = self.lower(cnds, cnn) and not self.poor(cnds)
        return Verdict(claim, self.status(ok, cnds, cnn),
                       f"{self.cell(cnds)} vs {self.cell(cnn)} (same init, epochs and lr schedule); "
                       f"needs CNDS-{d} lower by > max({self.claims.margin:g}, spreads) points and "
                       f"not within {self.claims.poor_within:g} points of chance")

    def gradients_vanish(self) -> Verdict:
        p = self.probe
        claim = f"(a) gradients vanish in the lower layers of the plain {p.net}"
        low = ", ".join(p.vanishing) if p.vanishing else "none"
        status = HELD if p.vanishing else NOT_HELD
        after = ""
        if p.rounds > 1 and p.branches == "none":
            after = f"; none of the {p.rounds - 1} branch placements probed lifted them"
        elif p.rounds > 1:
            after = (f"; with the suggested branches after conv {p.branches} the vanishing "
                     f"conv layers were {', '.join(p.vanishing_after) or 'none'}")
        return Verdict(claim, status, f"gradient probe, {p.iters} iterations, plain init: conv "
                       f"layers with mean |dE/dW| below {p.threshold:g}: {low}{after}")

    def cnds8_beats_cnn8(self) -> Verdict:
        claim = "(c) CNDS-8 beats CNN-8 at the same test-time cost"
        cnds = self.find("cnds", 8)
        baseline = self.find("cnn", 8, recipe=True) or self.find("cnn", 8)
        if cnds is None or baseline is None:
            return Verdict(claim, UNTESTED, "needs CNDS-8 and CNN-8 rows")
        same_cost = (cnds.params, cnds.macs) == (baseline.params, baseline.macs)
        gap = baseline.top1 - cnds.top1
        ok = self.lower(cnds, baseline) and same_cost
        status = NOT_HELD if not same_cost else self.status(ok, cnds, baseline)
        cost = ("the same deploy net" if same_cost else
                f"deploy costs differ ({cnds.params:,} vs {baseline.params:,} params)")
        return Verdict(claim, status,
                       f"{self.cell(cnds)} vs {self.cell(baseline)}: gap {gap:+.2f} points "
                       f"(paper: about {self.claims.paper_gap_8:g}); {cost}")

    def deeper_beats_8(self) -> Verdict:
        claim = "(c) deeper is better: CNDS-13 beats CNDS-8"
        deep, shallow = self.find("cnds", 13), self.find("cnds", 8)
        if deep is None or shallow is None:
            return Verdict(claim, UNTESTED, "needs CNDS-13 and CNDS-8 rows")
        return Verdict(claim, self.status(self.lower(deep, shallow), deep, shallow),
                       f"{self.cell(deep)} vs {self.cell(shallow)}")


@dataclass(frozen=True)
class ProbeSummary:
    """What the report needs from the gradient probe's probe.json."""
    net: str
    iters: int
    threshold: float
    vanishing: list[str]          # trunk conv layers below threshold, plain net
    rounds: int
    branches: str                 # taps the probe suggested ("none": no tap)
    vanishing_after: list[str]    # trunk conv layers below threshold with those taps
