"""A client generated from the live OpenAPI document installs and works (issue 16, `make test-slow`).

`openapi-python-client generate` on the server's own /docs.json (no warning about the document
allowed), `pip install --no-deps` of the generated package into a fresh virtual environment (that sees this
one's packages), then a
script in that environment calls /recommend, /events and /scores through the client and checks the
typed answers, and a bad body comes back as the typed Problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from mirror_server import CUSTOMERS, Server, event

pytestmark = pytest.mark.slow

CLIENT_SCRIPT = """
import sys
from mirror_client import AuthenticatedClient
from mirror_client.api.front_ends import post_events, recommend
from mirror_client.api.email_and_sms_tools import scores
from mirror_client.models import (CanonicalEvent, EventsRequest, EventsResponse, Problem, RecommendRequest,
                                  RecommendResponse, ScoresRequest, ScoresResponse)

base_url, customer, event_json = sys.argv[1], sys.argv[2], sys.argv[3]
client = AuthenticatedClient(base_url=base_url, token="admin-key", raise_on_unexpected_status=True)

rec = recommend.sync(client=client, body=RecommendRequest(customer_id=customer, k=3))
assert isinstance(rec, RecommendResponse), rec
assert 0 < len(rec.items) <= 3 and rec.items[0].item_id

import json
ev = CanonicalEvent.from_dict(json.loads(event_json))
sent = post_events.sync(client=client, body=EventsRequest(event=ev))
assert isinstance(sent, EventsResponse), sent
assert sent.accepted == [ev.event_id] or sent.duplicates == [ev.event_id], sent

sc = scores.sync(client=client, body=ScoresRequest(customer_ids=[customer, "nobody-here"]))
assert isinstance(sc, ScoresResponse), sc
assert [s.id for s in sc.scores] == [customer] and "nobody-here" in sc.unknown, sc

bad = recommend.sync_detailed(client=client, body=RecommendRequest(customer_id=customer, k=0))
assert bad.status_code == 400 and isinstance(bad.parsed, Problem), bad
assert bad.parsed.errors[0].field == "k" and bad.parsed.request_id == bad.headers["x-request-id"]
print("client ok")
"""


def test_generated_client_installs_and_calls_recommend_events_and_scores(server: Server, tmp_path: Path):
    spec = server.client.get("/docs.json")
    assert spec.status_code == 200
    (tmp_path / "spec.json").write_text(spec.text)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}  # its ruff post-hooks
    gen = subprocess.run([str(bin_dir / "openapi-python-client"), "generate", "--path", "spec.json",
                          "--meta", "setup", "--output-path", "client"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stdout + gen.stderr
    assert "Warning" not in gen.stdout + gen.stderr, gen.stdout + gen.stderr  # nothing of the document skipped

    venv = tmp_path / "venv"
    # no pip of its own (ensurepip's setuptools is too old to build a wheel): this environment's pip,
    # setuptools and the client's dependencies (httpx, attrs) are seen through a .pth, never an index
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "mirror-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                              "--no-index", "--quiet", str(tmp_path / "client")],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr

    ev = event("client-gen-1", CUSTOMERS[0], "view", 2)
    run = subprocess.run([str(py), "-c", textwrap.dedent(CLIENT_SCRIPT), server.url, CUSTOMERS[0], json.dumps(ev)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "client ok" in run.stdout, run.stdout + run.stderr
