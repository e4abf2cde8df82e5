"""The listener's log table: every received instance, what became of it, across restarts.

SQLite in the spool folder (one file, transactions, readable with any sqlite3 client): a row is
written when an instance arrives, before the sender is answered, and moves through the states
below. A listener that restarts resumes every row that has not reached a final state.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

RECEIVED, SCREENED = "received", "screened"  # not final: resumed after a restart
STORED, SKIPPED, FAILED, KEPT = "stored", "skipped", "failed", "kept"  # final
PENDING_STATES = (RECEIVED, SCREENED)
LOG_FILE = "listener.sqlite"
_SCHEMA = """CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, file TEXT NOT NULL, state TEXT NOT NULL, decision TEXT, detail TEXT,
    received_at TEXT NOT NULL, updated_at TEXT NOT NULL)"""


class ListenerLog:
    """received → screened → stored (results confirmed in the sink, or kept in the spool without one);
    or skipped (outside the selection) or failed (with the reason), each recorded with its time."""

    def __init__(self, spool: Path) -> None:
        spool.mkdir(parents=True, exist_ok=True)
        self.path = spool / LOG_FILE
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def received(self, sop_uid: str, file: Path) -> None:
        """A (re)sent instance starts over: the latest copy is the one screened."""
        now = _now()
        with self._lock:
            self._db.execute("INSERT INTO instances VALUES (?, ?, ?, NULL, NULL, ?, ?) ON CONFLICT(sop_uid) DO UPDATE SET "
                             "file=excluded.file, state=excluded.state, decision=NULL, detail=NULL, "
                             "received_at=excluded.received_at, updated_at=excluded.updated_at",
                             (sop_uid, str(file), RECEIVED, now, now))

    def mark(self, sop_uid: str, state: str, detail: str | None = None, decision: str | None = None) -> None:
        with self._lock:
            self._db.execute("UPDATE instances SET state=?, detail=?, decision=COALESCE(?, decision), updated_at=? "
                             "WHERE sop_uid=?", (state, detail, decision, _now(), sop_uid))

    def note(self, sop_uid: str, detail: str) -> None:
        """Why an instance waits, its state unchanged (received: not screened yet; screened: results not stored)."""
        with self._lock:
            self._db.execute("UPDATE instances SET detail=?, updated_at=? WHERE sop_uid=?", (detail, _now(), sop_uid))

    def pending(self) -> list[tuple[str, str]]:
        """(sop_uid, file) of every instance not in a final state, oldest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT sop_uid, file FROM instances WHERE state IN ({','.join('?' * len(PENDING_STATES))}) "
                                    "ORDER BY received_at", PENDING_STATES).fetchall()
        return [(str(a), str(b)) for a, b in rows]

    def known_files(self) -> set[str]:
        with self._lock:
            return {str(f) for (f,) in self._db.execute("SELECT file FROM instances")}

    def rows(self) -> list[dict[str, str | None]]:
        with self._lock:
            cursor = self._db.execute("SELECT * FROM instances ORDER BY received_at")
            names = [c[0] for c in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {str(s): int(n) for s, n in self._db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state")}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
