"""sha256 of files, and a cache that spares re-hashing large unchanged files (bundles of several GB).

The cache (``$XDG_CACHE_HOME/diffdef/sha256.json``, default ``~/.cache``) maps a file's absolute path to its
(size, mtime_ns, ctime_ns, inode, sha256). A file whose size, mtimes and inode are all unchanged is taken to
hold the cached digest: any write through the file system changes mtime and ctime, and ctime cannot be set
back by a user (``touch -r`` moves mtime only), so an edited file is always re-hashed. What the cache cannot
see is corruption underneath the file system (a failing disk); ``full=True`` (``diffdef-run --verify``)
re-hashes everything. Only files of at least ``CACHE_MIN_BYTES`` are cached: smaller ones hash in
milliseconds, manifest.json among them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE_MIN_BYTES = 64 << 20  # 64 MiB: hashing that takes ~0.1 s; below it caching is not worth a stat + JSON


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "diffdef" / "sha256.json"


def _key(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


class DigestCache:
    """``digest(path)``: the file's sha256, from the cache when the file is large and unchanged."""

    def __init__(self, full: bool = False):
        self.full = full
        self.path = cache_path()
        self.hashed: list[Path] = []  # files actually read (tests and logs)
        self._entries: dict[str, list] = {}
        self._dirty = False
        if not full:
            try:
                self._entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._entries = {}

    def digest(self, path: str | Path) -> str:
        path = Path(path).absolute()
        stat = path.stat()
        cached = self._entries.get(str(path))
        if not self.full and stat.st_size >= CACHE_MIN_BYTES and cached and cached[:4] == _key(stat):
            return cached[4]
        value = sha256_file(path)
        self.hashed.append(path)
        if stat.st_size >= CACHE_MIN_BYTES:
            self._entries[str(path)] = [*_key(stat), value]
            self._dirty = True
        return value

    def save(self) -> None:
        """Write the cache (best effort: a read-only home just means hashing again next time)."""
        if not self._dirty:
            return
        from diffdef_runtime import atomic

        try:
            atomic.write_json(self.path, self._entries)
        except OSError:
            pass
