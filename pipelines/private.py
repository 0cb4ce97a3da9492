"""Files that hold personal data are readable by their owner only: created 0600 in 0700 folders, whatever the
process umask. Every writer of the project creates its files and folders through these helpers: the warehouse
and the restricted archive in it, the analytics file (pseudonymised data is still personal data: analysts get
a copy on their share, docs/deployment.md), exports, outbox, audit log, reports, the demo's source systems and
every temporary file on the way.

Modes are given when a file or folder is created (and set again with chmod, since the umask cuts what
`open`/`mkdir` ask for), never swept after the fact. DuckDB creates its database files itself and takes no
mode: `make_private` narrows such a file right after DuckDB created it, before any data is in it; DuckDB's
write-ahead log and spill files only exist while a connection is open, inside the same 0700 folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pipelines.durable import replace_durably

FILE_MODE = 0o600
DIR_MODE = 0o700

_FLAGS = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
          "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND}


def private_dir(path: Path) -> Path:
    """Create `path` and its missing parents 0700, and make `path` itself 0700 (folders that were there
    before, above it, are not ours to change)."""
    missing = []
    folder = Path(path)
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(folder, DIR_MODE)
    os.chmod(path, DIR_MODE)
    return Path(path)


def open_private(path: Path, mode: str = "w", encoding: str | None = None) -> IO[Any]:
    """Open `path` for writing ("w", "a", "a+", each optionally binary) in a private folder; the file is
    created 0600 and an existing one is made 0600."""
    private_dir(Path(path).parent)
    fd = os.open(path, _FLAGS[mode.replace("b", "")], FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode, encoding=None if "b" in mode else encoding or "utf-8")
    except BaseException:
        os.close(fd)
        raise


def make_private(path: Path) -> None:
    """Make a file a library created itself (a DuckDB database) 0600; a missing one is left alone."""
    if path.exists():
        os.chmod(path, FILE_MODE)


def write_atomically(path: Path, content: str | bytes | Callable[[Path], None], *,
                     in_source: bool = False) -> Path:
    """Replace `path` whole (readers and crashes see the old file or the new one, pipelines.durable) with
    `content`: text, bytes, or a function that writes the temporary file it is given (a Parquet or CSV writer,
    DuckDB's COPY). The temporary file `.<name>.tmp` is created 0600 beside `path`, in a private folder; its
    name is fixed so that what a killed run left is overwritten by the next write (writers of one file are
    serialised: the warehouse pool, the audit log's lock).

    `in_source` is for push-back writing in a source system's folder (the navigation log): the new file keeps the
    mode of the file it replaces (0600 for a new one) and the folder is left as the source system has it."""
    path = Path(path)
    mode = os.stat(path).st_mode & 0o777 if in_source and path.exists() else FILE_MODE
    if not in_source:
        private_dir(path.parent)
    temp = path.with_name(f".{path.name}.tmp")
    try:
        os.close(os.open(temp, _FLAGS["w"], mode))
        os.chmod(temp, mode)  # before the data goes in: the umask cut the creation mode, a leftover had its own
        if callable(content):
            content(temp)
        else:
            with open(temp, "wb") as fh:
                fh.write(content.encode() if isinstance(content, str) else content)
        os.chmod(temp, mode)  # again: some writers (DuckDB's COPY) recreate the file
        replace_durably(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path
