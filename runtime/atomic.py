"""Atomic writes: write beside the target, fsync, rename. A killed process never leaves half a file or folder.

Files and folders made here follow the process umask (0644 / 0755 under umask 022), like ``open()`` and
``mkdir`` do; ``tempfile`` alone would leave them 0600 / 0700, unreadable to colleagues on a shared server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def current_umask() -> int:
    """The process umask (read from /proc where possible: ``os.umask`` is a set-and-restore, not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path) -> None:
    """Give a file 0666 & ~umask and a folder 0777 & ~umask (what ``open``/``mkdir`` would have given)."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is fsynced and renamed onto ``target``.

    ``suffix`` keeps an extension that a writer needs to see (e.g. ``.nii.gz`` for nibabel).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        follow_umask(tmp)
        os.replace(tmp, target)
        fsync_directory(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_folder(target: str | Path, tag: str) -> Iterator[Path]:
    """Yield an empty hidden sibling folder ``.<name>.partial-<tag>-*``; on success it replaces ``target`` whole.

    An existing ``target`` is first renamed to ``.<name>.old-<tag>-*`` and removed after the new folder is in
    place, so ``target`` is at every moment absent or complete (from one writer). A writer killed midway
    leaves only hidden ``.partial-``/``.old-`` siblings, which :func:`remove_stale` deletes.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{tag}-", dir=target.parent))
    try:
        follow_umask(staging)
        yield staging
        for path in staging.iterdir():
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        fsync_directory(staging)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{tag}-", dir=target.parent))
            os.replace(target, old)  # an empty folder is replaced by rename (POSIX)
        os.replace(staging, target)
        fsync_directory(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def stale_siblings(folder: str | Path) -> list[Path]:
    """Hidden ``.*.partial-*`` / ``.*.old-*`` folders in ``folder`` (left by :func:`atomic_folder` writers)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.is_dir()
                  and (".partial-" in p.name or ".old-" in p.name))


def remove_stale(folder: str | Path) -> list[Path]:
    """Delete :func:`stale_siblings` (call only while no other writer uses ``folder``); returns what went."""
    gone = stale_siblings(folder)
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone


def fsync_directory(folder: Path) -> None:
    """Persist a rename (best effort: not every platform can open a directory)."""
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



def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, obj: Any) -> None:
    """Pretty, key-sorted JSON, written atomically."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")
