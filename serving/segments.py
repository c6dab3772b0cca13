"""Segment exports: Mirror's own small job runner, in place of BentoML's `@bentoml.task`.

Why not BentoML's task store: it keeps every submitted request, headers included (the caller's
`Authorization: Bearer` key), in a SQLite file under BENTOML_HOME, for ever. Here a job is a row in
memory (its options and, for a list, the ids asked for) and one result file under MIRROR_EXPORT_DIR;
nothing of the request is written anywhere.

- A thread pool of `workers` runs jobs; at most `queue_size` more wait (`ExportQueueFull` beyond: the
  service answers 429), so a burst of submits cannot pile up work or memory.
- A job streams: the requested ids (profile ids, or the retailer's customer ids, emails or phones,
  one kind per job), or the store's profile ids, are scored `chunk_size` at a time and each chunk is
  appended to the file (a parquet row group, or CSV rows) before the next is scored, so memory holds
  one chunk whatever the store's size; the event log is never read. The file's columns are the
  scoring's (`/scores`' fields); mappings (the message parameters) are written as JSON text.
- The file is written as `.segment-<task_id>.<format>.part` and renamed when complete: a download never
  sees half a file, and a `.part` no running job owns (a crash) is deleted.
- Files older than `retention_s` are deleted (a sweep every few seconds to a minute), and erasure
  (`erase`) deletes every finished file that holds the person and stops a running job that already
  wrote them; a running job leaves them out of what it writes next.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.schema import PROFILE_ID
from serving.decisions import HOLDOUT, MESSAGE_PARAMS, SCORE_ID
from serving.nba import CHURN_PROBABILITY, PURCHASE_PROPENSITY

logger = logging.getLogger("mirror.segments")

#: Score columns written as numbers, as booleans, as JSON text; every other column is written as text.
NUMERIC_COLUMNS = frozenset({CHURN_PROBABILITY, PURCHASE_PROPENSITY})
BOOL_COLUMNS = frozenset({HOLDOUT})
JSON_COLUMNS = frozenset({MESSAGE_PARAMS})
#: format -> content type of the download (parquet's is IANA-registered since 2024)
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}

_TASK_ID = re.compile(r"^[0-9a-f]{32}$")
_RESULT_FILE = re.compile(r"^segment-([0-9a-f]{32})\.(csv|parquet)$")
_PART_FILE = re.compile(r"^\.segment-([0-9a-f]{32})\.(csv|parquet)\.part$")
#: files of the BentoML task this runner replaced (`scores-<UTC stamp>.<format>`): never served, but
#: still deleted past retention and scanned on erasure (named by their stem where a task id would be)
_LEGACY_FILE = re.compile(r"^(scores-\d{8}T\d{6,12})\.(csv|parquet)$")
_READ_BATCH = 65_536


class Scorer(Protocol):
    """Scores one chunk: `ids` of kind `by` (None: profile ids of a whole-store export), with the
    job's `options`. Returns (rows, with a PROFILE_ID column; the ids of the chunk the store does not
    know). Called with `ids=[]` for the columns alone."""

    def __call__(self, ids: Sequence[str], by: str | None, /, **options: Any) -> tuple[pd.DataFrame, list[str]]: ...


class JobStatus(StrEnum):
    """BentoML's task status names, kept for clients of the earlier task API, plus `deleted`."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    DELETED = "deleted"


class ExportQueueFull(Exception):
    """Every worker is busy and the queue is full: retry later (429)."""


class ExportNotReady(Exception):
    """The job has not finished yet (409)."""


class ExportGone(Exception):
    """The job failed, or its file was deleted (erasure, retention) (410); the message says which."""


@dataclass(eq=False)
class Job:
    """One export: its options, progress and outcome. Mutable; guarded by `lock` while it runs."""

    task_id: str
    format: str
    #: the ids to score, in order: the request's list, or the store's (fetched when the job starts)
    ids: Sequence[str] | None
    listed: bool  # the request named the ids (then unknown ones are reported)
    created_at: datetime
    #: what the listed ids are (a profile id, customer id, email or phone); None: the whole store
    by: str | None = None
    #: passed to the scorer (campaign, ...)
    options: dict[str, Any] = field(default_factory=dict)
    status: JobStatus = JobStatus.IN_PROGRESS
    executed_at: datetime | None = None
    completed_at: datetime | None = None
    rows: int | None = 0
    #: how many of `ids` went through a written chunk
    written: int = 0
    unknown: list[str] = field(default_factory=list)
    error: str | None = None
    #: profiles erased while the job was queued or running: left out of every chunk written after
    erased: set[str] = field(default_factory=set)
    #: profiles written so far, for ids that are not profile ids (else `ids[:written]` tells)
    written_profiles: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def by_profile(self) -> bool:
        return self.by in (None, PROFILE_ID)

    def wrote(self, profile_id: str) -> bool:
        """Whether a chunk already in the file covered `profile_id`."""
        if not self.by_profile:
            return profile_id in self.written_profiles
        if not self.ids or not self.written:
            return False
        try:
            self.ids.index(profile_id, 0, self.written)
        except ValueError:
            return False
        return True


