"""Outputs: atomic files with metadata (write), influence maps as heatmaps, contact sheet and tensors
(influence), and the rules of an output folder: lock, writable check, safe deletion, verified outputs
(folder). Model-free: numpy, PIL, safetensors."""

from hmedit.outputs.folder import (
    FolderLock,
    check_writable,
    describe_outputs,
    lock_folder,
    real_dir,
    remove_stale_temp,
    safe_unlink,
    seal_record,
    verify_outputs,
)
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
    temp_owner,
    temp_path_for,
)

__all__ = [
    "KINDS",
    "FolderLock",
    "InfluenceFiles",
    "SheetNode",
    "atomic_path",
    "atomic_write",
    "check_writable",
    "colormap",
    "contact_sheet",
    "describe_outputs",
    "heatmap",
    "influence_tensors",
    "lock_folder",
    "real_dir",
    "remove_stale_temp",
    "safe_unlink",
    "save_json",
    "save_png",
    "save_safetensors",
    "seal_record",
    "sheet_nodes",
    "split_name",
    "temp_owner",
    "temp_path_for",
    "verify_outputs",
    "write_influence",
]
