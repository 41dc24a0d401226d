"""The paper's rule of thumb, made precise.

Conv k (1-based, counting trunk convolutions from the input) vanishes when its mean
absolute weight gradient, averaged over the probe iterations, is below the threshold.
A branch goes after the deepest vanishing conv (at most the last-but-one conv, the
deepest one a branch can tap). The probe is then repeated with that branch added, until
no conv vanishes, the branch limit is reached, or the deepest vanishing conv is tapped
already (a branch there did not lift it, so another would not either). A branch that
lifts no conv above the threshold is not evidence for itself: it is dropped from the
suggestion and the search stops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from generator.probe.gradients import GradientRecord


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

    def vanishing(self, threshold: float) -> list[int]:
        """The conv layers (1-based) whose averaged statistic is below `threshold`."""
        return [k for k, m in enumerate(self.conv_means(), start=1) if m < threshold]


@dataclass
class Placement:
    """The rounds run, the suggested taps (ascending) and why the search stopped."""
    rounds: list[ProbeRound]
    taps: tuple[int, ...]
    reason: str

    @property
    def branches_value(self) -> str:
        """The suggestion as `make net` takes it: BRANCHES=4,7,10 (or none)."""
        return ",".join(map(str, self.taps)) if self.taps else "none"


def next_tap(vanishing: list[int], taps: tuple[int, ...], n_convs: int) -> tuple[int | None, str]:
    """The conv to tap next, or None and the reason to stop."""
    if not vanishing:
        return None, "no conv layer vanishes"
    k = min(max(vanishing), n_convs - 1)
    if k < 1:
        return None, "the net has a single conv layer, which no branch can tap"
    if k in taps:
        return None, f"conv {k} is tapped already and conv {max(vanishing)} still vanishes"
    return k, f"conv {max(vanishing)} is the deepest vanishing conv"


def place_branches(probe: Callable[[tuple[int, ...]], ProbeRound], n_convs: int,
                   threshold: float, max_branches: int, can_branch: bool = True,
                   report: Callable[[ProbeRound, str], None] | None = None) -> Placement:
    """Probe the plain net, then nets with one more branch each, per the rule above.

    `probe(taps)` trains the net with branches after `taps`; `report(round, verdict)`
    hears about each round. Without `can_branch` only the plain net is probed.
    """
    taps: tuple[int, ...] = ()
    rounds: list[ProbeRound] = []
    added = None
    while True:
        current = probe(taps)
        rounds.append(current)
        vanishing = current.vanishing(threshold)
        if added is not None and set(vanishing) >= set(rounds[-2].vanishing(threshold)):
            taps = tuple(t for t in taps if t != added)
            why = f"the branch after conv {added} lifts no conv layer above the threshold"
            if report is not None:
                report(current, f"{why}: drop it")
            return Placement(rounds, taps, why)
        k, why = next_tap(vanishing, taps, n_convs)
        if k is not None and len(taps) >= max_branches:
            k, why = None, f"{why}, but the limit of {max_branches} branches is reached"
        if report is not None:
            report(current, why if k is None else f"{why}: add a branch after conv {k}")
        if k is None:
            return Placement(rounds, taps, why)
        if not can_branch:
            return Placement(rounds, (k,), "the net was not rendered by the generator, so "
                             "the probe was not repeated with the branch added")
        taps, added = tuple(sorted((*taps, k))), k
