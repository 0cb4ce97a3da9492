"""Durable atomic replacement of a file (readers and crashes see the old file or the new one, never a mix), and
the SHA-256 that manifests and proofs record of the files they describe."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def replace_durably(tmp: Path, path: Path) -> None:
    """Flush the fully written `tmp` to disk, rename it over `path`, then sync the folder.

    The rename is atomic but only durable once the directory entry is on disk: without the last sync a crash
    could bring back the old file after the new one had been reported written.
    """
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
