"""Scene files: the typed format (spec), reading with positions (load)."""

from hmedit.scene.load import find_scenes, load_scene, validate
from hmedit.scene.spec import (
    LEVELS,
    AssetRef,
    AttentionWeights,
    Composition,
    EllipseMask,
    FlatNode,
    ImageMask,
    Level,
    MaskSpec,
    Node,
    PolygonMask,
    RectMask,
    Scene,
    Scheduler,
    format_field_path,
    parse_field_path,
)

__all__ = [
    "LEVELS",
    "AssetRef",
    "AttentionWeights",
    "Composition",
    "EllipseMask",
    "FlatNode",
    "ImageMask",
    "Level",
    "MaskSpec",
    "Node",
    "PolygonMask",
    "RectMask",
    "Scene",
    "Scheduler",
    "find_scenes",
    "format_field_path",
    "load_scene",
    "parse_field_path",
    "validate",
]