def is_task_id(value: str) -> bool:
    return bool(_TASK_ID.match(value))


def result_name(task_id: str, fmt: str) -> str:
    """The download's file name (also the result file's name on the server)."""
    return f"segment-{task_id}.{fmt}"


def file_holds(path: Path, profile_id: str) -> bool:
    """Whether an export file has a row for `profile_id`, read column-wise in batches (flat memory)."""
    if path.suffix == ".parquet":
        with pq.ParquetFile(path) as f:
            batches: Iterator[pa.RecordBatch] = f.iter_batches(batch_size=_READ_BATCH, columns=[PROFILE_ID])
            return any(pc.any(pc.equal(b.column(0), profile_id)).as_py() for b in batches)
    with pa.OSFile(str(path)) as src:
        reader = pacsv.open_csv(src, read_options=pacsv.ReadOptions(block_size=1 << 20),
                                convert_options=pacsv.ConvertOptions(include_columns=[PROFILE_ID],
                                                                     column_types={PROFILE_ID: pa.string()}))
        return any(pc.any(pc.equal(b.column(0), profile_id)).as_py() for b in reader)


def export_schema(columns: Sequence[str]) -> pa.Schema:
    """An export file's schema: the scoring's columns in its order, typed by name, so that every chunk
    writes the same schema (a chunk of all-null scores would otherwise infer another type)."""
    if PROFILE_ID not in columns:
        raise ValueError(f"the scoring returns no {PROFILE_ID} column")
    return pa.schema([(c, pa.float64() if c in NUMERIC_COLUMNS else pa.bool_() if c in BOOL_COLUMNS else pa.string())
                      for c in columns])


def _json_text(v: Any) -> str | None:
    """A mapping as JSON text (sorted keys: the same parameters, the same text); None stays null."""
    return None if v is None else json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)


