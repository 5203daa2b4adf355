"""sha256 of every trained module's tensors in checkpoint folders: two runs' weights are bit for bit the same
exactly when their digests are (the check that a refactor or a removed option left training unchanged).

    python benchmarks/weights_digest.py runs/a runs/b

Prints one line per folder: ``module=digest`` (first 12 hex digits) for each of autoencoder, registration,
denoiser and dvf_decoder present; tensors are hashed by name in sorted order, so file layout does not matter.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import click

MODULES = ("autoencoder", "registration", "denoiser", "dvf_decoder")


def tensor_digests(folder: str | Path) -> dict[str, str]:
    """``{module: sha256 hex}`` over the names, dtypes, shapes and bytes of each module's tensors."""
    from safetensors.numpy import load_file

    out = {}
    for name in MODULES:
        path = Path(folder) / f"{name}.safetensors"
        if not path.is_file():
            continue
        tensors = load_file(str(path))
        digest = hashlib.sha256()
        for key in sorted(tensors):
            value = tensors[key]
            digest.update(f"{key}:{value.dtype}:{value.shape}".encode())
            digest.update(value.tobytes())
        out[name] = digest.hexdigest()
    return out


@click.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
def main(folders):
    """Print the tensor digests of each checkpoint FOLDER."""
    for folder in folders:
        digests = tensor_digests(folder)
        click.echo(f"{folder} " + " ".join(f"{k}={v[:12]}" for k, v in digests.items()))


if __name__ == "__main__":
    main()
