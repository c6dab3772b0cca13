"""Accuracy of every model family against its baselines on real data, in one run.

Run: `.venv/bin/python benchmarks/accuracy.py [--only recommendation,propensity,sentiment]`.
Each part lives in its own module (acc_*.py) with `run() -> dict` and `notes() -> str`; this script
runs them in turn, records each in benchmarks/RESULTS.md and prints all figures as one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

PARTS = {
    "recommendation": "acc_recommendation",
    "propensity": "acc_propensity",
    "sentiment": "acc_sentiment",
    "synthetic": "acc_synthetic",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    args = parser.parse_args()
    from _results import record

    figures: dict[str, object] = {}
    for part in [p.strip() for p in args.only.split(",") if p.strip()]:
        mod = importlib.import_module(PARTS[part])
        t0 = time.perf_counter()
        out = mod.run()
        out["wall_s"] = round(time.perf_counter() - t0, 1)
        figures[part] = out
        record(f"accuracy: {part}", f".venv/bin/python benchmarks/accuracy.py --only {part}", out, mod.notes())
    print(json.dumps(figures, default=float))


if __name__ == "__main__":
    main()
