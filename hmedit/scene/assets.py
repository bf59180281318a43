"""Reading the images a scene points at: mask images, layer images (RGBA) and source images (RGB).

All loaders return float32 numpy arrays in 0..1, already turned upright by their EXIF orientation, and raise
``HmeditError`` naming the file and a fix when a file is missing, unreadable or not an image. Pixel formats
handled: 1-bit, 8-bit and 16-bit grayscale, grayscale + alpha, palette (with or without transparency), RGB,
RGBA, CMYK and 32-bit float grayscale.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hmedit.errors import HmeditError
from hmedit.scene.limits import check_image_pixels, limit, raise_hint

__all__ = ["has_alpha", "image_size", "load_gray", "load_rgb", "load_rgba", "open_image"]

_FORMATS_HINT = "use a PNG, JPEG, WebP or TIFF file"
_PILLOW_DEFAULT_MAX = Image.MAX_IMAGE_PIXELS
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _open_header(path: Path, field: str | None) -> Image.Image:
    """Open an image reading only its header, and refuse it when its pixel count is above
    ``HMEDIT_MAX_IMAGE_PIXELS`` (before a single pixel is decoded). The caller closes it."""
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
    allowed = limit("MAX_IMAGE_PIXELS")
    # Pillow's own bomb check (a warning above MAX_IMAGE_PIXELS, an error above twice that) is kept at
    # least as high as ours, so that ours, with its message, is the one that speaks.
    Image.MAX_IMAGE_PIXELS = max(_PILLOW_DEFAULT_MAX or 0, allowed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f" ({int(found.group(1)) / 1e6:.1f} Mpx)" if found else ""
        raise HmeditError(
            f"image {path.name} is larger{pixels} than the limit of {allowed / 1e6:.1f} Mpx",
            file=path,
            field=field,
            hint=f"scale the image down, or {raise_hint('MAX_IMAGE_PIXELS')}",
        ) from None
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
    except (OSError, ValueError, SyntaxError) as exc:  # a header that lies or is cut short
        raise _corrupt(path, field, exc) from exc
    try:
        check_image_pixels(*img.size, what=f"image {path.name}", file=path, field=field)
    except HmeditError:
        img.close()
        raise
    return img


def _corrupt(path: Path, field: str | None, exc: BaseException) -> HmeditError:
    detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    return HmeditError(
        f"cannot decode image {path}: {detail}",
        file=path,
        field=field,
        hint="the file may be truncated or corrupt; re-export it as PNG",
    )


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block is no orientation
        return 1


def image_size(path: str | Path, *, field: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file, upright per its EXIF orientation, from its header alone (nothing is
    decoded); raises ``HmeditError`` for a missing, unreadable or too large file."""
    with _open_header(Path(path), field) as img:
        w, h = img.size
        return (h, w) if _orientation(img) in _TRANSPOSED else (w, h)


def open_image(path: str | Path, *, field: str | None = None, max_side: int | None = None) -> Image.Image:
    """Open and fully decode an image, upright per its EXIF orientation; errors name the file and a fix.

    The size is checked from the header before decoding (``HMEDIT_MAX_IMAGE_PIXELS``). With ``max_side``,
    a larger image is decoded reduced: JPEG at a smaller DCT scale (``draft``), any other format reduced
    by an integer factor (a box filter), so that its long side is at least ``max_side``, and at most
    twice that, pixels; for checks that need only a small mask.
    """
    path = Path(path)
    with _open_header(path, field) as img:
        try:
            if max_side is not None and max(img.size) > max_side:
                img = _decode_reduced(img, max_side)
            else:
                img.load()  # decode now, so a truncated file fails here and not later
            upright = ImageOps.exif_transpose(img)
            # exif_transpose returns a copy when it rotates, the same (soon closed) object otherwise
            return upright.copy() if upright is img else upright
        except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or corrupt data
            raise _corrupt(path, field, exc) from exc


def _decode_reduced(img: Image.Image, max_side: int) -> Image.Image:
    if img.format == "JPEG":
        w, h = img.size
        factor = max(1, max(w, h) // max_side)
        img.draft(img.mode, (w // factor, h // factor))  # scale >= the size asked for
    img.load()
    factor = max(img.size) // max_side
    if factor < 2:
        return img
    exif = img.getexif()
    if img.mode == "P":
        img = img.convert("RGBA" if _image_has_alpha(img) else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")
    elif img.mode in ("L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")  # a colour key would not survive the reduction
    reduced = img.reduce(factor)
    reduced.info["exif"] = exif.tobytes()  # keep the orientation for exif_transpose
    return reduced


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
    return _unit8(img)


def _unit8(img: Image.Image) -> np.ndarray:
    """An 8-bit image (L, RGB, RGBA) as float32 in 0..1 ([h, w] or [h, w, bands]), with one float copy."""
    arr = np.asarray(img, dtype=np.float32)
    return np.divide(arr, 255.0, out=arr)


def has_alpha(path: str | Path, *, field: str | None = None) -> bool:
    """Whether an image file carries an alpha channel (palette transparency counts), from its header."""
    with _open_header(Path(path), field) as img:
        return _image_has_alpha(img)


def load_gray(path: str | Path, *, field: str | None = None, max_side: int | None = None) -> np.ndarray:
    """A mask image as float32 [h, w] in 0..1 (white = 1).

    Colour images are reduced to luminance (ITU-R 601-2, Pillow's "L"); an alpha channel is ignored.
    ``max_side``: decode a larger image reduced (see :func:`open_image`).
    """
    img = open_image(path, field=field, max_side=max_side)
    if img.mode == "P":
        img = img.convert("RGBA" if _image_has_alpha(img) else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    return _to_unit_float(img)


def _bands(img: Image.Image) -> list[np.ndarray]:
    return [_to_unit_float(band) for band in img.split()]


def load_rgba(
    path: str | Path,
    *,
    require_alpha: bool = False,
    field: str | None = None,
    max_side: int | None = None,
) -> np.ndarray:
    """A layer image as float32 [h, w, 4] in 0..1, straight (not premultiplied) alpha.

    Files without alpha get alpha 1; with ``require_alpha`` such a file is an ``HmeditError`` instead (a layer
    needs its alpha to say where it is). Use :func:`has_alpha` to decide yourself. ``max_side``: decode a
    larger image reduced (see :func:`open_image`; :func:`image_size` still gives its full size).
    """
    img = open_image(path, field=field, max_side=max_side)
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
    return _unit8(img)


def load_rgb(path: str | Path, *, field: str | None = None) -> np.ndarray:
    """A source image as float32 [h, w, 3] in 0..1; any alpha channel is dropped (not composited)."""
    img = open_image(path, field=field)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F", "1", "L"):
        gray = _to_unit_float(img)
        return np.stack([gray, gray, gray], axis=-1)
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode == "P" else img.convert("RGB")
    return _unit8(img)
