"""A static HTML report of an output folder (``hmedit report OUT -o report.html``), for people and CI.

One page lists every scene of the folder: its image(s), the node tree with prompts and each node's influence
map, the timings and the provenance (``render.json``), and, where ``hmedit check`` wrote ``check.json`` into
the folder, the golden, the new render and their difference with its PSNR (or maxdiff). Scene folders
without a ``render.json`` (a render that failed or was interrupted) are listed with what is known of them
(the error, if ``check.json`` records it).

The page needs no server and no network: plain HTML with inline CSS, no script (its Content-Security-Policy
allows none), the images embedded as ``data:`` URIs (downscaled to ``max_side`` pixels for the page; larger
ones as JPEG, differences always as PNG) or, with ``embed=False``, linked by relative paths to the files
beside it. Everything read from disk is escaped.

Model-free: the standard library, numpy and PIL.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote

from hmedit.errors import HmeditError
from hmedit.outputs.folder import read_bytes, read_json
from hmedit.outputs.write import atomic_write

__all__ = ["ReportScene", "build_report", "find_scenes", "write_report"]

RENDER_JSON = "render.json"
CHECK_JSON = "check.json"
MAX_SIDE = 512
_IMAGE_RE = re.compile(r"^image(-(?P<seed>-?[0-9]+))?\.png$")
_MAX_SCENES = 100_000


@dataclass
class ReportScene:
    """What the report knows of one scene."""

    name: str
    folder: Path | None  # None: a scene that failed before it had a folder
    record: dict[str, Any] | None = None  # render.json
    images: dict[int | None, str] = field(default_factory=dict)  # seed -> file name in the folder
    checks: list[dict[str, Any]] = field(default_factory=list)  # its entries of check.json
    problem: str | None = None  # why it is incomplete

    @property
    def complete(self) -> bool:
        return self.record is not None


# ------------------------------------------------------------------------------------------------
# Finding the scenes


def _is_record(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == "hmedit.render"


def _images_in(folder: Path, record: Mapping[str, Any] | None) -> dict[int | None, str]:
    """seed -> image file: from the record's seeds and outputs, else the image*.png files there."""
    names: list[str]
    if record is not None and isinstance(record.get("outputs"), list):
        names = [str(n) for n in record["outputs"]]
    else:
        try:
            names = sorted(e.name for e in os.scandir(folder) if e.is_file(follow_symlinks=False))
        except OSError:
            names = []
    found: dict[int | None, str] = {}
    for name in names:
        match = _IMAGE_RE.match(name)
        if match is None:
            continue
        seed = match.group("seed")
        if seed is not None:
            found[int(seed)] = name
        else:
            seeds = (record or {}).get("seeds")
            only = seeds[0] if isinstance(seeds, list) and len(seeds) == 1 else None
            found[only if isinstance(only, int) else None] = name
    return found


def _check(out: Path) -> dict[str, Any] | None:
    data = read_json(out, CHECK_JSON)
    if (
        isinstance(data, dict)
        and data.get("format") == "hmedit.check"
        and isinstance(data.get("results"), list)
    ):
        return data
    return None


