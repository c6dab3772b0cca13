"""Soak: mixed traffic at a fixed rate for a fixed time; errors, p99 and server memory per minute.

Run: `.venv/bin/python benchmarks/soak.py [--minutes 10 --rate 40]` (`--minutes 1` for a smoke run).

Sets up like benchmarks/serving.py (synthetic data, champions trained into a temporary MLflow store,
a seeded profile store), serves `serving.service:Mirror` on loopback and sends an open-loop mix of
`/recommend`, `/events`, `/next_best_action` and `/scores` at `--rate` requests/s (each request at its
scheduled time, whatever earlier ones are doing). Every `--sample-s` seconds it samples the resident
memory (RSS) of the server process and all its workers (psutil). Per minute it reports requests,
errors, p99 (overall and per endpoint) and RSS. Targets: zero errors; no memory growth after the
warm-up minute (median RSS of the last minute over the first minute after warm-up: under 5%).
Figures go to benchmarks/RESULTS.md (section "soak") and one JSON object on the last stdout line.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
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


SECTION = "soak"
RECOMMEND, EVENTS, NBA, SCORES = "/recommend", "/events", "/next_best_action", "/scores"
DEFAULT_MIX = {RECOMMEND: 0.60, EVENTS: 0.25, NBA: 0.10, SCORES: 0.05}
GROWTH_LIMIT_PCT = 5.0


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
    from features.schema import ADD_TO_CART, EVENT_ID, EVENT_TYPE, PURCHASE, VIEW

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
        ev = bs.event_body(cid, item, cat)
        ev[EVENT_TYPE] = str(rng.choice([VIEW, VIEW, VIEW, ADD_TO_CART, PURCHASE]))
        ev[EVENT_ID] = f"soak-{uuid.uuid4().hex}"
        return {"event": ev}

    schedule = build_schedule(int(args.rate * args.minutes * 60), DEFAULT_MIX, args.seed)
    return [(path, body(path)) for path in schedule]


def _drive(
    bs: Any, url: str, pid: int, requests: list[tuple[str, dict[str, Any]]], args: argparse.Namespace, tmp: Path
) -> tuple[list[Sample], list[tuple[float, float]]]:
    """benchmarks/open_loop.py (a lean process: the client's own pauses stay out of the latencies) sends
    the requests; this process samples the server's RSS meanwhile, timed from the generator's launch
    (its first request goes out about a second later)."""
    rss: list[tuple[float, float]] = []
    done = threading.Event()
    t0 = time.monotonic()

    def sampler() -> None:
        while not done.is_set():
            rss.append((time.monotonic() - t0, _tree_rss_mib(pid)))
            done.wait(args.sample_s)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        out = bs.open_loop(url, requests, args.rate, tmp, timeout_s=30.0)
    finally:
        done.set()
        thread.join()
    return [Sample(*row) for row in out], rss


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description="Mirror soak test (loopback only).")
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--rate", type=float, default=40.0, help="requests per second, all endpoints together")
    p.add_argument("--warmup-minutes", type=int, default=1)
    p.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling interval")
    p.add_argument("--scores-batch", type=int, default=200)
    p.add_argument("--customers", type=int, default=1000)
    p.add_argument("--days", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    bs = _bench_serving()

    with tempfile.TemporaryDirectory(prefix="mirror-soak-") as tmp_s:
        tmp = Path(tmp_s)
        prep = bs.prepare(tmp, args.customers, args.days, args.seed)
        with bs.serve("serving.service:Mirror", prep.env, tmp / "mirror.log") as srv:
            samples, rss = _drive(bs, srv.url, srv.proc.pid, build_requests(bs, prep, args), args, tmp)
            alive = srv.proc.poll() is None
        log = (tmp / "mirror.log").read_text(errors="replace")
        tracebacks = log.count("Traceback (most recent call last)")
        first_traceback = log[log.find("Traceback"):][:2000] if tracebacks else ""

    warmup_s = min(args.warmup_minutes, max(args.minutes - 1, 0)) * 60.0
    growth = memory_growth(rss, warmup_s)
    errors = sum(1 for s in samples if not 200 <= s.status < 300)
    post = [s.latency_s for s in samples if s.at_s >= warmup_s]
    figures: dict[str, Any] = {
        "minutes": args.minutes,
        "rate_rps": args.rate,
        "mix": DEFAULT_MIX,
        "scores_batch": args.scores_batch,
        "requests": len(samples),
        "errors": errors,
        "server_alive_at_end": alive,
        "error_examples": _error_examples(samples),
        "server_tracebacks": tracebacks,
        "first_server_traceback": first_traceback,
        "p99_ms_after_warmup": bs.percentiles_ms(post)["p99_ms"],
        "memory": growth,
        "per_minute": per_minute(samples, rss, args.minutes),
        "load_generator": "benchmarks/open_loop.py: asyncio+httpx open loop in a lean process (latency from scheduled send time)",
    }
    gp = growth.get("growth_pct")
    figures["targets"] = {
        "zero_errors": errors == 0,
        "no_memory_growth": gp is not None and gp < GROWTH_LIMIT_PCT,
    }
    if not args.no_record:
        from _results import record

        record(
            SECTION,
            f".venv/bin/python benchmarks/soak.py --minutes {args.minutes} --rate {args.rate:g}",
            figures,
            NOTES,
        )
    from _results import emit

    emit(figures)
    return figures


NOTES = f"""Open-loop mixed traffic on loopback ({", ".join(f"{k} {v:.0%}" for k, v in DEFAULT_MIX.items())}).
Memory is the RSS of the BentoML server process and all its workers, sampled every few seconds;
growth is the median of the last minute over that of the first minute after the warm-up minute
(target under {GROWTH_LIMIT_PCT:g}%).
The load generator shares the 2 cores with the server."""


if __name__ == "__main__":
    main()
