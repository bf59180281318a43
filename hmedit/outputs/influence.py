"""Influence maps as pictures and files: heatmaps, a contact sheet of the whole tree, and the files on disk.

Pure numpy / PIL (tensors are accepted and read through ``.numpy()``); no diffusers, no matplotlib. The colour
map is viridis (van der Walt & Smith, 2015): perceptually uniform and monotone in lightness, so a brighter
pixel always means more influence, also in grayscale print and for colour-blind readers.

Files written by :func:`write_influence` into an output folder::

    influence.safetensors    float32 [H, W] maps named "<kind>/<node id>", kind = intrinsic, effective,
                             attention (added by a render), ...; metadata "ids" (JSON list, tree order)
    influence/<id>.png       one heatmap per node of its effective map
    influence.png            the contact sheet: one row per node, indented by depth, one column per kind
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hmedit.outputs.folder import real_dir, safe_unlink
from hmedit.outputs.write import save_png, save_safetensors

__all__ = [
    "KINDS",
    "InfluenceFiles",
    "SheetNode",
    "colormap",
    "contact_sheet",
    "heatmap",
    "influence_tensors",
    "sheet_nodes",
    "split_name",
    "write_influence",
]

KINDS = ("intrinsic", "effective", "attention")
"""Known kinds of maps, in the order the contact sheet shows them (other kinds follow, alphabetically)."""

FORMAT = "hmedit.influence"
FORMAT_VERSION = "1"

# ------------------------------------------------------------------------------------------------
# Colour map

# viridis sampled at 10 evenly spaced points (the palette R's viridisLite::viridis(10) gives); linear
# interpolation between them stays within a few levels of the full map and keeps luminance monotone.
_VIRIDIS_STOPS = (
    (0x44, 0x01, 0x54),
    (0x48, 0x28, 0x78),
    (0x3E, 0x4A, 0x89),
    (0x31, 0x68, 0x8E),
    (0x26, 0x82, 0x8E),
    (0x1F, 0x9E, 0x89),
    (0x35, 0xB7, 0x79),
    (0x6D, 0xCD, 0x59),
    (0xB4, 0xDE, 0x2C),
    (0xFD, 0xE7, 0x25),
)


def _build_lut(stops: Sequence[tuple[int, int, int]], n: int = 256) -> np.ndarray:
    c = np.asarray(stops, dtype=np.float64)
    x = np.linspace(0.0, 1.0, len(c))
    t = np.linspace(0.0, 1.0, n)
    lut = np.clip(np.rint(np.stack([np.interp(t, x, c[:, i]) for i in range(3)], axis=1)), 0, 255)
    # Rounding to 8 bits can make neighbouring entries equally bright (or a hair darker) where viridis
    # brightens slowly; nudge green, which dominates luminance, up one level there so that luminance
    # strictly increases along the whole table.
    for i in range(1, n):
        while _luminance(lut[i]) <= _luminance(lut[i - 1]) and lut[i, 1] < 255:
            lut[i, 1] += 1
    return lut.astype(np.uint8)


def _luminance(rgb: np.ndarray) -> float:
    """Relative luminance Y of an sRGB colour 0..255 (ITU-R BT.709 weights on linearised values)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ np.array([0.2126, 0.7152, 0.0722]))


LUT = _build_lut(_VIRIDIS_STOPS)
"""The colour map as a [256, 3] uint8 table: row 0 is value 0, row 255 value 1."""


