"""SCRAM-SHA-256/512 credentials (RFC 5802, RFC 7677) as Kafka stores them, and the brokers'
credentials file (`sasl.credentials.file`; key `users.json` of the operator's Secret).

A credential is salt, iterations, StoredKey = H(HMAC(SaltedPassword, "Client Key")) and
ServerKey = HMAC(SaltedPassword, "Server Key"); the password itself is never kept. The file
holds them base64-encoded per user and mechanism:
`{"users": {name: {"scram": {mechanism: {salt, iterations, stored_key, server_key}}}}}`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
MIN_ITERATIONS = 4096  # Kafka refuses fewer (and more than 16384)
MAX_ITERATIONS = 16384
FILE_KEY = "users.json"


@dataclass(frozen=True)
class ScramCredential:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_salted_password(cls, mechanism: str, salted: bytes, salt: bytes, iterations: int) -> ScramCredential:
        h = HASHES[mechanism]
        client_key = hmac.new(salted, b"Client Key", h).digest()
        return cls(salt, iterations, hashlib.new(h, client_key).digest(), hmac.new(salted, b"Server Key", h).digest())

    @classmethod
    def from_password(cls, mechanism: str, password: str, salt: bytes | None = None,
                      iterations: int = MIN_ITERATIONS) -> ScramCredential:
        salt = salt if salt is not None else os.urandom(24)
        salted = hashlib.pbkdf2_hmac(HASHES[mechanism], password.encode(), salt, iterations)
        return cls.from_salted_password(mechanism, salted, salt, iterations)

    def check_password(self, mechanism: str, password: str) -> bool:
        other = ScramCredential.from_password(mechanism, password, self.salt, self.iterations)
        return hmac.compare_digest(other.stored_key, self.stored_key)

    def to_json(self) -> dict[str, object]:
        """The credential's entry in the credentials file."""
        b64 = base64.b64encode
        return {"salt": b64(self.salt).decode(), "iterations": self.iterations,
                "stored_key": b64(self.stored_key).decode(), "server_key": b64(self.server_key).decode()}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ScramCredential:
        d = base64.b64decode
        iterations = int(data["iterations"])  # type: ignore[arg-type]
        return cls(d(str(data["salt"])), iterations, d(str(data["stored_key"])), d(str(data["server_key"])))
