"""Open-loop HTTP load at a fixed rate, in a process of its own.

Why a separate, lean process: the benchmark's own process holds pandas, MLflow, LightGBM and torch
(it trains the models), and its garbage collector's full passes (~100 ms over that heap) would be
counted as server latency. Here only httpx is loaded, the heap is frozen and collection is off while
sending, so a stall in the figures is the server's.

Usage: `python benchmarks/open_loop.py URL REQUESTS.json RATE [TIMEOUT_S]` where REQUESTS.json is a
list of [path, body] pairs; prints one JSON list of [scheduled offset s, latency from scheduled time s,
status (0 = transport error), path, detail] per request (detail: for errors, the answer's start or the
transport error's type; empty otherwise). Used by benchmarks/serving.py and benchmarks/soak.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import Sequence
from typing import Any


async def run(
    url: str, requests: Sequence[tuple[str, dict[str, Any]]], rate: float, timeout_s: float = 10.0
) -> list[tuple[float, float, int, str, str]]:
    """Send requests[i] at t0 + i/rate whatever the earlier ones are doing (no coordinated omission)."""
    import httpx

    out: list[tuple[float, float, int, str, str]] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05

        async def one(i: int, path: str, body: dict[str, Any]) -> None:
            sched = t0 + i / rate
            detail = ""
            try:
                r = await client.post(path, json=body)
                status = r.status_code
                if not 200 <= status < 300:
                    detail = r.text[:300]
            except httpx.HTTPError as exc:
                status, detail = 0, f"{type(exc).__name__}: {exc}"[:300]
            out.append((sched - t0, loop.time() - sched, status, path, detail))

        tasks = []
        for i, (path, body) in enumerate(requests):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, path, body)))
        await asyncio.gather(*tasks)
    return out


def main(argv: Sequence[str]) -> None:
    url, requests_file, rate = argv[0], argv[1], float(argv[2])
    timeout_s = float(argv[3]) if len(argv) > 3 else 10.0
    with open(requests_file) as fh:
        requests = [(str(p), dict(b)) for p, b in json.load(fh)]
    import httpx  # noqa: F401  (imported before the freeze)

    gc.collect()
    gc.freeze()
    gc.disable()  # a few thousand requests: the garbage is small, and no pause lands in the figures
    print(json.dumps(asyncio.run(run(url, requests, rate, timeout_s))))


if __name__ == "__main__":
    main(sys.argv[1:])
