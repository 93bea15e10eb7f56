"""Atomic file writes (temp file, fsync, rename, directory fsync) and JSON reading with errors naming the file."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import threading
from pathlib import Path
from typing import IO, Any, Iterator

from gdet.errors import DataError

_UMASK_LOCK = threading.Lock()
_FILE_MODE: int | None = None


def file_mode() -> int:
    """The mode a new regular file gets under the process umask (``0o666 & ~umask``), read once.

    ``os.umask`` can only be read by setting it, so it is set and restored at once under a lock.
    """
    global _FILE_MODE
    if _FILE_MODE is None:
        with _UMASK_LOCK:
            if _FILE_MODE is None:
                mask = os.umask(0o022)
                os.umask(mask)
                _FILE_MODE = 0o666 & ~mask
    return _FILE_MODE


def _temp_name(path: Path, keep_suffix: bool) -> Path:
    """``.<name>.<8 hex>.tmp`` beside ``path`` (``+ path.suffix`` for libraries that pick a format by suffix):
    hidden, and recognisable by :func:`remove_stale_temps`."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix if keep_suffix else ''}")


def _named(e: OSError, path: Path) -> OSError:
    """``e`` naming ``path``, the file the caller asked for, instead of the temporary file beside it."""
    return type(e)(e.errno, e.strerror, str(path))


def _create_temp(path: Path, keep_suffix: bool = False) -> tuple[int, Path]:
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _named(e, path.parent) from None
    while True:
        tmp = _temp_name(path, keep_suffix)
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        except OSError as e:
            raise _named(e, path) from None
        os.fchmod(fd, file_mode())
        return fd, tmp


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def remove_stale_temps(folder: str | os.PathLike, name: str) -> list[Path]:
    """Delete the temporary files that a killed writer of ``folder/name`` left behind.

    Only files named as :func:`atomic_write` / :func:`atomic_path` name their temps (``.<name>.<8 hex>.tmp``,
    or ``.<name>.<8 hex>.tmp<suffix>``) are touched. Call it before a run starts writing ``name``, never while
    another process may be writing it (its temp would be deleted under it).

    Returns:
        the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    suffix = re.escape(Path(name).suffix)
    pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{8}}\.tmp(?:{suffix})?")
    removed = []
    for p in folder.iterdir():
        if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    The file is flushed and fsynced before the rename and the directory after it, so a crash (or an
    exception half-way) leaves either the previous file or the complete new one. The new file gets the
    permissions the umask gives any new file (``0o666 & ~umask``).
    """
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to be written by a library (torch.save, savefig, cv2.imwrite, np.savez).

    The temporary file (``.<name>.<random>.tmp<suffix>``, so that libraries picking a format by suffix still
    can) exists, empty, when the block starts. When the block
    succeeds it is fsynced, given the umask's file mode and renamed over ``path``; otherwise it is removed.
    """
    path = Path(path)
    fd, tmp = _create_temp(path, keep_suffix=True)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode())  # a library may have replaced the file instead of writing into it
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def save_json(obj: Any, path: str | os.PathLike, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing file or a parse error raises :class:`DataError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file (is it JSON?)") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None
