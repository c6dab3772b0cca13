"""Soak: mixed traffic at a fixed rate for a fixed time, with the server worker killed mid-run.

Run: `.venv/bin/python benchmarks/soak.py [--minutes 10 --rate 40 --faults 2]` (`--minutes 2` for a smoke
run; `--faults 0` for the plain soak without faults, recorded in its own section as before).

Sets up like benchmarks/serving.py (synthetic data, champions trained into a temporary MLflow store,
a seeded profile store), serves `serving.service:Mirror` on a fixed loopback port and sends an open-loop
mix of `/recommend`, `/events`, `/next_best_action` and `/scores` at `--rate` requests/s (each request at
its scheduled time, whatever earlier ones are doing). Every `--sample-s` seconds it samples the resident
memory (RSS) of the server process and all its workers (psutil). Per minute it reports requests,
errors, p99 (overall and per endpoint) and RSS.

Faults: `--faults N` times (default 2, evenly between a quarter and half of the run, or at `--kill-at`)
the BentoML worker gets SIGKILL. BentoML's arbiter respawns it on the listening socket it keeps; if no
new worker shows within `--respawn-wait-s` (e.g. `--no-respawn`: BentoML's container setting), the harness
restarts the whole server on the same store and port and counts the gap. The profile store is SQLite in the
worker's own process, so there is no store server to restart: the figures say so.

What is checked: every `POST /events` answered 200 with an event id in `accepted` is in the SQLite store
exactly once at the end (the store file is opened after the run and counted); errors fall only in the
seconds around a fault (a failed request was in flight between a kill and `--grace-s` after the service
was ready again; each error's send time relative to its kill is reported); memory is flat after the warm-up
that follows the last fault (median RSS of the last minute over the first minute after it: under 5%).
Figures go to benchmarks/RESULTS.md (section "soak: faults", or "soak" with `--faults 0`) and one JSON
object on the last stdout line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def _bench_serving() -> Any:
    """benchmarks/serving.py by path: as a module name, `serving` is the service package."""
    spec = importlib.util.spec_from_file_location("mirror_bench_serving", HERE / "serving.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


SECTION = "soak"  # the plain soak (--faults 0)
FAULT_SECTION = "soak: faults"
TARGET = "serving.service:Mirror"
RECOMMEND, EVENTS, NBA, SCORES = "/recommend", "/events", "/next_best_action", "/scores"
DEFAULT_MIX = {RECOMMEND: 0.60, EVENTS: 0.25, NBA: 0.10, SCORES: 0.05}
GROWTH_LIMIT_PCT = 5.0
EVENT_PREFIX = "soak-"  # every soak event id starts so: the store count looks for these
WORKER_MODULE = "_bentoml_impl.worker.service"  # what BentoML runs as a service worker (its command line)
GENERATOR_FLAG = "--generator"  # this file, run as the lean load process (see generator_main)
GENERATOR_START_S = 1.0  # about how long the load process takes to send its first request
CLIENT_TIMEOUT_S = 30.0
SLOW_S = 1.0  # an answer slower than this after a kill is the backlog still draining
STORE_RESTART = ("skipped: the only profile store backend is SQLite (features.store.SQLiteProfileStore), a "
                 "file opened inside the worker; there is no store server to restart")


@dataclass(frozen=True)
class FaultConfig:
    """When the worker is killed and how long the harness waits for the service to come back."""

    kills_at_s: tuple[float, ...] = ()  # offsets from the first request
    respawn_wait_s: float = 15.0  # no new worker by then: the harness restarts the server (same store, port)
    ready_wait_s: float = 180.0  # a new worker not ready (/readyz) this long after the kill: restart too
    grace_s: float = 5.0  # requests sent up to this long after the service is ready again are the fault's

    def __post_init__(self) -> None:
        if any(not t > 0 for t in self.kills_at_s) or list(self.kills_at_s) != sorted(self.kills_at_s):
            raise ValueError(f"kills_at_s: positive offsets in increasing order, got {self.kills_at_s}")
        for name in ("respawn_wait_s", "ready_wait_s", "grace_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: must be a number >= 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Fault:
    """One kill -9 of the worker and how the service came back."""

    at_s: float  # when the kill was sent, seconds from the first request
    killed_pid: int
    new_worker_s: float | None  # a new worker process showed, seconds after the kill (None: none did)
    ready_s: float | None  # /readyz answered 200 again, seconds after the kill (None: never)
    harness_restart: bool  # BentoML brought no ready worker back: the harness restarted the server
    error: str | None = None  # the harness could not kill or restart (the run's figures say so)


@dataclass(frozen=True)
class Sample:
    at_s: float  # scheduled offset from the start
    latency_s: float  # from scheduled send time to answer
    status: int  # 0 = transport error
    path: str
    detail: str = ""  # for errors: the answer's start, or the transport error's type


# ---------------------------------------------------------------------------------------------
# Pure figures
# ---------------------------------------------------------------------------------------------
def per_minute(
    samples: Sequence[Sample], rss: Sequence[tuple[float, float]], minutes: int
) -> list[dict[str, Any]]:
    """Requests, errors, p99 (overall and by endpoint) and RSS (MiB, last sample and max) per minute."""
    out = []
    for m in range(minutes):
        lo, hi = m * 60.0, (m + 1) * 60.0
        in_m = [s for s in samples if lo <= s.at_s < hi]
        lat = np.array([s.latency_s for s in in_m]) * 1000 if in_m else np.array([])
        by_path = {}
        for path in sorted({s.path for s in in_m}):
            pl = np.array([s.latency_s for s in in_m if s.path == path]) * 1000
            by_path[path] = round(float(np.percentile(pl, 99)), 1)
        mem = [r for t, r in rss if lo <= t < hi]
        out.append(
            {
                "minute": m + 1,
                "requests": len(in_m),
                "errors": sum(1 for s in in_m if not 200 <= s.status < 300),
                "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
                "p99_ms_by_endpoint": by_path,
                "rss_mib": round(mem[-1], 1) if mem else None,
                "rss_max_mib": round(max(mem), 1) if mem else None,
            }
        )
    return out


def memory_growth(
    rss: Sequence[tuple[float, float]], warmup_s: float, span_s: float = 60.0
) -> dict[str, Any]:
    """Growth after warm-up: median RSS of the last `span_s` over that of the first `span_s` after the
    warm-up (medians, so one sample taken mid-request does not decide), and the fitted slope."""
    post = [(t, r) for t, r in rss if t >= warmup_s and math.isfinite(r)]
    if len(post) < 2:
        return {"growth_mib": None, "growth_pct": None, "slope_mib_per_min": None}
    t = np.array([p[0] for p in post])
    r = np.array([p[1] for p in post])
    first = float(np.median(r[t < t[0] + span_s]))
    last = float(np.median(r[t > t[-1] - span_s]))
    slope = float(np.polyfit(t / 60.0, r, 1)[0]) if np.ptp(t) > 0 else 0.0
    return {
        "rss_after_warmup_mib": round(first, 1),
        "rss_end_mib": round(last, 1),
        "growth_mib": round(last - first, 1),
        "growth_pct": round((last / first - 1) * 100, 2),
        "slope_mib_per_min": round(slope, 2),
    }


def _error_examples(samples: Sequence[Sample], limit: int = 10) -> list[dict[str, Any]]:
    """Distinct failed answers (endpoint, status, start of the body) with how often each came."""
    counts: dict[tuple[str, int, str], int] = {}
    for s in samples:
        if not 200 <= s.status < 300:
            key = (s.path, s.status, s.detail)
            counts[key] = counts.get(key, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return [{"path": k[0], "status": k[1], "detail": k[2], "count": n} for k, n in top]


def build_schedule(n: int, mix: dict[str, float], seed: int) -> list[str]:
    """The endpoint of each of the n requests, drawn with the mix's shares (reproducible)."""
    rng = np.random.default_rng(seed)
    paths = list(mix)
    p = np.array([mix[k] for k in paths], dtype=float)
    return [paths[i] for i in rng.choice(len(paths), size=n, p=p / p.sum())]


