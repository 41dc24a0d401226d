"""The paper's rule of thumb for placing supervision branches: train the plain net a few
iterations with the plain initialisation, watch each layer's mean absolute weight
gradient, and add a branch after the deepest conv layer whose gradient vanishes.

`python -m generator.probe TRAIN_VAL.prototxt` runs it; `make net BRANCHES=auto` calls
`suggest_branches`. docs/probe.md gives the exact statistic and rule.
"""
from generator.probe.run import ProbeOptions, search, suggest_branches

__all__ = ["ProbeOptions", "search", "suggest_branches"]
