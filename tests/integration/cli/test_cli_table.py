"""`strata table`: a compacted topic as a key -> latest value table (SQLite or printed)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

from kafkaclients import create_topic, produce_kafka_python

STRATA = [sys.executable, "-m", "strata_cli"]


def test_table_to_sqlite_and_follow(broker, topic_name, tmp_path):
    create_topic(broker.bootstrap, topic_name, 3, {"cleanup.policy": "compact"})
    events = [(f"user-{i % 10}".encode(), f"v{i}".encode()) for i in range(50)] + [(b"user-3", None)]
    produce_kafka_python(broker.bootstrap, topic_name, events)
    out = tmp_path / "users.sqlite"
    done = subprocess.run([*STRATA, "table", "--bootstrap", broker.bootstrap, "--topic", topic_name,
                           "--output", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = dict(sqlite3.connect(out).execute("SELECT key, value FROM entities").fetchall())
    assert rows == {f"user-{k}": f"v{40 + k}" for k in range(10) if k != 3}

    printed = subprocess.run([*STRATA, "table", "--bootstrap", broker.bootstrap, "--topic", topic_name],
                             capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert "9 key(s)" in printed.stdout and "v49" in printed.stdout and "user-3 " not in printed.stdout

    follower = subprocess.Popen([*STRATA, "table", "--bootstrap", broker.bootstrap, "--topic", topic_name,
                                 "--output", str(out), "--follow"], stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        produce_kafka_python(broker.bootstrap, topic_name, [(b"user-0", None), (b"user-42", b"new")])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = dict(sqlite3.connect(out).execute("SELECT key, value FROM entities").fetchall())
            if "user-42" in rows and "user-0" not in rows:
                break
            time.sleep(0.3)
        assert rows.get("user-42") == "new" and "user-0" not in rows
    finally:
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(20) == 0, follower.stderr.read() if follower.stderr else ""
