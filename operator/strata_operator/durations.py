"""Durations and sizes as users write them in Topic specs ("7d", "1h30m", "forever", "10Gi")."""

from __future__ import annotations

import re

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w)")
_SIZE = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti|Pi|K|M|G|T|P)?$")
_SIZE_UNITS = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
               "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50}
FOREVER = "forever"


def duration_ms(text: str) -> int:
    """'7d' -> 604800000; 'forever' -> -1 (Kafka's 'no limit'). ValueError with a useful message."""
    text = text.strip()
    if text == FOREVER:
        return -1
    pos, total = 0, 0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNITS_MS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{text!r} is not a duration: use e.g. 500ms, 30s, 15m, 12h, 7d, 2w, 1h30m or forever")
    return total


def size_bytes(text: str) -> int:
    text = text.strip()
    if text == FOREVER:
        return -1
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size: use e.g. 1073741824, 500Mi, 10Gi or forever")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
