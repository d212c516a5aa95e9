"""Accuracy evaluation: enroll and probe a labelled manifest through the service's own pipeline,
and compute the same figures with SpeechBrain's ``EncoderClassifier`` used directly.

Manifest format and the service side's trials: ``service.evaluation.trials`` (a fresh temporary
data directory, ``VoiceSearch.enroll`` with each speaker's file bytes, then every probe through
the service's decode — decoding, resampling, speech checks —, language routing, the space's
encoder and the gallery's FAISS search over *every* enrolled speaker, so each probe yields one
score per speaker).

Language of a row: the manifest's ``language`` column when set (``unknown``/empty = not set);
otherwise the language-ID model when loaded; otherwise none, and the probe goes to the
``voxceleb`` space (enrollment records "unknown", as the service does without language ID).

Reference side: the same ``EncoderClassifier`` object (same weights), but audio read
independently (soundfile for WAV/FLAC/SPH, PyAV for everything else, resampled to 16 kHz with
torchaudio), ``encode_batch`` per file, a speaker's model = mean of its L2-normalised enrollment
embeddings, cosine scoring.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.bootstrap import temporary_voicesearch
from service.core.settings import SPACE_VOXCELEB, Settings
from service.decisions import scoring
from service.evaluation.trials import (
    Progress,
    Row,
    enroll_speakers,
    no_progress,
    probe_rows,
    progress_bar,
    search_probe,
    work_items,
)
from service.pipeline.registry import ModelRegistry
from service.search.voicesearch import VoiceSearch

KEYS = ("top1", "top5", "eer", "far_at_threshold", "frr_at_threshold", "threshold_far1")


@dataclass
class SystemResult:
    """Scores of one system: ``scores[p, s]`` = probe p against enrolled speaker s."""

    scores: np.ndarray
    speakers: list[str]
    probe_speakers: list[str]
    threshold: float
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    probe_spaces: list[str] = field(default_factory=list)

    def genuine_impostor(self) -> tuple[np.ndarray, np.ndarray]:
        index = {s: n for n, s in enumerate(self.speakers)}
        mask = np.zeros(self.scores.shape, dtype=bool)
        for p, speaker in enumerate(self.probe_speakers):
            if speaker in index:
                mask[p, index[speaker]] = True
        return self.scores[mask], self.scores[~mask]


def compute_metrics(result: SystemResult) -> dict[str, Any]:
    genuine, impostor = result.genuine_impostor()
    enrolled = set(result.speakers)
    closed = [p for p, s in enumerate(result.probe_speakers) if s in enrolled]
    opened = [p for p, s in enumerate(result.probe_speakers) if s not in enrolled]
    out: dict[str, Any] = {
        "probes": len(result.probe_speakers),
        "closed_set_probes": len(closed),
        "open_set_probes": len(opened),
        "enrolled_speakers": len(result.speakers),
        "genuine_trials": int(genuine.size),
        "impostor_trials": int(impostor.size),
        "threshold": result.threshold,
    }
    if closed:
        for k in (1, 5):
            out[f"top{k}"] = scoring.identification_accuracy(
                result.scores, result.probe_speakers, result.speakers, k
            )
    else:
        out["top1"] = out["top5"] = None
    if genuine.size and impostor.size:
        rate, at = scoring.eer(genuine, impostor)
        at_threshold = scoring.rates_at(genuine, impostor, result.threshold)
        far1 = scoring.threshold_for_far(genuine, impostor, 0.01)
        out.update(
            eer=rate,
            eer_threshold=at,
            far_at_threshold=at_threshold.far,
            frr_at_threshold=at_threshold.frr,
            threshold_far1=far1.threshold,
            frr_at_far1=far1.frr,
        )
    else:
        out.update({k: None for k in ("eer", "far_at_threshold", "frr_at_threshold")})
        out["threshold_far1"] = None
    if opened:
        best = result.scores[opened].max(axis=1) if result.scores.shape[1] else np.zeros(0)
        out["open_set_false_match_rate"] = float(np.mean(best >= result.threshold))
    else:
        out["open_set_false_match_rate"] = None
    return out


# ------------------------------------------------------------------------------------------------
# The service's pipeline
# ------------------------------------------------------------------------------------------------


#: Settings the evaluation overrides when they exist: it measures recognition, not the
#: enrollment policy (a speaker below the minimum net speech is stored but not searchable, and
#: short evaluation sets such as dev-speech would then have nobody to find).
EVAL_OVERRIDES = {"min_enroll_speech_s": 0.0}


def run_service(
    settings: Settings, models: ModelRegistry, rows: list[Row], progress: Progress = no_progress
) -> SystemResult:
    """Enroll and probe through a VoiceSearch built on a fresh temporary store."""
    overrides = {k: v for k, v in EVAL_OVERRIDES.items() if k in type(settings).model_fields}
    with temporary_voicesearch(settings, models, **overrides) as vs:
        return asyncio.run(_service_scores(vs, rows, progress))


async def _service_scores(vs: VoiceSearch, rows: list[Row], progress: Progress) -> SystemResult:
    started = time.perf_counter()
    speaker_ids = await enroll_speakers(vs, rows, progress)
    speakers = list(speaker_ids)
    column = {speaker_ids[s]: n for n, s in enumerate(speakers)}
    probes = probe_rows(rows)
    # A speaker the search does not return (not searchable) scores -1, the lowest cosine.
    scores = np.full((len(probes), len(speakers)), -1.0, dtype=np.float64)
    probe_spaces: list[str] = []
    for p, row in enumerate(probes):
        (found,) = await search_probe(vs, row, len(speakers), telephone_band=True)
        progress(1)
        probe_spaces.append(found.space)
        for hit in found.hits:
            if hit.speaker_id in column:
                scores[p, column[hit.speaker_id]] = hit.score
    spaces = set(probe_spaces)
    space = spaces.pop() if len(spaces) == 1 else SPACE_VOXCELEB
    # Both systems are compared on cosines, so the operating point is the cosine rule's t(N)
    # at this gallery's size. (vs.threshold(space) is in AS-norm units where AS-norm is on:
    # compared with cosines it rejected everything. The service's own AS-norm decisions are
    # measured by `voicesearch calibrate`, as FPIR/FNIR.)
    return SystemResult(
        scores=scores,
        speakers=speakers,
        probe_speakers=[r.speaker for r in probes],
        threshold=vs.policy.cosine_decision(space, len(speakers)).threshold,
        seconds=time.perf_counter() - started,
        probe_spaces=probe_spaces,
    )


# ------------------------------------------------------------------------------------------------
# The reference: SpeechBrain used directly
# ------------------------------------------------------------------------------------------------


def load_reference_audio(path: Path, sample_rate: int = 16_000) -> np.ndarray:
    """float32 mono at ``sample_rate``, read without the service's decoder."""
    import torch
    import torchaudio.functional as AF

    try:
        import soundfile as sf

        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception:  # not a libsndfile format (mp3 on old libsndfile, m4a, webm…): PyAV
        import av

        chunks = []
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            for frame in container.decode(stream):
                array = frame.to_ndarray().astype(np.float32)
                if frame.format.is_planar:
                    array = array.T
                else:
                    array = array.reshape(-1, len(frame.layout.channels))
                chunks.append(array)
        data = np.concatenate(chunks, axis=0)
    mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if rate != sample_rate:
        mono = AF.resample(mono, int(rate), sample_rate)
    return mono.numpy().astype(np.float32)


