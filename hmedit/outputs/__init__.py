"""Outputs: atomic files with metadata (write) and influence maps as heatmaps, contact sheet and tensors
(influence). Model-free: numpy, PIL, safetensors."""

from hmedit.outputs.influence import (
    KINDS,
    InfluenceFiles,
    SheetNode,
    colormap,
    contact_sheet,
    heatmap,
    influence_tensors,
    sheet_nodes,
    split_name,
    write_influence,
)
from hmedit.outputs.write import (
    atomic_path,
    atomic_write,
    save_json,
    save_png,
    save_safetensors,
    temp_path_for,
)

__all__ = [
    "KINDS",
    "InfluenceFiles",
    "SheetNode",
    "atomic_path",
    "atomic_write",
    "colormap",
    "contact_sheet",
    "heatmap",
    "influence_tensors",
    "save_json",
    "save_png",
    "save_safetensors",
    "sheet_nodes",
    "split_name",
    "temp_path_for",
    "write_influence",
]
