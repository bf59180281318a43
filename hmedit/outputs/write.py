"""Atomic output files: a run that is interrupted or fails never leaves a half-written file behind.

Every writer goes through :func:`atomic_path`: the data is written to a hidden temporary file in the target's
folder (same file system, so the final ``os.replace`` is atomic), flushed to disk, given the ordinary mode of
a new file (``0o666`` less the umask, whatever the writing library chose) and only then renamed onto the
target. On any failure (an exception, Ctrl-C) the temporary file is removed and an existing target keeps its
old content. A file system error (disk full, read-only folder) becomes one ``HmeditError`` with a hint.

Temporary files are named ``.<name>.<pid>.tmp`` (:func:`temp_path_for`, :func:`temp_owner`), so that one left
by a killed process can be told apart and removed by the next run (``hmedit.outputs.folder``).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hmedit.errors import HmeditError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image
    from torch import Tensor

__all__ = [
    "atomic_path",
    "atomic_write",
    "file_mode",
    "save_json",
    "save_png",
    "save_safetensors",
    "temp_owner",
    "temp_path_for",
]

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]{1,10})\.tmp$")


def temp_path_for(path: str | os.PathLike) -> Path:
    """The temporary sibling a write of ``path`` goes through: ``.<name>.<pid>.tmp`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def temp_owner(name: str) -> int | None:
    """The pid in a temporary file's name made by :func:`temp_path_for`, or None for any other name."""
    match = _TEMP_RE.match(name)
    return int(match.group("pid")) if match else None


_umask_lock = threading.Lock()


def file_mode() -> int:
    """The mode of a new file: ``0o666`` less the process umask (what ``open(path, "w")`` gives)."""
    with _umask_lock:  # the only portable way to read the umask is to set it
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _fsync(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some platforms (Windows) cannot open folders; the rename is still atomic
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; it replaces ``path`` only if the block succeeds.

    The parent folder is created if needed. On success the temporary file is fsynced and renamed onto
    ``path`` (``os.replace``: atomic, also over an existing file); on any exception, KeyboardInterrupt
    included, it is removed and ``path`` is left as it was. File system errors become ``HmeditError``.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clear(tmp)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        yield tmp
        st = os.lstat(tmp) if os.path.lexists(tmp) else None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise RuntimeError(f"nothing was written to the temporary file for {path}")
        os.chmod(tmp, file_mode())  # one mode for every output, whatever the library created it with
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise
    _fsync(path.parent, directory=True)  # make the rename itself durable


def _clear(tmp: Path) -> None:
    """Remove whatever sits at the temporary name (a leftover, or a planted symlink that the writer would
    otherwise follow): the name itself is unlinked, never what a link points to."""
    try:
        st = os.lstat(tmp)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "a folder has the name of the temporary file", str(tmp))
    os.unlink(tmp)


_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def write_hint(exc: OSError) -> str:
    """What to do about a failed write, by its errno."""
    if exc.errno in _FULL:
        return "the disk is full: free some space or write elsewhere with --out"
    if exc.errno in _DENIED:
        return "the output folder is not writable: fix its permissions or write elsewhere with --out"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file is in the way of the output folder: remove it or write elsewhere with --out"
    return "check that the output folder is writable and the disk is not full"


def _write_error(path: Path, exc: OSError) -> HmeditError:
    reason = exc.strerror or str(exc)
    return HmeditError(f"cannot write {path}: {reason}", file=path, hint=write_hint(exc))


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path. The one writer of bytes: every other
    ``save_*`` that can produce bytes in memory goes through it."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def save_png(
    path: str | os.PathLike,
    image: np.ndarray | Image.Image,
    text: Mapping[str, str] | None = None,
) -> Path:
    """Save ``image`` (uint8 [H, W], [H, W, 3] or [H, W, 4], or a PIL image) as PNG, atomically.

    ``text`` becomes PNG text chunks (tEXt, or iTXt for values that are not Latin-1), readable with
    ``PIL.Image.open(path).text``. Keys are 1 to 79 Latin-1 characters (the PNG rule).
    """
    import numpy as np
    from PIL import Image, PngImagePlugin

    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError(f"PNG pixels must be uint8, got {arr.dtype}")
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise ValueError(f"PNG pixels must be [H, W], [H, W, 3] or [H, W, 4], got {arr.shape}")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        image = Image.fromarray(np.ascontiguousarray(arr))
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        if not 1 <= len(key) <= 79:
            raise ValueError(f"PNG text keys must be 1 to 79 characters, got {key!r}")
        info.add_text(str(key), str(value))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return Path(path)


def save_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Save named tensors as a .safetensors file, atomically; ``metadata`` values must be text.

    Tensors are copied to the CPU as contiguous, unshared storage first (safetensors refuses views that
    share memory, such as the rows of one stacked [K, H, W] tensor).
    """
    from safetensors.torch import save

    if metadata is not None:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"safetensors metadata must map text to text; not so for {bad}")
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    # serialised in memory and written by Python: the library's own file writer chose mode 0600 and turned
    # a full disk into its own exception type
    data = save(plain, metadata=dict(metadata) if metadata is not None else None)
    return atomic_write(path, data)


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    item = getattr(value, "item", None)  # numpy and torch scalars
    if callable(item) and getattr(value, "ndim", None) == 0:
        return item()
    tolist = getattr(value, "tolist", None)  # numpy arrays, torch tensors
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (sorted keys, indent 2, UTF-8, trailing newline), atomically.

    Paths, sets and numpy / torch scalars and arrays are written as their plain JSON equivalents.
    """
    text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    return atomic_write(path, text.encode("utf-8"))