def kill_times(duration_s: float, n: int) -> tuple[float, ...]:
    """n kills evenly from a quarter to half of the run (one: at a quarter), leaving the second half for
    the recovery, a warm-up and the memory check."""
    if n < 0:
        raise ValueError(f"faults: must be >= 0, got {n}")
    if n <= 1:
        return (round(duration_s / 4, 1),) * n
    return tuple(round(duration_s / 4 + duration_s / 4 * k / (n - 1), 1) for k in range(n))


def fault_of(sample: Sample, faults: Sequence[Fault], grace_s: float) -> int | None:
    """The index of the fault a request ran into, else None.

    That is the last kill before its answer (or failure), when the request was sent before the service was
    ready again after it plus `grace_s` (a fault never ready again keeps the rest of the run): it was open
    at the kill, or sent while the service was coming back. A request still open from the backlog of one
    kill when the next one lands is the next one's.
    """
    answered = sample.at_s + sample.latency_s
    for k in range(len(faults) - 1, -1, -1):
        f = faults[k]
        if answered >= f.at_s:
            ready = f.ready_s if f.ready_s is not None else math.inf
            return k if sample.at_s <= f.at_s + ready + grace_s else None
    return None


def attribute_errors(
    samples: Sequence[Sample], faults: Sequence[Fault], grace_s: float
) -> tuple[list[list[Sample]], list[Sample]]:
    """Each failed request to the fault it overlapped (`fault_of`), and apart those that overlapped none."""
    per_fault: list[list[Sample]] = [[] for _ in faults]
    outside: list[Sample] = []
    for s in samples:
        if 200 <= s.status < 300:
            continue
        k = fault_of(s, faults, grace_s)
        (outside if k is None else per_fault[k]).append(s)
    return per_fault, outside


