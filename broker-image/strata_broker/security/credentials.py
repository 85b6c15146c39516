"""User credentials: a JSON file the operator mounts from a Secret, plus admin-API-managed SCRAM users.

The file (`sasl.credentials.file`) is re-read when it changes (polled; a Kubernetes Secret volume
swaps a symlink, which changes the inode `stat` sees):

    {"users": {
        "orders-svc": {"password": "..."},
        "billing":    {"scram": {"SCRAM-SHA-512": {"salt": "<b64>", "iterations": 8192,
                                                   "stored_key": "<b64>", "server_key": "<b64>"}}}}}

A user with a password can use PLAIN and both SCRAM mechanisms; one with only SCRAM entries can
use those mechanisms, and PLAIN (checked against the SCRAM hash). Credentials set with
AlterUserScramCredentials live in `<data-dir>/__meta/scram-credentials.json`; a user that has any
of those is authenticated with them only, never with the file.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from ..log.files import read_json, write_json_atomic
from .scram import HASHES, MIN_ITERATIONS, ScramCredential

log = logging.getLogger(__name__)


class CredentialStore:
    def __init__(self, path: str, meta_dir: str | None) -> None:
        self.path = path
        self._api_path = os.path.join(meta_dir, "scram-credentials.json") if meta_dir else None
        self._file_stamp: tuple[int, int, int] | None = None
        self._file_passwords: dict[str, str] = {}
        self._file_scram: dict[str, dict[str, ScramCredential]] = {}
        self._derived: dict[tuple[str, str, str], ScramCredential] = {}
        self.api_scram: dict[str, dict[str, ScramCredential]] = {}
        self.reloads = 0
        # Cluster mode: told after every change, so the change reaches the other brokers.
        self.on_change: Callable[[], None] | None = None
        if self._api_path:
            data = read_json(self._api_path) or {}
            for user, mechs in data.get("users", {}).items():
                self.api_scram[user] = {m: ScramCredential.from_json(c) for m, c in mechs.items() if m in HASHES}
        self.poll()

    # ---- the mounted file -------------------------------------------------------------------

    def poll(self) -> bool:
        """Re-read the file if it changed; True when it did. A broken file keeps the previous users."""
        if not self.path:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._file_stamp is not None:
                log.warning("credentials file %s disappeared; keeping the users it had", self.path)
                self._file_stamp = None
            return False
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._file_stamp:
            return False
        try:
            passwords, scram = self._parse(read_json(self.path))
        except Exception as exc:  # a half-written or invalid file must not take users away
            log.error("credentials file %s is invalid, keeping the previous users: %s", self.path, exc)
            self._file_stamp = stamp
            return False
        self._file_stamp = stamp
        self._file_passwords, self._file_scram = passwords, scram
        self._derived = {k: v for k, v in self._derived.items() if passwords.get(k[0]) == k[2]}
        self.reloads += 1
        log.info("loaded %d users from %s", len(set(passwords) | set(scram)), self.path)
        return True

    @staticmethod
    def _parse(data: Any) -> tuple[dict[str, str], dict[str, dict[str, ScramCredential]]]:
        if not isinstance(data, dict) or not isinstance(data.get("users"), dict):
            raise ValueError('expected {"users": {...}}')
        passwords: dict[str, str] = {}
        scram: dict[str, dict[str, ScramCredential]] = {}
        for user, entry in data["users"].items():
            if not isinstance(entry, dict):
                raise ValueError(f"user {user!r}: expected an object")
            if "password" in entry:
                if not isinstance(entry["password"], str):
                    raise ValueError(f"user {user!r}: password must be a string")
                passwords[user] = entry["password"]
            for mech, cred in (entry.get("scram") or {}).items():
                if mech not in HASHES:
                    raise ValueError(f"user {user!r}: unknown mechanism {mech!r}")
                scram.setdefault(user, {})[mech] = ScramCredential.from_json(cred)
        return passwords, scram

    # ---- lookups ----------------------------------------------------------------------------

    def scram(self, user: str, mechanism: str) -> ScramCredential | None:
        if user in self.api_scram:
            return self.api_scram[user].get(mechanism)
        cred = self._file_scram.get(user, {}).get(mechanism)
        if cred is not None:
            return cred
        password = self._file_passwords.get(user)
        if password is None:
            return None
        key = (user, mechanism, password)
        if key not in self._derived:  # salted once per password, not per login
            self._derived[key] = ScramCredential.from_password(mechanism, password)
        return self._derived[key]

    def check_plain(self, user: str, password: str) -> bool:
        if user in self.api_scram:
            sources = self.api_scram[user]
        else:
            expected = self._file_passwords.get(user)
            if expected is not None:
                return hmac.compare_digest(expected.encode(), password.encode())
            sources = self._file_scram.get(user, {})
        return any(cred.check_password(mech, password) for mech, cred in sources.items())

    def describe(self) -> dict[str, dict[str, int]]:
        """user -> {mechanism: iterations}, as the broker would authenticate them now."""
        out: dict[str, dict[str, int]] = {}
        for user in set(self._file_passwords) | set(self._file_scram) | set(self.api_scram):
            if user in self.api_scram:
                out[user] = {m: c.iterations for m, c in self.api_scram[user].items()}
            elif user in self._file_scram:
                out[user] = {m: c.iterations for m, c in self._file_scram[user].items()}
                if user in self._file_passwords:
                    for m in HASHES:
                        out[user].setdefault(m, MIN_ITERATIONS)
            else:
                out[user] = {m: MIN_ITERATIONS for m in HASHES}
        return {u: m for u, m in out.items() if m}

    def in_file(self, user: str) -> bool:
        return user in self._file_passwords or user in self._file_scram

    # ---- admin API --------------------------------------------------------------------------

    def upsert(self, user: str, mechanism: str, credential: ScramCredential) -> None:
        self.api_scram.setdefault(user, {})[mechanism] = credential

    def delete(self, user: str, mechanism: str) -> bool:
        mechs = self.api_scram.get(user)
        if not mechs or mechanism not in mechs:
            return False
        del mechs[mechanism]
        if not mechs:
            del self.api_scram[user]
        return True

    def save(self, notify: bool = True) -> None:
        if self._api_path:
            write_json_atomic(self._api_path, {"users": {
                user: {m: c.to_json() for m, c in mechs.items()} for user, mechs in self.api_scram.items()}})
        if notify and self.on_change is not None:
            self.on_change()

    # ---- cluster mode: the same SCRAM credentials on every broker ----------------------------

    def shared_entries(self) -> dict[str, Any]:
        return {json.dumps([user, mech]): cred.to_json() for user, mechs in self.api_scram.items()
                for mech, cred in mechs.items()}

    def load_shared(self, entries: dict[str, Any]) -> None:
        scram: dict[str, dict[str, ScramCredential]] = {}
        for key, cred in entries.items():
            try:
                user, mech = json.loads(key)
                if mech in HASHES:
                    scram.setdefault(user, {})[mech] = ScramCredential.from_json(cred)
            except (TypeError, ValueError, KeyError) as exc:
                log.error("ignoring a shared SCRAM credential %r: %s", key, exc)
        if self.shared_entries() != {json.dumps([u, m]): c.to_json() for u, ms in scram.items()
                                     for m, c in ms.items()}:
            self.api_scram = scram
            self.save(notify=False)
