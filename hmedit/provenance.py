"""Provenance of a render: what went in (scene, assets, model, settings, versions) and what came out.

Two things live here, both plain data (no model, no torch at import):

- :func:`render_key`: the up-to-date key of a scene's render, a sha256 over everything that decides its
  output files. ``hmedit render`` skips a scene whose ``render.json`` holds the same key and whose outputs
  all match the size and sha256 it records for them (``files``; ``hmedit.outputs.folder.verify_outputs``).
- :func:`record`: the content of ``render.json``, written last into the scene's output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hmedit

if TYPE_CHECKING:
    from hmedit.scene import Scene

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "asset_paths",
    "file_sha256",
    "record",
    "render_key",
    "versions",
]

FORMAT = "hmedit.render"
FORMAT_VERSION = 1


def feed(h, fd: int) -> int:
    """Stream the open file ``fd`` into the hash ``h`` (1 MiB at a time); return the bytes read. The one loop
    that hashes files: scene assets, outputs (``hmedit.outputs.folder``) and model weights use it."""
    size = 0
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
        size += len(chunk)
    return size


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        feed(h, fd)
    finally:
        os.close(fd)
    return h.hexdigest()


def asset_paths(scene: Scene) -> dict[str, Path]:
    """Every file the scene names (init image, layers, mask images, embeddings, control images), by field
    path, in file order."""
    found: dict[str, Path] = {}
    if scene.init_image is not None:
        found["init_image"] = scene.init_image.path
    nodes = [(f.path, f.node) for f in scene.flat()]
    for i, edit in enumerate(scene.edits):  # the files of nodes an edit adds (and their children)
        stack = [(f"edits[{i}].add", edit.add)] if edit.add is not None else []
        while stack:
            path, node = stack.pop()
            nodes.append((path, node))
            stack += [(f"{path}.children[{j}]", c) for j, c in enumerate(node.children)]
    for path, node in nodes:
        if node.layer is not None:
            found[f"{path}.layer"] = node.layer.path
        image = getattr(node.mask, "image", None)
        if image is not None:
            found[f"{path}.mask.image"] = image.path
        if node.embedding is not None:
            found[f"{path}.embedding"] = node.embedding.path
        control = node.control
        if control is not None:
            for key in ("image", "source"):
                value = getattr(control, key)
                if hasattr(value, "path"):  # a file (source may also name the layer or the init image)
                    found[f"{path}.control.{key}"] = value.path
    return found


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def render_key(
    *,
    scene_bytes: bytes,
    assets: Mapping[str, str],
    model_hash: str,
    settings: Sequence[Mapping[str, Any]],
    device: str,
    dtype: str,
    version: str = hmedit.__version__,
    controls: Mapping[str, Mapping[str, str]] | None = None,
    words: bool = False,
) -> str:
    """sha256 (hex) over everything that decides a render's output files.

    ``assets``: sha256 of each referenced file by field path; ``settings``: one mapping per seed with every
    setting after defaults and command-line overrides. A setting that defaults to the model's own value
    (the native size) is given as None: the model hash already pins it, so the key needs no loaded model.
    ``controls``: the ControlNet of each control by field path (its hash decides the output); a scene without
    controls keys as before. ``words``: the per-word attention maps are written too (a render without them
    keys as before).
    """
    h = hashlib.sha256()
    h.update(_canonical({"format": FORMAT, "format_version": FORMAT_VERSION, "hmedit": version}))
    h.update(hashlib.sha256(scene_bytes).digest())
    h.update(
        _canonical(
            {
                "assets": dict(assets),
                "model_hash": model_hash,
                "settings": [dict(s) for s in settings],
                "device": device,
                "dtype": dtype,
                **({"controls": {k: dict(v) for k, v in controls.items()}} if controls else {}),
                **({"words": True} if words else {}),
            }
        )
    )
    return h.hexdigest()


def _version_of(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of hmedit, python and the libraries that decide the pixels."""
    return {
        "hmedit": hmedit.__version__,
        "python": platform.python_version(),
        "torch": _version_of("torch"),
        "diffusers": _version_of("diffusers"),
        "transformers": _version_of("transformers"),
    }


def _plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else dict(value)


def record(
    *,
    key: str,
    scene: Scene,
    scene_file: str | os.PathLike,
    scene_bytes: bytes,
    assets: Mapping[str, Mapping[str, str]],
    model: Mapping[str, Any],
    device: str,
    dtype: str,
    settings: Iterable[Any],
    key_settings: Sequence[Mapping[str, Any]],
    overrides: Mapping[str, Any],
    timings: Mapping[str, Any],
    outputs: Iterable[str],
    created: datetime | None = None,
    embeddings: Mapping[str, Any] | None = None,
    files: Mapping[str, Mapping[str, Any]] | None = None,
    preset: Mapping[str, Any] | None = None,
    controls: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """The content of ``render.json`` (save it with ``outputs.save_json``: sorted keys).

    ``model``: ``Model.describe()``; ``settings``: the effective ``Settings`` of each seed (dataclasses or
    mappings); ``key_settings``: the settings the key was computed from; ``assets``: ``{field path: {"path",
    "sha256"}}``; ``timings``: seconds per stage per seed and in total; ``outputs``: paths relative to the
    scene's output folder; ``embeddings``: the tokens of nodes with ``learn`` / ``embedding``, by node id
    (``SceneTokens.describe()``: the cache key or file and its sha256, the learn settings); ``files``: the
    size and sha256 of each output (``hmedit.outputs.folder.describe_outputs``), which the up-to-date check
    verifies (a record without them is never up to date); ``controls``: the ControlNets by control field
    path (name, path, source, hash).
    """
    plain = [_plain(s) for s in settings]
    when = (created or datetime.now(timezone.utc)).astimezone(timezone.utc)
    out = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "key": key,
        "created": when.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "versions": versions(),
        "model": dict(model),
        "device": device,
        "dtype": dtype,
        "seeds": [s["seed"] for s in plain],
        "settings": plain,
        "key_settings": [dict(s) for s in key_settings],
        "overrides": {k: v for k, v in overrides.items() if v is not None},
        "scene": {
            "file": str(Path(scene_file).absolute()),
            "name": scene.name,
            "sha256": hashlib.sha256(scene_bytes).hexdigest(),
            "spec": scene.model_dump(mode="json"),
        },
        "assets": {k: dict(v) for k, v in assets.items()},
        "timings": dict(timings),
        "outputs": sorted(outputs),
    }
    if files is not None:
        out["files"] = {str(k): dict(v) for k, v in sorted(files.items())}
    if preset:
        out["preset"] = dict(preset)
    if embeddings:
        out["embeddings"] = {k: dict(v) for k, v in embeddings.items()}
    if controls:
        out["controls"] = {k: dict(v) for k, v in controls.items()}
    return out
