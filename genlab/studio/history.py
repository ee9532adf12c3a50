"""The studio's job history in SQLite: jobs, prompts, parameters, manifests and asset paths.

The database lives next to the bundles (``DATA/history.sqlite3``, ``DATA/jobs/<id>/``). It runs in
WAL mode with synchronous=FULL, so a server killed at any moment leaves a consistent database; on
the next start, jobs that were queued or running are marked failed ("the server stopped during
the job"). Each call opens its own connection: SQLite connections must not cross threads, and the
server touches the history from its event loop and from its job worker.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path

from genlab.errors import GenlabError

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    prompt TEXT NOT NULL,
    params TEXT NOT NULL,          -- the StudioRequest as JSON
    title TEXT,
    error TEXT,
    manifest TEXT,                 -- manifest.json of the finished bundle
    bundle_dir TEXT,               -- relative to the data folder
    zip_path TEXT
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created DESC);
"""
INTERRUPTED = "the server stopped during the job"


class HistoryError(GenlabError):
    """A history database that cannot be opened (not SQLite, or from a newer genlab)."""


class History:
    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "history.sqlite3"
        try:
            with closing(self._connect()) as db, db:
                db.executescript(SCHEMA)
                # Whatever was in flight when the last server stopped can never finish now.
                db.execute("UPDATE jobs SET status = 'failed', error = ?, updated = ? "
                           "WHERE status IN ('queued', 'running')", (INTERRUPTED, time.time()))
        except sqlite3.DatabaseError as e:
            raise HistoryError(f"cannot open the studio history {self.path}: {e}") from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        return db

    def job_dir(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / job_id

    def create(self, prompt: str, params: dict) -> str:
        job_id = uuid.uuid4().hex
        now = time.time()
        with closing(self._connect()) as db, db:
            db.execute("INSERT INTO jobs (id, created, updated, status, prompt, params) VALUES (?, ?, ?, 'queued', ?, ?)",
                       (job_id, now, now, prompt, json.dumps(params)))
        return job_id

    def set_running(self, job_id: str) -> None:
        self._update(job_id, status="running")

    def set_done(self, job_id: str, manifest: dict, bundle_dir: Path, zip_path: Path) -> None:
        self._update(job_id, status="done", title=manifest.get("title"), manifest=json.dumps(manifest),
                     bundle_dir=str(bundle_dir.relative_to(self.data_dir)),
                     zip_path=str(zip_path.relative_to(self.data_dir)))

    def set_failed(self, job_id: str, error: str) -> None:
        self._update(job_id, status="failed", error=error)

    def _update(self, job_id: str, **values) -> None:
        values["updated"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in values)
        with closing(self._connect()) as db, db:
            db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*values.values(), job_id))

    def get(self, job_id: str) -> dict | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._row(row) if row else None

    def list(self, limit: int = 50) -> list[dict]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [self._row(r, with_manifest=False) for r in rows]

    def delete(self, job_id: str) -> bool:
        with closing(self._connect()) as db, db:
            gone = db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        return gone

    def _row(self, row: sqlite3.Row, with_manifest: bool = True) -> dict:
        d = dict(row)
        d["params"] = json.loads(d["params"])
        manifest = json.loads(d["manifest"]) if d["manifest"] else None
        d["manifest"] = manifest if with_manifest else None
        d["assets"] = sorted(manifest["assets"]) if manifest else []
        return d
