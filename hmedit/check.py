"""Regression checks: re-render scenes and compare each image with a golden copy.

Goldens live in ``GOLDEN/<scene name>/``: the images (``image.png`` or ``image-<seed>.png``, as ``hmedit
render`` names them) and ``golden.json``, a small manifest of the settings and the model hash they were
made with, so that a failing check can say whether the model or the settings changed under it.

Metrics, on uint8 RGB pixels:

- ``psnr``: peak signal-to-noise ratio, 10 log10(255^2 / MSE) in dB (infinite for identical images); a
  check passes when PSNR >= tolerance (default 35 dB).
- ``maxdiff``: the largest absolute difference of any channel of any pixel, in 0..255 units; a check
  passes when maxdiff <= tolerance (default 2).

A check writes its result as data too: :func:`check_record` is the content of ``check.json`` in the check's
output folder (one entry per scene and seed: the image, the golden, the value, the diff), which ``hmedit
report`` shows and :mod:`hmedit.outputs.junit` turns into JUnit XML.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hmedit.errors import HmeditError
from hmedit.metrics import psnr

if TYPE_CHECKING:
    from hmedit.batch import Result

__all__ = [
    "CHECK_FORMAT",
    "CHECK_JSON",
    "DEFAULT_TOLERANCE",
    "GOLDEN_JSON",
    "METRICS",
    "Comparison",
    "check_record",
    "compare_scene",
    "diff_image",
    "exit_code",
    "load_image",
    "maxdiff",
    "measure",
    "passes",
    "psnr",
    "side_by_side",
    "update_scene",
]

METRICS = ("psnr", "maxdiff")
DEFAULT_TOLERANCE = {"psnr": 35.0, "maxdiff": 2.0}
GOLDEN_JSON = "golden.json"
CHECK_JSON = "check.json"
CHECK_FORMAT = "hmedit.check"
DIFF_GAIN = 4


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    """The largest absolute pixel difference, 0..255."""
    x, y = _pair(a, b)
    return float(np.max(np.abs(x - y))) if x.size else 0.0


def measure(golden: np.ndarray, new: np.ndarray, metric: str) -> float:
    if metric == "psnr":
        return psnr(golden, new)
    if metric == "maxdiff":
        return maxdiff(golden, new)
    raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")


def passes(value: float, metric: str, tolerance: float) -> bool:
    """PSNR must reach the tolerance; maxdiff must stay within it."""
    return value >= tolerance if metric == "psnr" else value <= tolerance


def diff_image(golden: np.ndarray, new: np.ndarray, gain: int = DIFF_GAIN) -> np.ndarray:
    """|new - golden| per channel, amplified ``gain`` times (so a difference of a few levels shows), uint8."""
    x, y = _pair(golden, new)
    return np.clip(np.abs(y - x) * gain, 0, 255).astype(np.uint8)


def side_by_side(*images: np.ndarray, gap: int = 4) -> np.ndarray:
    """Images (uint8 RGB, any sizes) left to right on white, top-aligned, ``gap`` pixels apart."""
    height = max(im.shape[0] for im in images)
    width = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for im in images:
        canvas[: im.shape[0], x : x + im.shape[1]] = im
        x += im.shape[1] + gap
    return canvas


def load_image(path: Path) -> np.ndarray:
    """A PNG as uint8 RGB [H, W, 3]; an unreadable file is a user-facing error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise HmeditError(f"cannot read the image: {exc}", file=path) from None


@dataclass
class Comparison:
    """One image of one scene against its golden copy."""

    file: Path  # the scene file
    name: str
    seed: int | None
    image: str  # file name in the scene's folder
    value: float | None = None
    passed: bool = False
    regressed: bool = False  # the new image is off: below the tolerance, or another size
    problem: str | None = None  # why there is no value (no golden, size differs, render failed)
    user_error: bool = False  # the problem is the user's to fix (missing golden), not a regression
    internal: bool = False
    diff: Path | None = None  # the diff image written for a failure
    note: str | None = None  # the golden was made with another model or other settings


def _manifest(result: Result) -> dict[str, Any]:
    rec = result.record or {}
    controls = {
        where: {k: (net or {}).get(k) for k in ("name", "hash")}
        for where, net in (rec.get("controls") or {}).items()
    }
    return {
        "scene": result.name,
        "model": {k: rec.get("model", {}).get(k) for k in ("name", "hash", "family")},
        **({"controls": controls} if controls else {}),
        "settings": rec.get("settings", []),
        "device": rec.get("device"),
        "dtype": rec.get("dtype"),
        "images": {str(seed): path.name for seed, path in result.images.items()},
        "versions": rec.get("versions", {}),
    }


