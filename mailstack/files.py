"""Small file primitives shared by every part: whole writes and atomic replacement."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (it may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(path: Path, data: bytes | str, mode: int = 0o666, tmp_dir: Path | None = None) -> None:
    """Replace ``path`` so that readers see the old file or the new one, never
    half of one: write a temporary file (``mode``, less the umask), fsync,
    rename.  ``tmp_dir`` (same file system) holds the temporary file."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = (tmp_dir or path.parent) / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.unlink(missing_ok=True)  # a leftover would keep its old permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
