"""The server side of SASL PLAIN and SCRAM for one connection (tokens from SaslAuthenticate)."""

from __future__ import annotations

from .credentials import CredentialStore
from .scram import HASHES, ScramError, ScramServer


class SaslFailure(Exception):
    """Authentication failed; the message goes back to the client in SaslAuthenticate."""


class SaslSession:
    """`step(token)` -> (response token, principal name once authenticated, else None)."""

    def __init__(self, mechanism: str, store: CredentialStore) -> None:
        self.mechanism = mechanism
        self._store = store
        self._scram = ScramServer(mechanism, lambda user: store.scram(user, mechanism)) \
            if mechanism in HASHES else None

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
