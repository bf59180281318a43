"""COCO-format instance annotations (Lin et al., "Microsoft COCO", arXiv:1405.0312; the format of
cocodataset.org/#format-data): images, categories, and one annotation per mask with its run-length encoding,
area and box. Pure numpy; ``pycocotools`` reads what this writes (a dev dependency, for the tests only).

RLE as COCO's ``maskApi.c`` writes it: runs over the mask in column-major (Fortran) order, starting with a run
of zeros, compressed into its ASCII string (each run minus the run two before it, 5 bits a character).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Coco", "bbox", "rle_counts", "rle_decode", "rle_encode", "rle_string"]


def rle_counts(mask: np.ndarray) -> list[int]:
    """The run lengths of a boolean [H, W] mask in column-major order, starting with zeros."""
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"a mask is [H, W], got shape {m.shape}")
    flat = m.flatten(order="F").astype(np.int8)
    if flat.size == 0:
        return [0]
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE string of ``counts`` (``rleToString`` in maskApi.c)."""
    out = []
    for i, run in enumerate(counts):
        x = int(run) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: a negative x ends at -1
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """``{"size": [H, W], "counts": <string>}``: a mask as COCO's compressed RLE."""
    m = np.asarray(mask, bool)
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": rle_string(rle_counts(m))}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """The boolean [H, W] mask of a compressed RLE (``rleFrString`` in maskApi.c, then the runs)."""
    h, w = rle["size"]
    s, counts, p = rle["counts"], [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    flat = np.zeros(h * w, bool)
    pos, value = 0, False
    for run in counts:
        flat[pos : pos + run] = value
        pos += run
        value = not value
    return flat.reshape((w, h)).T


def bbox(mask: np.ndarray) -> list[float]:
    """[x, y, width, height] of the mask's pixels (COCO boxes), [0, 0, 0, 0] when empty."""
    ys, xs = np.nonzero(np.asarray(mask, bool))
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


@dataclass
class Coco:
    """A COCO dataset being built: :meth:`add_image`, then :meth:`add_mask` per object; :meth:`data` is the
    JSON-ready ``annotations.json``. Categories are made on first use, by name."""

    description: str = "hmedit dataset"
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    categories: dict[str, int] = field(default_factory=dict)

    def add_image(self, file_name: str, width: int, height: int, **extra: Any) -> int:
        image_id = len(self.images) + 1
        self.images.append(
            {"id": image_id, "file_name": file_name, "width": width, "height": height, **extra}
        )
        return image_id

    def category(self, name: str) -> int:
        if name not in self.categories:
            self.categories[name] = len(self.categories) + 1
        return self.categories[name]

    def add_mask(self, image_id: int, category: str, mask: np.ndarray, **extra: Any) -> int | None:
        """One annotation for ``mask`` (boolean [H, W]); None (and nothing added) when it is empty."""
        m = np.asarray(mask, bool)
        area = int(m.sum())
        if area == 0:
            return None
        ann_id = len(self.annotations) + 1
        self.annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": self.category(category),
                "segmentation": rle_encode(m),
                "area": area,
                "bbox": bbox(m),
                "iscrowd": 0,
                **extra,
            }
        )
        return ann_id

    def data(self) -> dict[str, Any]:
        return {
            "info": {"description": self.description},
            "images": self.images,
            "annotations": self.annotations,
            "categories": [
                {"id": i, "name": name, "supercategory": "node"} for name, i in self.categories.items()
            ],
        }
