"""A scene's output folder: what hmedit may write, delete and trust there.

An output folder is data on disk that anyone (another process, a careless user, a hostile scene folder) may
have touched since hmedit wrote it. The rules, each one function here:

- :func:`check_writable`: before the first scene, the ``--out`` folder is a folder (not a file), can be
  created and written, and its disk is not full.
- :func:`lock_folder`: one process at a time writes a scene's folder (``flock`` on ``.hmedit.lock`` inside
  it); a second one fails at once with a clear message (or waits up to ``wait`` seconds). Taking the lock
  also removes the temporary files of dead processes (:func:`remove_stale_temp`).
- :func:`safe_unlink`: deletes only a regular file inside the folder, reached without following any symbolic
  link (``openat``-style, one folder at a time with ``O_NOFOLLOW``); names that leave the folder are refused.
- :func:`real_dir`: a subfolder to write into (``influence/``) is created as a real folder; a symbolic link
  in its place is refused, so no write lands outside the folder.
- :func:`describe_outputs` / :func:`verify_outputs`: the size and sha256 of each output, recorded in
  ``render.json`` (``files``) and checked before a render is taken as up to date, so that a truncated output,
  or one from another render, is rendered again.
- :func:`read_json` / :func:`read_bytes`: a record (or any output) read back the same way, bounded in size.
- :func:`seal_record`: adds ``files`` to a record already written and rewrites it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path, PurePath
from typing import Any

from hmedit.errors import HmeditError
from hmedit.outputs.write import save_json, temp_owner, temp_path_for, write_hint

__all__ = [
    "LOCK_NAME",
    "MIN_FREE_BYTES",
    "FolderLock",
    "check_writable",
    "describe_outputs",
    "inside",
    "lock_folder",
    "pid_alive",
    "read_bytes",
    "read_json",
    "real_dir",
    "remove_stale_temp",
    "safe_unlink",
    "seal_record",
    "verify_outputs",
]

LOCK_NAME = ".hmedit.lock"
MIN_FREE_BYTES = 1 << 20
"""Below this much free space on the output disk, a batch refuses to start (a render writes at least that)."""

_MAX_DEPTH = 8  # an output folder is two levels deep (influence/); a deeper tree is not hmedit's
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FD = {os.open, os.stat, os.unlink} <= os.supports_dir_fd and os.scandir in os.supports_fd


# ------------------------------------------------------------------------------------------------
# Paths that stay inside a folder


def _parts(relative: str | os.PathLike) -> list[str] | None:
    """The components of a relative path, or None if it is empty, absolute, or climbs out with '..'."""
    text = os.fspath(relative)
    if not isinstance(text, str) or not text or "\0" in text:
        return None
    path = PurePath(text)
    if path.anchor:
        return None
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return parts


def inside(root: str | os.PathLike, relative: str | os.PathLike) -> Path | None:
    """``root / relative`` if ``relative`` names something inside ``root`` (not absolute, no '..'), else
    None. Lexical only: :func:`safe_unlink` and :func:`verify_outputs` also refuse symbolic links."""
    parts = _parts(relative)
    if parts is None:
        return None
    return Path(os.path.normpath(Path(root).absolute())).joinpath(*parts)


def _open_root(root: str | os.PathLike) -> int:
    """A descriptor of the folder ``root``; a symbolic link as its last component is refused (its parents,
    the user's ``--out``, may be links)."""
    return os.open(root, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)


def _open_dir_at(parent: int, name: str) -> int:
    fd = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=parent)
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", name)
    return fd


@contextmanager
def _parent_fd(root: str | os.PathLike, parts: list[str]) -> Iterator[int]:
    """A descriptor of the folder holding ``root/parts``, reached one folder at a time without following a
    symbolic link (OSError if one is in the way)."""
    fd = _open_root(root)
    try:
        for name in parts[:-1]:
            child = _open_dir_at(fd, name)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _no_links_on_the_way(root: Path, parts: list[str]) -> bool:
    """Without ``dir_fd`` (Windows): no component from ``root`` to the file is a symbolic link."""
    path = root
    for name in ["", *parts]:
        path = path / name if name else path
        with suppress(OSError):
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return False
    return True


