"""The paper's rule of thumb, made precise and checked against evidence.

Conv k (1-based, counting trunk convolutions from the input) vanishes when its mean
absolute weight gradient, averaged over the probe iterations, is below the threshold.
Taps are chosen one at a time, from the input up. With `prev` the deepest tap so far (0
at first), let lo and v be the shallowest and the deepest conv above `prev` that vanish;
the candidates are conv lo .. min(v, last-but-one). A candidate k *lifts* when the probe
with a branch added after k leaves no conv in (prev, k] vanishing. The tap is the deepest
candidate that lifts: conv v's candidate first (the paper's rule: in its case, a bottom
group of vanishing convs lifted by a branch after the deepest, this is the only probe),
then a binary search below it (a deeper branch reaches the convs under it through a
longer path, so lifting is taken to be monotone in k). The search stops when no conv
above the deepest tap vanishes, the branch limit is reached, no conv is left to tap, or
no candidate lifts (the taps found so far stand: each was lifted by its own probe).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from generator.probe.gradients import GradientRecord
from runner.deep_supervision import vanishes


def taps_label(taps: tuple[int, ...]) -> str:
    """Taps as `make net` takes them: "4,7,10", or "none"."""
    return ",".join(map(str, taps)) if taps else "none"


@dataclass
class ProbeRound:
    """One probe: the taps it ran with, its gradients, and its trunk conv layer names."""
    taps: tuple[int, ...]
    record: GradientRecord
    convs: list[str]

    def conv_means(self) -> list[float]:
        """Conv k's statistic averaged over the iterations, at index k-1."""
        means = self.record.mean_over_iterations()
        return [means[name] for name in self.convs]

    def vanishing(self, threshold: float, above: int = 0) -> list[int]:
        """The conv layers (1-based) deeper than conv `above` whose averaged statistic is
        below `threshold`."""
        return [k for k, m in enumerate(self.conv_means(), start=1)
                if k > above and vanishes(m, threshold)]


@dataclass
class Placement:
    """Every probe run (the plain net first), the suggested taps (ascending) and why the
    search stopped."""
    rounds: list[ProbeRound]
    taps: tuple[int, ...]
    reason: str

    @property
    def branches_value(self) -> str:
        """The suggestion as `make net` takes it: BRANCHES=4,7,10 (or none)."""
        return taps_label(self.taps)

    @property
    def after(self) -> ProbeRound | None:
        """The probe to compare with the plain net: the one with the suggested taps, else
        (no tap found) the first branch tried; None when no branch was probed."""
        for r in self.rounds[1:]:
            if r.taps == self.taps or not self.taps:
                return r
        return None


def _convs(ks: list[int]) -> str:
    return ("conv " if len(ks) == 1 else "convs ") + ",".join(map(str, ks))


Report = Callable[[ProbeRound | None, str], None]


class _Search:
    """The state of one placement search: probes run (cached by taps) and the taps kept."""

    def __init__(self, probe: Callable[[tuple[int, ...]], ProbeRound], threshold: float,
                 report: Report | None):
        self.probe, self.threshold = probe, threshold
        self.report = report or (lambda r, text: None)
        self.rounds: dict[tuple[int, ...], ProbeRound] = {}
        self.taps: tuple[int, ...] = ()

    def run(self, taps: tuple[int, ...]) -> ProbeRound:
        if taps not in self.rounds:
            self.rounds[taps] = self.probe(taps)
        return self.rounds[taps]

    def lifts(self, k: int, prev: int) -> bool:
        """Whether a branch after conv k (on top of the taps kept) lifts convs prev+1..k."""
        r = self.run(tuple(sorted((*self.taps, k))))
        left = [j for j in r.vanishing(self.threshold, prev) if j <= k]
        if left:
            means = r.conv_means()
            shown = ", ".join(f"conv {j} {means[j - 1]:.1e}" for j in left[:3])
            self.report(r, f"a branch after conv {k} leaves {_convs(left)} vanishing "
                        f"({shown}{', ...' if len(left) > 3 else ''})")
        else:
            self.report(r, f"a branch after conv {k} lifts every conv in {prev + 1}..{k}")
        return not left

    def deepest_lifting(self, lo: int, hi: int, prev: int) -> int | None:
        """The deepest k in lo..hi that lifts: hi first, then a binary search below it."""
        if self.lifts(hi, prev):
            return hi
        best, a, b = None, lo, hi - 1
        while a <= b:
            mid = (a + b + 1) // 2
            if self.lifts(mid, prev):
                best, a = mid, mid + 1
            else:
                b = mid - 1
        return best


def place_branches(probe: Callable[[tuple[int, ...]], ProbeRound], n_convs: int,
                   threshold: float, max_branches: int, can_branch: bool = True,
                   report: Report | None = None) -> Placement:
    """Probe the plain net, then nets with candidate branches, per the rule above.

    `probe(taps)` trains the net with branches after `taps`; `report(round, text)` hears
    the verdict on each probe, and `report(None, text)` each decision. Without
    `can_branch` only the plain net is probed and its paper-rule tap (the deepest
    vanishing conv, at most the last-but-one) is suggested unchecked.
    """
    search = _Search(probe, threshold, report)

    def done(reason: str) -> Placement:
        search.report(None, f"stop: {reason}")
        return Placement(list(search.rounds.values()), search.taps, reason)

    current = search.run(())
    while True:
        prev = max(search.taps, default=0)
        vanishing = current.vanishing(threshold, prev)
        above = f" above conv {prev}" if prev else ""
        search.report(None if prev else current, f"{_convs(vanishing)}{above} vanish"
                      if vanishing else f"no conv{above} vanishes")
        if not vanishing:
            return done(f"no conv layer{above} vanishes")
        lo, hi = vanishing[0], min(vanishing[-1], n_convs - 1)
        if len(search.taps) >= max_branches:
            return done(f"{_convs(vanishing)} still vanish, but the limit of {max_branches} "
                        "branches is reached")
        if hi < lo:
            return done(f"{_convs(vanishing)} vanish{above}, but the last conv cannot be tapped")
        if not can_branch:
            search.taps = (hi,)
            return done(f"conv {vanishing[-1]} is the deepest vanishing conv; the net was not "
                        f"rendered by the generator, so a branch after conv {hi} was not probed")
        k = search.deepest_lifting(lo, hi, prev)
        if k is None:
            where = f"conv {lo}" if lo == hi else f"any conv in {lo}..{hi}"
            shallowest = search.rounds[tuple(sorted((*search.taps, lo)))].conv_means()[lo - 1]
            return done(f"no branch after {where} lifts the vanishing convs up to it above "
                        f"the threshold {threshold:g} (a branch after conv {lo} leaves it "
                        f"at {shallowest:.1e})")
        search.taps = tuple(sorted((*search.taps, k)))
        search.report(None, f"tap conv {k}: BRANCHES={taps_label(search.taps)}")
        current = search.run(search.taps)
