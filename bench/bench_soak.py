"""Soak test: sustained mixed traffic against a real multi-worker server (loopback only).

Many concurrent clients enroll, search (by audio and by embedding) and delete speakers for a
fixed time. Every client owns its speakers and keeps at most a few alive, so the gallery stays
the same size and memory should stay flat once warm. It reports: requests per status, 5xx,
connection errors, lost acknowledgements (a 2xx enrollment not found afterwards, or a 2xx
deletion still there), latency percentiles per operation, and the resident memory of the whole
server (master + workers, summed from /proc) sampled every second: after warm-up it should be
flat.

    .venv/bin/python -m bench.bench_soak --seconds 180 --clients 12 --workers 2
    .venv/bin/python -m bench.bench_soak --seconds 180 --real   # real VoxCeleb ECAPA (../shared)

Every loop is bounded in time and count; the server is stopped at the end. ``run_load`` is also
used by ``tests/test_load.py`` with a short budget.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.audio_factory import synth_voice, wav_bytes

LIVE_PER_CLIENT = 4


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in the server's process group (master + workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5 of /proc/PID/stat: process group
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue  # a process that just exited
    return total


@dataclass
class LoadReport:
    seconds: float = 0.0
    clients: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    connection_errors: int = 0
    server_errors: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    lost_acks: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, bytes)
    alive: set[str] = field(default_factory=set)  # acknowledged, not deleted
    deleted: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def memory(self, warmup_fraction: float = 0.3) -> dict[str, float]:
        """RSS after warm-up vs at the end, and the slope of a line fitted after warm-up."""
        if len(self.rss) < 4:
            return {}
        cut = self.rss[0][0] + warmup_fraction * (self.rss[-1][0] - self.rss[0][0])
        after = [(t, b) for t, b in self.rss if t >= cut]
        times = np.array([t for t, _ in after])
        mib = np.array([b for _, b in after]) / 2**20
        slope = float(np.polyfit(times, mib, 1)[0]) * 60 if len(after) > 2 else 0.0
        tail = mib[-max(1, len(mib) // 5) :]
        return {
            "rss_start_mib": round(self.rss[0][1] / 2**20, 1),
            "rss_after_warmup_mib": round(float(mib[0]), 1),
            "rss_end_mib": round(float(tail.mean()), 1),
            "growth_after_warmup_mib": round(float(tail.mean() - mib[0]), 1),
            "slope_mib_per_min": round(slope, 2),
            "rss_max_mib": round(float(max(b for _, b in self.rss) / 2**20), 1),
        }

    def summary(self) -> dict[str, Any]:
        latency = {
            op: {
                "n": len(values),
                "p50_ms": round(1000 * statistics.median(values), 1),
                "p95_ms": round(1000 * float(np.percentile(values, 95)), 1),
                "max_ms": round(1000 * max(values), 1),
            }
            for op, values in sorted(self.latencies.items())
            if values
        }
        return {
            "seconds": round(self.seconds, 1),
            "clients": self.clients,
            "requests": self.requests,
            "requests_per_s": round(self.requests / self.seconds, 1) if self.seconds else 0,
            "statuses": dict(sorted(self.statuses.items())),
            "server_errors_5xx": len(self.server_errors),
            "connection_errors": self.connection_errors,
            "unexpected_statuses": len(self.unexpected),
            "lost_acknowledgements": len(self.lost_acks),
            "speakers_alive_at_end": len(self.alive),
            "latency": latency,
            "memory": self.memory(),
        }


def _clips(count: int, seed: int) -> list[bytes]:
    return [
        wav_bytes(synth_voice(1.0, seed=seed + i, f0=85.0 + 9 * (i % 20)), 16_000)
        for i in range(count)
    ]


def _client_loop(
    base_url: str,
    number: int,
    report: LoadReport,
    deadline: float,
    max_requests: int,
    headers: dict[str, str],
    clips: list[bytes],
) -> None:
    rng = random.Random(number)
    mine: list[str] = []
    embedding: list[float] | None = None
    with httpx.Client(base_url=base_url, timeout=120, headers=headers) as client:
        for i in range(max_requests):
            if time.monotonic() >= deadline:
                return
            roll = rng.random()
            request: dict[str, Any]
            if mine and (len(mine) >= LIVE_PER_CLIENT or roll < 0.2):
                op, external_id = "delete", mine.pop(rng.randrange(len(mine)))
                request = {"method": "DELETE", "url": f"/speakers/{external_id}"}
            elif roll < 0.45:
                op, external_id = "enroll", f"c{number}-{i}"
                request = {
                    "method": "POST",
                    "url": "/speakers",
                    "files": [("audio", ("a.wav", rng.choice(clips), "audio/wav"))],
                    "data": {"external_id": external_id, "language": "en"},
                }
            elif roll < 0.8 or embedding is None:
                op, external_id = "search_audio", None
                request = {
                    "method": "POST",
                    "url": "/find-match",
                    "files": [("audio", ("p.wav", rng.choice(clips), "audio/wav"))],
                    "data": {"language": "en", "top_n": "3"},
                }
            else:
                op, external_id = "search_embedding", None
                body = {"user_embedding": embedding, "space": "voxceleb", "top_n": 3}
                request = {"method": "POST", "url": "/find-match", "json": body}
            started = time.perf_counter()
            try:
                response = client.request(**request)
            except httpx.HTTPError as exc:
                with report.lock:
                    report.connection_errors += 1
                    report.unexpected.append(f"{op}: {type(exc).__name__}")
                continue
            elapsed = time.perf_counter() - started
            status = response.status_code
            with report.lock:
                report.statuses[f"{op} {status}"] += 1
                report.latencies[op].append(elapsed)
                if status >= 500:
                    report.server_errors.append(f"{op} {status} {response.text[:200]}")
                elif op == "enroll" and status == 201:
                    mine.append(external_id)
                    report.alive.add(external_id)
                elif op == "delete" and status == 200:
                    report.alive.discard(external_id)
                    report.deleted.add(external_id)
                elif op.startswith("search") and status == 200:
                    if embedding is None and response.json()["best_match"] is not None:
                        extracted = client.post(
                            "/extract-embedding",
                            files=[("audio", ("e.wav", clips[0], "audio/wav"))],
                            data={"language": "en"},
                        )
                        if extracted.status_code == 200:
                            embedding = extracted.json()["embedding"]
                else:
                    report.unexpected.append(f"{op} {status} {response.text[:200]}")


def run_load(
    base_url: str,
    *,
    seconds: float,
    clients: int,
    server_pgid: int,
    max_requests_per_client: int = 100_000,
    headers: dict[str, str] | None = None,
) -> LoadReport:
    """Drive mixed traffic for ``seconds``; then check every acknowledgement against the server."""
    report = LoadReport(clients=clients)
    clips = _clips(24, seed=7)
    started = time.monotonic()
    deadline = started + seconds
    threads = [
        threading.Thread(
            target=_client_loop,
            args=(base_url, n, report, deadline, max_requests_per_client, headers or {}, clips),
            daemon=True,
        )
        for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline + 120:
        report.rss.append((time.monotonic() - started, group_rss_bytes(server_pgid)))
        time.sleep(1.0)
    for thread in threads:
        thread.join(timeout=5)
    report.seconds = time.monotonic() - started

    with httpx.Client(base_url=base_url, timeout=60, headers=headers or {}) as client:
        listed = client.get("/speakers", params={"limit": 1000}).json()
        stored = {s["id"] for s in listed["speakers"]}
        if listed["total"] > len(stored):
            for offset in range(1000, listed["total"], 1000):
                page = client.get("/speakers", params={"limit": 1000, "offset": offset}).json()
                stored |= {s["id"] for s in page["speakers"]}
    report.lost_acks = [f"enrolled {x} missing" for x in sorted(report.alive - stored)]
    report.lost_acks += [f"deleted {x} present" for x in sorted(report.deleted & stored)]
    return report


def main(argv: list[str] | None = None) -> int:
    from tests.server import ServerProcess, server_env

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--real", action="store_true", help="real VoxCeleb ECAPA from ../shared")
    parser.add_argument("--out", type=Path, help="write the JSON report here too")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="voicesearch-soak-") as tmp:
        root = Path(tmp)
        if args.real:
            from bench.common import REAL_VOXCELEB
            from bench.server import bench_env

            if not REAL_VOXCELEB.exists():
                print(f"no real model at {REAL_VOXCELEB}", file=sys.stderr)
                return 2
            env = bench_env(root / "data")
        else:
            from tests.model_factory import build_langid_model, build_speaker_model

            models = {
                "langid": build_langid_model(root / "m" / "langid", seed=0, favour_language="en"),
                "voxceleb": build_speaker_model(root / "m" / "voxceleb", seed=0),
                "cnceleb": build_speaker_model(
                    root / "m" / "cnceleb", seed=1, hub_name="LanceaKing/spkrec-ecapa-cnceleb"
                ),
            }
            env = server_env(root / "data", models)
        server = ServerProcess(env, workers=args.workers, log_path=root / "server.log")
        try:
            server.wait_ready(timeout_s=300)
            report = run_load(
                server.base_url,
                seconds=args.seconds,
                clients=args.clients,
                server_pgid=server.process.pid,
            )
        finally:
            server.stop()
        summary = {
            "model": "real voxceleb" if args.real else "tiny random",
            "workers": args.workers,
            **report.summary(),
        }
        print(json.dumps(summary, indent=2))
        if args.out:
            args.out.write_text(json.dumps(summary, indent=2) + "\n")
        ok = not report.server_errors and not report.lost_acks and not report.connection_errors
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
