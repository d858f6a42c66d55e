"""The identity of an input file: what a cache or a checkpoint must match to be reused.

Identity comes from the content (a SHA-256 of the bytes), not from file metadata: a file
rewritten with the same size and modification time, or another file copied over the same name,
is another input. A file is hashed once per process for each (path, size, mtime, inode) it
shows (about a second per GB).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_DIGESTS: dict[tuple, str] = {}


def content_digest(path: str | os.PathLike) -> str | None:
    """SHA-256 of the file's bytes (``None`` for a path that cannot be read)."""
    p = Path(path)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)   # ctime: any rewrite
        if key not in _DIGESTS:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
            _DIGESTS[key] = h.hexdigest()
        return _DIGESTS[key]
    except OSError:
        return None


def file_identity(path: str | os.PathLike) -> dict:
    """``{"sha256": digest of the content, "size": bytes}`` (``None`` values for a path that
    cannot be read): another content under the same name is another identity, the same content
    anywhere is the same."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError:
        return {"sha256": None, "size": None}
    return {"sha256": content_digest(p), "size": size}
