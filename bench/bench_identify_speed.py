"""Where identify-speakers spends its time, on one long synthetic conversation.

    .venv/bin/python -m bench.bench_identify_speed [--minutes 2] [--repeats 2] [--backends torch]

Times, on the same conversation and in the same run (the machine is shared: compare rows, not
runs; the load average is printed): the whole ``RecordingIdentifier.identify_blocking``; its
parts (decode + VAD + window plan, the window embeddings, clustering and naming); the window
embeddings in batches of ``--batches`` equal-length windows (what ``embed_many`` does with its
``batch_size``); and the baseline, the same audio embedded as ONE clip. Each timing is the best
of ``--repeats``. Prints seconds per minute of audio and the real-time factor; writes
bench/results/identify_speed.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_diarization import EN, _wav
from bench.common import REAL_VOXCELEB, machine, table, write_json
from bench.conversations import ENROLLED, SR, build, speaker_audio
from service.bootstrap import temporary_voicesearch
from service.core.settings import InferenceSettings, Settings
from service.pipeline.registry import ModelRegistry
from service.recordings.identify import RecordingIdentifier


def best(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backends", default="torch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", default="1,8,16,32", help="window batch sizes to time")
    args = parser.parse_args()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "voicesearch-bench-identify-speed"
    audio = speaker_audio()
    conv = build(
        np.random.default_rng(args.seed),
        audio,
        name="speed",
        condition="pauses",
        n_speakers=4,
        minutes=args.minutes,
        with_stranger=True,
    )
    data = conv.wav_bytes()
    minutes = conv.samples.shape[0] / SR / 60
    rows: list[dict[str, Any]] = []
    windows = 0
    for backend in args.backends.split(","):
        batches = [int(b) for b in args.batches.split(",")]
        windows = measure(backend, work, audio, data, minutes, args.repeats, batches, rows)
    print(f"\n{machine()['when']}: {minutes:.2f} min conversation, {windows} windows")
    print(table(rows, COLUMNS))
    write_json(
        "identify_speed", {"rows": rows, "windows": windows, "minutes": minutes, "args": vars(args)}
    )


def measure(
    backend: str,
    work: Path,
    audio: dict[str, Any],
    data: bytes,
    minutes: float,
    repeats: int,
    batches: list[int],
    rows: list[dict[str, Any]],
) -> int:
    """Append one row per timing of ``backend`` to ``rows``; the number of windows."""
    models = ModelRegistry.load(
        {"voxceleb": str(REAL_VOXCELEB)},
        cache_dir=work / "cache",
        device="cpu",
        inference=InferenceSettings(backend=backend, threads=0, int8_calibration_dir=None),
    )
    assert models.all_loaded, models.statuses
    settings = Settings(data_dir=work / f"data-{backend}", model_cache_dir=work / "cache")

    def row(part: str, seconds: float) -> None:
        rows.append(
            {
                "backend": backend,
                "part": part,
                "s_per_min": round(seconds / minutes, 2),
                "x_realtime": round(minutes * 60 / seconds, 1),
                "load1": round(os.getloadavg()[0], 1),
            }
        )
        print(table(rows[-1:], COLUMNS), flush=True)

    with temporary_voicesearch(settings, models, min_enroll_speech_s=2.0) as vs:
        for spk in ENROLLED:
            clips = [_wav(c) for c in audio[spk].enroll]
            asyncio.run(vs.enroll(clips, external_id=spk, name=spk, metadata=None, language="en"))
        identifier = RecordingIdentifier(vs, settings.recordings())
        identifier.identify_blocking(_wav(audio["spk1"].talk[0]), EN)  # warm-up
        prepared = identifier.prepare(data, EN)
        encoder = identifier.encoder(prepared)
        samples = prepared.audio.samples
        windows = [samples[w.start : w.end] for w in prepared.windows]
        row(
            "baseline: audio as one clip",
            best(lambda: vs.pipeline.embed_routed(data, "en"), repeats),
        )
        row("identify (whole path)", best(lambda: identifier.identify_blocking(data, EN), repeats))
        row("decode + VAD + plan", best(lambda: identifier.prepare(data, EN), repeats))
        saved = encoder.batch_size
        for size in batches:
            encoder.batch_size = size
            row(f"windows, batch {size}", best(lambda: encoder.embed_many(windows), repeats))
        encoder.batch_size = saved
    return len(windows)


COLUMNS = ["backend", "part", "s_per_min", "x_realtime", "load1"]

if __name__ == "__main__":
    main()
