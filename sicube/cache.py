"""Where sicube keeps reusable files between runs (XDG cache convention)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """`$XDG_CACHE_HOME/sicube/...` (default `~/.cache/sicube/...`); not created here."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root, "sicube", *parts)
