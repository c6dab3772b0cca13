"""What /recommend and /similar_items served, recorded in the store without slowing the answer.

Why in the background: the answer is ~1 ms of in-memory work on the event loop, and a durable SQLite
write (a transaction under the store's one write lock, behind any bulk event append) would cost that much
again or far more. `ServedRecorder.submit` only queues the list; one writer thread takes whatever is
queued and writes it in one transaction (`ProfileStore.record_recommendations`). After the first list of a
batch it lingers `LINGER_S` so that the lists of that moment share one transaction: under load a write per
request (its commit and its Python work, which holds the GIL the requests need) would cost more than the
answer; at rest each list is written within `LINGER_S`.

What can be lost: nothing on a clean shutdown (`close` writes every queued list before the process exits;
the service calls it from its shutdown hook); on a crash (kill -9, power loss), the lists queued in the last
moments (at most `LINGER_S` plus one write's worth). A list whose record is lost only leaves its clicks
unattributed; the events themselves are stored as usual. A failed write is retried (with a pause) and
never dropped; when the queue is full (the store is stuck), `submit` writes the list itself: slower, but
nothing is lost.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence

from features.store import ServedList

logger = logging.getLogger("mirror.served")

#: Lists written per transaction at most.
MAX_BATCH = 500
#: Lists waiting at most (a few hundred bytes each) before `submit` writes the list itself.
MAX_QUEUE = 100_000
#: Pause after a failed write before the same batch is tried again (doubling up to RETRY_MAX_S).
RETRY_S, RETRY_MAX_S = 0.2, 5.0
#: How long the writer waits after a batch's first list for the others of that moment.
LINGER_S = 0.05

_STOP = object()


def new_recommendation_id() -> str:
    """A list's id: 128 random bits, nothing derived from the person, the items or the time."""
    return "rec_" + secrets.token_hex(16)


class ServedRecorder:
    """A queue in front of `record(lists) -> int` (the store's `record_recommendations`), drained by one
    writer thread (see the module doc for what a crash may lose)."""

    def __init__(self, record: Callable[[Sequence[ServedList]], int], *, max_batch: int = MAX_BATCH,
                 max_queue: int = MAX_QUEUE, linger_s: float = LINGER_S) -> None:
        if max_batch < 1 or max_queue < 1 or linger_s < 0:
            raise ValueError("max_batch and max_queue must be at least 1, linger_s not negative")
        self._record = record
        self._linger_s = linger_s
        self._max_batch = max_batch
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._pending = 0  # submitted and not yet written
        self._done = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> ServedRecorder:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mirror-served-writer", daemon=True)
            self._thread.start()
        return self

    def submit(self, served: ServedList) -> None:
        """Queue one list (returns at once). Before `start` or after `close`, and when the queue is full,
        the list is written here and now instead."""
        if self._thread is None or self._closed:
            self._write([served])
            return
        with self._done:
            self._pending += 1
        try:
            self._queue.put_nowait(served)
        except queue.Full:
            logger.warning("served-list queue full: writing in the request (is the store stuck?)")
            with self._done:
                self._pending -= 1
            self._write([served])

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every list submitted so far is written; False if `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._done.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Write everything queued, then stop the writer (the service's shutdown hook). Returns whether it
        finished in `timeout`; what is still queued then is logged (a count, nothing of the lists)."""
        if self._thread is None or self._closed:
            self._closed = True
            return True
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("served lists not all written at shutdown: %d left", self._pending)
            return False
        return True

    # -- the writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[ServedList] = []
            item = self._queue.get()
            if item is not _STOP and self._linger_s:
                time.sleep(self._linger_s)  # let this moment's other lists join the transaction
            while True:
                if item is _STOP:
                    stop = True  # what was queued before it is in this batch or still queued: drain it
                else:
                    batch.append(item)  # type: ignore[arg-type]
                if len(batch) >= self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if stop:
                batch += self._drain()
            for start in range(0, len(batch), self._max_batch):
                self._write_retrying(batch[start:start + self._max_batch], give_up=stop)

    def _drain(self) -> list[ServedList]:
        out: list[ServedList] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return out
            if item is not _STOP:
                out.append(item)  # type: ignore[arg-type]

    def _write_retrying(self, batch: list[ServedList], *, give_up: bool) -> None:
        pause = RETRY_S
        tries = 0
        while True:
            try:
                self._record(batch)
                break
            except Exception:
                tries += 1
                logger.exception("recording %d served lists failed (try %d); retrying", len(batch), tries)
                if give_up and tries >= 3:  # shutting down: do not hang the exit for ever
                    logger.error("%d served lists not recorded at shutdown", len(batch))
                    break
                time.sleep(pause)
                pause = min(pause * 2, RETRY_MAX_S)
        with self._done:
            self._pending -= len(batch)
            self._done.notify_all()

    def _write(self, batch: list[ServedList]) -> None:
        try:
            self._record(batch)
        except Exception:  # the answer is already made; its attribution record is what is lost
            logger.exception("recording a served list failed")
