"""Identify-speakers on synthetic conversations: DER, speaker naming, speed.

    .venv/bin/python -m bench.bench_diarization [--per-condition 3] [--minutes 1.0] [--seed 0]
        [--conditions pauses,no_pauses] [--backend torch|onnx|onnx-int8] [--name diarization]

Builds conversations from the dev-speech speakers (``bench/conversations.py``: 2-6 speakers,
turns of 1-10 s; conditions ``pauses``, ``no_pauses``, ``overlap`` (10-20 % overlapped speech),
``degraded``), enrolls six of the eight speakers from audio that is in no conversation (two stay
strangers), and runs ``RecordingIdentifier`` — the code behind ``POST /identify-speakers`` —
with the real VoxCeleb ECAPA and Silero VAD, language given (``en``; no language-ID weights
here), number of speakers *estimated*. The gallery's enrollment minimum is lowered to 2 s
(rtvc speakers have only 2.5 s of enrollment audio).

Reports per condition: DER with the standard 0.25 s collar and without (missed speech, false
alarm, confusion; ``bench/der.py``), speakers named correctly (an enrolled speaker by its id, a
stranger as ``unknown_*``; the hypothesis speaker mapped to each reference speaker by the DER
assignment), how many speakers were estimated, and speed: seconds of processing per minute of
audio, and, measured in the same run on the same audio as a baseline for this noisy machine,
the time to embed the whole conversation as one clip (``ClipPipeline.embed_routed``).
Writes bench/results/diarization.json and diarization.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from bench.common import REAL_VOXCELEB, RESULTS, machine, table, write_json
from bench.conversations import CONDITIONS, ENROLLED, SR, build, overlap_share, speaker_audio
from bench.der import score
from service.bootstrap import temporary_voicesearch
from service.core.settings import InferenceSettings, Settings
from service.pipeline.registry import ModelRegistry
from service.recordings.identify import IdentifyOptions, RecordingIdentifier

EN = IdentifyOptions(language="en")


def _wav(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, SR, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def naming(cast: list[str], mapping: dict[str, str], labels: set[str]) -> tuple[int, int, int]:
    """(reference speakers named right, reference speakers, hypothesis speakers wrongly given
    the name of an enrolled speaker who is not in the conversation)."""
    to_hyp = {ref: hyp for hyp, ref in mapping.items()}
    right = 0
    for ref in cast:
        hyp = to_hyp.get(ref)
        if hyp is None:
            continue
        if ref in ENROLLED:
            right += hyp == ref
        else:
            right += hyp.startswith("unknown_")
    false_names = sum(1 for h in labels if h in ENROLLED and h not in cast)
    return right, len(cast), false_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-condition", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=None, help="cluster threshold")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--name", default="diarization")
    parser.add_argument("--backend", default="torch", help="torch, onnx or onnx-int8")
    args = parser.parse_args()

    work = Path(os.environ.get("TMPDIR", "/tmp")) / "voicesearch-bench-diarization"
    models = ModelRegistry.load(
        {"voxceleb": str(REAL_VOXCELEB)},
        cache_dir=work / "cache",
        device="cpu",
        inference=InferenceSettings(backend=args.backend, threads=0, int8_calibration_dir=None),
    )
    assert models.all_loaded, models.statuses
    overrides: dict[str, Any] = {}
    if args.threshold is not None:
        overrides["identify_cluster_threshold"] = args.threshold
    settings = Settings(data_dir=work / "data", model_cache_dir=work / "cache", **overrides)
    audio = speaker_audio()
    rng = np.random.default_rng(args.seed)
    rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    with temporary_voicesearch(settings, models, min_enroll_speech_s=2.0) as vs:
        for spk in ENROLLED:
            asyncio.run(
                vs.enroll(
                    [_wav(c) for c in audio[spk].enroll],
                    external_id=spk,
                    name=spk,
                    metadata=None,
                    language="en",
                )
            )
        identifier = RecordingIdentifier(vs, settings.recordings())
        identifier.identify_blocking(_wav(audio["spk1"].talk[0]), EN)  # warm-up
        for condition in args.conditions.split(","):
            for i in range(args.per_condition):
                conv = build(
                    rng,
                    audio,
                    name=f"{condition}-{i}",
                    condition=condition,
                    n_speakers=2 + (i * 2 + CONDITIONS.index(condition)) % 5,
                    minutes=args.minutes,
                    with_stranger=i % 2 == 1,
                )
                data = conv.wav_bytes()
                minutes = conv.samples.shape[0] / SR / 60
                load = os.getloadavg()[0]
                started = time.perf_counter()
                vs.pipeline.embed_routed(data, "en")
                baseline = time.perf_counter() - started
                started = time.perf_counter()
                result = identifier.identify_blocking(data, EN)
                took = time.perf_counter() - started
                reference = [(t.speaker, t.start, t.end) for t in conv.turns]
                hypothesis = [(s.speaker, s.start, s.end) for s in result.segments]
                collared = score(reference, hypothesis, collar=0.25)
                strict = score(reference, hypothesis, collar=0.0)
                labels = {s.label for s in result.speakers}
                right, cast, false_names = naming(conv.speakers, collared.mapping, labels)
                rows.append(
                    {
                        "conversation": conv.name,
                        "condition": condition,
                        "minutes": round(minutes, 2),
                        "speakers": cast,
                        "found": len(result.speakers),
                        "overlap_pct": round(100 * overlap_share(conv), 1),
                        "der_collar_pct": round(100 * collared.der, 2),
                        "der_pct": round(100 * strict.der, 2),
                        "missed_pct": round(100 * strict.missed_s / strict.reference_s, 2),
                        "false_alarm_pct": round(
                            100 * strict.false_alarm_s / strict.reference_s, 2
                        ),
                        "confusion_pct": round(100 * strict.confusion_s / strict.reference_s, 2),
                        "named_right": right,
                        "false_names": false_names,
                        "s_per_min": round(took / minutes, 2),
                        "baseline_s_per_min": round(baseline / minutes, 2),
                        "x_realtime": round(minutes * 60 / took, 1),
                        "load1": round(load, 1),
                        "labels": sorted(labels),
                        "cast": conv.speakers,
                    }
                )
                print(table(rows[-1:], COLUMNS), flush=True)
                summary = save(rows, args)  # after every conversation: a slow run still reports
    print(table(summary, SUMMARY_COLUMNS))


def save(rows: list[dict[str, Any]], args: Any) -> list[dict[str, Any]]:
    summary = summarise(rows)
    write_json(args.name, {"rows": rows, "summary": summary, "args": vars(args)})
    (RESULTS / f"{args.name}.md").write_text(report(rows, summary, args))
    return summary


COLUMNS = [
    "conversation", "minutes", "speakers", "found", "overlap_pct", "der_collar_pct", "der_pct",
    "missed_pct", "false_alarm_pct", "confusion_pct", "named_right", "false_names",
    "s_per_min", "baseline_s_per_min", "x_realtime", "load1",
]  # fmt: skip
SUMMARY_COLUMNS = [
    "condition", "conversations", "minutes", "der_collar_pct", "der_pct", "missed_pct",
    "false_alarm_pct", "confusion_pct", "named_right", "false_names", "speaker_count_right",
    "s_per_min", "baseline_s_per_min", "x_realtime",
]  # fmt: skip


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per condition: DER terms weighted by audio length, naming counts summed."""
    out = []
    for condition in dict.fromkeys(r["condition"] for r in rows):
        group = [r for r in rows if r["condition"] == condition]
        minutes = sum(r["minutes"] for r in group)

        def weighted(key: str, group: list[dict[str, Any]] = group, m: float = minutes) -> float:
            return round(sum(r[key] * r["minutes"] for r in group) / m, 2)

        seconds = sum(r["s_per_min"] * r["minutes"] for r in group)
        out.append(
            {
                "condition": condition,
                "conversations": len(group),
                "minutes": round(minutes, 1),
                **{
                    k: weighted(k)
                    for k in (
                        "der_collar_pct",
                        "der_pct",
                        "missed_pct",
                        "false_alarm_pct",
                        "confusion_pct",
                        "s_per_min",
                        "baseline_s_per_min",
                    )
                },
                "named_right": f"{sum(r['named_right'] for r in group)}/"
                f"{sum(r['speakers'] for r in group)}",
                "false_names": sum(r["false_names"] for r in group),
                "speaker_count_right": f"{sum(r['found'] == r['speakers'] for r in group)}/"
                f"{len(group)}",
                "x_realtime": round(minutes * 60 / seconds, 1),
            }
        )
    return out