def safe_unlink(root: str | os.PathLike, relative: str | os.PathLike) -> bool:
    """Delete ``root/relative`` if it is a regular file inside ``root`` reached without a symbolic link;
    True if it was deleted. A symlink (as the file or as any folder on the way), a folder, a name with '..'
    or an absolute name is left alone (False). Never raises for what is on disk."""
    parts = _parts(relative)
    if parts is None:
        return False
    if not _DIR_FD:
        path = Path(root).joinpath(*parts)
        try:
            if not _no_links_on_the_way(Path(root), parts) or not stat.S_ISREG(os.lstat(path).st_mode):
                return False
            os.unlink(path)
        except OSError:
            return False
        return True
    try:
        with _parent_fd(root, parts) as fd:
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                return False
            os.unlink(parts[-1], dir_fd=fd)
    except OSError:
        return False
    return True


def _open_file(root: str | os.PathLike, relative: str | os.PathLike) -> int:
    """A read descriptor of a regular file inside ``root`` reached without a symbolic link (OSError else)."""
    parts = _parts(relative)
    if parts is None:
        raise PermissionError(errno.EPERM, "outside the folder", os.fspath(relative))
    if not _DIR_FD:
        if not _no_links_on_the_way(Path(root), parts):
            raise PermissionError(errno.ELOOP, "a symbolic link", os.fspath(relative))
        fd = os.open(Path(root).joinpath(*parts), os.O_RDONLY | getattr(os, "O_BINARY", 0))
    else:
        with _parent_fd(root, parts) as parent:
            fd = os.open(parts[-1], os.O_RDONLY | _NOFOLLOW | _CLOEXEC, dir_fd=parent)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, "not a regular file", os.fspath(relative))
    return fd


def real_dir(root: str | os.PathLike, relative: str | os.PathLike = "") -> Path:
    """Make sure ``root/relative`` is a real folder (created if missing) whose components below ``root``
    are no symbolic links, so that files written into it stay inside ``root``; returns the path.

    ``root`` itself must not be a symbolic link either (its parents may). Raises ``HmeditError``.
    """
    root = Path(root)
    parts = _parts(relative) if os.fspath(relative) else []
    if parts is None:
        raise ValueError(f"{relative!r} is not a folder inside {root}")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HmeditError(
            f"cannot create the folder {root.parent}: {exc.strerror or exc}", file=root, hint=write_hint(exc)
        ) from None
    path = root
    for name in ["", *parts]:
        path = path / name if name else path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            try:
                path.mkdir()
            except FileExistsError:
                pass
            except OSError as exc:
                raise HmeditError(
                    f"cannot create the folder {path}: {exc.strerror or exc}", file=path, hint=write_hint(exc)
                ) from None
            st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise HmeditError(
                f"{path} is a symbolic link; hmedit writes only into real folders in its output",
                file=path,
                hint="remove the link, or write elsewhere with --out",
            )
        if not stat.S_ISDIR(st.st_mode):
            raise HmeditError(
                f"{path} is a file, not a folder",
                file=path,
                hint="remove the file, or write elsewhere with --out",
            )
    return path


# ------------------------------------------------------------------------------------------------
# Temporary files of dead processes


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on Windows, where one cannot ask cheaply: assume it does)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, ValueError, OSError):
        return False
    return True


def _walk_temp(fd: int, prefix: Path, depth: int) -> Iterator[tuple[int, str, Path, int]]:
    """(folder fd, name, path, pid) of every temporary file below ``fd``, never through a symbolic link."""
    with os.scandir(fd) as entries:
        listed = list(entries)
    for entry in listed:
        try:
            if entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                if depth < _MAX_DEPTH:
                    child = _open_dir_at(fd, entry.name)
                    try:
                        yield from _walk_temp(child, prefix / entry.name, depth + 1)
                    finally:
                        os.close(child)
                continue
            pid = temp_owner(entry.name)
            if pid is not None and entry.is_file(follow_symlinks=False):
                yield fd, entry.name, prefix / entry.name, pid
        except OSError:
            continue