def _to_arrow(table: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    out = table[list(schema.names)]
    encode = [c for c in schema.names if c in JSON_COLUMNS]
    if encode:  # a copy: the scorer's frame is never changed
        out = out.assign(**{c: [_json_text(v) for v in out[c]] for c in encode})
    return pa.Table.from_pandas(out, schema=schema, preserve_index=False)


def _private_open(path: Path) -> BinaryIO:
    """Open for writing, readable by the service's user only (the file holds per-person scores)."""
    return open(path, "wb", opener=lambda p, flags: os.open(p, flags, 0o600))  # noqa: SIM115


def _now() -> datetime:
    return datetime.now(UTC)


class SegmentRunner:
    """Runs segment exports in the background; see the module docstring for the rules."""

    def __init__(self, export_dir: Path, *, score: Scorer,
                 list_profiles: Callable[[], Sequence[str]], chunk_size: int, workers: int, queue_size: int,
                 retention_s: float, clock: Callable[[], float] = time.time) -> None:
        if chunk_size < 1 or workers < 1 or queue_size < 0 or retention_s <= 0:
            raise ValueError("chunk_size and workers must be >= 1, queue_size >= 0, retention_s > 0")
        self.export_dir = Path(export_dir)
        self._score, self._list_profiles = score, list_profiles
        self.chunk_size, self.retention_s, self._clock = chunk_size, float(retention_s), clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mirror-export")
        self._slots = threading.BoundedSemaphore(workers + queue_size)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- life cycle ----------------------------------------------------------------------------
    def start(self, sweep_every_s: float | None = None) -> None:
        """Make the export folder, delete what is past retention or half-written, start the sweeper."""
        self.export_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.sweep()
        interval = sweep_every_s or min(60.0, max(0.5, self.retention_s / 4))
        threading.Thread(target=self._sweep_forever, args=(interval,), name="mirror-export-sweeper",
                         daemon=True).start()

    def close(self) -> None:
        """Stop the sweeper and the jobs (a running one fails at its next chunk: submit it again)."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _sweep_forever(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.sweep()
            except Exception:  # a failed sweep is retried at the next tick
                logger.exception("segment export sweep failed")

    # -- jobs ----------------------------------------------------------------------------------
    def submit(self, ids: Sequence[str] | None, fmt: str, *, by: str = PROFILE_ID,
               options: dict[str, Any] | None = None) -> Job:
        """Queue an export of `ids` (of kind `by`), or of the whole store (None); the request was validated
        by its schema. ExportQueueFull when no slot is free."""
        if fmt not in MEDIA_TYPES:
            raise ValueError(f"format: expected one of {', '.join(MEDIA_TYPES)}")
        if not self._slots.acquire(blocking=False):
            raise ExportQueueFull("too many segment exports running or queued; retry later")
        job = Job(task_id=uuid.uuid4().hex, format=fmt, listed=ids is not None,
                  ids=None if ids is None else list(ids), created_at=_now(), by=None if ids is None else by,
                  options=dict(options or {}))
        with self._lock:
            self._jobs[job.task_id] = job
        try:
            self._pool.submit(self._run, job)
        except RuntimeError:  # shut down
            self._slots.release()
            with self._lock:
                self._jobs.pop(job.task_id, None)
            raise
        return job

    def job(self, task_id: str) -> Job | None:
        """The job, or for a file left by an earlier run of the service, a completed job read off disk."""
        if not is_task_id(task_id):
            return None
        with self._lock:
            job = self._jobs.get(task_id)
        if job is not None:
            return job
        for fmt in MEDIA_TYPES:
            path = self.export_dir / result_name(task_id, fmt)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            rows = None
            if fmt == "parquet":
                with contextlib.suppress(OSError, pa.ArrowException), pq.ParquetFile(path) as f:
                    rows = f.metadata.num_rows
            done = datetime.fromtimestamp(stat.st_mtime, UTC)
            return Job(task_id=task_id, format=fmt, ids=None, listed=False, created_at=done, executed_at=done,
                       completed_at=done, status=JobStatus.COMPLETED, rows=rows)
        return None

    def open_result(self, task_id: str) -> tuple[BinaryIO, str, str, int]:
        """(open file, download name, content type, size) of a completed job's file.

        KeyError: no such task (or expired); ExportNotReady; ExportGone. The file is opened here, so a
        deletion after this call (retention, erasure) cannot break a download already started."""
        job = self.job(task_id)
        if job is None:
            raise KeyError(task_id)
        if job.status is JobStatus.IN_PROGRESS:
            raise ExportNotReady(f"task {task_id} has not finished")
        if job.status is not JobStatus.COMPLETED:
            raise ExportGone(job.error or f"task {task_id} {job.status.value}")
        name = result_name(task_id, job.format)
        try:
            fh = open(self.export_dir / name, "rb")  # noqa: SIM115 - the response streams and closes it
        except FileNotFoundError as exc:
            raise ExportGone(f"task {task_id}: its file was deleted") from exc
        return fh, name, MEDIA_TYPES[job.format], os.fstat(fh.fileno()).st_size

    def _run(self, job: Job) -> None:
        part = self.export_dir / f".{result_name(job.task_id, job.format)}.part"
        try:
            job.executed_at = _now()
            if job.ids is None:
                ids = self._list_profiles()
                job.ids = ids if isinstance(ids, list) else list(ids)  # read only: no copy of a large list
            self._write(job, part)
            with job.lock:
                if job.status is JobStatus.IN_PROGRESS:
                    os.replace(part, self.export_dir / result_name(job.task_id, job.format))
                    job.status, job.completed_at = JobStatus.COMPLETED, _now()
            logger.info("segment export %s %s: %s rows", job.task_id, job.status.value, job.rows)
        except Exception as exc:
            with job.lock:
                if job.status is JobStatus.IN_PROGRESS:
                    job.status, job.completed_at = JobStatus.FAILED, _now()
                    job.error = "the export failed; the server log has the cause"
            # the type only: a message could quote data (ids); the traceback is for debugging
            logger.error("segment export %s failed: %s", job.task_id, type(exc).__name__)
            logger.debug("segment export %s failed", job.task_id, exc_info=True)
        finally:
            part.unlink(missing_ok=True)
            job.ids = None  # the id list of a whole-store export is large: not kept once done
            self._slots.release()

    def _write(self, job: Job, part: Path) -> None:
        ids = job.ids or []
        schema = export_schema(list(self._score([], job.by, **job.options)[0].columns))  # the columns alone
        with _private_open(part) as fh:
            writer = pq.ParquetWriter(fh, schema) if job.format == "parquet" else pacsv.CSVWriter(fh, schema)
            try:
                for start in range(0, len(ids), self.chunk_size):
                    piece = ids[start:start + self.chunk_size]
                    # outside the lock: erasure waits for a write, not a scoring
                    table, unknown = self._score(piece, job.by, **job.options)
                    with job.lock:
                        if job.status is not JobStatus.IN_PROGRESS:
                            return  # deleted by an erasure: stop here
                        if self._stop.is_set():
                            raise RuntimeError("the service is shutting down")
                        if job.erased:
                            dropped = table[PROFILE_ID].isin(job.erased)
                            if job.listed and SCORE_ID in table:  # no longer known: reported as unknown
                                unknown = [*unknown, *table.loc[dropped, SCORE_ID].astype(str)]
                            table = table[~dropped]
                        if len(table):
                            writer.write_table(_to_arrow(table, schema))
                        job.written, job.rows = start + len(piece), (job.rows or 0) + len(table)
                        if not job.by_profile:
                            job.written_profiles.update(table[PROFILE_ID].astype(str))
                        if job.listed and unknown:
                            missing = set(unknown)
                            job.unknown.extend(v for v in piece if v in missing)  # in the order asked
            finally:
                writer.close()

    # -- erasure and retention -----------------------------------------------------------------
    def erase(self, profile_id: str) -> list[str]:
        """Delete every export that holds `profile_id`; the task ids, sorted.

        A queued or running job leaves the person out of every chunk it writes from now on; one that
        already wrote them is stopped and its file deleted (status `deleted`: submit it again). Finished
        files are scanned on disk, those of an earlier run of the service included."""
        deleted: set[str] = set()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            with job.lock:
                if job.status is not JobStatus.IN_PROGRESS:
                    continue
                job.erased.add(profile_id)
                if job.wrote(profile_id):
                    job.status, job.completed_at = JobStatus.DELETED, _now()
                    job.error = "deleted: a profile it held was erased while it ran; submit it again"
                    (self.export_dir / f".{result_name(job.task_id, job.format)}.part").unlink(missing_ok=True)
                    deleted.add(job.task_id)
        for path, task_id in self._result_files():
            try:
                holds = file_holds(path, profile_id)
            except FileNotFoundError:
                continue
            except (OSError, pa.ArrowException):  # unreadable: it cannot be shown not to hold the person
                logger.warning("segment export %s is unreadable; deleted on erasure", task_id)
                holds = True
            if holds:
                path.unlink(missing_ok=True)
                deleted.add(task_id)
                with self._lock:
                    job = self._jobs.get(task_id)
                if job is not None:
                    with job.lock:
                        job.status = JobStatus.DELETED
                        job.error = "deleted: it held a profile that was erased"
        return sorted(deleted)

    def sweep(self, now: float | None = None) -> list[str]:
        """Delete result files older than the retention, and half-written files no job is writing;
        forget finished jobs past the retention. The task ids whose files were deleted."""
        cutoff = (self._clock() if now is None else now) - self.retention_s
        removed: list[str] = []
        with self._lock:
            for task_id, job in list(self._jobs.items()):
                if job.status is not JobStatus.IN_PROGRESS and job.completed_at is not None \
                        and job.completed_at.timestamp() < cutoff:
                    del self._jobs[task_id]
        for path, task_id in self._result_files():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(task_id)
        for path in self.export_dir.glob(".segment-*.part") if self.export_dir.is_dir() else ():
            m = _PART_FILE.match(path.name)
            if m is None:
                continue
            with self._lock:  # a job is in the table before its file exists: checked here, not before
                job = self._jobs.get(m.group(1))
                if job is None or job.status is not JobStatus.IN_PROGRESS:
                    path.unlink(missing_ok=True)
        if removed:
            logger.info("segment exports past retention deleted: %d", len(removed))
        return removed

    def _result_files(self) -> list[tuple[Path, str]]:
        if not self.export_dir.is_dir():
            return []
        return [(p, m.group(1)) for p in self.export_dir.iterdir()
                if (m := _RESULT_FILE.match(p.name) or _LEGACY_FILE.match(p.name))]
