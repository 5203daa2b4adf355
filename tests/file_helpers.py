"""Small file helpers shared by tests."""

from pathlib import Path


def flip_middle_byte(path: Path, mask: int = 0xFF) -> None:
    """Corrupt a file in place by XOR-ing its middle byte with ``mask``."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= mask
    path.write_bytes(bytes(data))
