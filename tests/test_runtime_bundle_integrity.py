"""Bundle integrity: manifest.json is covered by ``checksums.sha256``; large unchanged files are not re-hashed.

The fault as found: one flipped digit in ``latent_scale`` (or an edited condition range) gave wrong atlases
with exit 0, while one flipped byte in an ONNX file was refused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import diffdef_runtime.hashing as hashing
from diffdef_runtime.bundle import Bundle, BundleError
from diffdef_runtime.cli import main as cli


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def _flip_first(path: Path, text: str) -> None:
    """Change one byte of the manifest: the first digit after ``text`` goes d -> (d + 1) mod 10."""
    data = path.read_bytes()
    i = data.index(text.encode()) + len(text)
    while not chr(data[i]).isdigit():
        i += 1
    path.write_bytes(data[:i] + str((int(chr(data[i])) + 1) % 10).encode() + data[i + 1:])


@pytest.mark.parametrize("field", ['"latent_scale": ', '"trained": {'])
def test_one_flipped_byte_in_the_manifest_is_refused(tiny_bundle, tmp_path, field):
    copy = _copy(tiny_bundle, tmp_path)
    before = json.loads((copy / "manifest.json").read_text())
    _flip_first(copy / "manifest.json", field)
    after = json.loads((copy / "manifest.json").read_text())  # still valid JSON, one value changed
    assert after != before and after["format_version"] == before["format_version"]
    with pytest.raises(BundleError, match=r"checksum mismatch for .*manifest\.json"):
        Bundle.open(copy)
    result = CliRunner().invoke(cli, ["--bundle", str(copy), "--age", "70", "--sex", "F", "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 1 and "checksum mismatch for" in result.output and "manifest.json" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_truncated_missing_or_unlisted_files_are_refused_by_name(tiny_bundle, tmp_path):
    copy = _copy(tiny_bundle, tmp_path)
    Bundle.open(copy)
    unet = copy / "unet.onnx"
    data = unet.read_bytes()
    unet.write_bytes(data[:-100])
    with pytest.raises(BundleError, match=r"checksum mismatch for .*unet\.onnx"):
        Bundle.open(copy)
    unet.write_bytes(data)
    Bundle.open(copy)
    (copy / "warp.onnx").unlink()
    with pytest.raises(BundleError, match=r"missing: .*warp\.onnx"):
        Bundle.open(copy)
    shutil.copy(tiny_bundle / "warp.onnx", copy / "warp.onnx")
    (copy / "checksums.sha256").unlink()
    with pytest.raises(BundleError, match=r"missing: .*checksums\.sha256.*re-exported"):
        Bundle.open(copy)


def test_large_unchanged_files_are_hashed_once(tiny_bundle, tmp_path, monkeypatch):
    """With every file counted as large: the second open reads only manifest.json; an edit is still caught."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(hashing, "CACHE_MIN_BYTES", 0)
    read = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda path, *a: read.append(Path(path).name) or real(path, *a))
    import diffdef_runtime.bundle as bundle_module

    monkeypatch.setattr(bundle_module, "sha256_file", hashing.sha256_file)
    copy = _copy(tiny_bundle, tmp_path)
    listed = len((copy / "checksums.sha256").read_text().splitlines())

    Bundle.open(copy)
    assert len(read) == listed + 1  # every file, manifest.json twice (before reading it, then in the loop)
    read.clear()
    Bundle.open(copy)
    assert read == ["manifest.json"]  # the cached files were not read again
    read.clear()
    Bundle.open(copy, verify="full")
    assert len(read) == listed + 1

    # An in-place edit of the same size with the mtime set back (touch -r): only the ctime tells.
    path = copy / "dvf_decoder.onnx"
    original = path.stat()
    time.sleep(0.01)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(original.st_atime_ns, original.st_mtime_ns))
    edited = path.stat()
    assert (edited.st_size, edited.st_mtime_ns, edited.st_ino) == (original.st_size, original.st_mtime_ns,
                                                                   original.st_ino)
    with pytest.raises(BundleError, match=r"checksum mismatch for .*dvf_decoder\.onnx"):
        Bundle.open(copy)
