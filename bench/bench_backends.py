"""Speaker-encoder speed per backend: torch (tuned) vs onnx vs onnx-int8, interleaved.

    .venv/bin/python -m bench.bench_backends [--rounds 20] [--lengths 1,3,10]

The real VoxCeleb ECAPA, loaded through the service's own ``ModelRegistry`` on each backend
(exports built once into ``bench.common.BENCH_MODEL_CACHE``, kept for reruns), embeds real
speech (the dev-speech clips concatenated, cut to 1, 3 and 10 s) one clip per call, as the
service does. "Tuned PyTorch" is the reference: glibc malloc told to keep freed memory (the
measured cause of most of ONNX Runtime's apparent FP32 advantage, see
``../shared/notes/onnx-int8-ecapa.md``), threads as the service sets them, OpenMP not spinning.
The script re-executes itself once with that environment, so every backend runs under it.

Each round runs the three backends in a shuffled order, after 50 ms of sleep, on the same clip;
the speed-up is the median over rounds of the per-round ratio torch / backend (CPU contention
from other processes hits all three alike). Reported per backend and length: median and p90
wall ms, median CPU ms of the process (all threads), clips per second (1 / median), and the
load average before and after each length. Writes bench/results/backends.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import BENCH_MODEL_CACHE, REAL_VOXCELEB, table, write_json

#: "Tuned PyTorch" (the notes' setting): freed memory is kept, so no call re-faults its pages.
TUNED_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}
BACKENDS = ("torch", "onnx", "onnx-int8")
#: Target of issue 13: INT8 encoder throughput against tuned PyTorch.
INT8_TARGET = 2.5


def speech(seconds: float) -> np.ndarray:
    """Real speech of the given length: dev-speech clips decoded and concatenated."""
    from bench.bench_embedding import clips
    from service.evaluation.evaluate import load_reference_audio

    need = int(seconds * 16_000)
    parts, total = [], 0
    for path in clips():
        parts.append(load_reference_audio(path))
        total += parts[-1].size
        if total >= need:
            break
    return np.concatenate(parts)[:need].astype(np.float32)


def load(work: Path) -> dict:
    from service.core.settings import Settings
    from service.pipeline.registry import ModelRegistry

    encoders = {}
    for backend in BACKENDS:
        started = time.perf_counter()
        registry = ModelRegistry.load(
            {"voxceleb": str(REAL_VOXCELEB)},
            cache_dir=work,
            device="cpu",
            inference=Settings(_env_file=None, backend=backend).inference(),
        )
        assert registry.all_loaded, registry.statuses
        encoders[backend] = registry.encoder("voxceleb")
        print(f"loaded {backend} in {time.perf_counter() - started:.1f}s", flush=True)
    return encoders


def measure(encoders: dict, lengths: list[float], rounds: int) -> list[dict]:
    rng = random.Random(13)
    rows = []
    for seconds in lengths:
        wave = speech(seconds)
        for encoder in encoders.values():  # warm-up
            for _ in range(3):
                encoder.embed(wave)
        load_before = os.getloadavg()[0]
        wall: dict[str, list[float]] = {b: [] for b in encoders}
        cpu: dict[str, list[float]] = {b: [] for b in encoders}
        for _ in range(rounds):
            order = list(encoders)
            rng.shuffle(order)
            for backend in order:
                time.sleep(0.05)
                c0, t0 = time.process_time(), time.perf_counter()
                encoders[backend].embed(wave)
                wall[backend].append(time.perf_counter() - t0)
                cpu[backend].append(time.process_time() - c0)
        load_after = os.getloadavg()[0]
        reference = np.asarray(wall["torch"])
        for backend in encoders:
            times = np.asarray(wall[backend])
            rows.append(
                {
                    "clip_s": seconds,
                    "backend": backend,
                    "median_ms": round(1000 * float(np.median(times)), 1),
                    "p90_ms": round(1000 * float(np.percentile(times, 90)), 1),
                    "cpu_ms": round(1000 * float(np.median(cpu[backend])), 1),
                    "clips_per_s": round(1.0 / float(np.median(times)), 2),
                    "speedup_vs_torch": round(float(np.median(reference / times)), 2),
                    "cpu_speedup_vs_torch": round(
                        float(np.median(np.asarray(cpu["torch"]) / np.asarray(cpu[backend]))), 2
                    ),
                    "load_before": round(load_before, 2),
                    "load_after": round(load_after, 2),
                }
            )
            print(table([rows[-1]], COLUMNS).splitlines()[-1], flush=True)
    return rows


COLUMNS = [
    "clip_s",
    "backend",
    "median_ms",
    "p90_ms",
    "cpu_ms",
    "clips_per_s",
    "speedup_vs_torch",
    "cpu_speedup_vs_torch",
    "load_before",
    "load_after",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--lengths", default="1,3,10", help="clip lengths in seconds")
    args = parser.parse_args()
    if any(os.environ.get(k) != v for k, v in TUNED_MALLOC.items()):
        os.environ.update(TUNED_MALLOC)  # read by glibc at start-up: run again with it
        os.execv(sys.executable, [sys.executable, "-m", "bench.bench_backends", *sys.argv[1:]])
    from service.pipeline.threads import configure_torch, inference_threads, quiet_openmp

    quiet_openmp()  # as the CLI does, before torch loads
    threads = inference_threads()
    configure_torch(threads)
    encoders = load(BENCH_MODEL_CACHE)
    lengths = [float(x) for x in args.lengths.split(",")]
    rows = measure(encoders, lengths, args.rounds)
    int8 = {r["clip_s"]: r["speedup_vs_torch"] for r in rows if r["backend"] == "onnx-int8"}
    result = {
        "rounds": args.rounds,
        "threads": threads,
        "malloc": TUNED_MALLOC,
        "rows": rows,
        "target": f"onnx-int8 >= {INT8_TARGET} x tuned torch",
        "int8_speedup": int8,
        "target_met": all(v >= INT8_TARGET for v in int8.values()),
    }
    print(table(rows, COLUMNS))
    print(json.dumps({k: result[k] for k in ("threads", "int8_speedup", "target_met")}))
    print(f"wrote {write_json('backends', result)}")


if __name__ == "__main__":
    main()
