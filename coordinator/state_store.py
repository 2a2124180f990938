"""What a coordinator keeps across restarts, in one SQLite file in its state directory:
its id (which its workers' leases name), its jobs, and its ready placements.

A job's record (the ``inference_pb2.Job`` that GetJob returns) is written when the
job is submitted and at every change of state; the ``HISTORY`` most recently finished
are kept. A job still unfinished when the store opens was running when its
coordinator died: it is recorded FAILED, saying so. A placement is recorded once it
is ready and forgotten when it is dropped, so a coordinator that restarts knows which
placements it may find still warm on its workers (``PlacementLifecycle.adopt``).

One coordinator at a time uses a state directory (an exclusive ``flock`` on its lock
file, let go by the kernel however the process ends): two with one id would both
hold their workers' leases.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
import uuid
from pathlib import Path

from ..v1 import inference_pb2
from .states import JobState

HISTORY = 1000  # finished jobs kept for GetJob and ListJobs
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,              -- a JobState: queued, ..., succeeded, failed, cancelled
    model TEXT NOT NULL,
    created REAL NOT NULL,            -- seconds since the epoch
    finished_at REAL,                 -- NULL until the job is finished
    generated_tokens INTEGER NOT NULL,
    error TEXT NOT NULL,
    record BLOB NOT NULL              -- the inference_pb2.Job that GetJob returns
);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at);
CREATE INDEX IF NOT EXISTS jobs_by_creation ON jobs (created);
CREATE TABLE IF NOT EXISTS placements (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL              -- JSON: placement_record.Placement.record()
);
"""


class StateDirError(RuntimeError):
    """The state directory cannot be used: one clear line for the user."""


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/exo-spec``, else ``~/.local/state/exo-spec``."""
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "exo-spec"


class StateStore:
    def __init__(self, directory: Path | None):
        """``directory`` None keeps nothing past the process: a fresh id, jobs in
        memory (``exo-spec serve``). StateDirError when the directory cannot be used."""
        self._lock = None
        try:
            if directory is None:
                self._db = sqlite3.connect(":memory:")
            else:
                directory.mkdir(parents=True, exist_ok=True)
                self._lock = _lock(directory / "coordinator.lock")
                self._db = sqlite3.connect(directory / "coordinator.sqlite3")
                # a commit is a write to the log, not an fsync of the whole file
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise StateDirError(f"{directory} holds state of schema {version}; this "
                                    f"exo-spec reads schema {SCHEMA_VERSION}")
            with self._db:
                self._db.executescript(SCHEMA)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.coordinator_id = self._identity()
            self._fail_unfinished()
        except (OSError, sqlite3.Error) as e:
            self.close()
            raise StateDirError(f"cannot use the state directory {directory}: "
                                f"{type(e).__name__}: {e}") from None
        except StateDirError:
            self.close()
            raise

    def close(self) -> None:
        if getattr(self, "_db", None) is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            self._lock.close()  # and with it the flock
            self._lock = None

    # -- identity ----------------------------------------------------------------------

    def _identity(self) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'coordinator_id'").fetchone()
        if row:
            return row[0]
        coordinator_id = "c-" + uuid.uuid4().hex[:12]
        with self._db:
            self._db.execute("INSERT INTO meta VALUES ('coordinator_id', ?)", (coordinator_id,))
        return coordinator_id

    # -- jobs --------------------------------------------------------------------------

    def save_job(self, job: inference_pb2.Job) -> None:
        """Write ``job``'s record; once it is finished, keep only the ``HISTORY`` most
        recently finished."""
        finished = job.finished_at.ToNanoseconds() / 1e9 if job.HasField("finished_at") \
            else None
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, JobState.from_proto(job.state), job.model,
                 job.created.ToNanoseconds() / 1e9, finished, job.generated_tokens,
                 job.error, job.SerializeToString()))
            if finished is not None:
                self._db.execute(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished_at IS "
                    "NOT NULL ORDER BY finished_at DESC LIMIT -1 OFFSET ?)", (HISTORY,))

    def job(self, job_id: str) -> inference_pb2.Job | None:
        row = self._db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return inference_pb2.Job.FromString(row[0]) if row else None

    def finished_jobs(self, states: set[JobState] | None = None) -> list[inference_pb2.Job]:
        """The finished jobs kept (in ``states``, if given), oldest first."""
        rows = self._db.execute(
            "SELECT state, record FROM jobs WHERE finished_at IS NOT NULL ORDER BY created")
        return [inference_pb2.Job.FromString(record) for state, record in rows
                if not states or state in states]

    def _fail_unfinished(self) -> None:
        rows = self._db.execute("SELECT record FROM jobs WHERE finished_at IS NULL").fetchall()
        for (blob,) in rows:
            job = inference_pb2.Job.FromString(blob)
            was = JobState.from_proto(job.state)
            job.state = JobState.FAILED.to_proto()
            job.error = (f"the coordinator stopped while the job was {was}; recorded as "
                         "failed when it started again")
            job.finished_at.FromNanoseconds(time.time_ns())
            self.save_job(job)

    # -- placements --------------------------------------------------------------------

    def save_placement(self, record: dict) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO placements VALUES (?, ?)",
                             (record["id"], json.dumps(record)))

    def forget_placement(self, placement_id: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM placements WHERE id = ?", (placement_id,))

    def placements(self) -> list[dict]:
        return [json.loads(r) for r, in self._db.execute("SELECT record FROM placements")]


def _lock(path: Path):
    """``path`` opened and exclusively locked, holding this process's pid;
    StateDirError when another process holds it."""
    f = open(path, "a+")  # noqa: SIM115: held open for as long as the store is
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise StateDirError(f"the state directory {path.parent} is in use by another "
                            f"coordinator (pid {holder}); one coordinator per --state-dir") \
            from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f
