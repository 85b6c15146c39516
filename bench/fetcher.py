"""A bare Fetch loop: how fast a broker serves a partition's bytes, with almost no client cost.

A replication follower's view of the broker: one Fetch in flight (on the tests' raw-frame client,
tests/support/rawclient.py), every partition of the topic in each request, the record sets decoded
by kafka-python's FetchResponse codec and then only their batch headers read (base offset, length,
last offset delta) to know where the next fetch starts.
No record is parsed and no CRC is checked, so on a small machine the figure is what the broker
can serve, not what a full consumer client can parse (confluent-kafka's consumer costs about as
much CPU per byte as the broker itself).
"""

from __future__ import annotations

import struct
import time

from kafka.protocol.consumer import FetchRequest, FetchResponse
from rawclient import RawConnection  # tests/support, on sys.path through bench/_common.py

_BATCH_HEAD = struct.Struct(">qi")  # base offset, batch length (bytes after these 12)
_LAST_DELTA_AT = 23  # int32 last offset delta: base(8) length(4) leader epoch(4) magic(1) crc(4) attrs(2)
_VERSION = 11


def _walk(records: bytes) -> tuple[int, int]:
    """(bytes of whole batches, next offset after the last whole batch); (0, -1) if none."""
    pos, nxt, size = 0, -1, len(records)
    while pos + 27 <= size:
        base, length = _BATCH_HEAD.unpack_from(records, pos)
        if pos + 12 + length > size:
            break  # a partial batch at the end of a size-capped answer
        (delta,) = struct.unpack_from(">i", records, pos + _LAST_DELTA_AT)
        nxt = base + delta + 1
        pos += 12 + length
    return pos, nxt


def fetch_all(bootstrap: str, topic: str, ends: dict[int, int], timeout: float,
              max_bytes: int = 50 << 20, partition_max_bytes: int = 4 << 20) -> tuple[int, float]:
    """Fetch every partition from offset 0 to ends[p]; (record-set bytes received, seconds)."""
    connection = RawConnection(bootstrap, timeout=30, client_id="bench-fetcher")
    positions = {p: 0 for p, end in ends.items() if end > 0}
    P = FetchRequest.FetchTopic.FetchPartition
    received = 0
    t0 = time.perf_counter()
    deadline = t0 + timeout
    try:
        while positions:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"fetch_all: {positions} not done within {timeout:.0f}s")
            request = FetchRequest(version=_VERSION, replica_id=-1, max_wait_ms=500, min_bytes=1, max_bytes=max_bytes,
                                   isolation_level=0, session_id=0, session_epoch=-1,
                                   topics=[FetchRequest.FetchTopic(topic=topic, partitions=[
                                       P(partition=p, current_leader_epoch=-1, fetch_offset=offset,
                                         log_start_offset=-1, partition_max_bytes=partition_max_bytes)
                                       for p, offset in sorted(positions.items())])],
                                   forgotten_topics_data=[], rack_id="")
            correlation = connection.send(request)
            frame = connection.read_frame_view()
            # The v11 response header is the correlation id alone. Not decode(header=True): that
            # copies the whole frame into a BytesIO to read those four bytes.
            (answered,) = struct.unpack_from(">i", frame)
            if answered != correlation:
                raise RuntimeError(f"fetch: answer {answered} to request {correlation}")
            response = FetchResponse.decode(frame[4:], version=_VERSION)
            for t in response.responses:
                for part in t.partitions:
                    if part.error_code:
                        raise RuntimeError(f"fetch {topic}-{part.partition_index}: error {part.error_code}")
                    whole, nxt = _walk(part.records or b"")
                    if nxt < 0:
                        continue
                    received += whole
                    positions[part.partition_index] = nxt
                    if nxt >= ends[part.partition_index]:
                        del positions[part.partition_index]
        return received, time.perf_counter() - t0
    finally:
        connection.close()
