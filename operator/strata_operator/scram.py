"""The brokers' credentials file (`sasl.credentials.file`, docs/security.md), built by the operator.

Pure functions (no I/O): the operator keeps one Secret per managed EventBroker, `<name>-credentials`,
key `users.json`, holding its own admin user as SCRAM hashes only (no password on the broker). The
hashes are kept as long as they still match the password, so the Secret is stable across
reconciles and changes only when the operator's password does.
"""

from __future__ import annotations

import json
from typing import Any

from strata_contract.scram import HASHES, ScramCredential

ITERATIONS = 8192  # Kafka allows 4096-16384


def credential(mechanism: str, password: str, salt: bytes | None = None, iterations: int = ITERATIONS
               ) -> dict[str, Any]:
    """One credentials-file entry for `password` (strata_contract.scram: what the broker checks)."""
    return ScramCredential.from_password(mechanism, password, salt, iterations).to_json()


def matches(entry: dict[str, Any], mechanism: str, password: str) -> bool:
    try:
        return ScramCredential.from_json(entry).check_password(mechanism, password)
    except (KeyError, ValueError, TypeError):
        return False


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