def report(rows: list[dict[str, Any]], summary: list[dict[str, Any]], args: Any) -> str:
    m = machine()
    return "\n".join(
        [
            "# Identify-speakers on synthetic conversations",
            "",
            f"`python -m bench.bench_diarization --per-condition {args.per_condition} "
            f"--minutes {args.minutes} --seed {args.seed} --backend {args.backend}`"
            + (f" `--threshold {args.threshold}`" if args.threshold is not None else ""),
            "",
            f"{m['when']}, {m['cpu']}, {m['affinity']} cores usable; load average during the "
            f"run {min(r['load1'] for r in rows)}-{max(r['load1'] for r in rows)} "
            "(other jobs share the cores: compare `s_per_min` with `baseline_s_per_min`, the "
            "time to embed the same audio as one clip, measured just before).",
            "",
            "DER in % of reference speech; `der_collar_pct` with the standard 0.25 s collar, "
            "the others without. `named_right`: reference speakers named correctly (enrolled: "
            "by id; strangers: `unknown_*`). Number of speakers estimated, language given.",
            "",
            "## Per condition",
            "",
            table(summary, SUMMARY_COLUMNS),
            "",
            "## Per conversation",
            "",
            table(rows, COLUMNS),
            "",
        ]
    )


if __name__ == "__main__":
    main()
