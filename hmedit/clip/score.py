"""CLIP scores of regions: how well each node's part of a render matches its prompt.

The metric of MRGD (Multi-Region Text-Driven Manipulation of Diffusion Imagery; CLIP similarity of Kim et al.
2022, DiffusionCLIP): the cosine similarity of the CLIP embeddings of the edited region and of its prompt. A
node's region is the render masked by the node's map (by default its effective mask, as the output folder's
``influence.safetensors`` holds it): pixels outside blend to the image processor's mean colour (what the
CLIP sees as zero), and the picture is cropped to a square around the map's support, so that a small region
is not lost when the processor shrinks the image.

:func:`region` and :func:`square_box` are pure numpy; :func:`clip_scores` runs a loaded CLIP;
:func:`score_folder` scores an output folder of ``hmedit render`` and writes ``clip_score.json`` beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hmedit.errors import HmeditError

SCORE_JSON = "clip_score.json"
FORMAT = "hmedit.clip_score"
SUPPORT = 0.5  # a map's support: where it is at least this (the maps are in 0..1)
MIN_PIXELS = 4  # a region of fewer pixels is not scored (None)


def square_box(support: np.ndarray, margin: float = 0.1) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of a square around the True pixels of ``support`` [H, W], ``margin`` of its side added
    on each side; may reach outside the image (the caller pads). None when nothing is True."""
    ys, xs = np.nonzero(support)
    if len(xs) == 0:
        return None
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    side = max(x1 - x0, y1 - y0)
    side = side + 2 * int(math.ceil(margin * side))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bx, by = int(math.floor(cx - side / 2)), int(math.floor(cy - side / 2))
    return bx, by, bx + side, by + side


def region(
    image: np.ndarray, mask: np.ndarray, fill: Sequence[float], *, support: float = SUPPORT
) -> np.ndarray | None:
    """The part of ``image`` [H, W, 3] uint8 that ``mask`` [h, w] in 0..1 selects: masked (outside blends to
    ``fill``, an RGB colour in 0..255) and cropped to a square around the mask's support (padded with
    ``fill`` where the square leaves the image). A mask of another size is resized (bilinear) to the image's.
    None when the support has fewer than ``MIN_PIXELS`` pixels."""
    h, w = image.shape[:2]
    m = np.clip(np.asarray(mask, np.float32), 0.0, 1.0)
    if m.shape != (h, w):
        from PIL import Image

        m = np.asarray(Image.fromarray(m, mode="F").resize((w, h), Image.BILINEAR), np.float32)
        m = np.clip(m, 0.0, 1.0)
    keep = m >= support
    if int(keep.sum()) < MIN_PIXELS:
        return None
    fill_rgb = np.asarray(fill, np.float32).reshape(1, 1, 3)
    blended = image.astype(np.float32) * m[..., None] + fill_rgb * (1.0 - m[..., None])
    x0, y0, x1, y1 = square_box(keep)  # type: ignore[misc]
    side = x1 - x0
    out = np.broadcast_to(fill_rgb, (side, side, 3)).copy()
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = blended[sy0:sy1, sx0:sx1]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def processor_fill(processor) -> list[float]:
    """The image processor's mean colour in 0..255 (the colour CLIP sees as zero after normalising)."""
    mean = getattr(getattr(processor, "image_processor", processor), "image_mean", None) or [0.5, 0.5, 0.5]
    return [float(v) * 255.0 for v in mean]