def fault_summary(fault: Fault, errors: Sequence[Sample], after: Sequence[Sample] = ()) -> dict[str, Any]:
    """What one kill cost: its recovery times, its failed requests timed from the kill (send time, by whole
    second, and the last answer), and how long the backlog took to drain: the send time of the last
    request slower than SLOW_S among `after` (those sent from this kill to the next or the end)."""
    sent = [s.at_s - fault.at_s for s in errors]
    answered = [s.at_s + s.latency_s - fault.at_s for s in errors]
    out: dict[str, Any] = {
        "kill_at_s": round(fault.at_s, 2),
        "new_worker_after_s": None if fault.new_worker_s is None else round(fault.new_worker_s, 2),
        "ready_after_s": None if fault.ready_s is None else round(fault.ready_s, 2),
        "restarted_by": ("harness" if fault.harness_restart
                         else "bentoml" if fault.ready_s is not None else None),
        "errors": len(errors),
    }
    slow = [s.at_s - fault.at_s for s in after if s.latency_s > SLOW_S and 200 <= s.status < 300]
    out["slow_answers"] = len(slow)
    out["last_slow_answer_sent_s"] = round(max(slow), 2) if slow else None
    if fault.error:
        out["harness_error"] = fault.error
    if errors:
        by_second = Counter(math.floor(x) for x in sent)
        out.update({
            "first_error_sent_s": round(min(sent), 3),
            "last_error_sent_s": round(max(sent), 3),
            "last_error_answered_s": round(max(answered), 3),
            "errors_by_sent_second": {str(k): v for k, v in sorted(by_second.items())},
            "errors_by_status": {str(k): v for k, v in sorted(Counter(s.status for s in errors).items())},
            "errors_by_endpoint": dict(sorted(Counter(s.path for s in errors).items())),
        })
    return out


