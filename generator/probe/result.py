"""The probe's JSON result (probe.json beside probe.csv; fields in docs/results.md): each
round's conv statistics and vanishing layers, and the suggested branches, so that no
program has to read the probe's stdout."""
from __future__ import annotations

from generator.probe.placement import Placement, ProbeRound, taps_label


def round_record(r: ProbeRound, threshold: float) -> dict:
    """One probe round: its taps, loss, and each trunk conv's mean |dE/dW| (averaged over
    the iterations) with the vanishing ones by name."""
    means = r.conv_means()
    return {"branches": taps_label(r.taps), "taps": list(r.taps),
            "iterations": len(r.record.values), "seconds": round(r.record.seconds, 3),
            "loss_first": r.record.losses[0], "loss_last": r.record.losses[-1],
            "conv_means": dict(zip(r.convs, means)),
            "vanishing": [r.convs[k - 1] for k in r.vanishing(threshold)]}


def probe_record(train_val: str, net: str, placement: Placement, settings: dict,
                 files: list[str], seconds: dict[str, float]) -> dict:
    """The whole probe: its settings, every round (the plain net first), the suggestion."""
    threshold = settings["threshold"]
    after = placement.after
    return {"command": "probe", "train_val": train_val, "net": net, **settings,
            "rounds": [round_record(r, threshold) for r in placement.rounds],
            "suggested_branches": list(placement.taps),
            "branches": placement.branches_value,
            "compared_round": taps_label(after.taps) if after is not None else None,
            "reason": placement.reason, "files": files, **seconds}
