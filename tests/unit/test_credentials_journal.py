"""The admin API's SCRAM credentials on disk: one journal line per saved change, compaction into the
JSON file, and what a crash can leave behind (a torn last line, a journal a compaction folded in)."""

from __future__ import annotations

import json
from pathlib import Path

from strata_broker.security import credentials as C
from strata_broker.security.credentials import CredentialStore
from strata_contract.scram import ScramCredential

MECH = "SCRAM-SHA-256"


def cred(password: str) -> ScramCredential:
    return ScramCredential.from_password(MECH, password)


def store_in(tmp_path: Path) -> CredentialStore:
    meta = tmp_path / "meta"
    meta.mkdir(exist_ok=True)
    return CredentialStore("", str(meta))


def test_a_change_appends_one_line_and_a_long_journal_is_compacted(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    store.upsert("first", MECH, cred("pw-first"))
    store.save()  # the first save: the JSON file (with its journal id)
    snapshot = tmp_path / "meta" / "scram-credentials.json"
    journal = tmp_path / "meta" / "scram-credentials.journal"
    written = snapshot.stat()
    for i in range(10):
        store.upsert(f"u{i}", MECH, cred(f"pw{i}"))
        store.save()
    assert store.delete("u3", MECH)
    store.save()
    after = snapshot.stat()
    assert (after.st_ino, after.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # not rewritten
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + 11 and json.loads(lines[0]) == {"journal": json.loads(snapshot.read_text())["journal"]}
    again = CredentialStore("", str(tmp_path / "meta"))
    assert again.check_plain("u9", "pw9") and again.check_plain("first", "pw-first")
    assert again.scram("u3", MECH) is None and not again.check_plain("u3", "pw3")
    assert set(again.describe()) == set(store.describe())
    # Once the journal holds as many changes as the compaction threshold, it is folded into the file.
    shared = cred("v")
    for i in range(C.JOURNAL_MIN):
        again.upsert(f"v{i}", MECH, shared)
        again.save()
    assert len(journal.read_text().splitlines()) < C.JOURNAL_MIN // 2
    assert len(json.loads(snapshot.read_text())["users"]) > C.JOURNAL_MIN // 2
    reread = CredentialStore("", str(tmp_path / "meta"))
    assert set(reread.describe()) == set(again.describe()) and len(reread.describe()) == 10 + C.JOURNAL_MIN


def test_a_torn_last_line_is_dropped_and_the_journal_compacted(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    for name in ("a", "b", "c"):
        store.upsert(name, MECH, cred(name))
        store.save()
    journal = tmp_path / "meta" / "scram-credentials.journal"
    with open(journal, "ab") as f:  # a crash in the middle of appending (that request was never answered)
        f.write(json.dumps([["d", MECH, cred("d").to_json()]]).encode()[:40])
    loaded = CredentialStore("", str(tmp_path / "meta"))
    assert sorted(loaded.describe()) == ["a", "b", "c"] and loaded.check_plain("c", "c")
    assert journal.read_bytes() == b""  # compacted at load: new changes are not appended after the torn text
    loaded.upsert("e", MECH, cred("e"))
    loaded.save()
    assert sorted(CredentialStore("", str(tmp_path / "meta")).describe()) == ["a", "b", "c", "e"]


def test_a_journal_a_compaction_already_folded_in_is_ignored(tmp_path: Path) -> None:
    """A crash after a compaction's rename, before the journal was emptied: the journal's old changes
    (here: an upsert of a user deleted since) must not be replayed over the newer file."""
    store = store_in(tmp_path)
    store.upsert("keep", MECH, cred("keep"))
    store.save()
    store.upsert("gone", MECH, cred("old"))
    store.save()
    journal = tmp_path / "meta" / "scram-credentials.journal"
    stale = journal.read_bytes()
    assert store.delete("gone", MECH)
    store.upsert("keep", MECH, cred("new"))
    store._unsaved = None  # as load_shared does: the next save compacts
    store.save()
    journal.write_bytes(stale)  # the truncation never happened
    loaded = CredentialStore("", str(tmp_path / "meta"))
    assert sorted(loaded.describe()) == ["keep"] and loaded.check_plain("keep", "new")
