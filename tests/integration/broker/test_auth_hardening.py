"""Authentication under load and probing: password hashing never stalls the event loop, and neither
the time taken nor the answers tell which users exist.

The stored credential here uses 1,000,000 PBKDF2 iterations (about half a second a check), so a
check on the event loop shows as seconds of stall, and a check skipped for an unknown user as a
failure that comes back far sooner than a known user's.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import rawclient as rc
from brokerproc import BrokerProcess
from kafka.protocol.sasl import SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest
from strata_broker.security.sasl import AuthGuard
from strata_contract.scram import ScramCredential

SLOW_ITERATIONS = 1_000_000
SASL_AUTHENTICATION_FAILED = 58


def write_users(path: Path, iterations: int) -> None:
    slow = ScramCredential.from_password("SCRAM-SHA-512", "slow-secret", iterations=iterations)
    path.write_text(json.dumps({"users": {"slow": {"scram": {"SCRAM-SHA-512": slow.to_json()}},
                                          "plain": {"password": "plain-secret"}}}))


@pytest.fixture(scope="module")
def slow_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    base = tmp_path_factory.mktemp("auth-slow")
    write_users(base / "users.json", SLOW_ITERATIONS)
    proc = BrokerProcess(base / "broker", listeners={"SASL_PLAINTEXT": None}, settings={
        "sasl.credentials.file": str(base / "users.json"), "sasl.failed.authentication.backoff.max.ms": "0",
        "connection.failed.authentication.delay.ms": "0"}).start()
    yield proc
    proc.kill()


def plain_login(port: int, user: str, password: str, timeout: float = 60.0) -> SaslAuthenticateResponse:
    token = b"\x00" + user.encode() + b"\x00" + password.encode()
    with rc.connect(port, timeout) as sock:
        sock.sendall(rc.encode(SaslHandshakeRequest(version=1, mechanism="PLAIN"), correlation_id=1)
                     + rc.encode(SaslAuthenticateRequest(version=2, auth_bytes=token), correlation_id=2))
        result = rc.outcome(sock, 2, deadline_s=timeout)
    assert len(result.frames) == 2, result
    return SaslAuthenticateResponse.decode(result.frames[1], version=2, header=True)


def scram_first(port: int, user: str) -> dict[str, str]:
    """The server-first-message's attributes for a SCRAM-SHA-512 exchange begun as `user`."""
    with rc.connect(port, 30) as sock:
        sock.sendall(rc.encode(SaslHandshakeRequest(version=1, mechanism="SCRAM-SHA-512"), correlation_id=1)
                     + rc.encode(SaslAuthenticateRequest(version=2, auth_bytes=f"n,,n={user},r=abcdefgh".encode()),
                                 correlation_id=2))
        result = rc.outcome(sock, 2, deadline_s=30)
    answer = SaslAuthenticateResponse.decode(result.frames[1], version=2, header=True)
    assert answer.error_code == 0, answer
    return dict(part.split("=", 1) for part in bytes(answer.auth_bytes).decode().split(","))


def test_password_hashing_does_not_stall_other_clients(slow_broker: BrokerProcess) -> None:
    port = slow_broker.listeners["SASL_PLAINTEXT"]
    logins = [threading.Thread(target=plain_login, args=(port, "slow", "wrong")) for _ in range(8)]
    for t in logins:
        t.start()
    round_trips = []
    try:
        time.sleep(0.3)
        while any(t.is_alive() for t in logins) and len(round_trips) < 40:
            t0 = time.monotonic()
            rc.api_versions_ok(slow_broker.port, timeout=30)
            round_trips.append(time.monotonic() - t0)
            time.sleep(0.05)
    finally:
        for t in logins:
            t.join(120)
    assert round_trips, "the logins finished before any round trip was measured"
    # On the event loop, eight half-second checks would hold ApiVersions up for seconds.
    assert max(round_trips) < 1.0, f"ApiVersions took up to {max(round_trips):.2f}s during 8 PLAIN logins"


def test_unknown_users_cost_and_read_the_same_as_known_ones(slow_broker: BrokerProcess) -> None:
    port = slow_broker.listeners["SASL_PLAINTEXT"]
    timings: dict[str, float] = {}
    answers = {}
    for user in ("slow", "nobody-at-all", "plain"):
        for _ in range(3):  # the fastest of three: a loaded machine only ever adds time
            t0 = time.monotonic()
            answers[user] = plain_login(port, user, "wrong")
            timings[user] = min(timings.get(user, 1e9), time.monotonic() - t0)
    assert {(a.error_code, a.error_message) for a in answers.values()} == {
        (SASL_AUTHENTICATION_FAILED, answers["slow"].error_message)}, answers
    # Skipping the hash answers in about a millisecond against about half a second.
    assert timings["nobody-at-all"] > 0.3 * timings["slow"], timings
    assert timings["plain"] > 0.3 * timings["slow"], timings
    assert plain_login(port, "plain", "plain-secret").error_code == 0


def test_scram_decoy_salt_is_secret_stable_and_with_the_usual_iterations(
        slow_broker: BrokerProcess, tmp_path: Path) -> None:
    port = slow_broker.listeners["SASL_PLAINTEXT"]
    known = scram_first(port, "slow")
    unknown = scram_first(port, "nobody-at-all")
    assert unknown["i"] == known["i"] == str(SLOW_ITERATIONS)
    assert len(base64.b64decode(unknown["s"])) == len(base64.b64decode(known["s"]))
    assert scram_first(port, "nobody-at-all")["s"] == unknown["s"], "a decoy salt that changes tells itself apart"
    # Another broker (another secret key) shows another decoy salt: it is not derived from the source.
    write_users(tmp_path / "users.json", SLOW_ITERATIONS)
    other = BrokerProcess(tmp_path / "other", listeners={"SASL_PLAINTEXT": None}, settings={
        "sasl.credentials.file": str(tmp_path / "users.json")}).start()
    try:
        other_port = other.listeners["SASL_PLAINTEXT"]
        assert scram_first(other_port, "nobody-at-all")["s"] != unknown["s"]
        before = scram_first(other_port, "nobody-at-all")["s"]
        other.restart()
        assert scram_first(other.listeners["SASL_PLAINTEXT"], "nobody-at-all")["s"] == before
    finally:
        other.kill()


def test_failure_backoff_per_address() -> None:
    guard = AuthGuard(threads=1, max_backoff=2.0, free_failures=20)
    try:
        for _ in range(20):
            guard.failed("10.0.0.1")
        assert guard.backoff("10.0.0.1") == 0.0
        guard.failed("10.0.0.1")
        assert guard.backoff("10.0.0.1") == pytest.approx(0.1)
        for _ in range(3):
            guard.failed("10.0.0.1")
        assert guard.backoff("10.0.0.1") == pytest.approx(0.8)
        for _ in range(10):
            guard.failed("10.0.0.1")
        assert guard.backoff("10.0.0.1") == 2.0
        assert guard.backoff("10.0.0.2") == 0.0, "another address pays for nothing"
        assert guard.backoff("10.0.0.1", now=time.monotonic() + AuthGuard.WINDOW + 1) == 0.0, "failures expire"
        guard.failed("10.0.0.1")
        guard.succeeded("10.0.0.1")
        assert guard.backoff("10.0.0.1") == 0.0
    finally:
        guard.close()
