"""Run Python with some packages made un-importable (default: torch and monai), as on a machine without them.

The block is a ``sitecustomize.py`` in a private temporary folder put first on ``PYTHONPATH``: at start-up it
wraps every finder on ``sys.meta_path`` so that the blocked top-level names (and their submodules) are simply
not found. ``import torch`` then raises ``ModuleNotFoundError: No module named 'torch'`` and
``importlib.util.find_spec("torch")`` returns None, exactly as if torch were not installed. Because it acts at
interpreter start-up it also covers ``python -m ...`` and console scripts started with the returned env.

Usage::

    from torch_blocker import run_blocked, blocked_command, blocked_env
    proc = run_blocked("import diffdef_runtime.schedulers")          # CompletedProcess, text output
    args, env = blocked_command("print('hi')"); subprocess.run(args, env=env)
    env = blocked_env(); subprocess.run(["diffdef-run", ...], env=env)  # any python process
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping

DEFAULT_BLOCKED = ("torch", "monai")
ENV_VAR = "DIFFDEF_BLOCK_IMPORTS"

_SITECUSTOMIZE = '''\
"""Installed by tests/torch_blocker.py: hides the packages named in $DIFFDEF_BLOCK_IMPORTS."""
import os
import sys

_BLOCKED = tuple(n for n in os.environ.get("DIFFDEF_BLOCK_IMPORTS", "").split(",") if n)


def _is_blocked(fullname):
    return any(fullname == n or fullname.startswith(n + ".") for n in _BLOCKED)


class _HidingFinder:
    def __init__(self, inner):
        self._inner = inner

    def find_spec(self, fullname, path=None, target=None):
        if _is_blocked(fullname):
            return None
        find = getattr(self._inner, "find_spec", None)
        return None if find is None else find(fullname, path, target)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __repr__(self):
        return f"_HidingFinder({self._inner!r})"


if _BLOCKED:
    sys.meta_path[:] = [_HidingFinder(f) for f in sys.meta_path]
    for _name in list(sys.modules):
        if _is_blocked(_name):
            del sys.modules[_name]
'''

_site_dir: str | None = None


def _sitecustomize_dir() -> str:
    """A private folder holding the blocking sitecustomize.py (made once per process, removed at exit)."""
    global _site_dir
    if _site_dir is None:
        folder = tempfile.mkdtemp(prefix="torch_blocker_")
        with open(os.path.join(folder, "sitecustomize.py"), "w", encoding="utf-8") as fh:
            fh.write(_SITECUSTOMIZE)
        atexit.register(shutil.rmtree, folder, True)
        _site_dir = folder
    return _site_dir


def blocked_env(blocked: Iterable[str] = DEFAULT_BLOCKED, base_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base_env`` (default ``os.environ``) under which every Python process started with it cannot
    import the packages in ``blocked`` (top-level names)."""
    env = dict(os.environ if base_env is None else base_env)
    names = [n.strip() for n in blocked if n.strip()]
    if any("." in n or "," in n for n in names):
        raise ValueError(f"blocked names must be top-level package names, got {names}")
    env[ENV_VAR] = ",".join(names)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _sitecustomize_dir() + (os.pathsep + old if old else "")
    env.pop("PYTHONNOUSERSITE", None)
    return env


def blocked_command(
    code: str, blocked: Iterable[str] = DEFAULT_BLOCKED, python: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """``(args, env)`` to run the Python snippet ``code`` with ``blocked`` packages hidden:
    ``subprocess.run(args, env=env)``."""
    return [python or sys.executable, "-c", code], blocked_env(blocked)


def run_blocked(
    code: str,
    blocked: Iterable[str] = DEFAULT_BLOCKED,
    *,
    timeout: float = 300,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with ``blocked`` packages hidden; returns the CompletedProcess (text
    stdout/stderr, not checked: assert on ``returncode`` yourself and show ``stderr`` on failure)."""
    args, env = blocked_command(code, blocked)
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
