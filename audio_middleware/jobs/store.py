"""Everything the job API remembers: assets, tasks, events and callback deliveries.

One SQLite database plus one directory, so that a restart (or a second
process on the same data directory) sees exactly what was promised:

::

    DATA_DIR/jobs.sqlite3                          assets, tasks, events, deliveries
    DATA_DIR/assets/<project>/<asset_id>/<name>     uploaded or imported sources
    DATA_DIR/audio/<project>/<audio_asset_id>.<ext> extraction outputs
    DATA_DIR/tmp/HOST~PID~ID.*.part                 uploads and outputs being written (by process PID)

Why SQLite and these statements: every state change is one short
``BEGIN IMMEDIATE`` transaction with a guarded ``UPDATE ... WHERE
status = 'QUEUED'`` (claim, cancel) or ``WHERE status = 'RUNNING' AND owner = ?``
(finish, release), so two workers can never both claim a task and a cancel
and a claim can never both win. A task's end, its event and the event's
deliveries are written in the same transaction: nothing is lost in between.
Connections are opened per operation, which makes the store safe to share
between threads and processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
#: Task states in which a new POST for the same asset and format returns the existing task.
REUSABLE = (QUEUED, RUNNING, SUCCEEDED)
PROJECT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Output file extension and content type per task format.
OUTPUTS = {"AAC": (".aac", "audio/aac"), "MP3": (".mp3", "audio/mpeg")}
EVENT_TYPES = {SUCCEEDED: "extract_audio.succeeded", FAILED: "extract_audio.failed"}
#: This host in temporary file names (file-name safe, never contains "~").
HOST_TAG = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"
#: Names of the partial files this process is writing (see :meth:`Store.partial`). No lock: set operations
#: are atomic, and a lock held by another thread at a fork would stay held in the child.
_WRITING: set[str] = set()

SCHEMA = """
CREATE TABLE IF NOT EXISTS assets (
    asset_id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT,
    size INTEGER,
    content_type TEXT,
    state TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    audio_asset_id TEXT NOT NULL UNIQUE,
    project_id TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    format TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    reason_code TEXT,
    owner TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result TEXT
);
CREATE INDEX IF NOT EXISTS tasks_by_asset ON tasks (project_id, asset_id, seq);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, seq);
CREATE TABLE IF NOT EXISTS events (
    event_id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id TEXT NOT NULL,
    audio_asset_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_project ON events (project_id, event_id);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id INTEGER NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    delivered_at REAL,
    PRIMARY KEY (event_id, url)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at);
