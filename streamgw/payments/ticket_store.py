"""Winning tickets on disk until they are redeemed: an orchestrator restart loses none.

One SQLite file (stdlib ``sqlite3``, WAL, a write is committed before the ticket is acknowledged). Each
ticket is keyed by its hash and moves ``pending`` -> ``redeemed`` (or ``used``: someone redeemed it already)
or ``failed`` (the contract refused it for good, e.g. ``ticket is expired``). Calls are short and run in a
thread (:func:`asyncio.to_thread`) so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from streamgw.payments.recipient import WinningTicket

__all__ = ["StoredTicket", "TicketState", "WinningTicketStore"]

TicketState = Literal["pending", "redeemed", "used", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS winners (
    hash TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    tx TEXT NOT NULL DEFAULT '',
    added REAL NOT NULL,
    updated REAL NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class StoredTicket:
    """A winning ticket and where it stands."""

    hash: str
    ticket: WinningTicket
    state: TicketState
    attempts: int
    last_error: str
    tx: str


class WinningTicketStore:
    """The orchestrator's winning tickets, durable."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    def add(self, ticket: WinningTicket) -> bool:
        """Store a new winner as pending; False if it was stored already."""
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO winners (hash, record, added, updated) VALUES (?, ?, ?, ?)",
                (ticket.ticket.hash().hex(), ticket.dumps(), now, now))
            return cur.rowcount == 1

    def pending(self) -> list[StoredTicket]:
        """Every ticket still to redeem, oldest first."""
        return self._select("WHERE state = 'pending' ORDER BY added")

    def all(self) -> list[StoredTicket]:
        """Every ticket, oldest first."""
        return self._select("ORDER BY added")

    def counts(self) -> dict[str, int]:
        """Tickets per state."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM winners GROUP BY state").fetchall()
        return {str(state): int(n) for state, n in rows}

    def redeemed_value(self) -> int:
        """The face value of every ticket redeemed (wei)."""
        total = 0
        for t in self._select("WHERE state = 'redeemed'"):
            total += t.ticket.ticket.face_value
        return total

    def mark(self, ticket_hash: str, state: TicketState, *, error: str = "", tx: str = "") -> None:
        """Record an attempt's outcome."""
        with self._lock:
            self._db.execute(
                "UPDATE winners SET state = ?, attempts = attempts + 1, last_error = ?, tx = ?, updated = ? "
                "WHERE hash = ?", (state, error[:500], tx, time.time(), ticket_hash))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _select(self, where: str) -> list[StoredTicket]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT hash, record, state, attempts, last_error, tx FROM winners {where}").fetchall()
        return [StoredTicket(hash=h, ticket=WinningTicket.from_json(json.loads(r)), state=s, attempts=a,
                             last_error=e, tx=t) for h, r, s, a, e, t in rows]

    # --- async wrappers (the event loop never waits on the disk) ---

    async def add_async(self, ticket: WinningTicket) -> bool:
        """:meth:`add` in a thread."""
        return await asyncio.to_thread(self.add, ticket)

    async def pending_async(self) -> list[StoredTicket]:
        """:meth:`pending` in a thread."""
        return await asyncio.to_thread(self.pending)

    async def mark_async(self, ticket_hash: str, state: TicketState, *, error: str = "", tx: str = "") -> None:
        """:meth:`mark` in a thread."""
        await asyncio.to_thread(self.mark, ticket_hash, state, error=error, tx=tx)