def find_scenes(out: Path) -> tuple[list[ReportScene], dict[str, Any] | None]:
    """The scenes of an output folder (``OUT/<scene>/render.json``, or ``out`` itself a scene's folder) in
    name order, and the folder's ``check.json`` (None if there is none). Folders that hold neither a
    record nor an image nor a check entry are not scenes and are left out; symbolic links are not followed."""
    check = _check(out)
    entries = [e for e in (check or {}).get("results", []) if isinstance(e, dict)]
    scenes: dict[str, ReportScene] = {}
    own = read_json(out, RENDER_JSON)
    if _is_record(own):
        about = own.get("scene") if isinstance(own.get("scene"), dict) else {}
        name = str(about.get("name") or out.name)
        scenes[name] = ReportScene(name, out, own, _images_in(out, own))
    else:
        try:
            folders = sorted(
                (
                    e
                    for e in os.scandir(out)
                    if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")
                ),
                key=lambda e: e.name,
            )[:_MAX_SCENES]
        except OSError as exc:
            raise HmeditError(f"cannot read the folder: {exc.strerror or exc}", file=out) from None
        for entry in folders:
            folder = out / entry.name
            data = read_json(folder, RENDER_JSON)
            record = data if _is_record(data) else None
            images = _images_in(folder, record)
            checked = any(e.get("folder") == entry.name or e.get("scene") == entry.name for e in entries)
            if record is None and not images and not checked:
                continue
            scene = ReportScene(entry.name, folder, record, images)
            if record is None:
                if (folder / RENDER_JSON).exists():
                    scene.problem = "render.json cannot be read (not an hmedit record)"
                else:
                    scene.problem = "no render.json: the render failed or was interrupted"
            scenes[entry.name] = scene
    for e in entries:
        name = str(e.get("scene") or "?")
        scene = scenes.get(name)
        if scene is None:  # failed before it had a folder
            scene = scenes[name] = ReportScene(name, None, problem="the scene was not rendered")
        scene.checks.append(e)
        if e.get("error") and scene.record is None:
            scene.problem = str(e.get("error"))
    return sorted(scenes.values(), key=lambda s: s.name), check


# ------------------------------------------------------------------------------------------------
# Images


def _data_uri(image: Any, max_side: int, *, lossless: bool = True) -> str:
    """A PIL image as a ``data:`` URI, downscaled so that neither side exceeds ``max_side``: a PNG, or with
    ``lossless=False`` a JPEG (quality 90) for an opaque image above 128x128 px, which keeps a page of many
    large renders a few times smaller. Differences are always PNG: JPEG would invent some."""
    from PIL import Image

    if max(image.size) > max_side > 0:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BOX)
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buf = io.BytesIO()
    if not lossless and image.mode in ("RGB", "L") and image.width * image.height > 128 * 128:
        image.save(buf, format="JPEG", quality=90)
        kind = "jpeg"
    else:
        image.save(buf, format="PNG")
        kind = "png"
    return f"data:image/{kind};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Images:
    """Turns image files into ``src`` attributes: embedded (data URIs) or linked (relative paths)."""

    def __init__(self, page_dir: Path, embed: bool, max_side: int) -> None:
        self.page_dir, self.embed, self.max_side = page_dir, embed, max_side
        self.count = 0

    def _decode(self, data: bytes | None) -> Any:
        from PIL import Image, UnidentifiedImageError

        if not data:
            return None
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return img.copy()
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            return None

    def file(self, root: Path, name: str, *, lossless: bool = False) -> tuple[str, Any] | None:
        """(src, PIL image) of ``root/name`` (a regular file inside ``root``), or None if it is no image;
        ``lossless``: embedded as PNG whatever its size (a difference image)."""
        image = self._decode(read_bytes(root, name))
        if image is None:
            return None
        self.count += 1
        if self.embed:
            return _data_uri(image, self.max_side, lossless=lossless), image
        rel = os.path.relpath(os.path.abspath(root / name), os.path.abspath(self.page_dir))
        return url_quote(Path(rel).as_posix()), image

    def array(self, pixels: Any) -> str:
        """A data URI of a computed image (uint8 numpy), embedded whatever the mode."""
        from PIL import Image

        self.count += 1
        return _data_uri(Image.fromarray(pixels), self.max_side)


