"""Embedding throughput: the service's pipeline vs SpeechBrain's bare models, and malloc tuning.

    .venv/bin/python -m bench.bench_embedding [--rounds 3] [--backend torch|onnx|onnx-int8]

Clips: every file of dev-speech (WAV, FLAC, SPH, MP3; 1.8-5.2 s). Models: the real VoxCeleb
ECAPA and a full-size random VoxLingua107 lang-ID model (official dimensions, so the same compute
as the real one; ``tests.model_factory.build_langid_model(full_size=True)``).

* pipeline = what ``VoiceSearch`` does for /extract-embedding and /find-match by audio:
  ``ClipPipeline.embed_routed`` (decode + resample + speech check, language ID, embedding), on
  a ``ClipPipeline`` built from the same settings as the service's.
* bare = the two models alone on waveforms decoded beforehand (not timed): the backend's own
  forward call (for ``torch``: SpeechBrain's ``classify_batch`` + ``encode_batch``; for the ONNX
  backends one ONNX Runtime session run each). ``--backend`` picks what runs both.

Pipeline and bare runs alternate clip by clip, so CPU contention hits both alike; the figure is
the median over rounds of (pipeline time / bare time). Per-stage times come from separate
timed calls of each stage. Peak RSS from getrusage. The whole measurement runs in two child
processes, with and without the malloc environment that ``voicesearch serve`` sets
(``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``), alternated twice: A B A B.
Writes bench/results/embedding.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import DEV_SPEECH, REAL_VOXCELEB, REPO, peak_rss_mb, table, write_json
from service.commands.serve import MALLOC_ENV


def clips() -> list[Path]:
    out = []
    for meta in sorted(DEV_SPEECH.glob("*/metadata.csv")):
        for line in meta.read_text().splitlines()[1:]:
            out.append(meta.parent / line.split(",", 1)[0])
    return out


def inner(rounds: int, work: Path, backend: str) -> dict:
    import torch

    from service.core.settings import Settings
    from service.evaluation.evaluate import load_reference_audio
    from service.pipeline.audio import decode_audio
    from service.pipeline.clip import ClipPipeline
    from service.pipeline.language import LanguageRouter
    from service.pipeline.quality import QualityAssessor
    from service.pipeline.registry import ModelRegistry
    from tests.model_factory import build_langid_model

    langid_dir = work / "langid-full"
    if not (langid_dir / "embedding_model.ckpt").is_file():
        # Favouring English keeps every clip in the voxceleb space (only the output bias and
        # scale differ: same compute as any other full-size model).
        build_langid_model(langid_dir, seed=0, full_size=True, favour_language="en")
    models = ModelRegistry.load(
        {"langid": str(langid_dir), "voxceleb": str(REAL_VOXCELEB)},
        cache_dir=work / "cache",
        device="cpu",
        inference=Settings(_env_file=None, backend=backend).inference(),
    )
    assert models.all_loaded, models.statuses
    settings = Settings(
        data_dir=work / f"data-{os.getpid()}", model_cache_dir=work / "cache", backend=backend
    )
    pipeline = ClipPipeline(
        settings.clip(),
        models,
        LanguageRouter(settings.cnceleb_languages),
        QualityAssessor.from_settings(settings.quality()),
    )
    paths = clips()
    blobs = [p.read_bytes() for p in paths]
    waves = [load_reference_audio(p) for p in paths]
    audio_s = sum(w.size for w in waves) / 16_000
    langid = models.language_identifier.runtime
    speaker = models.encoder("voxceleb").runtime

    def bare(wav: np.ndarray) -> None:
        langid.forward([wav])
        speaker.forward([wav])

    for blob, wav in zip(blobs[:3], waves[:3], strict=True):  # warm-up
        pipeline.embed_routed(blob, None)
        bare(wav)

    ratios, pipe_totals, bare_totals = [], [], []
    stages = {"decode_resample": 0.0, "speech_checks": 0.0, "language_id": 0.0, "embedding": 0.0}
    for _ in range(rounds):
        pipe_t = bare_t = 0.0
        for blob, wav in zip(blobs, waves, strict=True):
            t0 = time.perf_counter()
            pipeline.embed_routed(blob, None)
            t1 = time.perf_counter()
            bare(wav)
            t2 = time.perf_counter()
            pipe_t += t1 - t0
            bare_t += t2 - t1
        # Stage breakdown (separate calls, same order as the pipeline).
        for blob in blobs:
            t0 = time.perf_counter()
            decode_audio(
                blob,
                max_duration_s=settings.max_duration_s,
                min_duration_s=settings.min_duration_s,
            )
            decode_t = time.perf_counter() - t0
            t0 = time.perf_counter()
            audio = pipeline.decode(blob)  # decoding + speech checks (energy, VAD when configured)
            t1 = time.perf_counter()
            routed = pipeline.route(audio, None)
            t2 = time.perf_counter()
            models.encoder(routed.space).embed(audio.samples)
            t3 = time.perf_counter()
            stages["decode_resample"] += decode_t
            stages["speech_checks"] += max(0.0, (t1 - t0) - decode_t)
            stages["language_id"] += t2 - t1
            stages["embedding"] += t3 - t2
        ratios.append(pipe_t / bare_t)
        pipe_totals.append(pipe_t)
        bare_totals.append(bare_t)
    return {
        "clips": len(blobs),
        "audio_seconds_per_round": round(audio_s, 2),
        "rounds": rounds,
        "torch_threads": torch.get_num_threads(),
        "backend": backend,
        "pipeline_audio_s_per_s": round(audio_s / float(np.median(pipe_totals)), 2),
        "bare_audio_s_per_s": round(audio_s / float(np.median(bare_totals)), 2),
        "pipeline_over_bare_median": round(float(np.median(ratios)), 4),
        "ratios": [round(r, 4) for r in ratios],
        "stage_ms_per_clip": {
            k: round(1000 * v / (rounds * len(blobs)), 2) for k, v in stages.items()
        },
        "peak_rss_mb": round(peak_rss_mb(), 0),
        "malloc_tuned": all(k in os.environ for k in MALLOC_ENV),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument(
        "--tuned-only", action="store_true", help="two runs with the malloc environment only"
    )
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print("RESULT " + json.dumps(inner(args.rounds, args.work, args.backend)), flush=True)
        return
    runs = []
    tmp = Path(tempfile.gettempdir()) / "voicesearch-bench-embedding"  # model kept for reruns
    tmp.mkdir(exist_ok=True)
    if True:
        base = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
        base.pop("VOICESEARCH_NO_MALLOC_TUNING", None)
        for tuned in (True, True) if args.tuned_only else (True, False, True, False):
            env = {**base, **MALLOC_ENV} if tuned else base
            command = [
                sys.executable,
                "-m",
                "bench.bench_embedding",
                "--inner",
                "--rounds",
                str(args.rounds),
                "--backend",
                args.backend,
                "--work",
                str(tmp),
            ]
            out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
            runs.append(json.loads(line[len("RESULT ") :]))
            print(table([runs[-1]], COLUMNS).splitlines()[-1], flush=True)
    tuned = [r for r in runs if r["malloc_tuned"]]
    plain = [r for r in runs if not r["malloc_tuned"]]

    def med(rows: list[dict], key: str) -> float:
        return float(np.median([r[key] for r in rows]))

    result = {
        "runs": runs,
        "pipeline_over_bare_median": med(runs, "pipeline_over_bare_median"),
        "malloc_speedup_pipeline": round(
            med(tuned, "pipeline_audio_s_per_s") / med(plain, "pipeline_audio_s_per_s"), 3
        )
        if plain
        else None,
        "target": "pipeline <= 1.10 x bare",
    }
    result["target_met"] = result["pipeline_over_bare_median"] <= 1.10
    print(table(runs, COLUMNS))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    # The full A/B/A/B torch run is the historical baseline; the others are named per backend.
    full_torch = args.backend == "torch" and not args.tuned_only
    name = "embedding" if full_torch else f"embedding-{args.backend}"
    print(f"wrote {write_json(name, result)}")


COLUMNS = [
    "backend",
    "malloc_tuned",
    "pipeline_audio_s_per_s",
    "bare_audio_s_per_s",
    "pipeline_over_bare_median",
    "stage_ms_per_clip",
    "peak_rss_mb",
    "torch_threads",
]


if __name__ == "__main__":
    main()