def clip_scores(model, processor, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[float]:
    """Cosine similarity of each image's CLIP embedding with its prompt's (pairwise, in order)."""
    import torch

    from hmedit.clip.load import image_features, text_features

    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    if not images:
        return []
    device = next(model.parameters()).device
    with torch.no_grad():
        tin = processor(text=list(prompts), return_tensors="pt", padding=True, truncation=True)
        pix = processor(images=list(images), return_tensors="pt")["pixel_values"]
        txt = text_features(model, tin["input_ids"].to(device), tin["attention_mask"].to(device))
        img = image_features(model, pix.to(device=device, dtype=model.dtype))
        txt = torch.nn.functional.normalize(txt.float(), dim=-1)
        img = torch.nn.functional.normalize(img.float(), dim=-1)
        return [float(v) for v in (img * txt).sum(-1).cpu()]


def score_regions(
    model, processor, image: np.ndarray, maps: dict[str, np.ndarray], prompts: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Per node id (in ``prompts``' order): its prompt, the share of the image its region covers, and its CLIP
    score (None when the node has no prompt, no map, or an empty region)."""
    fill = processor_fill(processor)
    rows: dict[str, dict[str, Any]] = {}
    crops, texts, ids = [], [], []
    for node_id, prompt in prompts.items():
        m = maps.get(node_id)
        crop = region(image, m, fill) if m is not None and prompt.strip() else None
        area = None if m is None else round(float((np.asarray(m) >= SUPPORT).mean()), 4)
        rows[node_id] = {"prompt": prompt, "area": area, "score": None}
        if crop is not None:
            crops.append(crop)
            texts.append(prompt)
            ids.append(node_id)
    for node_id, s in zip(ids, clip_scores(model, processor, crops, texts)):
        rows[node_id]["score"] = round(s, 5)
    return rows


def mean_score(rows: dict[str, dict[str, Any]]) -> float | None:
    vals = [r["score"] for r in rows.values() if r["score"] is not None]
    return round(float(np.mean(vals)), 5) if vals else None


# ---------------------------------------------------------------- output folders
def node_prompts(spec: dict) -> dict[str, str]:
    """node id -> prompt, in tree order, from a scene spec as ``render.json`` records it."""
    out: dict[str, str] = {}

    def walk(node: dict) -> None:
        out[str(node.get("id"))] = str(node.get("prompt") or "")
        for child in node.get("children") or []:
            walk(child)

    walk(spec.get("root") or {})
    return out


def read_maps(folder: Path, kind: str) -> dict[str, np.ndarray]:
    """The ``kind`` maps of ``influence.safetensors`` in ``folder``, by node id."""
    from safetensors import safe_open

    path = folder / "influence.safetensors"
    if not path.is_file():
        raise HmeditError(
            "no influence.safetensors in the output folder",
            file=folder,
            hint="render the scene again with hmedit render (it writes the maps beside the image)",
        )
    try:
        with safe_open(str(path), framework="np") as f:
            names = [k for k in f.keys() if k.startswith(kind + "/")]  # noqa: SIM118 - safe_open is no dict
            maps = {k.split("/", 1)[1]: f.get_tensor(k) for k in names}
    except Exception as e:  # noqa: BLE001 - a damaged file is said in one line
        raise HmeditError(
            f"cannot read influence maps: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
            file=path,
            hint="render the scene again",
        ) from None
    if not maps:
        raise HmeditError(
            f"influence.safetensors has no '{kind}' maps", file=path, hint="use --map effective"
        )
    return maps


def output_folders(paths: Sequence[str | Path]) -> list[Path]:
    """Output folders (holding ``render.json``) named or found below ``paths``, sorted per path."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if (p / "render.json").is_file():
            found.append(p)
        elif p.is_dir():
            below = sorted(r.parent for r in p.rglob("render.json"))
            if not below:
                raise HmeditError(
                    "no render output here (no render.json in it or below)",
                    file=p,
                    hint="pass the folder hmedit render wrote (OUT/<scene name>) or a folder above it",
                )
            found += below
        else:
            raise HmeditError("no such folder", file=p, hint="pass an output folder of hmedit render")
    return found


def score_folder(
    folder: Path, clip: str | None = None, *, kind: str = "effective", device: str = "cpu"
) -> dict:
    """Score every image of a render's output folder; write ``clip_score.json`` there (atomically) and return
    its content. ``clip``: None takes the scene's ``clip:`` (relative to the scene's folder), else 'toy'."""
    from PIL import Image

    from hmedit.clip.load import load_clip, resolve_clip
    from hmedit.outputs import save_json
    from hmedit.outputs.folder import read_json

    folder = Path(folder)
    try:
        record = read_json(folder)
        spec = record["scene"]["spec"]
        outputs = [o for o in record["outputs"] if isinstance(o, str) and o.startswith("image")]
    except HmeditError:
        raise
    except Exception:  # noqa: BLE001 - missing keys or an unreadable record: one line
        raise HmeditError(
            "render.json is not a record of hmedit render",
            file=folder / "render.json",
            hint="render the scene again",
        ) from None
    prompts = node_prompts(spec)
    maps = read_maps(folder, kind)
    base_dir = None
    if clip is None:
        clip = spec.get("clip") or "toy"
        scene_file = (record.get("scene") or {}).get("file")
        base_dir = Path(scene_file).parent if isinstance(scene_file, str) else None
    model, processor = load_clip(clip, device=device, base_dir=base_dir)
    images: dict[str, Any] = {}
    for name in outputs:
        try:
            with Image.open(folder / name) as im:
                image = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise HmeditError(
                f"cannot read the image: {e}", file=folder / name, hint="render again"
            ) from None
        rows = score_regions(model, processor, image, maps, prompts)
        images[name] = {"mean": mean_score(rows), "nodes": rows}
    result = {
        "format": FORMAT,
        "format_version": "1",
        "clip": clip,
        "clip_path": str(resolve_clip(clip, base_dir=base_dir)),
        "map": kind,
        "metric": "cosine similarity of the CLIP embeddings of a node's masked, square-cropped region and "
        "of its prompt",
        "images": images,
    }
    save_json(folder / SCORE_JSON, result)
    return result


def bench_scores(
    image: np.ndarray, masks: dict[str, np.ndarray], prompts: dict[str, str], clip: str = "toy"
) -> dict[str, float | None] | None:
    """The CLIP column of the benches: each region's score (``masks`` and ``prompts`` by region id); None
    when the CLIP cannot be loaded (a missing bundled CLIP leaves the column empty, not the bench failed)."""
    from hmedit.clip.load import load_clip

    try:
        model, processor = load_clip(clip)
    except HmeditError:
        return None
    rows = score_regions(model, processor, image, masks, prompts)
    return {k: r["score"] for k, r in rows.items()}


def mean_of(values) -> float | None:
    """Mean of the scores that are there (None when none is)."""
    vals = [v for v in values if v is not None]
    return round(float(np.mean(vals)), 5) if vals else None
