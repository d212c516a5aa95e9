"""Start-up time with a 1M-speaker database, index rebuild time, and real-model request latency.

    .venv/bin/python -m bench.bench_startup [--speakers 1000000] [--keep]

1. Fills a fresh database with N synthetic speakers (``bench.synthetic.bulk_insert_synthetic``,
   100k per transaction), then runs ``voicesearch index rebuild`` (timed: the rebuild time).
2. Starts ``voicesearch serve`` three times on it (snapshot present: no rebuild) and times
   process start → first 200 from /health. Target: <= 5 s.
3. Starts it on an empty database (real model, nothing to index) and times the same.
4. On the N-speaker server: latency of POST /extract-embedding and POST /find-match (audio) for
   a 5.0 s MP3 clip (dev-speech rtvc 1320), language given (no lang-ID weights here), 20 each.

Uses the real VoxCeleb ECAPA model. Data lives under $TMPDIR/voicesearch-bench-startup (removed
afterwards unless --keep). Writes bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.bench_search import make_data
from bench.common import DEV_SPEECH, REAL_VOXCELEB, REPO, summary_ms, table, write_json
from bench.server import Server, bench_env, cli_command

CLIP = DEV_SPEECH / "rtvc_samples" / "1320_00000.mp3"


def fill(data_dir: Path, n: int) -> float:
    from bench.synthetic import bulk_insert_synthetic
    from service.core.settings import Settings
    from service.pipeline.registry import ModelRegistry
    from storage.db import make_engine, make_session_factory
    from storage.migrate import upgrade_to_head
    from storage.speakers import SpeakerStore

    models = ModelRegistry.load(
        {"voxceleb": str(REAL_VOXCELEB)}, cache_dir=data_dir.parent / "model-cache", device="cpu"
    )
    settings = Settings(data_dir=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    store = SpeakerStore(
        make_session_factory(engine), {"voxceleb": models.encoder("voxceleb").identity}
    )
    vectors = make_data("clustered", n)
    started = time.perf_counter()
    for start in range(0, n, 100_000):
        bulk_insert_synthetic(store, "voxceleb", vectors[start : start + 100_000])
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds


def rebuild(env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(
        cli_command("index", "rebuild", "--space", "voxceleb"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - started, out.stdout.strip()


def startup(env: dict[str, str], log: Path) -> tuple[float, str]:
    """Seconds until /health answers; and how the index was opened + the service's own
    "ready in" (lifespan: models, database, indexes) from its log."""
    with Server(env, log=log) as server:
        seconds = server.wait_ready()
    text = log.read_text()
    how = re.findall(r"index voxceleb: (.*)", text)
    ready = re.findall(r"ready in ([\d.]+)s", text)
    return seconds, (how[-1] if how else "") + (
        f"; lifespan ready in {ready[-1]} s" if ready else ""
    )


def request_latency(env: dict[str, str], log: Path, rounds: int = 20) -> dict:
    audio = CLIP.read_bytes()
    out = {}
    with Server(env, log=log) as server:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for name, path, data in (
                ("extract_embedding", "/extract-embedding", {"language": "en"}),
                ("find_match_audio", "/find-match", {"language": "en", "top_n": "5"}),
            ):
                times = []
                for i in range(rounds + 2):
                    t0 = time.perf_counter()
                    response = client.post(path, files={"audio": ("clip.mp3", audio)}, data=data)
                    elapsed = time.perf_counter() - t0
                    response.raise_for_status()
                    if i >= 2:  # two warm-up requests
                        times.append(elapsed)
                out[name] = summary_ms(times)
            health = client.get("/health").json()
    out["searched_speakers"] = health
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speakers", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.gettempdir()) / "voicesearch-bench-startup"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    result: dict = {"speakers": args.speakers, "clip": CLIP.name}
    try:
        big = root / "big"
        env = bench_env(big)
        result["fill_seconds"] = round(fill(big, args.speakers), 1)
        print(f"filled {args.speakers} speakers in {result['fill_seconds']} s", flush=True)
        seconds, text = rebuild(env)
        result["rebuild_seconds"] = round(seconds, 1)
        result["rebuild_output"] = text
        print(f"index rebuild: {seconds:.1f} s ({text})", flush=True)
        starts = []
        for i in range(3):
            seconds, how = startup(env, root / f"start-{i}.log")
            starts.append(seconds)
            print(f"start-up {i}: {seconds:.2f} s ({how})", flush=True)
        result["startup_1m_seconds"] = [round(s, 2) for s in starts]
        result["startup_1m_median"] = round(float(np.median(starts)), 2)
        result["startup_1m_how"] = how
        empty_env = bench_env(root / "empty")
        empties = [startup(empty_env, root / f"empty-{i}.log")[0] for i in range(3)]
        result["startup_empty_seconds"] = [round(s, 2) for s in empties]
        result["startup_empty_median"] = round(float(np.median(empties)), 2)
        print(f"start-up, empty database: {result['startup_empty_median']} s", flush=True)
        latency = request_latency(env, root / "latency.log")
        result["latency"] = latency
        result["target_startup_5s_met"] = result["startup_1m_median"] <= 5.0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    rows = [
        {"measure": "fill DB (bulk insert)", "value": f"{result['fill_seconds']} s"},
        {"measure": "voicesearch index rebuild", "value": f"{result['rebuild_seconds']} s"},
        {
            "measure": f"start-up, {args.speakers} speakers (median of 3)",
            "value": f"{result['startup_1m_median']} s",
        },
        {
            "measure": "start-up, empty DB (median of 3)",
            "value": f"{result['startup_empty_median']} s",
        },
    ]
    for name in ("extract_embedding", "find_match_audio"):
        lat = result["latency"][name]
        rows.append(
            {
                "measure": f"{name} 5 s clip p50 / p95",
                "value": f"{lat['p50_ms']:.0f} / {lat['p95_ms']:.0f} ms",
            }
        )
    print(table(rows, ["measure", "value"]))
    print(json.dumps({k: v for k, v in result.items() if k != "latency"}, indent=1)[:2000])
    print(f"wrote {write_json('startup', result)}")


if __name__ == "__main__":
    main()
