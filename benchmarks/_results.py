"""Shared helper for benchmark scripts: one JSON line on stdout, one section in RESULTS.md.

Every benchmark prints its figures as one JSON object on its last stdout line (machine-readable)
and replaces its own `## <section>` in `benchmarks/RESULTS.md` (human-readable), together with
the command that reproduces it, the machine it ran on and the date, so a figure is never quoted
without its context.  Baselines belong in `figures`, measured in the same run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
_HEADER = (
    "# Benchmark results\n\n"
    "Written by the benchmark scripts through `benchmarks/_results.py`; each script replaces only its own\n"
    "section. Re-run the command under a section to reproduce it.\n"
)


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays, paths and timestamps become plain JSON."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, TypeError):
            pass
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (Path, dt.date, dt.datetime)):
        return str(value)
    return str(value)


def _clean(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json(figures: Mapping[str, Any]) -> str:
    """One-line JSON of the figures (numpy values and NaN handled)."""
    plain = json.loads(json.dumps(figures, default=_json_default))
    return json.dumps(_clean(plain), sort_keys=False)


def emit(figures: Mapping[str, Any]) -> None:
    """Print the figures as one JSON object; call it last so it is the last stdout line."""
    sys.stdout.flush()
    print(to_json(figures), flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError):
        pass
    return None


def machine() -> dict[str, Any]:
    """What the figures were measured on (usable cores, not the host's total)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return {
        "cores": cores,
        "ram_gib": _ram_gib(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise concurrent writers (several benchmarks may finish at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:  # lock the results file itself: no stray lock files
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        yield


def render_section(section: str, command: str, figures: Mapping[str, Any], notes_md: str,
                   when: dt.datetime | None = None, host: Mapping[str, Any] | None = None) -> str:
    """The markdown of one section (pure, so it can be tested)."""
    when = when or dt.datetime.now(dt.UTC)
    host = dict(host or machine())
    host_line = ", ".join(f"{k}: {v}" for k, v in host.items())
    body = json.dumps(json.loads(to_json(figures)), indent=2)
    parts = [
        f"## {section}",
        "",
        f"- Reproduce: `{command}`",
        f"- Machine: {host_line}",
        f"- Date: {when.strftime('%Y-%m-%d %H:%M UTC')}",
        "",
    ]
    if notes_md.strip():
        parts += [notes_md.strip(), ""]
    parts += ["```json", body, "```", ""]
    return "\n".join(parts)


def replace_section(document: str, section: str, new_section: str) -> str:
    """Swap `## section` (up to the next `## `) for new_section, or append it (pure)."""
    if not document.strip():
        document = _HEADER
    pattern = re.compile(rf"^## {re.escape(section)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(document):
        return pattern.sub(lambda _m: new_section.rstrip("\n") + "\n\n", document, count=1).rstrip("\n") + "\n"
    return document.rstrip("\n") + "\n\n" + new_section.rstrip("\n") + "\n"


def record(section: str, command: str, figures: dict, notes_md: str, path: Path | None = None) -> None:
    """Replace this benchmark's section of RESULTS.md (the only side effect; nothing printed to stdout)."""
    if not section.strip() or "\n" in section:
        raise ValueError("section must be a non-empty single line")
    target = Path(path) if path is not None else RESULTS_PATH
    text = render_section(section, command, figures, notes_md)
    with _locked(target):
        old = target.read_text() if target.exists() else ""
        target.write_text(replace_section(old, section, text))
    print(f"recorded '{section}' in {target}", file=sys.stderr)
