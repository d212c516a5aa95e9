"""HTTP load test of a real `voicesearch serve --workers N` (loopback only, bounded runs).

    .venv/bin/python -m bench.bench_http [--workers 2] [--seconds 12] [--speakers 10000]
        [--backend torch|onnx|onnx-int8] [--scenarios audio] [--clients 1,8]

Scenarios, each at 1, 8 and 32 concurrent clients (asyncio + httpx), each client looping until
the scenario's time is up (requests in flight then finish and count):

* ``find-match (embedding)``: JSON probe against the enrolled speakers of the voxceleb space;
* ``find-match (audio)``: a 5.0 s MP3 (dev-speech rtvc 1320), language given;
* ``enroll``: POST /speakers with one 2.5 s WAV (dev-speech spk1), a new id each time.

The database holds ``--speakers`` synthetic speakers (bulk insert) plus whatever the enroll runs
add; real VoxCeleb model; no lang-ID weights exist here, so requests pass ``language=en``.
Reports p50/p95/p99, throughput and errors (must be 0). Writes bench/results/http.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

from bench.bench_startup import fill
from bench.common import BENCH_MODEL_CACHE, DEV_SPEECH, summary_ms, table, write_json
from bench.server import Server, bench_env

PROBE_AUDIO = DEV_SPEECH / "rtvc_samples" / "1320_00000.mp3"
ENROLL_AUDIO = DEV_SPEECH / "speechbrain_samples" / "ASR" / "spk1_snt3.wav"


def _request(kind: str, embedding: list[float], probe: bytes, enroll: bytes):
    if kind == "find-match (embedding)":
        return "/find-match", {
            "json": {"user_embedding": embedding, "space": "voxceleb", "top_n": 5}
        }
    if kind == "find-match (audio)":
        return "/find-match", {
            "files": {"audio": ("p.mp3", probe)},
            "data": {"language": "en", "top_n": "5"},
        }
    return "/speakers", {
        "files": {"audio": ("e.wav", enroll)},
        "data": {"language": "en", "external_id": None},
    }


async def scenario(url: str, kind: str, clients: int, seconds: float, payload: dict) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def one_client() -> None:
            while time.perf_counter() < deadline:
                path, kwargs = _request(kind, **payload)
                if kind == "enroll":
                    kwargs = {
                        **kwargs,
                        "data": {**kwargs["data"], "external_id": f"bench-{uuid.uuid4().hex}"},
                    }
                t0 = time.perf_counter()
                try:
                    response = await client.post(path, **kwargs)
                    if response.status_code >= 300:
                        key = str(response.status_code)
                        errors[key] = errors.get(key, 0) + 1
                        continue
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                    errors[key] = errors.get(key, 0) + 1
                    continue
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - started
    out = {"scenario": kind, "clients": clients, **summary_ms(latencies)}
    out["throughput_rps"] = round(len(latencies) / wall, 2)
    out["errors"] = sum(errors.values())
    out["error_kinds"] = errors
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)  # the machine is shared: say how busy
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--speakers", type=int, default=10_000)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument(
        "--backend", choices=["torch", "onnx", "onnx-int8"], help="default: the product default"
    )
    parser.add_argument(
        "--scenarios", default="embedding,audio,enroll", help="which of embedding,audio,enroll"
    )
    args = parser.parse_args()
    root = Path(tempfile.gettempdir()) / "voicesearch-bench-http"
    shutil.rmtree(root, ignore_errors=True)
    data = root / "data"
    fill(data, args.speakers)
    rng = np.random.default_rng(5)
    embedding = rng.standard_normal(192).astype(np.float32)
    payload = {
        "embedding": (embedding / np.linalg.norm(embedding)).tolist(),
        "probe": PROBE_AUDIO.read_bytes(),
        "enroll": ENROLL_AUDIO.read_bytes(),
    }
    rows = []
    try:
        # The exports outlive the run (bench_backends builds the same ones).
        extra = {"VOICESEARCH_MODEL_CACHE_DIR": str(BENCH_MODEL_CACHE)}
        if args.backend:
            extra["VOICESEARCH_BACKEND"] = args.backend
        env = bench_env(data, **extra)
        with Server(env, workers=args.workers, log=root / "server.log") as server:
            server.wait_ready()
            for kind in [SCENARIOS[name] for name in args.scenarios.split(",")]:
                for clients in (int(c) for c in args.clients.split(",")):
                    row = asyncio.run(scenario(server.url, kind, clients, args.seconds, payload))
                    rows.append(row)
                    print(table([row], COLUMNS).splitlines()[-1], flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(table(rows, COLUMNS))
    result = {
        "workers": args.workers,
        "backend": args.backend or "default",
        "seconds_per_scenario": args.seconds,
        "speakers": args.speakers,
        "rows": rows,
        "total_errors": sum(r["errors"] for r in rows),
    }
    print(f"wrote {write_json('http' + (f'-{args.backend}' if args.backend else ''), result)}")


SCENARIOS = {
    "embedding": "find-match (embedding)",
    "audio": "find-match (audio)",
    "enroll": "enroll",
}
COLUMNS = [
    "scenario",
    "clients",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "throughput_rps",
    "samples",
    "errors",
    "load_avg_1m",
]


if __name__ == "__main__":
    main()