def remove_stale_temp(root: str | os.PathLike, pids: Iterable[int] | None = None) -> list[Path]:
    """Remove ``.<file>.<pid>.tmp`` files below ``root`` left by processes that are gone (or, with ``pids``,
    those of these processes, e.g. ``[os.getpid()]``); returns what was removed.

    Only regular files are removed, folders are entered without following symbolic links, at most 8 deep.
    Call it while holding the folder's lock (:func:`lock_folder` does), so that no live hmedit of another
    PID namespace is writing there.
    """
    wanted = None if pids is None else set(pids)
    removed: list[Path] = []
    root = Path(root)
    if not _DIR_FD:
        for path in root.rglob(".*.tmp"):
            pid = temp_owner(path.name)
            if pid is None or (not pid_alive(pid) if wanted is None else pid not in wanted):
                continue
            if _no_links_on_the_way(root, list(path.relative_to(root).parts)):
                with suppress(OSError):
                    path.unlink()
                    removed.append(path)
        return removed
    try:
        fd = _open_root(root)
    except OSError:
        return removed
    try:
        for parent, name, path, pid in _walk_temp(fd, root, 0):
            if (pid in wanted) if wanted is not None else not pid_alive(pid):
                with suppress(OSError):
                    os.unlink(name, dir_fd=parent)
                    removed.append(path)
    finally:
        os.close(fd)
    return removed


# ------------------------------------------------------------------------------------------------
# The output folder as a whole: writable, locked


def check_writable(out: str | os.PathLike, min_free: int = MIN_FREE_BYTES) -> Path:
    """Make sure ``out`` is a folder hmedit can write into, before the first scene: it is created if
    missing, must not be a file, must take a file, and its disk must have ``min_free`` bytes free.
    Raises ``HmeditError`` (field ``--out``) otherwise; returns the path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HmeditError(
            f"the output folder {out} is a file, not a folder",
            field="--out",
            hint="name a folder (it is created if missing), or move the file away",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HmeditError(
            f"cannot create the output folder {out}: {exc.strerror or exc}",
            field="--out",
            hint=write_hint(exc),
        ) from None
    probe = temp_path_for(out / "hmedit-probe")
    try:
        with suppress(FileNotFoundError):
            os.unlink(probe)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            with suppress(OSError):
                os.unlink(probe)
    except OSError as exc:
        raise HmeditError(
            f"cannot write into the output folder {out}: {exc.strerror or exc}",
            field="--out",
            hint=write_hint(exc),
        ) from None
    try:
        free = shutil.disk_usage(out).free
    except OSError:
        return out
    if free < min_free:
        raise HmeditError(
            f"the disk of the output folder {out} is full ({free} bytes free)",
            field="--out",
            hint="free some space or write elsewhere with --out",
        )
    return out


class FolderLock:
    """A held lock on a scene's output folder; :meth:`release` it (or use it as a context manager)."""

    def __init__(self, root: Path, fd: int | None, created: bool) -> None:
        self.root, self._fd, self._created = root, fd, created

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlock; the lock file goes (only if it is still ours), and so does the folder if the lock created
        it and nothing was written."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        path = self.root / LOCK_NAME
        try:
            with suppress(OSError):
                mine, there = os.fstat(fd), os.lstat(path)
                if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
                    os.unlink(path)
        finally:
            os.close(fd)  # closing releases the flock
        if self._created:
            with suppress(OSError):
                os.rmdir(self.root)

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _owner(fd: int) -> str:
    with suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return f" (pid {text})"
    return ""


def lock_folder(root: str | os.PathLike, *, wait: float = 0.0) -> FolderLock:
    """Take the lock of a scene's output folder ``root`` (created if missing; a symbolic link is refused),
    then remove the temporary files of dead processes in it. Raises ``HmeditError`` if another process holds
    it for longer than ``wait`` seconds. Where ``fcntl`` is missing (Windows) nothing is locked.

    The lock is an ``flock`` on ``root/.hmedit.lock``, which holds the owner's pid; the kernel drops it when
    its process dies, however it dies.
    """
    root = Path(root)
    existed = os.path.lexists(root)
    real_dir(root)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        remove_stale_temp(root)
        return FolderLock(root, None, False)

    path = root / LOCK_NAME
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o666)
        except OSError as exc:
            raise HmeditError(
                f"cannot lock the output folder {root}: {exc.strerror or exc}",
                file=path,
                hint=write_hint(exc),
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fd)
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise HmeditError(
                f"output folder {root} is being written by another hmedit process{owner}",
                file=root,
                hint="wait until it has finished, or write elsewhere with --out",
            ) from None
        except OSError:  # a file system without locks: go on unlocked, as without fcntl
            os.close(fd)
            remove_stale_temp(root)
            return FolderLock(root, None, False)
        try:  # the file may have been unlinked by its last holder between our open and our flock
            mine, there = os.fstat(fd), os.lstat(path)
            same = (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)
        except OSError:
            same = False
        if not same:
            os.close(fd)
            continue
        with suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        break
    held = FolderLock(root, fd, created=not existed)
    remove_stale_temp(root)
    return held


