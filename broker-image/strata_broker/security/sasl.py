"""The server side of SASL PLAIN and SCRAM for one connection (tokens from SaslAuthenticate), and the
guard every authentication step passes through (worker threads, per-address failure backoff)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor

from strata_contract.scram import HASHES

from .credentials import CredentialStore
from .scram import ScramError, ScramServer


class SaslFailure(Exception):
    """Authentication failed; the message goes back to the client in SaslAuthenticate."""


class SaslSession:
    """`step(token)` -> (response token, principal name once authenticated, else None)."""

    def __init__(self, mechanism: str, store: CredentialStore) -> None:
        self.mechanism = mechanism
        self._store = store
        self._scram = ScramServer(mechanism, lambda user: store.scram(user, mechanism),
                                  lambda user: store.decoy(user, mechanism)) if mechanism in HASHES else None

    def step(self, token: bytes) -> tuple[bytes, str | None]:
        if self._scram is not None:
            try:
                answer, done = self._scram.step(token)
            except ScramError as exc:
                raise SaslFailure(f"Authentication failed during authentication due to invalid credentials "
                                  f"with SASL mechanism {self.mechanism}: {exc}") from None
            return answer, (self._scram.user if done else None)
        return b"", self._plain(token)

    def _plain(self, token: bytes) -> str:
        # RFC 4616: [authzid] NUL authcid NUL passwd
        parts = token.split(b"\x00")
        if len(parts) != 3:
            raise SaslFailure("Invalid SASL/PLAIN response: expected 3 tokens")
        try:
            authzid, user, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            raise SaslFailure("Invalid SASL/PLAIN response: not UTF-8") from None
        if not user or not password:
            raise SaslFailure("Authentication failed: username and password are required")
        if authzid and authzid != user:
            raise SaslFailure("Authentication failed: Client requested an authorization id that is different "
                              "from username")
        if not self._store.check_plain(user, password):
            raise SaslFailure("Authentication failed: Invalid username or password")
        return user


class AuthGuard:
    """Runs authentication steps for every connection of a broker.

    Password hashing (PLAIN's PBKDF2, a file password's first SCRAM salting) happens on a bounded
    pool of threads, never on the event loop: hashlib releases the GIL, so unauthenticated clients
    cannot slow down anyone already connected. An address with more than `free_failures` failed
    authentications in the last WINDOW seconds waits before each further step from it: 100 ms,
    doubling per failure, at most `max_backoff` seconds (0 = no backoff). A success clears it.
    """

    WINDOW = 10.0
    _BASE = 0.1
    _MAX_ADDRESSES = 10_000

    def __init__(self, threads: int, max_backoff: float, free_failures: int = 20) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sasl-auth")
        self.max_backoff = max_backoff
        self.free_failures = free_failures
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def backoff(self, address: str, now: float | None = None) -> float:
        """Seconds a step from `address` waits now."""
        failures = self._failures.get(address)
        if not failures or self.max_backoff <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        while failures and failures[0] < now - self.WINDOW:
            failures.popleft()
        excess = len(failures) - self.free_failures
        if excess <= 0:
            return 0.0
        return min(self._BASE * 2 ** min(excess - 1, 30), self.max_backoff)

    def failed(self, address: str) -> None:
        failures = self._failures.pop(address, None) or deque(maxlen=self.free_failures + 64)
        failures.append(time.monotonic())
        self._failures[address] = failures  # most recent last; the oldest addresses go first
        while len(self._failures) > self._MAX_ADDRESSES:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    async def step(self, session: SaslSession, token: bytes, address: str) -> tuple[bytes, str | None]:
        delay = self.backoff(address)
        if delay:
            await asyncio.sleep(delay)
        try:
            answer, user = await asyncio.get_running_loop().run_in_executor(self._pool, session.step, token)
        except SaslFailure:
            self.failed(address)
            raise
        if user is not None:
            self.succeeded(address)
        return answer, user

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