def count_acknowledged(store_path: Path, acked: Sequence[str]) -> dict[str, Any]:
    """Every acknowledged event id against the store file after the run: stored once, more, or lost."""
    conn = sqlite3.connect(store_path)
    try:
        conn.execute("PRAGMA query_only = ON")
        counts = dict(conn.execute(
            "SELECT event_id, COUNT(*) FROM events WHERE event_id LIKE ? GROUP BY event_id",
            (f"{EVENT_PREFIX}%",),
        ).fetchall())
    finally:
        conn.close()
    ids = set(acked)
    missing = sorted(ids - counts.keys())
    return {
        "acknowledged": len(acked),
        "acknowledged_twice": len(acked) - len(ids),
        "stored_soak_events": len(counts),
        "lost": len(missing),
        "stored_more_than_once": sum(1 for i in ids if counts.get(i, 0) > 1),
        "stored_unacknowledged": len(counts.keys() - ids),  # in flight at a kill, or a 200 lost with it
        "lost_examples": missing[:5],
    }


# ---------------------------------------------------------------------------------------------
# Traffic
# ---------------------------------------------------------------------------------------------
def _tree_rss_mib(pid: int) -> float:
    """RSS of the server and all its workers, MiB."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def build_requests(bs: Any, prep: Any, args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The whole run's (path, body) list, drawn up front from the seeded schedule and rng.

    Built before sending, so events carry the time they were built (up to `--minutes` before they are
    sent: still fresh for the service) and the generator process holds nothing but the requests.
    """
    from features.schema import ADD_TO_CART, EVENT_ID, PURCHASE, VIEW

    rng = np.random.default_rng(args.seed)
    ids = prep.customer_ids

    def body(path: str) -> dict[str, Any]:
        cid = str(ids[int(rng.integers(len(ids)))])
        if path == RECOMMEND:
            return bs.recommend_body(cid)
        if path == NBA:
            return bs.nba_body(cid, str(rng.choice(["email", "app", "web", "sms"])))
        if path == SCORES:
            return bs.scores_body([str(c) for c in rng.choice(ids, size=args.scores_batch)])
        item, cat = prep.items[int(rng.integers(len(prep.items)))]
        ev = bs.event_body(cid, item, cat, str(rng.choice([VIEW, VIEW, VIEW, ADD_TO_CART, PURCHASE])))
        ev[EVENT_ID] = f"{EVENT_PREFIX}{uuid.uuid4().hex}"
        return {"event": ev}

    schedule = build_schedule(int(args.rate * args.minutes * 60), DEFAULT_MIX, args.seed)
    return [(path, body(path)) for path in schedule]


class Service:
    """`bentoml serve` of the Mirror service on one fixed loopback port, restartable on the same store and
    port (the load generator keeps its URL); one log file per start."""

    def __init__(self, bs: Any, env: dict[str, str], tmp: Path) -> None:
        self.bs, self.env, self.tmp = bs, env, tmp
        self.port = bs.free_port()
        self.url = f"http://{bs.HOST}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    def start(self, timeout_s: float = 300.0) -> None:
        log = self.tmp / f"mirror-{len(self.logs)}.log"
        self.logs.append(log)
        cmd = [str(self.bs.VENV_BIN / "bentoml"), "serve", TARGET,
               "--host", self.bs.HOST, "--port", str(self.port)]
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, cwd=self.bs.ROOT, env=self.env, stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{TARGET} exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{TARGET} not ready after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def ready(self, timeout_s: float = 2.0) -> bool:
        import httpx

        try:
            return httpx.get(self.url + "/readyz", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def workers(self) -> list[Any]:
        """BentoML's service workers (psutil handles): the server's children running the worker module."""
        import psutil

        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        out = []
        for child in children:
            with suppress(psutil.Error):  # gone meanwhile
                if WORKER_MODULE in " ".join(child.cmdline()):
                    out.append(child)
        return out

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and bool(self.workers())

    def stop(self) -> None:
        if self.proc is not None:
            self.bs._stop(self.proc)  # the one stop rule: the server, then every worker it left

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())