def _as_array(x: Any) -> np.ndarray:
    """A tensor or array-like as a float32 numpy array (on the CPU, detached)."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").float().numpy()
    return np.asarray(x, dtype=np.float32)


def colormap(values: Any, vmax: float = 1.0) -> np.ndarray:
    """Values [...] (0..vmax; NaN counts as 0, outside is clipped) to viridis colours uint8 [..., 3]."""
    v = np.nan_to_num(_as_array(values), nan=0.0, posinf=vmax, neginf=0.0)
    v = np.clip(v / vmax if vmax > 0 else v, 0.0, 1.0)
    return LUT[np.rint(v * (len(LUT) - 1)).astype(np.intp)]


def _as_rgb(image: Any, size: tuple[int, int] | None = None) -> np.ndarray:
    """A PIL image or array ([H, W], [H, W, 3|4], uint8 or float 0..1) as uint8 RGB, resized to (w, h)."""
    if isinstance(image, Image.Image):
        img = image.convert("RGB")
    else:
        arr = image.detach().to("cpu").numpy() if hasattr(image, "detach") else np.asarray(image)
        if arr.dtype != np.uint8:
            arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., :3]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
            raise ValueError(f"an image must be [H, W], [H, W, 3] or [H, W, 4], got {arr.shape}")
        img = Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
    if size is not None and img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def heatmap(mask: Any, base: Any = None, *, alpha: float = 0.65, vmax: float = 1.0) -> np.ndarray:
    """A mask [H, W] (0..vmax) as a viridis heatmap, uint8 RGB [H, W, 3].

    With ``base`` (a PIL image or an array, resized to the mask's size) the heatmap is alpha-blended over it:
    ``base * (1 - alpha) + heat * alpha``, so one sees where on the picture a node acts.
    """
    m = _as_array(mask)
    if m.ndim != 2:
        raise ValueError(f"a mask must be [H, W], got shape {m.shape}")
    heat = colormap(m, vmax)
    if base is None:
        return heat
    under = _as_rgb(base, (m.shape[1], m.shape[0])).astype(np.float32)
    out = under * (1.0 - alpha) + heat.astype(np.float32) * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Contact sheet


class SheetNode(NamedTuple):
    """What the contact sheet needs to know about a node: its place in the tree and a label."""

    id: str
    depth: int = 0
    parent: int = -1
    prompt: str = ""
    note: str = ""  # a third, dimmer label line, e.g. "strength 0.8, top_down"


def sheet_nodes(nodes: Iterable[Any]) -> list[SheetNode]:
    """SheetNodes from ``Scene.flat()`` entries (FlatNode), SheetNodes, or plain ids (a flat list)."""
    out = []
    for item in nodes:
        if isinstance(item, SheetNode):
            out.append(item)
        elif isinstance(item, str):
            out.append(SheetNode(item))
        elif hasattr(item, "node"):  # a FlatNode
            node = item.node
            notes = []
            if getattr(node, "strength", 1.0) != 1.0:
                notes.append(f"strength {node.strength:g}")
            if getattr(node, "composition", None):
                notes.append(node.composition)
            out.append(SheetNode(node.id, item.depth, item.parent, node.prompt or "", ", ".join(notes)))
        else:
            raise TypeError(f"cannot make a contact sheet row from a {type(item).__name__}")
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the fixed bitmap font
        return ImageFont.load_default()


def _fit(text: str, font: Any, width: float) -> str:
    """``text`` cut to ``width`` pixels, ending in '...' when cut.

    Bounded work whatever the text's length: only its first ``width`` characters can show (a glyph that
    shows is at least a pixel wide), so the rest is dropped unmeasured (:func:`_ellipsize`).
    """
    limit = max(8, int(width) + 1)
    if len(text) <= limit and font.getlength(text) <= width:
        return text
    return _ellipsize(text, font, width)


def _ellipsize(text: str, font: Any, width: float) -> str:
    """The longest start of ``text`` that fits ``width`` pixels with '...' after it, plus '...'; the cut
    point is found by bisection over the first ``width`` characters (O(width log width) measured)."""
    head = text[: max(8, int(width) + 1)]
    lo, hi = 0, len(head)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if font.getlength(head[:mid].rstrip() + "...") <= width:
            lo = mid
        else:
            hi = mid - 1
    return head[:lo].rstrip() + "..."


def _wrap(text: str, font: Any, width: float, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels, at most ``max_lines`` lines (the last cut with '...').

    Linear in the text's length and bounded by the space it fills: at most ``max_lines`` lines of ``width``
    characters can show, so only that much of the text is split into words and measured.
    """
    if max_lines <= 0:
        return []
    limit = max_lines * (max(8, int(width)) + 2)
    cut = len(text) > limit
    words = text[:limit].split()
    lines: list[str] = []
    i = 0
    while i < len(words) and len(lines) < max_lines:
        line = words[i]
        i += 1
        while i < len(words) and font.getlength(f"{line} {words[i]}") <= width:
            line = f"{line} {words[i]}"
            i += 1
        lines.append(line)
    if lines and (i < len(words) or cut):  # more text than shows: the last line ends in '...'
        lines[-1] = _ellipsize(" ".join([lines[-1], *words[i:]]), font, width)
    return [_fit(line, font, width) for line in lines]


