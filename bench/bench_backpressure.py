"""Back-pressure under real inference: a burst beyond the queue bound, a search during a bulk
enrollment (issue 10, item 9). Real VoxCeleb ECAPA, real `voicesearch serve`, loopback only.

1. **Burst**: ``--burst`` concurrent find-match by audio against one worker, first with the
   queue effectively unbounded (``MAX_INFERENCE_QUEUE=10000``: the behaviour before the bound,
   every request waits its turn) and then with the default bound (16), in the same run. Reports
   per status: count and latency percentiles (``Retry-After`` of the 503s).
2. **Search during enrollment**: the latency of a find-match by audio alone, then while one
   20-file enrollment is in progress (inference is scheduled per file, so the search should wait
   for about one file, not twenty).

    .venv/bin/python -m bench.bench_backpressure --burst 30
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from bench.common import DEV_SPEECH, REAL_VOXCELEB, summary_ms, table, write_json
from bench.server import Server, bench_env

ASR = DEV_SPEECH / "speechbrain_samples" / "ASR"


def clips() -> list[bytes]:
    return [path.read_bytes() for path in sorted(ASR.glob("*.wav"))]


def find_match(url: str, clip: bytes) -> tuple[int, float, str | None]:
    started = time.perf_counter()
    response = httpx.post(
        f"{url}/find-match",
        files=[("audio", ("p.wav", clip, "audio/wav"))],
        data={"language": "en", "top_n": "3"},
        timeout=600,
    )
    return (
        response.status_code,
        time.perf_counter() - started,
        response.headers.get("retry-after"),
    )


def burst(url: str, audio: list[bytes], size: int) -> dict[str, Any]:
    barrier = threading.Barrier(size)
    results: list[tuple[int, float, str | None]] = []
    lock = threading.Lock()

    def one(number: int) -> None:
        barrier.wait()
        result = find_match(url, audio[number % len(audio)])
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(size)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(900)
    by_status: dict[int, list[float]] = defaultdict(list)
    retry_after: list[int] = []
    for status, seconds, retry in results:
        by_status[status].append(seconds)
        if retry is not None:
            retry_after.append(int(retry))
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "statuses": {
            str(status): {"n": len(values), **summary_ms(values)}
            for status, values in sorted(by_status.items())
        },
        "retry_after_s": sorted(set(retry_after)),
    }


def search_during_enrollment(url: str, audio: list[bytes], repeats: int) -> dict[str, Any]:
    probe = audio[0]
    find_match(url, probe)  # warm
    alone = [find_match(url, probe)[1] for _ in range(repeats)]
    files = [("audio", (f"{i}.wav", audio[i % len(audio)], "audio/wav")) for i in range(20)]
    done: list[float] = []

    def enroll() -> None:
        started = time.perf_counter()
        response = httpx.post(
            f"{url}/speakers",
            files=files,
            data={"external_id": f"bulk-{time.time_ns()}", "language": "en"},
            timeout=900,
        )
        response.raise_for_status()
        done.append(time.perf_counter() - started)

    during: list[float] = []
    enrollment = threading.Thread(target=enroll)
    enrollment.start()
    time.sleep(1.0)
    while enrollment.is_alive() and len(during) < repeats:
        status, seconds, _ = find_match(url, probe)
        if status == 200 and enrollment.is_alive():
            during.append(seconds)
    enrollment.join(900)
    return {
        "alone": summary_ms(alone),
        "during_enrollment": summary_ms(during) if during else None,
        "enrollment_20_files_s": round(done[0], 1) if done else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--burst", type=int, default=30, help="concurrent find-match by audio")
    parser.add_argument("--queue", type=int, default=16, help="the bounded queue measured")
    parser.add_argument("--repeats", type=int, default=5, help="searches alone / during")
    parser.add_argument("--name", default="backpressure")
    args = parser.parse_args(argv)
    if not REAL_VOXCELEB.exists() or not ASR.exists():
        print(f"needs the real model and dev-speech under {REAL_VOXCELEB.parent.parent}")
        return 2
    audio = clips()
    load_before = os.getloadavg()
    out: dict[str, Any] = {"burst": args.burst, "loadavg_before": load_before}
    with tempfile.TemporaryDirectory(prefix="voicesearch-bp-") as tmp:
        for label, queue in (
            ("unbounded (before)", 10_000),
            (f"bounded ({args.queue})", args.queue),
        ):
            env = bench_env(
                Path(tmp) / label.split()[0], VOICESEARCH_MAX_INFERENCE_QUEUE=str(queue)
            )
            with Server(env, workers=1, log=Path(tmp) / f"{queue}.log") as server:
                server.wait_ready()
                find_match(server.url, audio[0])  # warm
                out[label] = burst(server.url, audio, args.burst)
                if queue == args.queue:
                    out["search"] = search_during_enrollment(server.url, audio, args.repeats)
    out["loadavg_after"] = os.getloadavg()

    rows = []
    for label in ("unbounded (before)", f"bounded ({args.queue})"):
        for status, stats in out[label]["statuses"].items():
            rows.append({"queue": label, "status": status, **stats})
    print(f"burst of {args.burst} concurrent find-match by audio, 1 worker, real ECAPA")
    print(table(rows, ["queue", "status", "n", "p50_ms", "p95_ms", "p99_ms"]))
    print(f"Retry-After of the 503s: {out[f'bounded ({args.queue})']['retry_after_s']} s")
    search = out["search"]
    print("\nfind-match by audio alone vs during a 20-file enrollment")
    print(
        table(
            [
                {"when": "alone", **search["alone"]},
                {"when": "during enrollment", **(search["during_enrollment"] or {})},
            ],
            ["when", "p50_ms", "p95_ms", "samples"],
        )
    )
    print(f"the enrollment took {search['enrollment_20_files_s']} s")
    print(f"loadavg before {load_before}, after {out['loadavg_after']}")
    print(f"-> {write_json(args.name, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