"""


def new_id() -> str:
    return uuid.uuid4().hex


def iso_time(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def check_project(project_id: str) -> str:
    if not PROJECT_ID.match(project_id or ""):
        raise ValueError(f"invalid project id {project_id!r} (letters, digits, '_', '.', '-'; at most 64)")
    return project_id


#: The longest file name most file systems take (NAME_MAX), in bytes of UTF-8.
MAX_NAME_BYTES = 255


def check_name(name: str) -> str:
    """An asset name is a plain file name: it becomes the last part of a path in the store.

    Its length is counted in UTF-8 bytes, as the file system counts it: 128
    "é" are 256 bytes, which ``open`` would refuse (ENAMETOOLONG).
    """
    if (not name or not name.isprintable()  # isprintable() also refuses lone surrogates (not UTF-8)
            or len(name.encode("utf-8")) > MAX_NAME_BYTES or name in (".", "..") or any(c in name for c in "/\\\0")):
        raise ValueError(f"the name must be a plain file name (no path), 1-{MAX_NAME_BYTES} bytes of printable "
                         "UTF-8 characters")
    return name


def partial_owner(path: Path) -> tuple[str, int] | None:
    """(host tag, pid) of the process that writes a partial file; None for a name without them."""
    parts = path.name.split("~")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def writing(path: Path) -> bool:
    """True when this process is writing the partial file ``path`` (one of :meth:`Store.partial`)."""
    return path.name in _WRITING


def task_json(row: dict) -> dict:
    """The public shape of a task (GET answer, event payload)."""
    task = {"asset_id": row["asset_id"], "audio_asset_id": row["audio_asset_id"], "project_id": row["project_id"],
            "format": row["format"], "status": row["status"], "create_time": iso_time(row["created_at"]),
            "start_time": iso_time(row["started_at"]), "end_time": iso_time(row["finished_at"])}
    if row["status"] == FAILED:
        task["reason"] = row["reason"]
        task["reason_code"] = row["reason_code"]
    if row["status"] == SUCCEEDED and row["result"]:
        task["audio"] = json.loads(row["result"])
    return task


class Store:
    """The SQLite database and file tree of one data directory."""

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.root = Path(data_dir).resolve()
        for part in ("assets", "audio", "tmp"):
            (self.root / part).mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "jobs.sqlite3"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    # -- plumbing ----------------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the database write lock from its first statement."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _read(self, sql: str, params: Sequence = ()) -> list[dict]:
        with self._connect() as db:
            return [dict(row) for row in db.execute(sql, params)]

    def path(self, relative: str) -> Path:
        return self.root / relative

    def temp_path(self, suffix: str = "") -> Path:
        """A new partial file name in tmp/ that names its writer (host and pid, see :func:`partial_owner`).

        Why: a process killed mid-write never deletes its partial file; the
        name lets a later start tell a dead writer's leftovers from the files
        that live processes sharing the data directory are still writing.
        """
        return self.root / "tmp" / f"{HOST_TAG}~{os.getpid()}~{new_id()}{suffix}.part"

    @contextmanager
    def partial(self, suffix: str = "") -> Iterator[Path]:
        """A new partial file name (:meth:`temp_path`), known to be this process's until it is deleted at exit.

        Why: the pid in a partial's name may be that of a killed earlier
        process that this one now has (a container restarts with the same
        hostname and small pids). Only the names registered here are certainly
        being written by this process; the cleanup at start keeps those and
        treats other partials of its pid like those of any pid that may have
        been reused.
        """
        path = self.temp_path(suffix)
        _WRITING.add(path.name)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)
            _WRITING.discard(path.name)

    def partials(self) -> list[Path]:
        """The partial files in tmp/ (of every process using this data directory)."""
        try:
            return [path for path in (self.root / "tmp").iterdir() if path.name.endswith(".part")]
        except FileNotFoundError:  # tmp/ removed by hand: nothing to clean up
            return []

    # -- assets ------------------------------------------------------------------------------------

    def adopt(self, project_id: str, name: str, temp: Path, content_type: str) -> dict:
        """Move a complete temporary file into the asset tree and record it as a READY source asset.

        On any failure (file system, database) the asset's directory is removed
        again: nothing is left that no row points to.
        """
        asset_id = new_id()
        relative = Path("assets") / check_project(project_id) / asset_id / check_name(name)
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(temp, target)
            size = target.stat().st_size
            with self.transaction() as db:
                db.execute("INSERT INTO assets (asset_id, project_id, kind, name, path, size, content_type, state,"
                           " created_at) VALUES (?, ?, 'source', ?, ?, ?, ?, 'READY', ?)",
                           (asset_id, project_id, name, relative.as_posix(), size, content_type, time.time()))
        except BaseException:
            shutil.rmtree(target.parent, ignore_errors=True)  # this asset's own directory (a fresh id)
            raise
        return {"asset_id": asset_id, "name": name, "size": size}

    def import_file(self, project_id: str, source: str | os.PathLike, content_type: str,
                    name: str | None = None) -> dict:
        """Copy a file from disk into the store (the command-line import)."""
        with self.partial() as temp:
            shutil.copyfile(source, temp)
            return self.adopt(project_id, name or Path(source).name, temp, content_type)

    def asset(self, project_id: str, asset_id: str) -> dict | None:
        rows = self._read("SELECT * FROM assets WHERE project_id = ? AND asset_id = ?", (project_id, asset_id))
        return rows[0] if rows else None

    # -- tasks -------------------------------------------------------------------------------------

    def create_task(self, project_id: str, asset_id: str, fmt: str) -> tuple[dict, bool] | None:
        """The task for (asset, format): an existing queued/running/succeeded one, or a new QUEUED one.

        Returns (task row, created) or None when the source asset does not exist in the project.
        """
        with self.transaction() as db:
            asset = db.execute("SELECT name FROM assets WHERE project_id = ? AND asset_id = ? AND kind = 'source'"
                               " AND state = 'READY'", (project_id, asset_id)).fetchone()
            if asset is None:
                return None
            existing = db.execute(
                f"SELECT * FROM tasks WHERE project_id = ? AND asset_id = ? AND format = ? AND status IN "
                f"({', '.join('?' * len(REUSABLE))}) ORDER BY seq DESC LIMIT 1",
                (project_id, asset_id, fmt, *REUSABLE)).fetchone()
            if existing is not None:
                return dict(existing), False
            audio_id = new_id()
            extension, content_type = OUTPUTS[fmt]
            now = time.time()
            db.execute("INSERT INTO tasks (audio_asset_id, project_id, asset_id, format, status, created_at)"
                       " VALUES (?, ?, ?, ?, 'QUEUED', ?)", (audio_id, project_id, asset_id, fmt, now))
            db.execute("INSERT INTO assets (asset_id, project_id, kind, name, content_type, state, created_at)"
                       " VALUES (?, ?, 'audio', ?, ?, 'PENDING', ?)",
                       (audio_id, project_id, Path(asset["name"]).stem + extension, content_type, now))
            row = db.execute("SELECT * FROM tasks WHERE audio_asset_id = ?", (audio_id,)).fetchone()
            return dict(row), True

    def task(self, project_id: str, asset_id: str, fmt: str | None = None) -> dict | None:
        """The newest task for the asset (and format, when given)."""
        sql = "SELECT * FROM tasks WHERE project_id = ? AND asset_id = ?"
        params: list = [project_id, asset_id]
        if fmt:
            sql += " AND format = ?"
            params.append(fmt)
        rows = self._read(sql + " ORDER BY seq DESC LIMIT 1", params)
        return rows[0] if rows else None

    def task_by_audio(self, audio_asset_id: str) -> dict | None:
        rows = self._read("SELECT * FROM tasks WHERE audio_asset_id = ?", (audio_asset_id,))
        return rows[0] if rows else None

    def cancel(self, project_id: str, asset_id: str, fmt: str | None = None) -> tuple[str, list[str]]:
        """Cancel the asset's QUEUED tasks: ("cancelled", ids), ("not_queued", []) or ("no_task", [])."""
        where = "project_id = ? AND asset_id = ?" + (" AND format = ?" if fmt else "")
        params = (project_id, asset_id, fmt) if fmt else (project_id, asset_id)
        with self.transaction() as db:
            queued = [row[0] for row in db.execute(f"SELECT audio_asset_id FROM tasks WHERE {where}"
                                                   " AND status = 'QUEUED'", params)]
            now = time.time()
            for audio_id in queued:
                db.execute("UPDATE tasks SET status = 'CANCELLED', finished_at = ? WHERE audio_asset_id = ?"
                           " AND status = 'QUEUED'", (now, audio_id))
                db.execute("UPDATE assets SET state = 'CANCELLED' WHERE asset_id = ?", (audio_id,))
            if queued:
                return "cancelled", queued
            any_task = db.execute(f"SELECT 1 FROM tasks WHERE {where} LIMIT 1", params).fetchone()
            return ("not_queued" if any_task else "no_task"), []

    def claim(self, owner: str, lease: float) -> dict | None:
        """Atomically move the oldest QUEUED task to RUNNING for ``owner``; None when the queue is empty."""
        now = time.time()
        with self.transaction() as db:
            row = db.execute("SELECT audio_asset_id FROM tasks WHERE status = 'QUEUED' ORDER BY seq LIMIT 1"
                             ).fetchone()
            if row is None:
                return None
            claimed = db.execute("UPDATE tasks SET status = 'RUNNING', owner = ?, lease_until = ?, started_at = ?,"
                                 " attempts = attempts + 1 WHERE audio_asset_id = ? AND status = 'QUEUED'",
                                 (owner, now + lease, now, row[0])).rowcount
            if claimed != 1:
                return None
            task = db.execute("SELECT tasks.*, assets.path AS source_path FROM tasks JOIN assets ON"
                              " assets.asset_id = tasks.asset_id WHERE tasks.audio_asset_id = ?", (row[0],)
                              ).fetchone()
            return dict(task)

    def renew(self, audio_asset_id: str, owner: str, lease: float) -> bool:
        """Extend a running task's lease; False when ``owner`` no longer holds it."""
        with self.transaction() as db:
            return db.execute("UPDATE tasks SET lease_until = ? WHERE audio_asset_id = ? AND status = 'RUNNING'"
                              " AND owner = ?", (time.time() + lease, audio_asset_id, owner)).rowcount == 1

    def release(self, audio_asset_id: str, owner: str | None) -> bool:
        """Put a RUNNING task back in the queue (its worker stopped, or its owner is gone)."""
        with self.transaction() as db:
            return db.execute("UPDATE tasks SET status = 'QUEUED', owner = NULL, lease_until = NULL,"
                              " started_at = NULL WHERE audio_asset_id = ? AND status = 'RUNNING' AND owner IS ?",
                              (audio_asset_id, owner)).rowcount == 1

    def running(self) -> list[dict]:
        return self._read("SELECT audio_asset_id, owner, lease_until FROM tasks WHERE status = 'RUNNING'")

    def succeed(self, task: dict, owner: str, temp: Path, result: dict, urls: Sequence[str]) -> dict | None:
        """Record success: move the output into place, mark the audio asset READY, add the event."""
        extension, _ = OUTPUTS[task["format"]]
        relative = Path("audio") / task["project_id"] / f"{task['audio_asset_id']}{extension}"
        with self.transaction() as db:
            if not self._end(db, task, owner, SUCCEEDED, result=json.dumps(result)):
                return None
            (self.root / relative).parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, self.root / relative)
            db.execute("UPDATE assets SET state = 'READY', path = ?, size = ? WHERE asset_id = ?",
                       (relative.as_posix(), result["size"], task["audio_asset_id"]))
            return self._event(db, task["audio_asset_id"], urls)

    def fail(self, task: dict, owner: str, reason: str, reason_code: str, urls: Sequence[str]) -> dict | None:
        with self.transaction() as db:
            if not self._end(db, task, owner, FAILED, reason=reason, reason_code=reason_code):
                return None
            db.execute("UPDATE assets SET state = 'FAILED' WHERE asset_id = ?", (task["audio_asset_id"],))
            return self._event(db, task["audio_asset_id"], urls)

    @staticmethod
    def _end(db: sqlite3.Connection, task: dict, owner: str, status: str, **fields: str) -> bool:
        columns = "".join(f", {name} = :{name}" for name in fields)
        return db.execute(f"UPDATE tasks SET status = :status, finished_at = :now, owner = NULL, lease_until = NULL"
                          f"{columns} WHERE audio_asset_id = :id AND status = 'RUNNING' AND owner = :owner",
                          {"status": status, "now": time.time(), "id": task["audio_asset_id"], "owner": owner,
                           **fields}).rowcount == 1

    # -- events and deliveries ---------------------------------------------------------------------

    @staticmethod
    def _event(db: sqlite3.Connection, audio_asset_id: str, urls: Sequence[str]) -> dict:
        row = dict(db.execute("SELECT * FROM tasks WHERE audio_asset_id = ?", (audio_asset_id,)).fetchone())
        now = time.time()
        event = {"event_type": EVENT_TYPES[row["status"]], "project_id": row["project_id"],
                 "create_time": iso_time(now), "task": task_json(row)}
        cursor = db.execute("INSERT INTO events (project_id, audio_asset_id, event_type, payload, created_at)"
                            " VALUES (?, ?, ?, ?, ?)", (row["project_id"], audio_asset_id, event["event_type"],
                                                        json.dumps(event), now))
        event["event_id"] = cursor.lastrowid
        for url in dict.fromkeys(urls):
            db.execute("INSERT INTO deliveries (event_id, url, state, next_attempt_at) VALUES (?, ?, 'PENDING', ?)",
                       (cursor.lastrowid, url, now))
        return event

    def events(self, project_id: str, after: int = 0, limit: int = 100) -> list[dict]:
        rows = self._read("SELECT event_id, payload FROM events WHERE project_id = ? AND event_id > ?"
                          " ORDER BY event_id LIMIT ?", (project_id, after, limit))
        return [{**json.loads(row["payload"]), "event_id": row["event_id"]} for row in rows]

    def due_deliveries(self, now: float, limit: int = 20) -> list[dict]:
        return self._read("SELECT deliveries.*, events.payload FROM deliveries JOIN events USING (event_id)"
                          " WHERE state = 'PENDING' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
                          (now, limit))

    def next_delivery_at(self) -> float | None:
        rows = self._read("SELECT MIN(next_attempt_at) AS due FROM deliveries WHERE state = 'PENDING'")
        return rows[0]["due"]

    def record_delivery(self, event_id: int, url: str, *, delivered: bool, error: str | None = None,
                        retry_at: float | None = None) -> None:
        """After one attempt: DELIVERED, PENDING again at ``retry_at``, or FAILED (no retry left)."""
        state = "DELIVERED" if delivered else "PENDING" if retry_at is not None else "FAILED"
        with self.transaction() as db:
            db.execute("UPDATE deliveries SET state = ?, attempts = attempts + 1, last_error = ?,"
                       " next_attempt_at = COALESCE(?, next_attempt_at), delivered_at = ? WHERE event_id = ?"
                       " AND url = ?", (state, error, retry_at, time.time() if delivered else None, event_id, url))

    def deliveries(self, event_id: int | None = None) -> list[dict]:
        if event_id is None:
            return self._read("SELECT * FROM deliveries ORDER BY event_id, url")
        return self._read("SELECT * FROM deliveries WHERE event_id = ? ORDER BY url", (event_id,))
