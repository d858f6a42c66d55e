"""The identity of an input file: what a cache or a checkpoint must match to be reused."""

from __future__ import annotations

import os
from pathlib import Path


def file_identity(path: str | os.PathLike) -> dict:
    """``{"path": resolved path, "size": bytes, "mtime": ns}``: another file under the same
    name, or the same file edited in place, has another identity (``size``/``mtime`` ``None``
    for a path that does not exist)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return {"path": str(path), "size": None, "mtime": None}
    return {"path": str(p.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}
