"""The brokers' credentials file (`sasl.credentials.file`, docs/security.md), built by the operator.

Pure functions (no I/O): the operator keeps one Secret per managed EventBroker, `<name>-credentials`,
key `users.json`, holding its own admin user as SCRAM hashes only (no password on the broker). The
hashes are kept as long as they still match the password, so the Secret is stable across
reconciles and changes only when the operator's password does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any

HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
ITERATIONS = 8192  # Kafka allows 4096-16384
FILE_KEY = "users.json"


def credential(mechanism: str, password: str, salt: bytes | None = None, iterations: int = ITERATIONS
               ) -> dict[str, Any]:
    """RFC 5802: StoredKey = H(HMAC(SaltedPassword, "Client Key")), ServerKey = HMAC(SaltedPassword,
    "Server Key"), in the broker's JSON form (base64)."""
    h = HASHES[mechanism]
    salt = salt if salt is not None else os.urandom(24)
    salted = hashlib.pbkdf2_hmac(h, password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", h).digest()
    b64 = base64.b64encode
    return {"salt": b64(salt).decode(), "iterations": iterations,
            "stored_key": b64(hashlib.new(h, client_key).digest()).decode(),
            "server_key": b64(hmac.new(salted, b"Server Key", h).digest()).decode()}


def matches(entry: dict[str, Any], mechanism: str, password: str) -> bool:
    try:
        again = credential(mechanism, password, base64.b64decode(entry["salt"]), int(entry["iterations"]))
    except (KeyError, ValueError, TypeError):
        return False
    return hmac.compare_digest(again["stored_key"], str(entry.get("stored_key")))


def credentials_file(users: dict[str, str], previous: str | None = None) -> str:
    """The file's text for `users` (name -> password), both SCRAM mechanisms each. Entries of
    `previous` (the Secret's current text) that still match their password are reused as is."""
    try:
        old = (json.loads(previous) if previous else {}).get("users") or {}
    except (ValueError, AttributeError):
        old = {}
    out: dict[str, Any] = {}
    for user, password in sorted(users.items()):
        have = ((old.get(user) or {}).get("scram") or {}) if isinstance(old.get(user), dict) else {}
        out[user] = {"scram": {m: have[m] if isinstance(have.get(m), dict) and matches(have[m], m, password)
                               else credential(m, password) for m in sorted(HASHES)}}
    return json.dumps({"users": out}, indent=1, sort_keys=True) + "\n"
