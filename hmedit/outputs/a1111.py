"""The ``parameters`` PNG text chunk in the form AUTOMATIC1111's web UI writes it, which image browsers and
other tools (A1111's "PNG Info", ComfyUI, InvokeAI, Civitai, image viewers) read to show what made an image.

The text has three parts::

    <prompt, one or more lines>
    Negative prompt: <negative prompt, one or more lines>        (only when there is one)
    Steps: 20, Sampler: DDIM, CFG scale: 7.5, Seed: 1, Size: 512x512, Model hash: 0123456789, Model: toy, ...

The prompt is the root node's; every other node adds ``Region <n>: "<path>: <prompt>"`` (and ``Region <n>
negative``), where ``<path>`` is the node's ids from below the root joined by ``/`` (``disc/ring``). Values
holding a comma, a colon or a line break are written as a JSON string, as A1111's ``quote`` does, so A1111's
``parse_generation_parameters`` reads every field back. ``Model hash`` is the first 10 hex digits of
hmedit's model hash (sha256 over the weight files), not A1111's hash of a single checkpoint file.

Model-free: plain strings.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hmedit.scene.spec import Scene

__all__ = ["KEY", "SAMPLERS", "parameters", "quote", "sampler_name"]

KEY = "parameters"

SAMPLERS = {
    "ddim": "DDIM",
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "pndm": "PLMS",  # diffusers' PNDM with skip_prk_steps is the PLMS sampler of A1111
    "unipc": "UniPC",
}


def sampler_name(scheduler: str) -> str:
    """The A1111 sampler name of an hmedit scheduler (an unknown one as it is)."""
    return SAMPLERS.get(scheduler, scheduler)


def quote(value: Any) -> str:
    """A value as A1111 writes it into the parameters line: as is, or as a JSON string when it holds a comma,
    a colon or a line break (which would otherwise end the field)."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text and '"' not in text[:1]:
        return text
    return json.dumps(text, ensure_ascii=False)


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _node_paths(scene: Scene) -> list[tuple[str, Any]]:
    """(``a/b`` path of ids below the root, node) for every node but the root, in pre-order."""
    flats = scene.flat()
    paths: list[str] = []
    out = []
    for flat in flats:
        if flat.parent < 0:
            paths.append("")
            continue
        parent = paths[flat.parent]
        path = f"{parent}/{flat.node.id}" if parent else flat.node.id
        paths.append(path)
        out.append((path, flat.node))
    return out


def parameters(
    scene: Scene, settings: Any, *, model_name: str, model_hash: str, version: str | None = None
) -> str:
    """The ``parameters`` text of one image of ``scene`` rendered with ``settings``
    (``hmedit.pipeline.Settings``, or anything with its ``seed``, ``steps``, ``guidance``, ``scheduler``,
    ``width``, ``height`` and ``tiling``); see the module docstring."""
    root = scene.root
    fields: dict[str, Any] = {
        "Steps": settings.steps,
        "Sampler": sampler_name(settings.scheduler),
        "CFG scale": f"{settings.guidance:g}",
        "Seed": settings.seed,
        "Size": f"{settings.width}x{settings.height}",
        "Model hash": model_hash[:10],
        "Model": model_name,
    }
    if scene.init_image is not None:
        noise = root.noise if root.noise is not None else 1.0
        fields["Denoising strength"] = f"{noise:g}"
    tiling = getattr(settings, "tiling", None)
    if tiling is not None:  # latent px, as hmedit records it
        fields["Tiled"] = f"tile {tiling.tile}, overlap {tiling.overlap}"
    for index, (path, node) in enumerate(_node_paths(scene), start=1):
        fields[f"Region {index}"] = f"{path}: {node.prompt}"
        if node.negative:
            fields[f"Region {index} negative"] = node.negative
    if scene.name:
        fields["Scene"] = scene.name
    if version:
        fields["Version"] = f"hmedit {version}"
    line = ", ".join(f"{k}: {quote(v)}" for k, v in fields.items())
    text = _lines(root.prompt)
    negative = _lines(root.negative)
    if negative:
        text += f"\nNegative prompt: {negative}"
    return f"{text}\n{line}"