def _drift(result: Result, golden_dir: Path) -> str | None:
    """What differs between the golden's manifest and this render, in a few words, or None."""
    try:
        made = json.loads((golden_dir / GOLDEN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    now = _manifest(result)
    notes = []
    before, after = (made.get("model") or {}).get("hash"), now["model"].get("hash")
    if before and after and before != after:
        notes.append(f"model changed ({before} -> {after})")
    for where, net in (now.get("controls") or {}).items():
        was = ((made.get("controls") or {}).get(where) or {}).get("hash")
        if was and net.get("hash") and was != net["hash"]:
            notes.append(f"ControlNet of {where} changed ({was} -> {net['hash']})")
    if made.get("settings") not in (None, now["settings"]):
        notes.append("settings changed")
    if made.get("device") and (made.get("device"), made.get("dtype")) != (now["device"], now["dtype"]):
        notes.append(f"golden made on {made.get('device')}/{made.get('dtype')}")
    return "; ".join(notes) or None


def compare_scene(
    result: Result, golden_root: Path, metric: str, tolerance: float, out_dir: Path | None = None
) -> list[Comparison]:
    """Compare each image of a rendered scene with ``golden_root/<name>/<same file name>``.

    For a failure, ``<image>.diff.png`` (the difference, amplified) and ``<image>.compare.png`` (golden |
    new | diff) are written next to the new image (or into ``out_dir``).
    """
    from hmedit.outputs import save_png

    assert result.name is not None
    golden_dir = golden_root / result.name
    note = _drift(result, golden_dir)
    found = []
    for seed, path in sorted(result.images.items()):
        c = Comparison(result.file, result.name, seed, path.name, note=note)
        found.append(c)
        golden_path = golden_dir / path.name
        if not golden_path.is_file():
            c.problem, c.user_error = f"no golden image {golden_path} (add it with --update)", True
            continue
        golden, new = load_image(golden_path), load_image(path)
        where = out_dir or path.parent
        stem = Path(path.name).stem
        if golden.shape != new.shape:
            gh, gw = golden.shape[:2]
            nh, nw = new.shape[:2]
            c.problem, c.regressed = f"size {nw}x{nh} differs from the golden's {gw}x{gh}", True
            c.diff = save_png(where / f"{stem}.compare.png", side_by_side(golden, new))
            continue
        c.value = measure(golden, new, metric)
        c.passed = passes(c.value, metric, tolerance)
        c.regressed = not c.passed
        if c.regressed:
            diff = diff_image(golden, new)
            save_png(where / f"{stem}.diff.png", diff)
            c.diff = save_png(where / f"{stem}.compare.png", side_by_side(golden, new, diff))
        else:  # an earlier failing check into the same folder left these
            for old in (where / f"{stem}.diff.png", where / f"{stem}.compare.png"):
                old.unlink(missing_ok=True)
    return found


def update_scene(result: Result, golden_root: Path) -> list[Path]:
    """Copy a rendered scene's images into ``golden_root/<name>/`` with a fresh ``golden.json``; golden
    images of seeds the scene no longer has are removed."""
    from hmedit.outputs import atomic_write, save_json

    assert result.name is not None
    golden_dir = golden_root / result.name
    written = []
    for path in result.images.values():
        written.append(atomic_write(golden_dir / path.name, path.read_bytes()))
    keep = {p.name for p in written}
    for stale in golden_dir.glob("image*.png"):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    save_json(golden_dir / GOLDEN_JSON, _manifest(result))
    return written


def exit_code(comparisons: Sequence[Comparison]) -> int:
    """1 if any image regressed; else 2 if any check could not be made for a user mistake (a missing
    golden, a scene that failed to render), or 1 if only for bugs; else 0."""
    if any(c.regressed for c in comparisons):
        return 1
    if any(c.user_error for c in comparisons):
        return 2
    return 1 if any(c.internal for c in comparisons) else 0


def _relative(path: Path | None, root: Path) -> str | None:
    """``path`` relative to ``root`` (posix) when it lies below it, else as given; None stays None."""
    if path is None:
        return None
    try:
        return Path(path).absolute().relative_to(root.absolute()).as_posix()
    except ValueError:
        return str(path)


def _seconds(result: Result | None, seed: int | None, count: int) -> float:
    """The render time of one seed: its stages in ``render.json``'s timings, else the scene's share."""
    if result is None:
        return 0.0
    stages = ((result.record or {}).get("timings") or {}).get("seeds", {}).get(str(seed))
    if isinstance(stages, dict) and stages:
        return round(sum(v for v in stages.values() if isinstance(v, (int, float))), 4)
    return round(result.seconds / max(count, 1), 4)


def check_record(
    comparisons: Sequence[Comparison],
    results: Sequence[Result],
    *,
    golden: Path,
    out: Path,
    metric: str,
    tolerance: float,
    created: str | None = None,
) -> dict[str, Any]:
    """The content of ``check.json``: the settings of the check and one entry per compared image (or per
    scene that could not be compared), in order. Paths of files in ``out`` are relative to it; the golden's
    as given. A value is a number, ``"inf"`` (identical images) or None (not compared)."""
    import math
    from datetime import datetime, timezone

    by_file = {r.file: r for r in results}
    entries = []
    for c in comparisons:
        r = by_file.get(c.file)
        count = len(r.images) if r is not None and r.images else 1
        image = r.images.get(c.seed) if r is not None and c.seed is not None else None
        stem = Path(c.image).stem if c.image else None
        diff = compare = None
        if c.diff is not None:
            compare = c.diff
            candidate = Path(c.diff).with_name(f"{stem}.diff.png")
            diff = candidate if candidate.is_file() else None
        value: float | str | None = c.value
        if isinstance(value, float) and math.isinf(value):
            value = "inf"
        entries.append(
            {
                "scene": c.name,
                "file": str(c.file),
                "seed": c.seed,
                "image": _relative(image, out),
                "golden": str((golden / c.name / c.image).absolute()) if c.image else None,
                "value": value,
                "passed": c.passed,
                "regressed": c.regressed,
                "problem": c.problem,
                "error": (r.error if r is not None and r.status == "failed" else None),
                "note": c.note,
                "diff": _relative(diff, out),
                "compare": _relative(compare, out),
                "folder": _relative(r.target, out) if r is not None and r.target is not None else None,
                "seconds": _seconds(r, c.seed, count),
            }
        )
    passed = sum(c.passed for c in comparisons)
    failed = sum(c.regressed for c in comparisons)
    when = created or datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {
        "format": CHECK_FORMAT,
        "format_version": 1,
        "created": when,
        "metric": metric,
        "tolerance": tolerance,
        "golden": str(golden.absolute()),
        "passed": passed,
        "failed": failed,
        "not_compared": len(comparisons) - passed - failed,
        "exit_code": exit_code(comparisons),
        "results": entries,
    }
