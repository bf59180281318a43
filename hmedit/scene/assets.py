"""Reading the images a scene points at: mask images, layer images (RGBA) and source images (RGB).

All loaders return float32 numpy arrays in 0..1, already turned upright by their EXIF orientation, and raise
``HmeditError`` naming the file and a fix when a file is missing, unreadable or not an image. Pixel formats
handled: 1-bit, 8-bit and 16-bit grayscale, grayscale + alpha, palette (with or without transparency), RGB,
RGBA, CMYK and 32-bit float grayscale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hmedit.errors import HmeditError

__all__ = ["has_alpha", "load_gray", "load_rgb", "load_rgba", "open_image"]

_FORMATS_HINT = "use a PNG, JPEG, WebP or TIFF file"


def open_image(path: str | Path, *, field: str | None = None) -> Image.Image:
    """Open and fully decode an image, upright per its EXIF orientation; errors name the file and a fix."""
    path = Path(path)
    if not path.exists():
        raise HmeditError(
            f"image file not found: {path}",
            file=path,
            field=field,
            hint="check the path; relative paths are resolved against the scene file's folder",
        )
    if path.is_dir():
        raise HmeditError(
            f"{path} is a folder, not an image file", file=path, field=field, hint=_FORMATS_HINT
        )
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here and not later
            upright = ImageOps.exif_transpose(img)
            # exif_transpose returns a copy when it rotates, the same (soon closed) object otherwise
            return upright.copy() if upright is img else upright
    except UnidentifiedImageError as exc:
        raise HmeditError(
            f"{path} is not an image this program can read", file=path, field=field, hint=_FORMATS_HINT
        ) from exc
    except PermissionError as exc:
        raise HmeditError(
            f"cannot read {path}: permission denied",
            file=path,
            field=field,
            hint="check the file's permissions",
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise HmeditError(
            f"cannot decode image {path}: {exc}",
            file=path,
            field=field,
            hint="the file may be truncated or corrupt; re-export it as PNG",
        ) from exc


def _image_has_alpha(img: Image.Image) -> bool:
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return True
    # a colour key ("transparency") in a palette, grayscale or RGB file is alpha too
    return img.mode in ("P", "L", "RGB") and "transparency" in img.info


def _to_unit_float(img: Image.Image) -> np.ndarray:
    """Any single-band image to float32 in 0..1, keeping the precision of 16-bit and float files."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(img, dtype=np.float32) / 65535.0
    if img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit PNGs open as mode "I" in some Pillow versions: values 0..65535
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(arr / top, 0.0, 1.0).astype(np.float32)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if arr.max(initial=0.0) > 1.0:  # a float image stored in 0..255
            arr = arr / 255.0
        return np.clip(arr, 0.0, 1.0).astype(np.float32)
    if img.mode == "1":
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32) / 255.0


def has_alpha(path: str | Path, *, field: str | None = None) -> bool:
    """Whether an image file carries an alpha channel (palette transparency counts)."""
    return _image_has_alpha(open_image(path, field=field))


def load_gray(path: str | Path, *, field: str | None = None) -> np.ndarray:
    """A mask image as float32 [h, w] in 0..1 (white = 1).

    Colour images are reduced to luminance (ITU-R 601-2, Pillow's "L"); an alpha channel is ignored.
    """
    img = open_image(path, field=field)
    if img.mode == "P":
        img = img.convert("RGBA" if _image_has_alpha(img) else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    return _to_unit_float(img)


def _bands(img: Image.Image) -> list[np.ndarray]:
    return [_to_unit_float(band) for band in img.split()]


def load_rgba(path: str | Path, *, require_alpha: bool = False, field: str | None = None) -> np.ndarray:
    """A layer image as float32 [h, w, 4] in 0..1, straight (not premultiplied) alpha.

    Files without alpha get alpha 1; with ``require_alpha`` such a file is an ``HmeditError`` instead (a layer
    needs its alpha to say where it is). Use :func:`has_alpha` to decide yourself.
    """
    img = open_image(path, field=field)
    alpha = _image_has_alpha(img)
    if require_alpha and not alpha:
        raise HmeditError(
            f"layer image {Path(path)} has no alpha channel, so its shape is unknown",
            file=path,
            field=field,
            hint="save the layer as a PNG with transparency, or give the region as a mask instead",
        )
    if not alpha and img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F", "1", "L"):
        gray = _to_unit_float(img)  # keeps 16-bit precision
        return np.stack([gray, gray, gray, np.ones_like(gray)], axis=-1)
    if img.mode == "LA":
        g, a = _bands(img)
        return np.stack([g, g, g, a], axis=-1)
    if img.mode != "RGBA":
        img = img.convert("RGBA")  # palette, L and RGB colour keys become alpha here
    return np.stack(_bands(img), axis=-1).astype(np.float32)


def load_rgb(path: str | Path, *, field: str | None = None) -> np.ndarray:
    """A source image as float32 [h, w, 3] in 0..1; any alpha channel is dropped (not composited)."""
    img = open_image(path, field=field)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F", "1", "L"):
        gray = _to_unit_float(img)
        return np.stack([gray, gray, gray], axis=-1)
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode == "P" else img.convert("RGB")
    return np.stack(_bands(img), axis=-1).astype(np.float32)
