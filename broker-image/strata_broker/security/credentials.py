"""User credentials: a JSON file the operator mounts from a Secret, plus admin-API-managed SCRAM users.

The file (`sasl.credentials.file`) is re-read when it changes (polled; a Kubernetes Secret volume
swaps a symlink, which changes the inode `stat` sees):

    {"users": {
        "orders-svc": {"password": "..."},
        "billing":    {"scram": {"SCRAM-SHA-512": {"salt": "<b64>", "iterations": 8192,
                                                   "stored_key": "<b64>", "server_key": "<b64>"}}}}}

A user with a password can use PLAIN and both SCRAM mechanisms; one with only SCRAM entries can
use those mechanisms, and PLAIN (checked against the SCRAM hash). Credentials set with
AlterUserScramCredentials live in `<data-dir>/__meta/scram-credentials.json` (all of them, written
atomically: temp file, fsync, rename) and `scram-credentials.journal` (the changes since, one JSON
line per request, appended and fsynced before the request is answered): a request costs one short
append, not a rewrite of every user. The journal is folded into the JSON file (compaction) once it
holds as many changes as there are users (at least JOURNAL_MIN), so the writes stay linear in the
changes. Each compaction gives the JSON file a new journal id, and the journal's first line names
the id it continues: a journal left behind by a crash between a compaction's rename and its
truncation names the old id and is ignored (the file has its changes). A torn last line (a crash
mid-append: that request was never answered) is dropped, and the journal compacted away at load.
A user that has any of these credentials is authenticated with them only, never with the file.

Known and unknown users cost the same and are answered the same: a PLAIN check is one PBKDF2 of the
usual cost whoever the user is, and an unknown user's SCRAM exchange shows a decoy salt (an HMAC of
the user name under a secret key kept in `<data-dir>/__meta/scram-decoy.key`, stable across restarts)
with the iteration count most users have.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections import Counter
from collections.abc import Callable
from typing import Any

from strata_contract.scram import HASHES, MIN_ITERATIONS, ScramCredential

from ..log.files import fsync_dir, fsync_fd, read_json, write_json_atomic

# The mechanism a PLAIN password is checked with when a user has several SCRAM credentials.
_PLAIN_ORDER = ("SCRAM-SHA-512", "SCRAM-SHA-256")
_DECOY_KEY_FILE = "scram-decoy.key"
# A journal this many changes long (or as long as there are users, if more) is compacted.
JOURNAL_MIN = 256

log = logging.getLogger(__name__)


class CredentialStore:
    def __init__(self, path: str, meta_dir: str | None) -> None:
        self.path = path
        self._api_path = os.path.join(meta_dir, "scram-credentials.json") if meta_dir else None
        self._journal_path = os.path.join(meta_dir, "scram-credentials.journal") if meta_dir else None
        self._journal_length = 0  # changes in the journal
        self._journal_id: str | None = None  # the id the JSON file names (its journal's first line)
        # Changes not saved yet: (user, mechanism, credential or None for a deletion); None: save all.
        self._unsaved: list[tuple[str, str, ScramCredential | None]] | None = []
        self._file_stamp: tuple[int, int, int] | None = None
        self._file_passwords: dict[str, str] = {}
        self._file_scram: dict[str, dict[str, ScramCredential]] = {}
        self._derived: dict[tuple[str, str, str], ScramCredential] = {}
        self.api_scram: dict[str, dict[str, ScramCredential]] = {}
        self.reloads = 0
        self._decoy_key = _decoy_key(meta_dir)
        self._usual_iterations: dict[str, int] = {}
        # Cluster mode: told after every change, so the change reaches the other brokers.
        self.on_change: Callable[[], None] | None = None
        # Cluster mode: the brokers' own user and password (cluster/txn_markers.py InterBrokerAuth),
        # ahead of the file and the admin API's credentials (neither can replace it).
        self.builtin_users: dict[str, str] = {}
        if self._api_path:
            data = read_json(self._api_path) or {}
            self._journal_id = data.get("journal")
            for user, mechs in data.get("users", {}).items():
                self.api_scram[user] = {m: ScramCredential.from_json(c) for m, c in mechs.items() if m in HASHES}
            if not self._replay_journal():
                self._unsaved = None
                self.save(notify=False)  # a torn or broken journal: compacted away before anything is appended
        self.poll()

    def _replay_journal(self) -> bool:
        """Apply the journal's changes over the JSON file's users; False when it ends in a torn line
        (or holds a broken one: the changes after it are dropped, none of them was answered)."""
        assert self._journal_path is not None
        try:
            with open(self._journal_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return True
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # the text after the last newline: b"" unless torn
        if not complete:
            return not tail
        try:
            if self._journal_id is None or json.loads(complete[0]) != {"journal": self._journal_id}:
                return False  # what a compaction already folded in (or not this file's journal)
        except ValueError:
            return False
        for number, line in enumerate(complete[1:], 2):
            try:
                for user, mech, cred in json.loads(line):
                    if cred is None:
                        self._forget(user, mech)
                    elif mech in HASHES:
                        self.api_scram.setdefault(user, {})[mech] = ScramCredential.from_json(cred)
            except (TypeError, ValueError, KeyError) as exc:
                log.error("%s line %d is broken (%s): the changes from there on are dropped",
                          self._journal_path, number, exc)
                return False
            self._journal_length += 1
        if tail:
            log.warning("%s ends in a torn line (a change never answered): dropped", self._journal_path)
            return False
        return True

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
        self._usual_iterations.clear()
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
        if user in self.builtin_users:
            return self._derive(user, mechanism, self.builtin_users[user])
        if user in self.api_scram:
            return self.api_scram[user].get(mechanism)
        cred = self._file_scram.get(user, {}).get(mechanism)
        if cred is not None:
            return cred
        password = self._file_passwords.get(user)
        if password is None:
            return None
        return self._derive(user, mechanism, password)

    def _derive(self, user: str, mechanism: str, password: str) -> ScramCredential:
        key = (user, mechanism, password)
        if key not in self._derived:  # salted once per password, not per login
            self._derived[key] = ScramCredential.from_password(mechanism, password)
        return self._derived[key]

    def check_plain(self, user: str, password: str) -> bool:
        """Exactly one PBKDF2 whoever `user` is (SCRAM-stored, plain in the file, or unknown), so the
        time taken does not tell which users exist. Slow by design: call it off the event loop.
        `builtin_users` (cluster mode: the brokers' own user, cluster/txn_markers.py) come first."""
        if user in self.builtin_users:
            return hmac.compare_digest(self.builtin_users[user].encode(), password.encode())
        sources = self.api_scram[user] if user in self.api_scram else self._file_scram.get(user, {})
        mechanism = next((m for m in _PLAIN_ORDER if m in sources), None)
        if mechanism is not None:
            return sources[mechanism].check_password(mechanism, password)
        decoy = self.decoy(user, _PLAIN_ORDER[0])
        decoy.check_password(_PLAIN_ORDER[0], password)  # the same work as for a SCRAM-stored user
        expected = None if user in self.api_scram else self._file_passwords.get(user)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

    def decoy(self, user: str, mechanism: str) -> ScramCredential:
        """What an unknown user's SCRAM exchange shows: a salt no one can tell from a real one (stable
        per user, secret key) and the usual iteration count. Its keys match no proof."""
        salt = hmac.new(self._decoy_key, f"{mechanism}\0{user}".encode(), hashlib.sha256).digest()[:24]
        return ScramCredential(salt, self.usual_iterations(mechanism), secrets.token_bytes(64),
                               secrets.token_bytes(64))

    def usual_iterations(self, mechanism: str) -> int:
        """The iteration count most stored credentials of `mechanism` have (MIN_ITERATIONS if none)."""
        if mechanism not in self._usual_iterations:
            counts = Counter(c.iterations for source in (self.api_scram, self._file_scram)
                             for mechs in source.values() for m, c in mechs.items() if m == mechanism)
            if self._file_passwords:
                counts[MIN_ITERATIONS] += len(self._file_passwords)
            self._usual_iterations[mechanism] = counts.most_common(1)[0][0] if counts else MIN_ITERATIONS
        return self._usual_iterations[mechanism]

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
        """Set a credential (in memory; `save` makes it durable)."""
        self.api_scram.setdefault(user, {})[mechanism] = credential
        self._usual_iterations.clear()
        if self._unsaved is not None:
            self._unsaved.append((user, mechanism, credential))

    def delete(self, user: str, mechanism: str) -> bool:
        """Remove a credential (in memory; `save` makes it durable); False when there is none."""
        if not self._forget(user, mechanism):
            return False
        self._usual_iterations.clear()
        if self._unsaved is not None:
            self._unsaved.append((user, mechanism, None))
        return True

    def _forget(self, user: str, mechanism: str) -> bool:
        mechs = self.api_scram.get(user)
        if not mechs or mechanism not in mechs:
            return False
        del mechs[mechanism]
        if not mechs:
            del self.api_scram[user]
        return True

    def save(self, notify: bool = True) -> None:
        """Make the changes since the last save durable: one journal line (appended, fsynced), or a
        compaction (every credential to the JSON file, atomically, under a new journal id; the journal
        emptied) when the journal is long enough, the file names no journal yet, or the whole set was
        replaced (load_shared)."""
        changes, self._unsaved = self._unsaved, []
        if self._api_path and self._journal_path:
            full = self._journal_length + 1 >= max(JOURNAL_MIN, len(self.api_scram))
            if changes is None or self._journal_id is None or full:
                journal_id = secrets.token_hex(8)
                write_json_atomic(self._api_path, {"journal": journal_id, "users": {
                    user: {m: c.to_json() for m, c in mechs.items()} for user, mechs in self.api_scram.items()}})
                self._journal_id, self._journal_length = journal_id, 0
                with open(self._journal_path, "wb") as f:  # names the previous id: ignored from now on anyway
                    fsync_fd(f.fileno())
            elif changes:
                line = json.dumps([[u, m, c.to_json() if c is not None else None] for u, m, c in changes]) + "\n"
                if self._journal_length == 0:  # the journal's first change: after the id it continues
                    line = json.dumps({"journal": self._journal_id}) + "\n" + line
                fd = os.open(self._journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line.encode())
                    fsync_fd(fd)
                finally:
                    os.close(fd)
                if self._journal_length == 0:
                    fsync_dir(os.path.dirname(self._journal_path))  # a journal just created is in its directory
                self._journal_length += 1
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
            self._usual_iterations.clear()
            self._unsaved = None  # the whole set replaced: compacted
            self.save(notify=False)


def _decoy_key(meta_dir: str | None) -> bytes:
    """This broker's secret for decoy salts: made once, kept beside the data (a new one per process
    when the broker keeps no metadata)."""
    if not meta_dir:
        return secrets.token_bytes(32)
    path = os.path.join(meta_dir, _DECOY_KEY_FILE)
    try:
        with open(path, "rb") as f:
            key = f.read()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    os.makedirs(meta_dir, exist_ok=True)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    return key
