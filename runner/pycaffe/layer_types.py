"""Caffe's LayerRegistry::LayerTypeList: every layer type this engine builds."""
from __future__ import annotations

import runner.net  # noqa: F401  (fills both registries)
from runner.layers import supported_types
from runner.sources import source_types


def layer_type_list() -> list[str]:
    """Sorted type names: compute layers, data layers (sources) and Python."""
    return sorted(set(supported_types()) | set(source_types()))
