"""Fine-tuning jobs and their events, kept in SQLite under --state-dir so they survive restarts.

One connection, guarded by a lock: the server's event loop and the threads that may read the
store (a route's worker thread) never use it at once. WAL journalling, so a reader never waits
for a writer and a crash loses at most the transaction in progress. The store knows nothing of
processes or HTTP: the job manager (training/manager.py) drives the status changes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

Status = Literal["pending", "running", "completed", "failed", "cancelled", "interrupted"]
ACTIVE: tuple[Status, ...] = ("pending", "running")  # a process is (or should be) training
FINISHED: tuple[Status, ...] = ("completed", "failed", "cancelled")  # nothing more will happen

_JSON_FIELDS = ("metrics_before", "metrics_after", "hyperparameters")


@dataclass
class JobRecord:
    id: str
    name: str  # the result's model name (under --models-dir)
    base: str  # the base model as the client named it
    method: str  # full | lora | qlora (what was asked)
    type: str  # full | lora (what trains: the Embedding Service's "type")
    job_dir: str
    output_dir: str
    status: Status = "pending"
    progress: float = 0.0  # 0-100
    message: str | None = None
    error: str | None = None
    steps: int = 0
    total_steps: int | None = None
    epoch: float = 0.0
    loss: float | None = None
    metrics_before: dict[str, float] | None = None
    metrics_after: dict[str, float] | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    train_count: int = 0
    validation_count: int | None = None
    ignored_lines: int = 0
    suffix: str | None = None
    pid: int | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True)
class StoredEvent:
    id: int
    job_id: str
    created_at: float
    type: str
    data: dict[str, Any]


_COLUMNS = [f.name for f in fields(JobRecord)]
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs ({", ".join(f"{c} {'TEXT PRIMARY KEY' if c == 'id' else ''}" for c in _COLUMNS)});
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, id);
"""


class JobStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def insert(self, job: JobRecord) -> None:
        values = [_to_column(name, getattr(job, name)) for name in _COLUMNS]
        with self._lock:
            self._db.execute(
                f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", values
            )

    def update(self, job_id: str, **changes: Any) -> None:
        if not changes:
            return
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in changes)
        values = [_to_column(name, value) for name, value in changes.items()]
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*values, job_id])

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row is not None else None

    def list(self, *, statuses: tuple[str, ...] | None = None, limit: int | None = None) -> list[JobRecord]:
        """Newest first."""
        query, params = "SELECT * FROM jobs", []
        if statuses:
            query += f" WHERE status IN ({', '.join('?' * len(statuses))})"
            params.extend(statuses)
        query += " ORDER BY created_at DESC, rowid DESC"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [_record(row) for row in rows]

    def add_event(self, job_id: str, type_: str, data: dict[str, Any], created_at: float | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO events (job_id, created_at, type, data) VALUES (?, ?, ?, ?)",
                (job_id, created_at if created_at is not None else time.time(), type_, json.dumps(data)),
            )

    def events(self, job_id: str, *, limit: int | None = None) -> list[StoredEvent]:
        """Oldest first (the last `limit` when given)."""
        query = "SELECT * FROM events WHERE job_id = ? ORDER BY id DESC"
        params: list[Any] = [job_id]
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [
            StoredEvent(row["id"], row["job_id"], row["created_at"], row["type"], json.loads(row["data"]))
            for row in reversed(rows)
        ]


def _to_column(name: str, value: Any) -> Any:
    return json.dumps(value) if name in _JSON_FIELDS and value is not None else value


def _record(row: sqlite3.Row) -> JobRecord:
    data = {name: row[name] for name in _COLUMNS}
    for name in _JSON_FIELDS:
        if data[name] is not None:
            data[name] = json.loads(data[name])
    if data["hyperparameters"] is None:
        data["hyperparameters"] = {}
    return JobRecord(**data)
