"""A trivial BentoML service: the baseline `/recommend` is compared against in benchmarks/serving.py.

It does what every Mirror endpoint must do anyway (parse a JSON body through pydantic, answer JSON)
and nothing else, so the gap to it is the cost of Mirror's own work. Run:
`bentoml serve benchmarks.bare_service:Bare --port 3100` from the repository root.
"""

from __future__ import annotations

import os

import bentoml

# Same worker count as the service under test, so the baseline is like for like (set by the benchmark).
_WORKERS = int(os.environ.get("MIRROR_BENCH_WORKERS", "1"))


@bentoml.service(workers=_WORKERS, traffic={"timeout": 30})
class Bare:
    @bentoml.api
    async def recommend(self, customer_id: str | None = None, k: int = 10, channel: str = "web") -> dict:
        """Echo-sized answer with the shape of a recommendation."""
        return {
            "profile_id": customer_id,
            "cold_start": False,
            "items": [{"item_id": f"i{j}", "score": 1.0 / (j + 1), "reason": None} for j in range(k)],
            "model_version": None,
            "fallback": False,
        }