def _recover(service: Service, cfg: FaultConfig, killed_pid: int, at: float, done: threading.Event) -> Fault:
    """Wait for BentoML's new worker and /readyz; restart the server when neither comes in time."""
    new_worker_s = ready_s = None
    while time.monotonic() - at < cfg.respawn_wait_s and not done.is_set():
        if any(w.pid != killed_pid for w in service.workers()):
            new_worker_s = time.monotonic() - at
            break
        time.sleep(0.1)
    while new_worker_s is not None and time.monotonic() - at < cfg.ready_wait_s and not done.is_set():
        if service.ready(timeout_s=1.0):
            ready_s = time.monotonic() - at
            break
        time.sleep(0.2)
    if ready_s is not None or done.is_set():
        return Fault(at, killed_pid, new_worker_s, ready_s, harness_restart=False)
    try:
        service.restart()
    except Exception as exc:  # noqa: BLE001 - the figures say the service never came back
        return Fault(at, killed_pid, new_worker_s, None, harness_restart=True, error=repr(exc)[:500])
    return Fault(at, killed_pid, new_worker_s, time.monotonic() - at, harness_restart=True)


def inject_faults(service: Service, cfg: FaultConfig, start: float, done: threading.Event,
                  faults: list[Fault]) -> None:
    """kill -9 of the worker at each planned offset from `start` (monotonic), each after the service came
    back from the one before; `faults` gets one record per kill, times on the monotonic clock."""
    for offset in cfg.kills_at_s:
        if done.wait(max(0.0, start + offset - time.monotonic())):
            return
        workers = service.workers()
        if not workers:
            faults.append(Fault(time.monotonic(), -1, None, None, False, error="no worker to kill"))
            continue
        at = time.monotonic()
        try:
            workers[0].send_signal(signal.SIGKILL)
        except Exception as exc:  # noqa: BLE001 - recorded, never hidden
            faults.append(Fault(at, workers[0].pid, None, None, False, error=f"kill failed: {exc!r}"))
            continue
        faults.append(_recover(service, cfg, workers[0].pid, at, done))


@dataclass(frozen=True)
class Run:
    """What one soak run saw, all times in seconds from the first request."""

    samples: list[Sample]
    rss: list[tuple[float, float]]
    faults: list[Fault]
    acked: list[str]  # event ids in `accepted` of the 200 answers to POST /events
    events_answered_200: int
    events_rejected: int = 0  # event rows a 200 answer listed as rejected (the soak sends valid ones)


def _drive(service: Service, requests: list[tuple[str, dict[str, Any]]], args: argparse.Namespace,
           cfg: FaultConfig, tmp: Path) -> Run:
    """The lean load process (generator_main) sends the requests; this process samples the server's RSS
    and injects the faults meanwhile. Both processes read the same monotonic clock, so every time is
    put on the generator's: seconds from its first request."""
    rss: list[tuple[float, float]] = []
    faults: list[Fault] = []
    done = threading.Event()

    def sampler() -> None:
        while not done.is_set():
            r = _tree_rss_mib(service.pid)
            if math.isfinite(r):  # not between a harness stop and start
                rss.append((time.monotonic(), r))
            done.wait(args.sample_s)

    path = tmp / f"soak_requests_{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps([[p, b] for p, b in requests]))
    launched = time.monotonic()
    threads = [threading.Thread(target=sampler, daemon=True),
               threading.Thread(target=inject_faults, daemon=True,
                                args=(service, cfg, launched + GENERATOR_START_S, done, faults))]
    for t in threads:
        t.start()
    try:
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), GENERATOR_FLAG, service.url, str(path),
             str(args.rate), str(CLIENT_TIMEOUT_S)],
            capture_output=True, text=True, timeout=len(requests) / args.rate + 600,
        )
    finally:
        done.set()
        for t in threads:
            t.join()
    if out.returncode != 0:
        raise RuntimeError(f"the load process exited with {out.returncode}:\n{out.stderr[-3000:]}")
    raw = json.loads(out.stdout.splitlines()[-1])
    t0 = float(raw["t0_monotonic"])
    return Run(
        samples=[Sample(*row) for row in raw["samples"]],
        rss=[(t - t0, r) for t, r in rss],
        faults=[Fault(f.at_s - t0, f.killed_pid, f.new_worker_s, f.ready_s, f.harness_restart, f.error)
                for f in faults],
        acked=[str(i) for i in raw["acked"]],
        events_answered_200=int(raw["events_200"]),
        events_rejected=int(raw["events_rejected"]),
    )


