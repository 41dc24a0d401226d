"""The paper's rule of thumb for placing supervision branches: train the plain net a few
iterations with the plain initialisation, watch each layer's mean absolute weight
gradient, and add a supervision branch after the deepest conv layer where a probe with
that branch shows it lifts the vanishing conv layers below it.

`python -m generator.probe TRAIN_VAL.prototxt` runs it; `make net BRANCHES=auto` calls
`suggest_branches`. docs/probe.md gives the exact statistic and rule.
"""
from generator.probe.probed_net import ProbedNet
from generator.probe.rounds import NoBranchSuggested, ProbeOptions, search, suggest_branches

__all__ = ["NoBranchSuggested", "ProbedNet", "ProbeOptions", "search", "suggest_branches"]