def _thumb(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float map resized to size (w, h): area average when shrinking, bilinear when enlarging."""
    img = Image.fromarray(np.ascontiguousarray(m, dtype=np.float32), mode="F")
    shrink = size[0] <= img.size[0] and size[1] <= img.size[1]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(img.resize(size, method), dtype=np.float32)


@dataclass
class _Layout:
    tile: tuple[int, int]  # thumbnail (w, h)
    label_w: int
    header_h: int
    row_h: int
    width: int
    height: int
    margin: int = 10
    gap: int = 8
    indent: int = 16
    caption_h: int = 14

    def row_y(self, i: int) -> int:
        return self.header_h + i * self.row_h

    def col_x(self, c: int) -> int:
        return self.margin + self.label_w + self.gap + c * (self.tile[0] + self.gap)


def _layout(
    n_rows: int, n_cols: int, map_size: tuple[int, int], max_depth: int, max_width: int, max_tile: int
) -> _Layout:
    margin, gap, indent, caption_h = 10, 8, 16, 14
    label_w = 190 + indent * max_depth
    w, h = map_size
    long_side = max(32, min(max_tile, max(w, h)))
    room = (max_width - 2 * margin - label_w - gap - (n_cols - 1) * gap) // max(n_cols, 1)
    scale = long_side / max(w, h)
    scale = min(scale, max(room, 32) / w)  # keep the sheet within max_width, tiles at least 32 px wide
    tile = (max(1, round(w * scale)), max(1, round(h * scale)))
    row_h = max(tile[1], 48) + caption_h + gap
    header_h = margin + 40
    width = 2 * margin + label_w + gap + n_cols * (tile[0] + gap) - gap
    height = header_h + n_rows * row_h + margin
    return _Layout(tile, label_w, header_h, row_h, width, height, margin, gap, indent, caption_h)


def _map_size(columns: Sequence[tuple[str, Sequence[np.ndarray | None]]]) -> tuple[int, int]:
    for _, maps in columns:
        for m in maps:
            if m is not None:
                return m.shape[1], m.shape[0]
    return 64, 64


def contact_sheet(
    nodes: Sequence[Any],
    intrinsic: Any = None,
    effective: Any = None,
    base_image: Any = None,
    *,
    extra: Mapping[str, Any] | None = None,
    title: str = "",
    max_width: int = 2000,
    max_tile: int = 192,
) -> Image.Image:
    """The tree on one picture: a row per node (depth-first order, as given), indented by depth and joined to
    its parent by a connector, labelled with its id and prompt; one column of heatmaps per kind of map.

    ``nodes``: ``Scene.flat()`` entries, :class:`SheetNode` or ids. ``intrinsic`` / ``effective``: [K, H, W]
    (tensor or array) or None to leave the column out; ``extra``: more columns by title (e.g.
    ``{"attention": maps}``), each [K, h, w] or a list of K maps, where an entry may be None (no map for that
    node). Maps of any size are resized to one thumbnail size, chosen so the sheet is at most ``max_width``
    pixels wide. With ``base_image`` each heatmap is drawn over the picture.
    """
    rows = sheet_nodes(nodes)
    k = len(rows)
    columns: list[tuple[str, list[np.ndarray | None]]] = []
    for name, maps in (("intrinsic", intrinsic), ("effective", effective), *(extra or {}).items()):
        if maps is None:
            continue
        listed = [None if m is None else _as_array(m) for m in maps]
        if len(listed) != k:
            raise ValueError(f"{len(listed)} {name} maps for {k} nodes")
        for m in listed:
            if m is not None and m.ndim != 2:
                raise ValueError(f"{name} maps must be [H, W] each, got shape {m.shape}")
        columns.append((name, listed))
    if not columns:
        raise ValueError("a contact sheet needs at least one column of maps")

    lay = _layout(
        k, len(columns), _map_size(columns), max((r.depth for r in rows), default=0), max_width, max_tile
    )
    sheet = Image.new("RGB", (lay.width, lay.height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font, small = _font(13), _font(11)
    ink, dim, line = (25, 25, 25), (110, 110, 110), (150, 150, 150)
    base = None if base_image is None else _as_rgb(base_image, lay.tile)

    # header: title, colour bar, column titles
    draw.text(
        (lay.margin, lay.margin),
        _fit(title or "influence", font, lay.width - 2 * lay.margin),
        fill=ink,
        font=font,
    )
    bar_w = min(120, lay.label_w - 40)
    bar = np.repeat(colormap(np.linspace(0.0, 1.0, bar_w))[None], 8, axis=0)
    bar_y = lay.margin + 22
    sheet.paste(Image.fromarray(bar), (lay.margin + 12, bar_y))
    draw.text((lay.margin, bar_y - 2), "0", fill=dim, font=small)
    draw.text((lay.margin + 16 + bar_w, bar_y - 2), "1", fill=dim, font=small)
    for c, (name, _) in enumerate(columns):
        draw.text((lay.col_x(c), lay.header_h - 20), _fit(name, font, lay.tile[0]), fill=ink, font=font)

    # rows
    anchor: dict[int, tuple[int, int]] = {}  # node index -> (x of its connector column, y of its label)
    for i, row in enumerate(rows):
        y = lay.row_y(i)
        if i % 2:
            draw.rectangle(
                (0, y - lay.gap // 2, lay.width, y + lay.row_h - lay.gap // 2 - 1), fill=(245, 245, 245)
            )
        x = lay.margin + row.depth * lay.indent
        mid = y + 8
        if 0 <= row.parent < i and row.parent in anchor:
            px, py = anchor[row.parent]
            draw.line((px, py + 9, px, mid), fill=line, width=1)
            draw.line((px, mid, x - 3, mid), fill=line, width=1)
        # the connector to this node's children runs down under the first letter of its id; the prompt is
        # indented past it so the line never crosses text
        anchor[i] = (x + 4, mid)
        text_w = lay.label_w - row.depth * lay.indent
        draw.text((x, y), _fit(row.id, font, text_w), fill=ink, font=font)
        tx, ty = x + lay.indent - 4, y + 17
        for text in _wrap(row.prompt, small, text_w - lay.indent, 2):
            draw.text((tx, ty), text, fill=ink, font=small)
            ty += 13
        if row.note:
            draw.text((tx, ty), _fit(row.note, small, text_w - lay.indent), fill=dim, font=small)

        for c, (_, maps) in enumerate(columns):
            cx = lay.col_x(c)
            m = maps[i]
            if m is None:
                draw.rectangle((cx, y, cx + lay.tile[0] - 1, y + lay.tile[1] - 1), outline=line)
                draw.text((cx + 4, y + 4), "no map", fill=dim, font=small)
                continue
            tile = heatmap(_thumb(m, lay.tile), base)
            sheet.paste(Image.fromarray(tile), (cx, y))
            stats = f"max {float(np.nanmax(m)):.2f}  mean {float(np.nanmean(m)):.2f}"
            draw.text((cx, y + lay.tile[1] + 1), _fit(stats, small, lay.tile[0]), fill=dim, font=small)
    return sheet


# ------------------------------------------------------------------------------------------------
# Files


def split_name(name: str) -> tuple[str, str]:
    """'effective/hat' -> ('effective', 'hat')."""
    kind, sep, node_id = name.partition("/")
    if not sep or not kind or not node_id:
        raise ValueError(f"influence map names are '<kind>/<node id>', got {name!r}")
    return kind, node_id


def influence_tensors(ids: Sequence[str], **stacks: Any) -> dict[str, Any]:
    """Named [H, W] maps from stacks [K, H, W] per kind: ``influence_tensors(ids, intrinsic=m, effective=e)``
    -> ``{"intrinsic/root": m[0], ..., "effective/root": e[0], ...}``. A stack that is None is skipped."""
    out: dict[str, Any] = {}
    for kind, stack in stacks.items():
        if stack is None:
            continue
        if len(stack) != len(ids):
            raise ValueError(f"{len(stack)} {kind} maps for {len(ids)} node ids")
        out.update({f"{kind}/{node_id}": stack[i] for i, node_id in enumerate(ids)})
    return out


def _written_ids(out: Path, name: str) -> list[str]:
    """The node ids an earlier :func:`write_influence` recorded in ``out/name`` (none if it is missing,
    unreadable, or not a regular file), i.e. the heatmaps it wrote."""
    import stat

    from safetensors import safe_open

    path = out / name
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return []
        with safe_open(str(path), framework="numpy") as f:
            ids = json.loads((f.metadata() or {}).get("ids", "[]"))
    except Exception:  # any damage to an old file only means nothing is known to be stale
        return []
    return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []


def _kind_order(kinds: Iterable[str]) -> list[str]:
    rank = {k: i for i, k in enumerate(KINDS)}
    return sorted(set(kinds), key=lambda k: (rank.get(k, len(rank)), k))


@dataclass
class InfluenceFiles:
    """What :func:`write_influence` wrote."""

    tensors: Path
    sheet: Path
    heatmaps: dict[str, Path] = field(default_factory=dict)


def write_influence(
    out_dir: str | os.PathLike,
    ids: Sequence[str],
    tensors: Mapping[str, Any],
    *,
    nodes: Sequence[Any] | None = None,
    base_image: Any = None,
    metadata: Mapping[str, str] | None = None,
    heatmap_kind: str = "effective",
    title: str = "",
    max_width: int = 2000,
) -> InfluenceFiles:
    """Write a node tree's influence maps into ``out_dir``, every file atomically.

    ``ids``: the node ids in tree order (``Scene.flat()``); ``tensors``: [H, W] maps named
    ``"<kind>/<id>"`` (see :func:`influence_tensors`); kinds are free (intrinsic, effective, attention, ...)
    and a kind may have its own resolution (attention maps at a UNet level, say). Writes
    ``influence.safetensors`` (float32, metadata: ``ids`` and, with ``nodes``, ``parents`` as JSON, plus
    ``metadata``), ``influence/<id>.png`` (each node's ``heatmap_kind`` map, else its first map; over
    ``base_image`` when given) and ``influence.png`` (the contact sheet; ``nodes`` as for
    :func:`contact_sheet`, default: ``ids`` as a flat list).

    The heatmaps of nodes that the previous ``influence.safetensors`` listed and ``ids`` no longer does are
    removed: only those files, only as regular files inside ``out_dir`` (``outputs.folder.safe_unlink``);
    ``influence/`` must be a real folder, not a symbolic link (``HmeditError``).
    """
    import torch

    out = Path(out_dir)
    ids = list(ids)
    if len(set(ids)) != len(ids):
        raise ValueError(f"node ids must be unique, got {ids}")
    by_kind: dict[str, dict[str, Any]] = {}
    for name, t in tensors.items():
        kind, node_id = split_name(name)
        if node_id not in ids:
            raise ValueError(f"map {name!r} names a node that is not among the ids {ids}")
        if len(t.shape) != 2:
            raise ValueError(f"map {name!r} must be [H, W], got shape {tuple(t.shape)}")
        by_kind.setdefault(kind, {})[node_id] = t
    if not by_kind:
        raise ValueError("no influence maps to write")
    kinds = _kind_order(by_kind)
    rows = sheet_nodes(nodes if nodes is not None else ids)
    if [r.id for r in rows] != ids:
        raise ValueError("nodes and ids must list the same nodes in the same order")

    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "ids": json.dumps(ids)}
    if nodes is not None:
        meta["parents"] = json.dumps([r.parent for r in rows])
    meta.update(metadata or {})
    # kind order, then tree order (the sheet's). safetensors itself stores the names sorted, so a reader gets
    # the tree order from the ``ids`` metadata; the bytes are the same for the same maps either way
    ordered = {
        f"{kind}/{node_id}": torch.as_tensor(_as_array(by_kind[kind][node_id]), dtype=torch.float32)
        for kind in kinds
        for node_id in ids
        if node_id in by_kind[kind]
    }
    heat_dir = real_dir(out, "influence")
    previous = _written_ids(out, "influence.safetensors")
    tensors_path = save_safetensors(out / "influence.safetensors", ordered, meta)

    text = {k: v for k, v in (metadata or {}).items() if 1 <= len(k) <= 79}
    heatmaps: dict[str, Path] = {}
    for node_id in ids:
        kind = heatmap_kind if node_id in by_kind.get(heatmap_kind, {}) else None
        kind = kind or next((k for k in kinds if node_id in by_kind[k]), None)
        if kind is None:
            continue
        m = ordered[f"{kind}/{node_id}"]
        image = heatmap(m, base_image)
        info = {**text, "node": node_id, "kind": kind, "max": f"{float(m.max()):.6g}"}
        heatmaps[node_id] = save_png(heat_dir / f"{node_id}.png", image, info)
    for node_id in previous:
        if node_id not in heatmaps:
            safe_unlink(out, f"influence/{node_id}.png")

    columns = {kind: [by_kind[kind].get(node_id) for node_id in ids] for kind in kinds}
    sheet = contact_sheet(rows, base_image=base_image, extra=columns, title=title, max_width=max_width)
    sheet_path = save_png(out / "influence.png", sheet, {**text, "ids": json.dumps(ids)})
    return InfluenceFiles(tensors_path, sheet_path, heatmaps)
