"""Files written atomically, folders published atomically, and content digests (standard library
only: every environment and the orchestrator import this).

A reader never sees a half-written file or folder: it is written beside its target under a hidden
temporary name (same filesystem) and renamed into place once complete. What is published gets the
permissions an ordinary ``open()`` / ``mkdir()`` would have given it (the temporary names are
created private). Example::

    write_atomic("run/manifest.json", text)          # old or new content, never a torn file
    with atomic_dir("out/model") as tmp:              # out/model appears complete or not at all
        model.save_pretrained(tmp)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``path`` (hidden, ending in ``.tmp``); once the block
    succeeds it replaces ``path`` (``os.replace``), otherwise it is removed. Readers see the old
    file or the new one. Writers that pick a format by suffix (matplotlib) must name it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


@contextmanager
def atomic_dir(path: str | Path, exist_ok: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; once the block succeeds it is renamed to ``path``.

    ``path`` must not exist. With ``exist_ok``, a ``path`` that another writer published first
    (several ranks racing with the same content) is kept and this folder is dropped; otherwise
    that is a FileExistsError. The temporary folder never outlives the block.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        try:
            os.rename(tmp, path)  # atomic; fails when path exists (unless it is an empty folder)
        except OSError:
            if not (exist_ok and path.exists()):
                raise FileExistsError(f"{path} already exists") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def json_digest(value: Any, length: int = 64) -> str:
    """The first ``length`` hex digits of the sha256 of ``value`` as JSON with sorted keys
    (values JSON cannot hold are written with ``str``): a stable fingerprint of settings."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]
