"""Files that hold personal data are readable by their owner only: 0600 files in 0700 folders, set explicitly
whatever the process umask (the warehouse, the restricted archive inside it, exports, outbox, audit log,
reports). The analysts' file is not among them: it is theirs to read."""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Create `path` (and its missing parents) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> None:
    """Make an existing file 0600 (a missing one is left alone)."""
    if path.exists():
        os.chmod(path, FILE_MODE)