def run_reference(
    classifiers: dict[str, Any],
    rows: list[Row],
    probe_spaces: list[str],
    threshold: float,
    progress: Progress = no_progress,
) -> SystemResult:
    """Score with ``encode_batch`` directly. ``probe_spaces[p]`` picks the classifier of probe p
    (the space the service routed it to, so both systems compare like with like)."""
    import torch

    started = time.perf_counter()

    def embed(space: str, path: Path) -> np.ndarray:
        wav = torch.from_numpy(load_reference_audio(path)).unsqueeze(0)
        with torch.inference_mode():
            vector = classifiers[space].encode_batch(wav).reshape(-1).float().numpy()
        progress(1)
        return vector / np.linalg.norm(vector)

    enroll: dict[str, list[Path]] = {}
    for row in rows:
        if row.role == "enroll":
            enroll.setdefault(row.speaker, []).append(row.path)
    speakers = list(enroll)
    models: dict[str, np.ndarray] = {}
    for space in sorted(set(probe_spaces)):
        means = []
        for speaker in speakers:
            mean = np.mean([embed(space, p) for p in enroll[speaker]], axis=0)
            means.append(mean / np.linalg.norm(mean))
        models[space] = np.stack(means)
    probes = [r for r in rows if r.role == "probe"]
    scores = np.stack(
        [
            models[space] @ embed(space, r.path)
            for r, space in zip(probes, probe_spaces, strict=True)
        ]
    ).astype(np.float64)
    return SystemResult(
        scores=scores,
        speakers=speakers,
        probe_speakers=[r.speaker for r in probes],
        threshold=threshold,
        seconds=time.perf_counter() - started,
    )


