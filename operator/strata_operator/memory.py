"""The operator process's memory outside Python's own heap (glibc's malloc).

glibc gives every thread that allocates its own malloc arena, up to eight per core: the operator's
admin pool, kopf's executor and librdkafka's threads each grow one, and memory freed in one arena
stays mapped there. `limit_arenas` (at startup, before any thread) caps them at
STRATA_OPERATOR_MALLOC_ARENA_MAX (default 2; 0 leaves glibc's default), as MALLOC_ARENA_MAX does;
`trim` hands the free pages at the top of every arena back to the system (malloc_trim), after the
broker's resync pass freed its snapshot. Both do nothing where the C library is not glibc.
`freeze` moves every object alive after the imports (modules, classes, functions: most of the
heap's objects) to the garbage collector's permanent generation, so its full collections, which
the operator's allocations at 5,000 resources trigger often, do not traverse them again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

M_ARENA_MAX = -8  # glibc's mallopt parameter


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_arenas(env: dict[str, str] | None = None) -> bool:
    """Cap glibc's malloc arenas (see the module docstring); True when set."""
    arenas = int((env if env is not None else os.environ).get("STRATA_OPERATOR_MALLOC_ARENA_MAX", "2"))
    libc = _libc()
    if arenas <= 0 or libc is None:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def trim() -> None:
    """Return free heap pages to the system (malloc_trim(0))."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def freeze() -> None:
    """Collect once, then leave every object alive now out of future collections (gc.freeze)."""
    gc.collect()
    gc.freeze()