# ------------------------------------------------------------------------------------------------
# What a record says was written


def _digest(fd: int) -> tuple[int, str]:
    from hmedit.provenance import feed

    h = hashlib.sha256()
    size = feed(h, fd)
    return size, h.hexdigest()


def describe_outputs(root: str | os.PathLike, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"size": bytes, "sha256": hex}}`` of each output file in ``root`` (for ``render.json``'s
    ``files``). Raises ``HmeditError`` if one is missing, is not a regular file or lies outside ``root``."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            fd = _open_file(root, name)
        except OSError as exc:
            raise HmeditError(
                f"output {name} cannot be read back: {exc.strerror or exc}", file=Path(root) / str(name)
            ) from None
        try:
            size, sha = _digest(fd)
        finally:
            os.close(fd)
        out[str(name)] = {"size": size, "sha256": sha}
    return out


def verify_outputs(root: str | os.PathLike, record: Mapping[str, Any]) -> bool:
    """Whether every output ``record["outputs"]`` lists is in ``root`` as ``record["files"]`` describes it
    (a regular file inside ``root``, reached without symbolic links, of that size and sha256). A record
    without outputs or without ``files`` (an older or hand-made one) does not verify."""
    outputs, files = record.get("outputs"), record.get("files")
    if not isinstance(outputs, list) or not outputs or not isinstance(files, Mapping):
        return False
    for name in outputs:
        entry = files.get(name) if isinstance(name, str) else None
        if not isinstance(entry, Mapping):
            return False
        size, sha = entry.get("size"), entry.get("sha256")
        if not isinstance(size, int) or not isinstance(sha, str):
            return False
        try:
            fd = _open_file(root, name)
        except OSError:
            return False
        try:
            if os.fstat(fd).st_size != size or _digest(fd) != (size, sha):
                return False
        except OSError:
            return False
        finally:
            os.close(fd)
    return True


def read_json(root: str | os.PathLike, name: str = "render.json", max_bytes: int = 16 << 20) -> Any:
    """The JSON in ``root/name`` if it is a regular file inside ``root`` (no symbolic link on the way) of at
    most ``max_bytes``; None if it is missing, too big, or not JSON (a record is data from disk: a link to
    ``/dev/zero`` or a huge file must not hang the up-to-date check)."""
    import json

    data = read_bytes(root, name, max_bytes)
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return None


def read_bytes(root: str | os.PathLike, name: str, max_bytes: int = 256 << 20) -> bytes | None:
    """The bytes of ``root/name`` if it is a regular file inside ``root`` (no symbolic link on the way) of
    at most ``max_bytes``; None otherwise (missing, a link, too big, unreadable). For readers of an output
    folder (``hmedit report``): its files are data from disk."""
    try:
        fd = _open_file(root, name)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size > max_bytes:
            return None
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                return None
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


def seal_record(root: str | os.PathLike, record: dict[str, Any], name: str = "render.json") -> dict[str, Any]:
    """``record`` with ``files`` (:func:`describe_outputs` of its ``outputs``), rewritten to ``root/name``
    if it lacked them or they differ; returns the record. For a render that wrote its record without them."""
    outputs = record.get("outputs")
    if not isinstance(outputs, list):
        return record
    files = describe_outputs(root, [str(n) for n in outputs])
    if record.get("files") == files:
        return record
    sealed = {**record, "files": files}
    save_json(Path(root) / name, sealed)
    return sealed
