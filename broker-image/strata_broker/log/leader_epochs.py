"""A partition's leader-epoch history: the first offset written in each leader epoch (Kafka's
LeaderEpochFileCache and its `leader-epoch-checkpoint` file).

An entry is added when a broker starts leading the partition at a new epoch (cluster mode: the
claim in the bucket), at the log end offset it leads from, as Kafka's Partition.makeLeader does.
OffsetForLeaderEpoch answers from it (`end_offset_for`, Kafka's `endOffsetFor`): the end offset of
an epoch is the start offset of the next epoch that has one, the current epoch ends at the log
end. A single broker leads everything at epoch 0 and has no entry: epoch 0 then starts at the log
start. The file has Kafka's layout: a version line (0), a count line, then `epoch offset` lines.
Tiered partitions carry the history in their manifest (`leader_epochs`), so the next leader,
which lays the partition out from the bucket, starts from it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

FILE = "leader-epoch-checkpoint"
UNDEFINED = -1


class LeaderEpochCache:
    """(epoch, start offset) entries, both strictly increasing; read from the file on first use."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, FILE)
        self._entries: list[tuple[int, int]] | None = None

    @property
    def entries(self) -> list[tuple[int, int]]:
        if self._entries is None:
            self._entries = _read(self.path)
        return self._entries

    def to_list(self) -> list[list[int]]:
        return [[epoch, start] for epoch, start in self.entries]

    def assign(self, epoch: int, start_offset: int) -> bool:
        """`epoch` starts at `start_offset` (persisted). Entries that would break the order (an epoch
        at or above it, or starting at or after the offset) are dropped first, as Kafka's
        assign does; the same epoch again, or an older one, changes nothing. True if it changed."""
        entries = self.entries
        if entries and entries[-1][0] >= epoch:
            return False
        kept = [(e, s) for e, s in entries if e < epoch and s < start_offset]
        kept.append((epoch, start_offset))
        self._write(kept)
        return True

    def adopt(self, entries: Iterable[Iterable[int]]) -> None:
        """Take the history of a copy laid out from the bucket, when this one has none."""
        if self.entries:
            return
        ordered: list[tuple[int, int]] = []
        for epoch, start in sorted((int(e), int(s)) for e, s in entries):
            if not ordered or (epoch > ordered[-1][0] and start > ordered[-1][1]):
                ordered.append((epoch, start))
            elif epoch > ordered[-1][0]:  # an epoch without records: the later one starts there
                ordered[-1] = (epoch, start)
        if ordered:
            self._write(ordered)

    def end_offset_for(self, requested: int, current_epoch: int, log_start_offset: int,
                       log_end_offset: int) -> tuple[int, int]:
        """(epoch, end offset) for OffsetForLeaderEpoch, as Kafka's endOffsetFor: the requested epoch
        if it is the current one (ending at the log end); else the newest epoch at or below it with
        the start offset of the first epoch after it (the requested epoch itself when it is older
        than every known one); (-1, -1) for an epoch above the current one or undefined."""
        entries = list(self.entries)
        if not entries or entries[-1][0] < current_epoch:
            entries.append((current_epoch, log_start_offset if not entries else max(entries[-1][1],
                                                                                      log_end_offset)))
        if requested < 0 or requested > current_epoch:
            return UNDEFINED, UNDEFINED
        if requested == current_epoch:
            return current_epoch, log_end_offset
        floor = None
        for epoch, start in entries:
            if epoch > requested:
                return (requested if floor is None else floor), start
            floor = epoch
        return UNDEFINED, UNDEFINED  # not reached: the current epoch is above the requested one

    def _write(self, entries: list[tuple[int, int]]) -> None:
        body = f"0\n{len(entries)}\n" + "".join(f"{e} {s}\n" for e, s in entries)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._entries = entries


def _read(path: str) -> list[tuple[int, int]]:
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return []
    try:
        count = int(lines[1])
        out = []
        for line in lines[2:2 + count]:
            epoch, start = line.split()
            out.append((int(epoch), int(start)))
        return out
    except (IndexError, ValueError):
        return []  # torn or foreign: no history (answers fall back to the current epoch)
