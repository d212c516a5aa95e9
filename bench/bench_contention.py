"""Does a request collapse when the CPU is shared? (issue 13: "It must not collapse").

Two `voicesearch serve` processes (one worker each, separate data directories, the real VoxCeleb
model) on this machine's cores. First the *idle* latency of find-match by audio on server A
(server B up but idle), then the *contended* latency on A while a second client keeps B busy
with the same requests and A's own client sends back to back. Reported: p50 / p95 / max of A's
requests in both phases and their ratio; the issue's target is contended ≤ 2.5× idle (before
the VAD moved to one-thread ONNX Runtime, one 3 s request took 12.5 s against 0.17 s idle).

    python -m bench.bench_contention [--backend torch|onnx|onnx-int8] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.bench_startup import fill
from bench.common import BENCH_MODEL_CACHE, DEV_SPEECH, summary_ms, table, write_json
from bench.server import Server, bench_env

PROBE_AUDIO = DEV_SPEECH / "rtvc_samples" / "1320_00000.mp3"  # 5.0 s MP3
TARGET_RATIO = 2.5


def find_match(client: httpx.Client, url: str, probe: bytes) -> float:
    started = time.perf_counter()
    response = client.post(
        f"{url}/find-match",
        files={"audio": ("probe.mp3", probe, "audio/mpeg")},
        data={"language": "en", "top_n": "5"},
        timeout=120,
    )
    response.raise_for_status()
    return time.perf_counter() - started


def keep_busy(url: str, probe: bytes, stop: threading.Event) -> None:
    with httpx.Client() as client:
        while not stop.is_set():
            find_match(client, url, probe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--idle-requests", type=int, default=12)
    parser.add_argument("--speakers", type=int, default=100)
    args = parser.parse_args()
    probe = PROBE_AUDIO.read_bytes()
    root = Path(tempfile.gettempdir()) / "voicesearch-bench-contention"
    shutil.rmtree(root, ignore_errors=True)
    fill(root / "a" / "data", args.speakers)
    shutil.copytree(root / "a", root / "b")
    extra = {"VOICESEARCH_MODEL_CACHE_DIR": str(BENCH_MODEL_CACHE)}
    if args.backend:
        extra["VOICESEARCH_BACKEND"] = args.backend
    servers = [
        Server(bench_env(root / name / "data", **extra), log=root / f"{name}.log")
        for name in ("a", "b")
    ]
    try:
        for server in servers:
            server.wait_ready()
        a, b = servers
        with httpx.Client() as client:
            for _ in range(2):  # warm-up: first requests load lazily
                find_match(client, a.url, probe)
                find_match(client, b.url, probe)
            load_idle = os.getloadavg()[0]
            idle = [find_match(client, a.url, probe) for _ in range(args.idle_requests)]
            stop = threading.Event()
            other = threading.Thread(target=keep_busy, args=(b.url, probe, stop), daemon=True)
            other.start()
            time.sleep(2.0)  # B is busy before A is measured
            contended: list[float] = []
            deadline = time.perf_counter() + args.seconds
            while time.perf_counter() < deadline:
                contended.append(find_match(client, a.url, probe))
            load_busy = os.getloadavg()[0]
            stop.set()
            other.join(timeout=180)
    finally:
        for server in servers:
            server.stop()
    rows = [
        {
            "phase": "idle (B idle)",
            **summary_ms(idle),
            "max_ms": round(max(idle) * 1000, 1),
            "load_avg_1m": round(load_idle, 2),
        },
        {
            "phase": "contended (B busy)",
            **summary_ms(contended),
            "max_ms": round(max(contended) * 1000, 1),
            "load_avg_1m": round(load_busy, 2),
        },
    ]
    ratio = rows[1]["p50_ms"] / rows[0]["p50_ms"]
    worst = rows[1]["max_ms"] / rows[0]["p50_ms"]
    print(table(rows, list(rows[0])))
    print(
        f"contended / idle p50: {ratio:.2f}x; worst contended request / idle p50: {worst:.2f}x "
        f"(target <= {TARGET_RATIO}x): {'met' if worst <= TARGET_RATIO else 'NOT met'}"
    )
    name = "contention" + (f"-{args.backend}" if args.backend else "")
    result = {
        "backend": args.backend or "default",
        "rows": rows,
        "p50_ratio": round(ratio, 2),
        "worst_ratio": round(worst, 2),
        "target_ratio": TARGET_RATIO,
    }
    print(f"wrote {write_json(name, result)}")


if __name__ == "__main__":
    main()
