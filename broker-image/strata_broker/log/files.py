"""Small crash-safe file helpers."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_deferred = threading.local()


@contextmanager
def deferred_fsync() -> Iterator[None]:
    """Inside, fsync_fd() and fsync_dir() on this thread do nothing: the caller makes the whole
    filesystem durable at once afterwards (a clean shutdown of many written partitions: one syncfs
    instead of several fsyncs each). Other threads are not affected."""
    _deferred.on = True
    try:
        yield
    finally:
        _deferred.on = False


def fsync_fd(fd: int) -> None:
    """os.fsync, unless deferred on this thread (deferred_fsync)."""
    if not getattr(_deferred, "on", False):
        os.fsync(fd)


def write_json_atomic(path: str, data: Any, fsync: bool = True) -> None:
    """Write to a temp file and rename over path, so a reader sees the old or the new file, never half."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, sort_keys=True)
        if fsync:
            f.flush()
            fsync_fd(f.fileno())
    os.replace(tmp, path)
    if fsync:
        fsync_dir(os.path.dirname(path))


def read_json(path: str) -> Any | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return None


def fsync_dir(path: str) -> None:
    if getattr(_deferred, "on", False):
        return
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