# ------------------------------------------------------------------------------------------------
# The page

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px 40px;color:#222}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin:0 0 8px}h3{font-size:15px;margin:16px 0 6px}
.muted{color:#666}.scene{border-top:2px solid #ddd;padding:16px 0}
.badge{display:inline-block;font-size:12px;padding:1px 7px;border-radius:9px;color:#fff;vertical-align:middle}
.ok{background:#2a7d2a}.fail{background:#c0392b}.warn{background:#b7791f}.none{background:#777}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0}figcaption{font-size:12px;color:#555;text-align:center}
img{display:block;max-width:100%;image-rendering:auto;border:1px solid #ccc;background:#eee}
img.main{width:256px;max-width:100%}img.sheet{max-width:100%}img.map{width:96px}img.check{width:160px}
table{border-collapse:collapse;margin:4px 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
ul.tree{list-style:none;padding-left:18px;margin:4px 0}ul.tree>li{margin:6px 0}
.node{display:flex;gap:10px;align-items:flex-start}.node code{font-weight:600}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:8px;overflow:auto;max-height:420px;font-size:12px}
nav a{margin-right:10px;white-space:nowrap}details{margin:6px 0}
"""

# no script, no network: images from data: URIs (or files beside the page), inline styles only
_CSP = (
    "default-src 'none'; img-src data: file: 'self'; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'"
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _anchor(name: str) -> str:
    return "scene-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _num(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _e(value) if value is not None else ""
    return f"{value:.{digits}f}"


def _value(entry: Mapping[str, Any], metric: str) -> str:
    value = entry.get("value")
    if value is None:
        return ""
    if value == "inf":
        return "inf (identical)"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _e(value)
    return f"{number:.2f} dB" if metric == "psnr" else f"{number:g}"


def _status(scene: ReportScene) -> tuple[str, str]:
    """(css class, label) of a scene's badge."""
    if any(e.get("regressed") for e in scene.checks):
        return "fail", "regressed"
    if not scene.complete:
        return "warn", "failed" if scene.checks and any(
            e.get("error") for e in scene.checks
        ) else "incomplete"
    if scene.checks and not all(e.get("passed") for e in scene.checks):
        return "warn", "not compared"
    if scene.checks:
        return "ok", "check passed"
    return "ok", "rendered"


def _settings_by_seed(record: Mapping[str, Any]) -> dict[Any, Mapping[str, Any]]:
    settings = record.get("settings")
    if not isinstance(settings, list):
        return {}
    return {s.get("seed"): s for s in settings if isinstance(s, Mapping)}


def _images_html(scene: ReportScene, images: _Images) -> str:
    assert scene.folder is not None
    settings = _settings_by_seed(scene.record or {})
    figures = []
    for seed, name in sorted(scene.images.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        got = images.file(scene.folder, name)
        if got is None:
            figures.append(f"<figure><figcaption>{_e(name)}: missing or not an image</figcaption></figure>")
            continue
        src, img = got
        s = settings.get(seed, {})
        caption = [f"seed {seed}" if seed is not None else name, f"{img.width}x{img.height}"]
        if s.get("tiling"):
            caption.append("tiled")
        img_tag = f'<img class="main" src="{_e(src)}" alt="{_e(name)}">'
        if not images.embed:  # the file itself, full size
            img_tag = f'<a href="{_e(src)}">{img_tag}</a>'
        figures.append(f"<figure>{img_tag}<figcaption>{_e(' · '.join(caption))}</figcaption></figure>")
    sheet = "influence.png"
    outputs = (scene.record or {}).get("outputs") or []
    if sheet in outputs:
        got = images.file(scene.folder, sheet)
        if got is not None:
            figures.append(
                f'<figure><img class="sheet" src="{_e(got[0])}" alt="influence maps">'
                "<figcaption>influence maps (first seed)</figcaption></figure>"
            )
    return f'<div class="row">{"".join(figures)}</div>' if figures else ""


def _mask_text(node: Mapping[str, Any]) -> str:
    mask = node.get("mask")
    if isinstance(mask, Mapping):
        return ", ".join(f"{k} {json.dumps(v)}" for k, v in mask.items() if v is not None)
    layer = node.get("layer")
    if layer:
        return f"layer {layer if isinstance(layer, str) else json.dumps(layer)}"
    return "whole frame" if node.get("id", "root") == "root" else ""


def _node_html(node: Mapping[str, Any], scene: ReportScene, images: _Images, depth: int = 0) -> str:
    if depth > 64:
        return "<li>…</li>"
    node_id = str(node.get("id", "root"))
    bits = [f"<code>{_e(node_id)}</code>"]
    if node.get("prompt"):
        bits.append(f"“{_e(node['prompt'])}”")
    if node.get("negative"):
        bits.append(f'<span class="muted">not: “{_e(node["negative"])}”</span>')
    extra = [_mask_text(node)]
    for key in ("noise", "strength", "feather", "scale", "composition"):
        value = node.get(key)
        if (
            value is not None
            and not (key == "strength" and value == 1.0)
            and not (key == "feather" and not value)
        ):
            extra.append(f"{key} {value}")
    levels = node.get("levels")
    if isinstance(levels, list) and levels and len(levels) < 3:
        extra.append("levels " + "/".join(map(str, levels)))
    if node.get("learn"):
        extra.append("learned token")
    extra = [x for x in extra if x]
    if extra:
        bits.append(f'<span class="muted">({_e("; ".join(extra))})</span>')
    heat = ""
    name = f"influence/{node_id}.png"
    if scene.folder is not None and name in ((scene.record or {}).get("outputs") or []):
        got = images.file(scene.folder, name)
        if got is not None:
            heat = f'<img class="map" src="{_e(got[0])}" alt="influence of {_e(node_id)}">'
    children = node.get("children") or []
    inner = ""
    if isinstance(children, list) and children:
        inner = '<ul class="tree">' + "".join(
            _node_html(c, scene, images, depth + 1) for c in children if isinstance(c, Mapping)
        )
        inner += "</ul>"
    return f'<li><div class="node">{heat}<div>{" ".join(bits)}</div></div>{inner}</li>'


def _tree_html(scene: ReportScene, images: _Images) -> str:
    about = (scene.record or {}).get("scene")
    spec = about.get("spec") if isinstance(about, Mapping) else None
    root = spec.get("root") if isinstance(spec, Mapping) else None
    if not isinstance(root, Mapping):
        return ""
    return f'<h3>Nodes</h3><ul class="tree">{_node_html(root, scene, images)}</ul>'


def _timings_html(record: Mapping[str, Any]) -> str:
    timings = record.get("timings")
    if not isinstance(timings, Mapping):
        return ""
    seeds = timings.get("seeds") if isinstance(timings.get("seeds"), Mapping) else {}
    stages: list[str] = []
    for stage_map in seeds.values():
        if isinstance(stage_map, Mapping):
            stages += [k for k in stage_map if k not in stages]
    head = "".join(f"<th>{_e(s)}</th>" for s in stages)
    rows = []
    for seed, stage_map in seeds.items():
        if not isinstance(stage_map, Mapping):
            continue
        cells = "".join(f'<td class="num">{_num(stage_map.get(s), 3)}</td>' for s in stages)
        total = sum(v for v in stage_map.values() if isinstance(v, (int, float)))
        rows.append(f'<tr><td>{_e(seed)}</td>{cells}<td class="num">{total:.3f}</td></tr>')
    others = [
        f"{k} {_num(v, 3)} s" for k, v in timings.items() if k != "seeds" and isinstance(v, (int, float))
    ]
    table = (
        f"<table><tr><th>seed</th>{head}<th>sum</th></tr>{''.join(rows)}</table>" if rows and stages else ""
    )
    summary = f'<p class="muted">{_e(", ".join(others))}</p>' if others else ""
    return f"<h3>Timings (seconds)</h3>{table}{summary}" if table or summary else ""


def _provenance_html(record: Mapping[str, Any]) -> str:
    model = record.get("model") if isinstance(record.get("model"), Mapping) else {}
    scene = record.get("scene") if isinstance(record.get("scene"), Mapping) else {}
    settings = [s for s in record.get("settings") or [] if isinstance(s, Mapping)]
    first = settings[0] if settings else {}
    rows: list[tuple[str, Any]] = [
        ("model", f"{model.get('name', '')} ({model.get('family', '?')}, hash {model.get('hash', '?')})"),
        ("device", f"{record.get('device', '')} / {record.get('dtype', '')}"),
        ("seeds", ", ".join(str(s.get("seed")) for s in settings)),
        ("size", f"{first.get('width', '?')}x{first.get('height', '?')}"),
        ("steps / guidance", f"{first.get('steps', '?')} / {first.get('guidance', '?')}"),
        ("scheduler", first.get("scheduler", "")),
        ("preset", first.get("preset", "")),
    ]
    tiling = first.get("tiling")
    if isinstance(tiling, Mapping):
        rows.append(("tiling", ", ".join(f"{k} {v}" for k, v in tiling.items())))
    rows += [
        ("scene file", scene.get("file", "")),
        ("created", record.get("created", "")),
        ("key", record.get("key", "")),
    ]
    versions = record.get("versions")
    if isinstance(versions, Mapping):
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    overrides = record.get("overrides")
    if isinstance(overrides, Mapping) and overrides:
        rows.append(("overrides", json.dumps(overrides, sort_keys=True)))
    assets = record.get("assets")
    if isinstance(assets, Mapping) and assets:
        rows.append(
            (
                "assets",
                ", ".join(f"{k}: {v.get('path', '')}" for k, v in assets.items() if isinstance(v, Mapping)),
            )
        )
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    raw = json.dumps(record, indent=1, sort_keys=True, ensure_ascii=False, default=str)
    return (
        f"<h3>Provenance</h3><table>{body}</table>"
        f"<details><summary>render.json</summary><pre>{_e(raw)}</pre></details>"
    )


def _check_html(scene: ReportScene, check: Mapping[str, Any], out: Path, images: _Images) -> str:
    from hmedit.check import diff_image

    metric = str(check.get("metric", "psnr"))
    rows = []
    for entry in scene.checks:
        cells = []
        pictures: dict[str, Any] = {}
        golden = entry.get("golden")
        for label, root, name in (
            (
                "golden",
                Path(str(golden)).parent if golden else None,
                Path(str(golden)).name if golden else None,
            ),
            ("render", out, entry.get("image")),
        ):
            got = images.file(root, str(name)) if root is not None and name else None
            if got is None:
                cells.append(f'<td class="muted">no {label}</td>')
                continue
            pictures[label] = got[1]
            cells.append(f'<td><img class="check" src="{_e(got[0])}" alt="{label}"></td>')
        diff = entry.get("diff")
        got = images.file(out, str(diff), lossless=True) if diff else None
        if got is not None:
            cells.append(f'<td><img class="check" src="{_e(got[0])}" alt="diff"></td>')
        elif "golden" in pictures and "render" in pictures:
            import numpy as np

            a = np.asarray(pictures["golden"].convert("RGB"))
            b = np.asarray(pictures["render"].convert("RGB"))
            if a.shape == b.shape:
                cells.append(
                    f'<td><img class="check" src="{_e(images.array(diff_image(a, b)))}" alt="diff"></td>'
                )
            else:
                cells.append('<td class="muted">sizes differ</td>')
        else:
            cells.append('<td class="muted">no diff</td>')
        if entry.get("passed"):
            result = '<span class="badge ok">pass</span>'
        elif entry.get("regressed"):
            result = '<span class="badge fail">FAIL</span>'
        else:
            result = '<span class="badge warn">not compared</span>'
        notes = [str(n) for n in (entry.get("problem"), entry.get("error"), entry.get("note")) if n]
        seed = entry.get("seed")
        rows.append(
            f"<tr><td>{_e('' if seed is None else seed)}</td>{''.join(cells)}"
            f'<td class="num">{_value(entry, metric)}</td><td>{result}<br>{_e("; ".join(notes))}</td></tr>'
        )
    tol = check.get("tolerance")
    bound = f"{metric} >= {tol} dB passes" if metric == "psnr" else f"{metric} <= {tol} passes"
    return (
        f'<h3>Regression check <span class="muted">({_e(bound)}; diff x4)</span></h3>'
        f"<table><tr><th>seed</th><th>golden</th><th>render</th><th>diff</th><th>{_e(metric)}</th>"
        f"<th>result</th></tr>{''.join(rows)}</table>"
    )


def _scene_html(scene: ReportScene, check: Mapping[str, Any] | None, out: Path, images: _Images) -> str:
    css, label = _status(scene)
    parts = [
        f'<section class="scene" id="{_anchor(scene.name)}">'
        f'<h2>{_e(scene.name)} <span class="badge {css}">{_e(label)}</span></h2>'
    ]
    if scene.folder is not None:
        parts.append(f'<p class="muted">{_e(scene.folder)}</p>')
    if scene.problem:
        parts.append(f"<p><strong>{_e(scene.problem)}</strong></p>")
    if scene.folder is not None:
        parts.append(_images_html(scene, images))
    if scene.checks and check is not None:
        parts.append(_check_html(scene, check, out, images))
    if scene.record is not None:
        parts.append(_tree_html(scene, images))
        parts.append(_timings_html(scene.record))
        parts.append(_provenance_html(scene.record))
    parts.append("</section>")
    return "".join(parts)


def build_report(
    out: str | os.PathLike,
    *,
    page: str | os.PathLike | None = None,
    embed: bool = True,
    max_side: int = MAX_SIDE,
    title: str | None = None,
) -> str:
    """The HTML of the report of output folder ``out``; ``page``: where it will be written (linked images
    are relative to its folder). Raises ``HmeditError`` if the folder holds no render at all."""
    out = Path(out)
    if not out.is_dir():
        raise HmeditError(
            "no such output folder", file=out, hint="give the --out folder of hmedit render or check"
        )
    scenes, check = find_scenes(out)
    if not any(s.complete for s in scenes):
        raise HmeditError(
            "no renders in this folder (no <scene>/render.json)",
            file=out,
            hint=f"render into it first: hmedit render SCENES --out {out}",
        )
    page_dir = Path(page).parent if page is not None else out
    images = _Images(page_dir, embed, max_side)
    rendered = sum(s.complete for s in scenes)
    summary = [f"{len(scenes)} scene{'s' * (len(scenes) != 1)}: {rendered} rendered"]
    if len(scenes) > rendered:
        summary.append(f"{len(scenes) - rendered} failed or incomplete")
    if check is not None:
        summary.append(
            f"check: {check.get('passed', 0)} passed, {check.get('failed', 0)} failed, "
            f"{check.get('not_compared', 0)} not compared"
        )
    nav = []
    for s in scenes:
        css, label = _status(s)
        nav.append(
            f'<a href="#{_anchor(s.name)}">{_e(s.name)}</a><span class="badge {css}">{_e(label)}</span>'
        )
    body = "".join(_scene_html(s, check, out, images) for s in scenes)
    when = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    heading = title or f"hmedit report: {out.name or out}"
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{_e(heading)}</title><style>{_CSS}</style></head>\n<body>"
        f"<h1>{_e(heading)}</h1>"
        f'<p class="muted">{_e(out.absolute())} · {_e("; ".join(summary))} · made {_e(when)}</p>'
        f"<nav>{' '.join(nav)}</nav>\n{body}\n</body></html>\n"
    )


def write_report(
    out: str | os.PathLike,
    page: str | os.PathLike,
    *,
    embed: bool = True,
    max_side: int = MAX_SIDE,
    title: str | None = None,
) -> Path:
    """Write the report of ``out`` to ``page`` (atomically); returns its path."""
    text = build_report(out, page=page, embed=embed, max_side=max_side, title=title)
    return atomic_write(page, text.encode("utf-8"))
