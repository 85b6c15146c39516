"""Seeded fuzzing of a SASL listener, before and after authentication (used by test_hostile.py and
bench/fuzz_auth.py). Fast: plain `random`, not hypothesis, so a long run reaches 100,000+ frames.

Each round opens a connection, optionally logs in with SASL/PLAIN, sends 1-8 frames (valid seeds,
mutations of them, random bytes), half-closes, and reads until the broker closes; one round in five
hangs up instead right after sending (half of those with a reset), without reading anything. The broker must:
answer in request order, only requests it really framed, and before authentication only ApiVersions,
SaslHandshake and SaslAuthenticate; never hang (a deadline); never crash.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from dataclasses import dataclass, field

import rawclient as rc
from kafka.protocol.admin import (
    AlterUserScramCredentialsRequest,
    CreateAclsRequest,
    DeleteAclsRequest,
    DescribeAclsRequest,
    DescribeClientQuotasRequest,
    DescribeUserScramCredentialsRequest,
)
from kafka.protocol.sasl import SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest

PRE_AUTH_KEYS = {17, 18, 36}
MAX_FRAME = 100 * 1024 * 1024


def plain_token(user: str, password: str) -> bytes:
    return b"\x00" + user.encode() + b"\x00" + password.encode()


def seed_frames(topic: str, user: str, password: str) -> list[bytes]:
    acl = dict(resource_type=2, resource_name="fz-topic", resource_pattern_type=3, principal="User:fz-user",
               host="*", operation=4, permission_type=3)
    flt = dict(resource_type_filter=2, resource_name_filter="fz-topic", pattern_type_filter=3,
               principal_filter="User:fz-user", host_filter="*", operation=4, permission_type=3)
    requests = [
        rc.api_versions(3), rc.api_versions(0),
        SaslHandshakeRequest(version=1, mechanism="PLAIN"),
        SaslHandshakeRequest(version=1, mechanism="SCRAM-SHA-512"),
        SaslAuthenticateRequest(version=2, auth_bytes=plain_token(user, password)),
        SaslAuthenticateRequest(version=0, auth_bytes=b"n,,n=fz-user,r=abcdefgh"),
        SaslAuthenticateRequest(version=1, auth_bytes=b"c=biws,r=abcdefgh,p=AAAA"),
        rc.metadata([topic], version=9), rc.metadata(None, version=4),
        rc.produce(topic, rc.record_batch(n=3)), rc.fetch(topic, max_wait_ms=0), rc.list_offsets(topic),
        rc.create_topics("fz-created"),
        CreateAclsRequest(version=3, creations=[CreateAclsRequest.AclCreation(**acl)]),
        DescribeAclsRequest(version=2, **flt),
        DeleteAclsRequest(version=1, filters=[DeleteAclsRequest.DeleteAclsFilter(**flt)]),
        DescribeClientQuotasRequest(version=1, strict=False, components=[
            DescribeClientQuotasRequest.ComponentData(entity_type="client-id", match_type=0, match="fz")]),
        DescribeUserScramCredentialsRequest(version=0, users=[
            DescribeUserScramCredentialsRequest.UserName(name="fz-user")]),
        AlterUserScramCredentialsRequest(version=0, deletions=[], upsertions=[
            AlterUserScramCredentialsRequest.ScramCredentialUpsertion(
                name="fz-user", mechanism=2, iterations=4096, salt=b"s" * 16, salted_password=b"p" * 64)]),
    ]
    return [rc.encode(r, correlation_id=i + 1) for i, r in enumerate(requests)]


_INTERESTING = [0, 1, -1, -2, 0x7FFFFFFF, -(1 << 31), 0x7FFF, 0xFFFF, 1 << 20]


def mutate(rng: random.Random, frame: bytes) -> bytes:
    out = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["flip", "set", "insert", "delete", "int32", "int16", "truncate", "length"])
        at = rng.randrange(max(len(out), 1))
        if kind == "flip" and out:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == "set" and out:
            out[at] = rng.randrange(256)
        elif kind == "insert":
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        elif kind == "delete":
            del out[at:at + rng.randint(1, 16)]
        elif kind == "int32" and len(out) >= at + 4:
            out[at:at + 4] = struct.pack(">I", rng.choice(_INTERESTING) & 0xFFFFFFFF)
        elif kind == "int16" and len(out) >= at + 2:
            out[at:at + 2] = struct.pack(">H", rng.choice([0, 1, 0x7FFF, 0xFFFF, 0xFFFE, 0x8000]))
        elif kind == "truncate":
            del out[at:]
        elif kind == "length" and len(out) >= 4:
            out[0:4] = struct.pack(">i", rng.choice([len(out) - 4, rng.randint(-(1 << 31), (1 << 31) - 1),
                                                     len(out) - 4 + rng.randint(-8, 8)]))
    return bytes(out)


def random_frame(rng: random.Random) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 200))
    body = rng.randbytes(rng.randint(0, 200))
    if kind == 1:
        return struct.pack(">i", len(body)) + body
    key = rng.choice([0, 1, 2, 3, 17, 18, 19, 29, 30, 31, 36, 48, 49, 50, 51, rng.randint(-(1 << 15), (1 << 15) - 1)])
    return rc.raw_frame(key, rng.randint(-1, 20), rng.randint(0, 1 << 20), body, flexible=rng.random() < 0.5)


def framing(stream: bytes, pre_auth_limit: int) -> list[tuple[int, int, int]]:
    out, pos = [], 0
    while pos + 4 <= len(stream):
        (size,) = struct.unpack_from(">i", stream, pos)
        if size < 8 or size > MAX_FRAME or pos + 4 + size > len(stream):
            break
        out.append(struct.unpack_from(">hhi", stream, pos + 4))
        pos += 4 + size
    return out


@dataclass
class Stats:
    connections: int = 0
    frames: int = 0
    answers: int = 0
    logins: int = 0
    hang_ups: int = 0
    problems: list[str] = field(default_factory=list)


def _login(sock: socket.socket, user: str, password: str) -> bool:
    data = rc.encode(SaslHandshakeRequest(version=1, mechanism="PLAIN"), correlation_id=90001) + rc.encode(
        SaslAuthenticateRequest(version=2, auth_bytes=plain_token(user, password)), correlation_id=90002)
    if not rc.send_all(sock, data):
        return False
    result = rc.outcome(sock, 2, 10.0)
    if len(result.frames) != 2:
        return False
    return SaslAuthenticateResponse.decode(result.frames[1], version=2, header=True).error_code == 0


def one_round(port: int, frames: list[bytes], login: tuple[str, str] | None, stats: Stats,
              hang_up: str | None = None) -> None:
    """hang_up: None (half-close, read every answer), "close" or "reset" (leave without reading)."""
    with rc.connect(port, timeout=10.0) as sock:
        authed = False
        if login is not None:
            authed = _login(sock, *login)
            stats.logins += authed
        stream = b"".join(frames)
        rc.send_all(sock, stream)
        if hang_up is not None:
            if hang_up == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stats.connections += 1
            stats.frames += len(frames)
            stats.hang_ups += 1
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        result = rc.outcome(sock, 1 << 30, deadline_s=20.0)
    stats.connections += 1
    stats.frames += len(frames)
    stats.answers += len(result.frames)
    if not result.closed:
        stats.problems.append("connection not closed after EOF")
    seen = framing(stream, 0)
    remaining = iter(seen)
    for body in result.frames:
        corr = rc.correlation_id(body)
        match = next((e for e in remaining if e[2] == corr), None)
        if match is None:
            stats.problems.append(f"answer with correlation id {corr} matches no request in order")
            return
        if not authed and match[0] not in PRE_AUTH_KEYS:
            stats.problems.append(f"API key {match[0]} answered before authentication")


def fuzz(port: int, rounds_frames: int, seed: int, login: tuple[str, str] | None, topic: str = "fz-topic",
         time_budget_s: float | None = None) -> Stats:
    rng = random.Random(seed)
    seeds = seed_frames(topic, *(login or ("fz-user", "fz-password")))
    stats = Stats()
    start = time.monotonic()
    while stats.frames < rounds_frames:
        if time_budget_s is not None and time.monotonic() - start > time_budget_s:
            break
        frames = []
        for _ in range(rng.randint(1, 8)):
            pick = rng.random()
            if pick < 0.25:
                frames.append(rng.choice(seeds))
            elif pick < 0.8:
                frames.append(mutate(rng, rng.choice(seeds)))
            else:
                frames.append(random_frame(rng))
        hang_up = rng.choice(["close", "reset"]) if rng.random() < 0.2 else None
        one_round(port, frames, login, stats, hang_up)
        if len(stats.problems) > 20:
            break
    return stats


def proc_fds(pid: int, sockets_only: bool = True) -> int:
    """Open descriptors of a process; by default only sockets (fuzzing auto-creates topics, whose
    segment files are legitimately open)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        count += (not sockets_only) or target.startswith("socket:")
    return count


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