# ------------------------------------------------------------------------------------------------
# Whole evaluation + reports
# ------------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    manifest: Path
    service: SystemResult
    reference: SystemResult
    probe_spaces: list[str]

    def to_json(self) -> dict[str, Any]:
        data = {k: self.service.metrics.get(k) for k in KEYS}
        data.update({k: v for k, v in self.service.metrics.items() if k not in data})
        data["seconds"] = round(self.service.seconds, 2)
        data["space"] = sorted(set(self.probe_spaces))
        data["manifest"] = str(self.manifest)
        reference = {k: self.reference.metrics.get(k) for k in KEYS}
        reference.update({k: v for k, v in self.reference.metrics.items() if k not in reference})
        reference["seconds"] = round(self.reference.seconds, 2)
        data["reference"] = reference
        data["max_abs_score_difference"] = float(
            np.max(np.abs(self.service.scores - self.reference.scores))
        )
        return data


def evaluate(
    settings: Settings,
    models: ModelRegistry,
    rows: list[Row],
    manifest: Path,
    *,
    show_progress: bool = False,
) -> Evaluation:
    # Service: speakers + probes; reference: every enroll clip and probe embedded once.
    total = work_items(rows) + len(rows)
    with progress_bar("eval", total, enabled=show_progress) as bar:
        service = run_service(settings, models, rows, bar.update)
        probe_spaces = service.probe_spaces  # the reference scores each probe in the same space
        classifiers = {space: models.encoder(space).classifier for space in set(probe_spaces)}
        reference = run_reference(classifiers, rows, probe_spaces, service.threshold, bar.update)
    service.metrics = compute_metrics(service)
    reference.metrics = compute_metrics(reference)
    return Evaluation(manifest, service, reference, probe_spaces)


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    if percent:
        return f"{100 * value:.2f} %"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown(evaluation: Evaluation, det_png: str | None) -> str:
    s, r = evaluation.service.metrics, evaluation.reference.metrics
    lines = [
        f"# Evaluation: `{evaluation.manifest.name}`",
        "",
        f"- enrolled speakers: {s['enrolled_speakers']}; probes: {s['probes']} "
        f"({s['closed_set_probes']} of enrolled speakers, {s['open_set_probes']} unenrolled)",
        f"- trials: {s['genuine_trials']} genuine, {s['impostor_trials']} impostor; "
        f"space(s): {', '.join(sorted(set(evaluation.probe_spaces)))}; "
        f"cosine threshold t(N) at this gallery's size: {s['threshold']:.3f}",
        "- service = VoiceSearch.enroll + decode/route/embed/FAISS search in a fresh store; "
        "reference = SpeechBrain `encode_batch` directly (soundfile/PyAV + torchaudio resampling)",
        "",
        "| metric | service | SpeechBrain direct |",
        "|---|---|---|",
    ]
    rows = [
        ("top-1 identification (closed set)", "top1", True),
        ("top-5 identification (closed set)", "top5", True),
        ("EER", "eer", True),
        ("threshold at EER", "eer_threshold", False),
        ("FAR at the cosine t(N)", "far_at_threshold", True),
        ("FRR at the cosine t(N)", "frr_at_threshold", True),
        ("threshold for FAR ≤ 1 %", "threshold_far1", False),
        ("FRR at that threshold", "frr_at_far1", True),
        ("unenrolled probes matched at threshold", "open_set_false_match_rate", True),
    ]
    for label, key, percent in rows:
        lines.append(f"| {label} | {_fmt(s.get(key), percent)} | {_fmt(r.get(key), percent)} |")
    diff = float(np.max(np.abs(evaluation.service.scores - evaluation.reference.scores)))
    lines += [
        "",
        f"Largest absolute difference between the two systems' scores: {diff:.4f}.",
        f"Wall time: service {evaluation.service.seconds:.1f} s, "
        f"reference {evaluation.reference.seconds:.1f} s.",
        "",
        "With few impostor trials FAR moves in steps of 1/N; a FAR of 0 means "
        '"none of N", not "never".',
    ]
    if det_png:
        lines += ["", f"![DET curve]({det_png})"]
    return "\n".join(lines) + "\n"


def write_outputs(
    evaluation: Evaluation, out_dir: Path | None, json_path: Path | None, stem: str
) -> dict[str, Path]:
    from service.evaluation.det_plot import save_det_plot

    written: dict[str, Path] = {}
    data = evaluation.to_json()
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        written["json"] = json_path
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        png = out_dir / f"{stem}-det.png"
        curves = {}
        for name, result in (
            ("service", evaluation.service),
            ("SpeechBrain direct", evaluation.reference),
        ):
            genuine, impostor = result.genuine_impostor()
            if genuine.size and impostor.size:
                far, frr, _ = scoring.det_curve(genuine, impostor)
                curves[name] = (far, frr)
        if curves:
            save_det_plot(curves, png, f"DET: {evaluation.manifest.name}")
            written["det"] = png
        md = out_dir / f"{stem}.md"
        md.write_text(markdown(evaluation, png.name if curves else None), encoding="utf-8")
        written["markdown"] = md
        if json_path is None:
            default_json = out_dir / f"{stem}.json"
            default_json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            written["json"] = default_json
    return written