def generator_main(argv: Sequence[str]) -> None:
    """The load process: `soak.py --generator URL REQUESTS.json RATE TIMEOUT_S`.

    benchmarks/open_loop.py's `run` sends the requests (same lean process rules: heap frozen, collector
    off); around it this records what open_loop.py does not give back: the monotonic time of the first
    request (its t0, to put kills and RSS samples on the same clock) and the event ids each 200 answer to
    POST /events lists as accepted (what the store must hold at the end). Both through httpx event hooks,
    on a client subclass that open_loop.run builds in place of httpx.AsyncClient in this process only; it
    also lifts open_loop's connection cap (see there why).
    Prints one JSON object: t0_monotonic, samples (open_loop.run's rows), acked, events_200, events_rejected.
    """
    import asyncio
    import gc

    import httpx
    import open_loop

    url, requests_file, rate, timeout_s = argv[0], argv[1], float(argv[2]), float(argv[3])
    with open(requests_file) as fh:
        requests = [(str(p), dict(b)) for p, b in json.load(fh)]
    first_request: list[float] = []
    acked: list[str] = []
    counts = {"events_200": 0, "events_rejected": 0}

    async def on_request(_request: httpx.Request) -> None:
        if not first_request:  # requests[0] goes out at open_loop's t0
            first_request.append(time.monotonic())

    async def on_response(response: httpx.Response) -> None:
        if response.request.url.path == EVENTS and response.status_code == 200:
            await response.aread()
            body = response.json()
            acked.extend(str(i) for i in body.get("accepted", []))
            counts["events_200"] += 1
            counts["events_rejected"] += len(body.get("rejected", []))

    class RecordingClient(httpx.AsyncClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # no cap on connections: while the worker is down every waiting request holds one, and httpcore
            # matches each queued request against every connection on every pool event, so a queue behind
            # open_loop's 256 spun this process at 100% CPU for minutes after a kill (measured) and the
            # figures became the client's; the requests' own timeouts bound the connections instead
            keepalive = kwargs["limits"].max_keepalive_connections
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=keepalive)
            super().__init__(*args, **{**kwargs, "limits": limits},
                             event_hooks={"request": [on_request], "response": [on_response]})

    httpx.AsyncClient = RecordingClient  # type: ignore[misc]  # this process only: open_loop.run builds it
    gc.collect()
    gc.freeze()
    gc.disable()
    samples = asyncio.run(open_loop.run(url, requests, rate, timeout_s))
    print(json.dumps({"t0_monotonic": first_request[0], "samples": samples, "acked": acked, **counts}))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description="Mirror soak test with faults (loopback only).")
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--rate", type=float, default=40.0, help="requests per second, all endpoints together")
    p.add_argument("--warmup-minutes", type=int, default=1)
    p.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling interval")
    p.add_argument("--scores-batch", type=int, default=200)
    p.add_argument("--customers", type=int, default=1000)
    p.add_argument("--days", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--faults", type=int, default=2, help="kill -9 of the worker this many times (0: none)")
    p.add_argument("--kill-at", type=float, nargs="+", default=None,
                   help="offsets of the kills from the first request, s (default: 1/4 to 1/2 of the run)")
    p.add_argument("--respawn-wait-s", type=float, default=FaultConfig.respawn_wait_s)
    p.add_argument("--grace-s", type=float, default=FaultConfig.grace_s)
    p.add_argument("--no-respawn", action="store_true",
                   help="BentoML's container setting (BENTOML_CONTAINERIZED): no worker respawn, so the "
                        "harness restarts the server after each kill")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    duration_s = args.minutes * 60.0
    kills = tuple(args.kill_at) if args.kill_at is not None else kill_times(duration_s, args.faults)
    cfg = FaultConfig(kills_at_s=kills, respawn_wait_s=args.respawn_wait_s, grace_s=args.grace_s)
    bs = _bench_serving()

    with tempfile.TemporaryDirectory(prefix="mirror-soak-") as tmp_s:
        tmp = Path(tmp_s)
        prep = bs.prepare(tmp, args.customers, args.days, args.seed)
        env = dict(prep.env, BENTOML_CONTAINERIZED="true") if args.no_respawn else prep.env
        service = Service(bs, env, tmp)
        service.start()
        try:
            run = _drive(service, build_requests(bs, prep, args), args, cfg, tmp)
            alive = service.alive()
        finally:
            service.stop()
        store = count_acknowledged(Path(prep.env["MIRROR_STORE"]), run.acked)
        log = service.log_text()
        tracebacks = log.count("Traceback (most recent call last)")
        first_traceback = log[log.find("Traceback"):][:2000] if tracebacks else ""

    samples, faults = run.samples, run.faults
    recovered = [f.at_s + f.ready_s for f in faults if f.ready_s is not None]
    warmup_s = min(args.warmup_minutes, max(args.minutes - 1, 0)) * 60.0
    # memory is compared after the warm-up of the last worker: a fresh one starts small and warms up again
    memory_from_s = max([warmup_s, *(t + args.warmup_minutes * 60.0 for t in recovered)])
    growth = memory_growth(run.rss, memory_from_s)
    errors = sum(1 for s in samples if not 200 <= s.status < 300)
    per_fault, outside = attribute_errors(samples, faults, cfg.grace_s)
    post = [s.latency_s for s in samples if s.at_s >= warmup_s and fault_of(s, faults, cfg.grace_s) is None]
    ends = [*(g.at_s for g in faults[1:]), math.inf][:len(faults)]  # each kill's stretch ends at the next
    figures: dict[str, Any] = {
        "minutes": args.minutes,
        "rate_rps": args.rate,
        "mix": DEFAULT_MIX,
        "scores_batch": args.scores_batch,
        "requests": len(samples),
        "errors": errors,
        "faults": {
            "planned_kills_at_s": list(kills),
            "worker_respawn": "off (BENTOML_CONTAINERIZED)" if args.no_respawn else "BentoML default (on)",
            "kills": [fault_summary(f, errs, [s for s in samples if f.at_s <= s.at_s < end])
                      for f, errs, end in zip(faults, per_fault, ends, strict=True)],
            "grace_s": cfg.grace_s,
            "errors_outside_fault_windows": len(outside),
            "outside_examples": _error_examples(outside),
            "store_server_restart": STORE_RESTART,
        },
        "acknowledged_events": {**store, "events_answered_200": run.events_answered_200,
                                "event_rows_rejected_in_200s": run.events_rejected},
        "server_alive_at_end": alive,
        "server_starts": len(service.logs),
        "error_examples": _error_examples(samples),
        "server_tracebacks": tracebacks,
        "first_server_traceback": first_traceback,
        "p99_ms_after_warmup": bs.percentiles_ms(post)["p99_ms"],
        "p99_scope": "requests sent after the warm-up minute, outside the fault windows",
        "memory": {**growth, "measured_from_s": round(memory_from_s, 1)},
        "per_minute": per_minute(samples, run.rss, args.minutes),
        "load_generator": "benchmarks/open_loop.py run in soak.py's lean load process (asyncio+httpx "
                          "open loop, latency from scheduled send time; accepted event ids recorded)",
    }
    gp = growth.get("growth_pct")
    figures["targets"] = {
        "acknowledged_events_all_stored_once": store["lost"] == 0 and store["stored_more_than_once"] == 0,
        "no_memory_growth": gp is not None and gp < GROWTH_LIMIT_PCT,
    }
    if faults or kills:
        figures["targets"].update({
            "every_fault_injected_and_recovered": len(faults) == len(kills)
            and all(f.ready_s is not None and f.error is None for f in faults),
            "errors_only_around_faults": not outside,
        })
    else:
        figures["targets"]["zero_errors"] = errors == 0
    command = f".venv/bin/python benchmarks/soak.py --minutes {args.minutes} --rate {args.rate:g}"
    command += (" --kill-at " + " ".join(f"{t:g}" for t in args.kill_at)) if args.kill_at is not None \
        else f" --faults {args.faults}"
    if args.no_respawn:
        command += " --no-respawn"
    if not args.no_record:
        from _results import record

        record(FAULT_SECTION if kills else SECTION, command, figures, FAULT_NOTES if kills else NOTES)
    from _results import emit

    emit(figures)
    return figures


NOTES = f"""Open-loop mixed traffic on loopback ({", ".join(f"{k} {v:.0%}" for k, v in DEFAULT_MIX.items())}).
Memory is the RSS of the BentoML server process and all its workers, sampled every few seconds;
growth is the median of the last minute over that of the first minute after the warm-up minute
(target under {GROWTH_LIMIT_PCT:g}%). Every event id a 200 answer to `POST /events` listed as accepted is
looked up in the SQLite store file after the run (`acknowledged_events`).
The load generator shares the 2 cores with the server."""

FAULT_NOTES = f"""The plain soak (section "soak", `--faults 0`) with faults: the BentoML worker process
is killed with SIGKILL at the planned offsets (seconds from the first request; each kill waits until the
service is back from the one before). BentoML's arbiter keeps the listening socket and respawns the worker,
so requests sent meanwhile wait in the socket's backlog (up to the client's {CLIENT_TIMEOUT_S:g} s timeout)
or fail with their connection; with no respawn (`--no-respawn`, BentoML's container setting) the harness
restarts the whole server on the same store and port after {FaultConfig.respawn_wait_s:g} s. Per kill: when
a new worker process showed, when `/readyz` answered 200 again, every failed request that ran into it (it
failed after this kill and before the next, and was sent before ready + `grace_s`), timed from the kill
(send time by whole second, first and last, last answer), and the drain of the backlog (`slow_answers`:
successful answers slower than {SLOW_S:g} s among requests sent from this kill to the next, and the send
time of the last one). Failures outside those windows are `errors_outside_fault_windows` (target 0).
Acknowledged events: every event id that a 200 answer to `POST /events` listed in `accepted` is counted in
the SQLite store file after the run (target: each exactly once; `stored_unacknowledged` are events of
requests open at a kill, written without their answer reaching the client, which is allowed). Memory growth
is measured from the end of the warm-up minute after the last recovery (a fresh worker starts small): median
RSS of the last minute over that of its first minute (target under {GROWTH_LIMIT_PCT:g}%); p99 counts the
requests after the first minute outside the fault windows. The load process has no connection cap (see
`generator_main`). Store server restart: {STORE_RESTART}.
The mix is {", ".join(f"{k} {v:.0%}" for k, v in DEFAULT_MIX.items())}; the load generator shares the 2
cores with the server."""


if __name__ == "__main__":
    if sys.argv[1:2] == [GENERATOR_FLAG]:
        generator_main(sys.argv[2:])
    else:
        main()
