"""The studio's history in SQLite: jobs (prompts, parameters, manifests, asset paths) and the chat
view's conversations (system prompt, sampling settings, messages in order).

The database lives next to the bundles (``DATA/history.sqlite3``, ``DATA/jobs/<id>/``). It runs in
WAL mode with synchronous=FULL, so a server killed at any moment leaves a consistent database; on
the next start, jobs that were queued or running are marked failed ("the server stopped during
the job"). Tables an older database lacks are created when it is opened. Each call opens its own
connection: SQLite connections must not cross threads, and the server touches the history from its
event loop and from its job worker.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
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
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    title TEXT NOT NULL,           -- the first user message, shortened ('' until there is one)
    system TEXT NOT NULL,          -- the system prompt ('' for none)
    settings TEXT NOT NULL         -- sampling settings as JSON
);
CREATE INDEX IF NOT EXISTS conversations_updated ON conversations (updated DESC);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,      -- 0, 1, 2... in the order the turns were said
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (conversation_id, ordinal)
);
"""
INTERRUPTED = "the server stopped during the job"
TITLE_CHARS = 60


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
        self.conversations = Conversations(self._connect)

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


def conversation_title(text: str) -> str:
    """The first user message on one line, cut at TITLE_CHARS."""
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "\u2026"


class Conversations:
    """The chat view's conversations, in the same database file as the jobs (``History.path``)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect  # History's: the same file, pragmas and one connection per call

    def create(self, system: str, settings: dict) -> dict:
        conv_id = uuid.uuid4().hex
        now = time.time()
        with closing(self._connect()) as db, db:
            db.execute("INSERT INTO conversations (id, created, updated, title, system, settings) "
                       "VALUES (?, ?, ?, '', ?, ?)", (conv_id, now, now, system, json.dumps(settings)))
        return self.get(conv_id)  # type: ignore[return-value]

    def update(self, conv_id: str, system: str | None = None, settings: dict | None = None) -> dict | None:
        values: dict = {"updated": time.time()}
        if system is not None:
            values["system"] = system
        if settings is not None:
            values["settings"] = json.dumps(settings)
        cols = ", ".join(f"{k} = ?" for k in values)
        with closing(self._connect()) as db, db:
            if db.execute(f"UPDATE conversations SET {cols} WHERE id = ?", (*values.values(), conv_id)).rowcount == 0:
                return None
        return self.get(conv_id)

    def append(self, conv_id: str, role: str, content: str) -> dict | None:
        """Add a message after the last one; the first user message also names the conversation."""
        now = time.time()
        with closing(self._connect()) as db, db:
            if db.execute("SELECT 1 FROM conversations WHERE id = ?", (conv_id,)).fetchone() is None:
                return None
            # One statement picks the next ordinal and inserts, so two appends can never share one.
            ordinal = db.execute(
                "INSERT INTO messages (conversation_id, ordinal, role, content, created) "
                "SELECT ?, COALESCE(MAX(ordinal), -1) + 1, ?, ?, ? FROM messages WHERE conversation_id = ? "
                "RETURNING ordinal", (conv_id, role, content, now, conv_id)).fetchone()[0]
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conv_id))
            if role == "user":
                db.execute("UPDATE conversations SET title = ? WHERE id = ? AND title = ''",
                           (conversation_title(content), conv_id))
        return {"conversation_id": conv_id, "ordinal": ordinal, "role": role, "content": content, "created": now}

    def get(self, conv_id: str) -> dict | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM conversations WHERE id = ?", (conv_id,)).fetchone()
            if row is None:
                return None
            msgs = db.execute("SELECT ordinal, role, content, created FROM messages WHERE conversation_id = ? "
                              "ORDER BY ordinal", (conv_id,)).fetchall()
        return {**self._row(row), "messages": [dict(m) for m in msgs]}

    def list(self, limit: int = 50) -> list[dict]:
        """Most recently used first, each with its message count (not the messages)."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count "
                "FROM conversations c ORDER BY c.updated DESC, c.rowid DESC LIMIT ?", (limit,)).fetchall()
        return [self._row(r) for r in rows]

    def delete(self, conv_id: str) -> bool:
        with closing(self._connect()) as db, db:
            db.execute("DELETE FROM messages WHERE conversation_id = ?", (conv_id,))
            return db.execute("DELETE FROM conversations WHERE id = ?", (conv_id,)).rowcount > 0

    @staticmethod
    def _row(row: sqlite3.Row) -> dict:
        d = dict(row)
        d["settings"] = json.loads(d["settings"])
        return {"object": "conversation", **d}
