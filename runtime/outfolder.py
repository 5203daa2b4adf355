"""The output folder of ``diffdef-run``: checks made before any work, and an exclusive lock while writing.

``check_out_folder`` refuses, before a model is opened, a ``--out`` that is a file, cannot be written, or holds
something already (unless overwriting is asked for).

The lock is ``flock`` on ``OUT/.diffdef-run.lock``: the kernel drops it when its holder exits, even on SIGKILL,
so a killed run never leaves a stale lock. The file is removed on release; a waiter that locked a file which
was meanwhile removed retries on the new one (the usual inode check). Without ``fcntl`` (Windows) the folder
is not locked.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".diffdef-run.lock"


class FolderBusyError(RuntimeError):
    """Another process holds the output folder's lock."""


def check_out_folder(out: str | Path, overwrite: bool) -> None:
    """ValueError naming the path when ``out`` is a file, cannot be made or written, or is not empty (hidden
    entries aside) while ``overwrite`` is False. ``overwrite``: the run may replace its condition folders there."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder")
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{out} cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == out.absolute() else f" (the folder {out} would be made in it)"
        raise ValueError(f"{existing} is not writable{where}")
    if out.is_dir() and not overwrite:
        entries = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise ValueError(f"{out} is not empty ({len(entries)} entries: {shown}); pass --overwrite to replace the "
                             "condition folders this run writes (other entries stay), or choose another folder")


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "another process"
    return text or "another process"


@contextlib.contextmanager
def locked_folder(folder: str | Path, owner: str, wait: bool = False) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) for the ``with`` block.

    A folder made here and still empty on release (e.g. the model failed to open) is removed again.

    Args:
        owner: written into the lock file, shown to a second process (e.g. ``"pid 123, run 9f2c..."``).
        wait: block until the holder is done; otherwise raise :class:`FolderBusyError` at once.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    if fcntl is None:  # pragma: no cover
        yield folder
        return
    while True:
        folder.mkdir(parents=True, exist_ok=True)  # again: a holder that made it may have removed it
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise FolderBusyError(f"output folder {folder} is in use by {_holder(path)}; wait for it to finish, "
                                  "pass --wait, or choose another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file after we opened it: lock the new one
        time.sleep(0.01)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{owner}\n".encode())
        yield folder
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # not empty: the run wrote something
                folder.rmdir()
