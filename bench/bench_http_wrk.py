"""find-match by embedding over HTTP, driven by `wrk` (compiled: it does not eat the CPU it
measures the way a Python load generator on the same 2 cores does), this checkout vs a baseline
checkout in the same run.

    .venv/bin/python -m bench.bench_http_wrk [--speakers 10000] [--workers 2] [--seconds 10]
        [--baseline /work/main]

For each checkout: a fresh data directory filled with ``--speakers`` synthetic speakers (by that
checkout's own code and migrations), a real ``voicesearch serve --workers N`` on 127.0.0.1 with
the real VoxCeleb model, then ``wrk --latency`` with 1 connection and with 8 (2 threads), each
for ``--seconds`` after a short warm-up. Reports requests/s, p50/p99 latency (wrk's own
histogram) and non-2xx answers (must be 0). Writes bench/results/http-wrk.json.

Targets (issue 14): >= 1,000 requests/s with 8 connections, p99 <= 25 ms with 1 connection.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

from bench.common import REPO, SHARED, machine, table, write_json
from bench.server import Server, bench_env

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def fill_with(repo: Path, data_dir: Path, n: int) -> None:
    """Fill ``data_dir`` using ``repo``'s own code (its migrations, its storage)."""
    code = (
        "import sys; from pathlib import Path; from bench.bench_startup import fill; "
        "print(fill(Path(sys.argv[1]), int(sys.argv[2])))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(data_dir), str(n)],
        cwd=repo,
        env=bench_env(data_dir, VOICESEARCH_TEST_SHARED=str(SHARED)),
        check=True,
        capture_output=True,
        timeout=900,
    )


def wrk(url: str, body: str, connections: int, seconds: int, workdir: Path) -> dict:
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body)}\n"
    )
    threads = min(2, connections)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"{url}/find-match",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    row: dict = {"connections": connections}
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        row[f"p{pct}_ms"] = round(float(match[1]) * _UNITS[match[2]], 2) if match else None
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    row["rps"] = round(float(rps[1]), 1) if rps else None
    done = re.search(r"(\d+) requests in", out)
    row["requests"] = int(done[1]) if done else 0
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    row["non_2xx"] = int(bad[1]) if bad else 0
    row["socket_errors"] = errors[0] if errors else ""
    row["load"] = round(os.getloadavg()[0], 1)
    return row


def run_checkout(label: str, repo: Path, args: argparse.Namespace, body: str) -> list[dict]:
    root = Path(tempfile.mkdtemp(prefix=f"vs-wrk-{label}-"))
    rows = []
    try:
        data = root / "data"
        fill_with(repo, data, args.speakers)
        env = bench_env(data)
        with Server(env, workers=args.workers, log=root / "server.log", repo=repo) as server:
            server.wait_ready()
            probe = httpx.post(
                f"{server.url}/find-match",
                content=body,
                headers={"content-type": "application/json"},
                timeout=30,
            )
            assert probe.status_code == 200, probe.text
            assert probe.json()["searched"] == args.speakers, probe.text
            wrk(server.url, body, 8, 2, root)  # warm-up: every worker opened and synced
            for connections in (1, 8):
                row = wrk(server.url, body, connections, args.seconds, root)
                row = {"code": label, **row}
                rows.append(row)
                print(table([row], COLUMNS).splitlines()[-1], flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


COLUMNS = ["code", "connections", "rps", "p50_ms", "p99_ms", "requests", "non_2xx", "load"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speakers", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--baseline", type=Path, default=Path("/work/main"))
    args = parser.parse_args()
    rng = np.random.default_rng(5)
    vector = rng.standard_normal(192)
    vector /= np.linalg.norm(vector)
    body = json.dumps(
        {"user_embedding": [round(float(v), 7) for v in vector], "top_n": 5, "space": "voxceleb"}
    )
    commit = {}
    for label, repo in (("baseline", args.baseline), ("this", REPO)):
        commit[label] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
    rows = run_checkout("baseline", args.baseline, args, body)
    rows += run_checkout("this", REPO, args, body)
    print(table(rows, COLUMNS))
    result = {"rows": rows, "commits": commit, "speakers": args.speakers, "machine": machine()}
    print(f"wrote {write_json('http-wrk', result)}")


if __name__ == "__main__":
    main()
