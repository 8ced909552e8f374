"""Fine-tuning jobs, their events and uploaded training files, kept in SQLite under --state-dir so
they survive restarts (a file's bytes live beside it, in `files/`: training/files.py).

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
class FileRecord:
    """An uploaded file (POST /v1/files): its bytes are `<state-dir>/files/<id>`, never a client's path."""

    id: str
    filename: str  # as the client named it: metadata only
    purpose: str
    bytes: int
    created_at: float


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
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at REAL NOT NULL
);
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

    # ---- uploaded files ----------------------------------------------------------------------

    def insert_file(self, record: FileRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO files (id, filename, purpose, bytes, created_at) VALUES (?, ?, ?, ?, ?)",
                (record.id, record.filename, record.purpose, record.bytes, record.created_at),
            )

    def get_file(self, file_id: str) -> FileRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        return _file(row) if row is not None else None

    def list_files(
        self, *, purpose: str | None = None, limit: int | None = None, newest_first: bool = True,
        after: str | None = None,
    ) -> list[FileRecord]:
        """In upload order (newest first unless told otherwise), from the one after `after` when given."""
        conditions, params = [], []
        if purpose is not None:
            conditions.append("purpose = ?")
            params.append(purpose)
        if after is not None:
            conditions.append(f"rowid {'<' if newest_first else '>'} (SELECT rowid FROM files WHERE id = ?)")
            params.append(after)
        query = "SELECT * FROM files" + (f" WHERE {' AND '.join(conditions)}" if conditions else "")
        query += f" ORDER BY rowid {'DESC' if newest_first else 'ASC'}"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [_file(row) for row in rows]

    def delete_file(self, file_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0


def _file(row: sqlite3.Row) -> FileRecord:
    return FileRecord(row["id"], row["filename"], row["purpose"], row["bytes"], row["created_at"])


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
