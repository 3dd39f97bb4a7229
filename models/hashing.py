"""sha256 of files, the one implementation (stdlib only: the serving process uses it too)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def update_with_file(digest: Any, path: Path) -> None:
    """Feed a file's bytes to ``digest`` (a hashlib object) in chunks, without reading it whole."""
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's content."""
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()
