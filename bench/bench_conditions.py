"""The service against SpeechBrain used directly, per degraded condition (issue 12).

For each condition the script degrades the *probe* audio itself (enrollment stays clean) and
measures two systems on exactly the same files:

* **service**: the real HTTP app in-process (ASGI TestClient): ``POST /speakers`` enrolls,
  ``POST /find-match`` (``top_n`` = gallery size) answers. Everything the service does is in
  the loop: decode, speech detection, embedding, gallery, score normalisation and *its own
  decision* (``decision == "match"`` and ``match.id``), read from the response. When the
  decision rule changes (branch ``decide``), re-run this script: nothing here knows the rule.
* **direct**: ``speechbrain.inference.speaker.EncoderClassifier.encode_batch`` on the file
  read with soundfile (PyAV for what libsndfile cannot read), resampled to 16 kHz with
  torchaudio, whole clip; a profile is the normalised mean of the speaker's clip embeddings.
  Its threshold is its own best: 1 % false accepts over all probe x profile pairs of all
  conditions pooled.

Columns: top-1 (enrolled probes whose first candidate is their own speaker — for the service
its answer's first candidate; a refused probe is a miss), EER over probe x profile pairs
(refused probes left out; for the service both on the cosine it ranks a wideband answer by and
on the decision score it compares with the threshold), refusals (422), and the open-set rates
of each system's decisions: FPIR = unenrolled probes accepted as anyone, FNIR = enrolled probes
not returned as the right match (wrong-speaker accepts included). Babble is made of three
unenrolled talkers (``babble*``) or, as a worst case, of three enrolled speakers' enrollment
clips (``gbabble*``).

Data. Default: dev-speech (``bench/manifests/dev-speech.csv`` under ``../shared/data/
dev-speech``). ``--manifest M`` (columns ``path,speaker,...``, paths relative to M's folder,
e.g. /work/data/calib/manifest.csv), optionally restricted to the speakers of one split of a
protocol file (``--protocol protocol.json --split TEST``). Per speaker, clips sorted by name:
a speaker with several clips is enrolled from up to 3 and probed with up to 3 others; a
speaker with one long clip (>= 4 s) is enrolled from its first half and probed with the second
(every other such speaker is kept unenrolled instead); the rest are unenrolled probes. Every
probe clip >= 4 s gives non-overlapping ~2 s excerpts (at most 3), ``short`` takes 1-1.5 s
excerpts (up to 2 per probe).

Held-out speakers. Unenrolled speakers are few on dev-speech (10 probes per condition: one false
match is 10 %), so every enrolled speaker is also tried as a stranger: it is deleted from the
service (``DELETE /speakers/{id}``) and from direct's profiles, its probes are run again under
every condition against the other N - 1, and it is enrolled again from the same clips. Those
probes count as unenrolled in FPIR (the table gives how many); ``--no-held-out`` skips them.

    python -m bench.bench_conditions [--manifest M] [--limit-speakers N] [--conditions a,b]

Writes ``bench/results/conditions.md`` (a hand-written "Reading" section below the generated
table is kept across runs) and ``bench/results/conditions.json``.

One file on purpose (about 600 lines): the protocol, the degradations, the two systems and the
report are read together when a number is questioned.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import torch
from fastapi.testclient import TestClient

from bench.conditions.make_conditions import mp3_32k, tel8k
from service.app import create_app
from service.bootstrap import load_models
from service.core.settings import Settings
from service.decisions.probe_quality import LONG_CLEAN, LONG_NOISY, MEDIUM_CLEAN, load_rules
from service.decisions.scoring import eer
from service.pipeline.audio import decode_audio

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VOICESEARCH_TEST_SHARED", REPO.parent / "shared"))
SR = 16_000
READING = "## Reading"
QUALITY_CLASSES = (LONG_CLEAN, LONG_NOISY, MEDIUM_CLEAN)
Degrade = Callable[[np.ndarray, "Context"], list[tuple[bytes, str]]]


@dataclass
class Unit:
    """One probe before degradation: a clip or an excerpt of one."""

    key: str
    speaker: str
    samples: np.ndarray
    enrolled: bool
    #: An enrolled speaker's probe run while that speaker is deleted from the gallery.
    held_out: bool = False


@dataclass
class Context:
    rng: np.random.Generator
    #: Background talkers: clips of unenrolled speakers other than the probe's (a cafeteria of
    #: people nobody enrolled)...
    babble: list[np.ndarray]
    #: ... and, for the ``gbabble`` conditions, the enrolled speakers' own enrollment clips
    #: (other than the probe speaker's): the worst case, where the voices behind the probe are
    #: in the gallery and a match to one of them is not wrong in every sense.
    gallery_babble: list[np.ndarray]


def _seed(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode())


def _wav(x: np.ndarray, rate: int = SR) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(x, -1, 1), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _read(path: Path) -> np.ndarray:
    return decode_audio(path.read_bytes(), max_duration_s=600, min_duration_s=0).samples


# --- conditions ------------------------------------------------------------------------------
def _noise(kind: str, snr_db: float) -> Degrade:
    def degrade(x: np.ndarray, ctx: Context) -> list[tuple[bytes, str]]:
        if kind == "white":
            noise = ctx.rng.standard_normal(x.size)
        else:  # babble: 3 other talkers, each looped to the probe's length
            talkers = ctx.babble if kind == "babble" else ctx.gallery_babble
            if len(talkers) < 3:  # fewer is not babble (none would leave the probe clean)
                raise ValueError(f"{kind}: need clips of 3 other talkers, have {len(talkers)}")
            picks = ctx.rng.choice(len(talkers), size=3, replace=False)
            noise = sum(np.resize(talkers[i], x.size) for i in picks)
        # SNR over the whole clip's power, as make_conditions does.
        power = float(np.mean(x.astype(np.float64) ** 2))
        noise = noise * np.sqrt(power / max(float(np.mean(noise**2)), 1e-20) / 10 ** (snr_db / 10))
        y = x + noise
        peak = float(np.max(np.abs(y)))
        return [(_wav(y / peak * 0.99 if peak > 0.99 else y), "wav")]

    return degrade


def _short(x: np.ndarray, ctx: Context) -> list[tuple[bytes, str]]:
    out = []
    count = max(1, min(2, int(x.size / SR // 1.5)))
    span = x.size // count
    for i in range(count):
        n = min(int(ctx.rng.uniform(1.0, 1.5) * SR), span)
        start = i * span + int(ctx.rng.integers(0, max(1, span - n + 1)))
        out.append((_wav(x[start : start + n]), "wav"))
    return out


def _opus16k(x: np.ndarray, ctx: Context) -> list[tuple[bytes, str]]:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=SR)
        stream.bit_rate = 16_000
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            (np.clip(x, -1, 1) * 32767).astype(np.int16)[None, :], format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = SR, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return [(buffer.getvalue(), "ogg")]


def _one(fn: Callable[[np.ndarray, int], tuple[bytes, str]]) -> Degrade:
    return lambda x, ctx: [fn(x, 0)]


def _quiet(x: np.ndarray) -> np.ndarray:
    return x * np.float32(10 ** (-30 / 20))


CONDITIONS: dict[str, Degrade] = {
    "clean": lambda x, ctx: [(_wav(x), "wav")],
    "short": _short,
    "tel8k": _one(tel8k),
    "quiet30": lambda x, ctx: [(_wav(_quiet(x)), "wav")],
    "quiet30_tel8k": lambda x, ctx: [tel8k(_quiet(x), 0)],
    **{f"white{s}": _noise("white", s) for s in (0, 5, 10)},
    **{f"babble{s}": _noise("babble", s) for s in (0, 5, 10)},
    **{f"gbabble{s}": _noise("gbabble", s) for s in (0, 5, 10)},
    "mp3_32k": _one(mp3_32k),
    "opus16k": _opus16k,
}


# --- protocol --------------------------------------------------------------------------------
def excerpts(x: np.ndarray) -> list[np.ndarray]:
    """A probe clip >= 4 s gives up to 3 non-overlapping ~2 s excerpts; shorter ones stay whole."""
    if x.size < 4 * SR:
        return [x]
    count = min(3, x.size // (2 * SR))
    return list(np.array_split(x, count))


def build_protocol(
    rows: list[dict[str, str]], root: Path
) -> tuple[
    dict[str, list[np.ndarray]],
    list[Unit],
    list[tuple[str, np.ndarray]],
    list[tuple[str, np.ndarray]],
]:
    by_speaker: dict[str, list[Path]] = {}
    for row in rows:
        by_speaker.setdefault(row["speaker"], []).append(root / row["path"])
    enroll: dict[str, list[np.ndarray]] = {}
    probes: list[tuple[str, str, np.ndarray, bool]] = []
    single_long = 0
    for speaker in sorted(by_speaker):
        clips = [(p.name, _read(p)) for p in sorted(by_speaker[speaker])]
        unenrolled_pick = int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % 3 == 0
        if len(clips) >= 2 and not (unenrolled_pick and len(by_speaker) > 20):
            n_enroll = min(3, max(1, len(clips) // 2))
            enroll[speaker] = [x for _, x in clips[:n_enroll]]
            probes += [(speaker, n, x, True) for n, x in clips[n_enroll : n_enroll + 3]]
        elif len(clips) == 1 and clips[0][1].size >= 4 * SR and single_long % 2 == 0:
            single_long += 1
            name, x = clips[0]
            enroll[speaker] = [x[: x.size // 2]]
            probes.append((speaker, name + "#b", x[x.size // 2 :], True))
        else:
            single_long += len(clips) == 1 and clips[0][1].size >= 4 * SR
            probes += [(speaker, n, x, False) for n, x in clips[:3]]
    units = [
        Unit(f"{spk}/{name}#{i}", spk, part, known)
        for spk, name, x, known in probes
        for i, part in enumerate(excerpts(x))
    ]
    # Background talkers are unenrolled speakers; the gallery's own voices are kept apart.
    babble = [(spk, x) for spk, _, x, known in probes if not known]
    gallery_babble = [(spk, x) for spk, xs in enroll.items() for x in xs]
    return enroll, units, babble, gallery_babble


# --- the two systems -------------------------------------------------------------------------
class Direct:
    """SpeechBrain's EncoderClassifier on the file as a user would load it."""

    def __init__(self, model_dir: Path, savedir: Path) -> None:
        from speechbrain.inference.speaker import EncoderClassifier

        self.model = EncoderClassifier.from_hparams(
            source=str(model_dir),
            savedir=str(savedir),
            overrides={"pretrained_path": str(model_dir)},
            run_opts={"device": "cpu"},
        )

    @staticmethod
    def load(data: bytes) -> np.ndarray:
        import torchaudio

        try:
            x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
            x = x.mean(axis=1)
        except sf.LibsndfileError:  # e.g. Ogg Opus with an old libsndfile
            with av.open(io.BytesIO(data)) as container:
                stream = container.streams.audio[0]
                rate = stream.rate
                frames = [f.to_ndarray().astype(np.float32) for f in container.decode(stream)]
            x = np.concatenate([f.reshape(-1, f.shape[-1]).mean(axis=0) for f in frames])
        wave = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if rate != SR:
            wave = torchaudio.functional.resample(wave, rate, SR)
        return wave.numpy()

    def embed(self, data: bytes) -> np.ndarray:
        with torch.no_grad():
            vector = self.model.encode_batch(torch.from_numpy(self.load(data))[None])
        vector = vector.reshape(-1).double().numpy()
        return vector / np.linalg.norm(vector)


@dataclass
class Outcome:
    """One probe file through one system."""

    unit: Unit
    scores: dict[str, float] = field(default_factory=dict)  # cosine per enrolled speaker
    refused: bool = False
    #: Service only: the answer's candidates in its order (``best_match`` first) and each
    #: one's decision score (``score``: AS-norm, or the mapped score of a narrowband pair).
    ranking: list[str] = field(default_factory=list)
    decision_scores: dict[str, float] = field(default_factory=dict)
    accepted_as: str | None = None  # the system's own decision (None: no match)
    codes: list[str] = field(default_factory=list)
    threshold: float | None = None  # service only: the threshold its decision used
    #: Service only: the probe's quality class when it was held to that class's strict tail
    #: (``threshold_quality``: ``long_clean``, ``long_noisy``, ``medium_clean``).
    threshold_quality: str | None = None


def service_probe(client: TestClient, unit: Unit, data: bytes, ext: str, n: int) -> Outcome:
    response = client.post(
        "/find-match",
        files={"audio": (f"probe.{ext}", data, "application/octet-stream")},
        data={"top_n": str(n)},
    )
    if response.status_code == 422:
        return Outcome(unit, refused=True)
    assert response.status_code == 200, response.text
    body = response.json()
    match = body.get("match")
    # Top-1 is the service's own answer (its first candidate), whatever it ranks by. EER is
    # measured twice: on `similarity`, the cosine a wideband answer is ranked by, and on
    # `score`, what the decision compares with the threshold (AS-norm; telephone-band pairs
    # mapped onto the wideband scale).
    top = body["top_matches"]
    return Outcome(
        unit,
        {m["id"]: m["similarity"] for m in top},
        accepted_as=match["id"] if body.get("decision") == "match" and match else None,
        codes=(body.get("quality") or {}).get("codes", []),
        threshold=body.get("threshold"),
        threshold_quality=body.get("threshold_quality"),
        ranking=[m["id"] for m in top],
        decision_scores={
            m["id"]: m["score"] if m.get("score") is not None else m["similarity"] for m in top
        },
    )


# --- metrics ---------------------------------------------------------------------------------
def pairs(outcomes: list[Outcome], decision: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor pair scores: cosines, or (``decision``) the service's scores.
    Held-out probes are left out: their pairs with the other speakers are the same files' pairs
    of the enrolled pass, and would count twice in EER and in direct's threshold."""
    genuine, impostor = [], []
    for o in outcomes:
        if o.unit.held_out:
            continue
        for speaker, score in (o.decision_scores if decision else o.scores).items():
            (genuine if speaker == o.unit.speaker else impostor).append(score)
    return np.asarray(genuine), np.asarray(impostor)


def summarise(outcomes: list[Outcome], threshold: float | None = None) -> dict[str, object]:
    """``threshold``: decide here (direct); None: use each outcome's own decision (service)."""
    enrolled = [o for o in outcomes if o.unit.enrolled]
    strangers = [o for o in outcomes if not o.unit.enrolled]

    def best(o: Outcome) -> tuple[str | None, float]:
        if o.ranking:  # the service: its own first candidate
            return o.ranking[0], o.scores[o.ranking[0]]
        if not o.scores:
            return None, -1.0
        speaker = max(o.scores, key=o.scores.__getitem__)
        return speaker, o.scores[speaker]

    def accepted(o: Outcome) -> str | None:
        if threshold is None:
            return o.accepted_as
        speaker, score = best(o)
        return speaker if score >= threshold else None

    def rate(genuine: np.ndarray, impostor: np.ndarray) -> float:
        return float(eer(genuine, impostor)[0]) if genuine.size and impostor.size else float("nan")

    return {
        "top1": float(np.mean([best(o)[0] == o.unit.speaker for o in enrolled])),
        "eer": rate(*pairs(outcomes)),
        "eer_decision": rate(*pairs(outcomes, decision=True)),
        "refused": sum(o.refused for o in outcomes),
        "no_speech_detected": sum("no_speech_detected" in o.codes for o in outcomes),
        # Probes whose bar a quality class raised, per class (service.decisions.probe_quality).
        "quality_classes": {
            name: sum(o.threshold_quality == name for o in outcomes) for name in QUALITY_CLASSES
        },
        "fpir": float(np.mean([accepted(o) is not None for o in strangers])),
        "fnir": float(np.mean([accepted(o) != o.unit.speaker for o in enrolled])),
        "n_enrolled": len(enrolled),
        "n_unenrolled": len(strangers),
        "n_held_out": sum(o.unit.held_out for o in strangers),
        # Who each wrong acceptance named, on what score (against what threshold), so that a
        # rate can be read back to its probes.
        "wrong_accepts": [
            wrong_accept(o, threshold)
            for o in outcomes
            if accepted(o) is not None and accepted(o) != o.unit.speaker
        ],
    }


def wrong_accept(o: Outcome, threshold: float | None) -> str:
    """One wrong acceptance: ``threshold`` None is the service's own decision."""
    if threshold is None and o.accepted_as is not None:
        name, used = o.accepted_as, o.threshold
    else:
        name, used = max(o.scores, key=o.scores.__getitem__), threshold
    score = o.decision_scores.get(name, o.scores[name])
    kind = "held-out" if o.unit.held_out else "enrolled" if o.unit.enrolled else "unenrolled"
    against = "?" if used is None else f"{used:.3f}"
    return f"{o.unit.key} ({kind}) -> {name}: {score:.3f} >= {against}"


def indexed_speakers(client: TestClient, want: int, wait_s: float = 10.0) -> int:
    """``/health``'s searchable count once it reaches ``want`` (the index catches up with the
    last enrollment in the background; a search catches it up itself), or after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        count = client.get("/health").json()["spaces"]["voxceleb"]["indexed_speakers"]
        if count >= want or time.monotonic() > deadline:
            return int(count)
        time.sleep(0.2)


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """Smallest threshold with at most ``far`` of impostor pairs at or above it."""
    ordered = np.sort(impostor)[::-1]
    k = int(np.floor(far * ordered.size))
    return float(np.nextafter(ordered[k], np.inf)) if k < ordered.size else float(ordered[-1])


# --- run -------------------------------------------------------------------------------------
def load_rows(args: argparse.Namespace) -> tuple[list[dict[str, str]], Path]:
    with open(args.manifest, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("speaker")]
    root = args.root or args.manifest.parent
    if args.protocol:
        speakers = json.loads(args.protocol.read_text())["speakers"]
        rows = [r for r in rows if speakers.get(r["speaker"], {}).get("split") == args.split]
    if args.limit_speakers:
        keep = sorted({r["speaker"] for r in rows})[: args.limit_speakers]
        rows = [r for r in rows if r["speaker"] in keep]
    return rows, root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=REPO / "bench/manifests/dev-speech.csv")
    parser.add_argument("--root", type=Path, help="folder the manifest's paths are relative to")
    parser.add_argument("--protocol", type=Path, help="protocol.json: keep one split's speakers")
    parser.add_argument("--split", default="TEST")
    parser.add_argument("--limit-speakers", type=int, default=0)
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--model", type=Path, default=SHARED / "models/spkrec-ecapa-voxceleb")
    parser.add_argument("--far", type=float, default=0.01, help="direct's pair FAR target")
    parser.add_argument(
        "--no-held-out",
        dest="held_out",
        action="store_false",
        help="skip re-running each enrolled speaker's probes with that speaker deleted",
    )
    parser.add_argument("--results", type=Path, default=REPO / "bench/results/conditions.md")
    parser.add_argument("--work", type=Path, default=REPO / "bench/out/bench-conditions")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="the service's data folder (default: a new one under --work); give a fresh one "
        "that `voicesearch calibrate` wrote to, to measure the service under that calibration "
        "(the bench enrolls into it; one with enrolled speakers is refused)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the .md from the existing .json"
    )
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads(args.results.with_suffix(".json").read_text())
        write_report(args, saved["conditions"], saved["meta"])
        return
    if args.root is None and args.manifest == parser.get_default("manifest"):
        args.root = SHARED / "data/dev-speech"

    started = time.perf_counter()
    rows, root = load_rows(args)
    enroll, units, babble, gallery_babble = build_protocol(rows, root)
    conditions = [c for c in args.conditions.split(",") if c]
    args.work.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        _env_file=None,
        data_dir=args.data_dir or args.work / f"data-{os.getpid()}",
        model_voxceleb=str(args.model),
        model_langid="off",
        model_cnceleb="off",
        model_cache_dir=args.work / "model-cache",
    )
    direct = Direct(args.model, args.work / "direct-model")
    results: dict[str, dict[str, list[Outcome]]] = {"service": {}, "direct": {}}
    with TestClient(create_app(settings, models=load_models(settings))) as client:
        already = client.get("/health").json()["spaces"]["voxceleb"]["indexed_speakers"]
        if already:  # they would be in the gallery, N and top_n: the numbers would be wrong
            raise SystemExit(
                f"{settings.data_dir} already holds {already} enrolled speakers; give a data "
                "folder with a calibration and nobody enrolled (the bench enrolls its own)"
            )

        def enroll_speaker(speaker: str) -> None:
            clips = enroll[speaker]
            files = [("audio", (f"{i}.wav", _wav(x), "audio/wav")) for i, x in enumerate(clips)]
            answer = client.post("/speakers", files=files, data={"external_id": speaker})
            assert answer.status_code == 201, answer.text

        def run(batch: list[Unit], gallery: dict[str, np.ndarray]) -> None:
            """Every unit of ``batch`` under every condition, against the service's current
            gallery and direct's ``gallery`` (the same speakers)."""
            for name in conditions:
                service = results["service"].setdefault(name, [])
                bare = results["direct"].setdefault(name, [])
                for unit in batch:
                    ctx = Context(
                        np.random.default_rng(_seed(name, unit.key)),
                        [x for speaker, x in babble if speaker != unit.speaker],
                        [x for speaker, x in gallery_babble if speaker != unit.speaker],
                    )
                    for data, ext in CONDITIONS[name](unit.samples, ctx):
                        service.append(service_probe(client, unit, data, ext, len(gallery)))
                        vector = direct.embed(data)
                        cosines = {s: float(p @ vector) for s, p in gallery.items()}
                        bare.append(Outcome(unit, cosines))

        profiles: dict[str, np.ndarray] = {}
        for speaker, clips in enroll.items():
            enroll_speaker(speaker)
            mean = np.mean([direct.embed(_wav(x)) for x in clips], axis=0)
            profiles[speaker] = mean / np.linalg.norm(mean)
        n = len(enroll)
        t0 = time.perf_counter()
        run(units, profiles)
        elapsed = time.perf_counter() - t0
        print(f"{len(units)} probes x {len(conditions)} conditions: {elapsed:.0f}s", flush=True)
        if args.held_out:
            t0 = time.perf_counter()
            for speaker in enroll:
                # The speaker's own probes, now as a stranger's: nobody else's gallery changes.
                gone = client.delete(f"/speakers/{speaker}")
                assert gone.status_code == 200, gone.text
                others = {s: p for s, p in profiles.items() if s != speaker}
                mine = [u for u in units if u.enrolled and u.speaker == speaker]
                run([replace(u, enrolled=False, held_out=True) for u in mine], others)
                enroll_speaker(speaker)
            print(f"held-out speakers: {time.perf_counter() - t0:.0f}s", flush=True)
        searchable = indexed_speakers(client, want=n)
        rule = client.get("/calibration").json()["spaces"]["voxceleb"]
    pooled = np.concatenate([pairs(results["direct"][c])[1] for c in conditions])
    threshold = threshold_at_far(pooled, args.far)
    table = {
        c: {
            "service": summarise(results["service"][c]),
            "direct": summarise(results["direct"][c], threshold),
        }
        for c in conditions
    }
    meta = {
        "manifest": args.manifest.name,
        "enrolled_speakers": n,
        "held_out": args.held_out,
        # Where the service's rule came from: `shipped` defaults, or a `calibrated` data folder.
        "decision_source": rule["source"],
        "decision_tail": rule.get("tail"),
        "strict_tails": rule.get("strict_tails"),
        "fpir_target": rule.get("fpir_target"),
        "searchable_speakers": searchable,
        "probe_units": len(units),
        "direct_threshold": threshold,
        "far": args.far,
        "seconds": round(time.perf_counter() - started, 1),
        "loadavg": os.getloadavg(),
    }
    write_report(args, table, meta)


def described_class(shown: dict) -> str:
    """A class as ``/calibration`` lists it (``strict_tails``), in the words doctor uses."""
    (rule,) = load_rules({shown["name"]: shown}) or ()
    return rule.describe()


def write_report(args: argparse.Namespace, table: dict, meta: dict) -> None:
    def pct(v: float) -> str:
        return "–" if v != v else f"{100 * v:.1f}"

    def decided_by(meta: dict) -> str:
        source = meta.get("decision_source")
        if source is None:  # a report from before the rule was recorded: the shipped one
            return "its own defaults"
        tail = meta.get("decision_tail") or {}
        fitted = f", tail u = {tail['u']:.3f}, β = {tail['beta']:.3f}" if tail else ""
        classes = meta.get("strict_tails") or []
        if not classes and meta.get("strict_tail"):  # a report from the long-clean-only release
            classes = [{"name": LONG_CLEAN, **meta["strict_tail"]}]
        if classes:
            described = "; ".join(
                f"`{c['name']}` ({described_class(c)}: "
                + ", ".join(
                    f"{pair} u = {t['u']:.3f}, β = {t['beta']:.3f}"
                    for pair, t in c["tails"].items()
                )
                + ")"
                for c in classes
            )
            fitted += (
                "; probes of a quality class held to its stricter tails where higher ("
                f"{described}; A: wideband probes, B: phone probes' telephone-band pairs): "
                "column `quality class`"
            )
        return f"its `{source}` rule (FPIR* {meta.get('fpir_target')}{fitted})"

    def classes_cell(row: dict) -> str:
        counts = row.get("quality_classes") or {}
        if not counts and "long_clean" in row:  # a report from the long-clean-only release
            counts = {LONG_CLEAN: row["long_clean"]}
        return " / ".join(str(counts.get(name, "–")) for name in QUALITY_CLASSES)

    def held(row: dict) -> str:
        return f" ({row['n_held_out']} held-out)" if row.get("n_held_out") else ""

    lines = [
        "# The service against SpeechBrain direct, per condition",
        "",
        "Generated by `python -m bench.bench_conditions` "
        f"(manifest `{Path(meta['manifest']).name}`; {meta['seconds']:.0f} s, load average "
        f"{meta['loadavg'][0]:.1f}). {meta['enrolled_speakers']} enrolled speakers "
        f"({meta['searchable_speakers']} searchable in the service); probes per condition: "
        "enrolled / unenrolled speakers (`short`: up to 2 excerpts per probe; held-out: an "
        "enrolled speaker's probes run while it is deleted, counted as unenrolled). Direct's "
        "threshold: "
        f"{meta['direct_threshold']:.4f} (its own {100 * meta['far']:g} % pair FAR over all "
        f"conditions pooled). The service decides with {decided_by(meta)}, read from find-match. "
        "Its top-1 is its own first candidate; its EER is given on `similarity` (the cosine a "
        "wideband answer is ranked by) and on `score` (what its decision compares with the "
        "threshold: AS-norm with the shipped cohort). `babble`: three unenrolled talkers; "
        "`gbabble`: three *enrolled* speakers' enrollment clips (the gallery's own voices).",
        "",
        "| condition | probes | top-1 % direct / service | EER % direct / service `similarity` "
        "/ service `score` | service refused (422) | service `no_speech_detected` | service "
        "`quality class` (" + " / ".join(QUALITY_CLASSES) + ") | FPIR % direct / service | "
        "FNIR % direct / service |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        d, s = row["direct"], row["service"]
        lines.append(
            f"| {name} | {s['n_enrolled']} / {s['n_unenrolled']}{held(s)} | "
            f"{pct(d['top1'])} / {pct(s['top1'])} | {pct(d['eer'])} / "
            f"{pct(s['eer'])} / {pct(s.get('eer_decision', float('nan')))} | {s['refused']} | "
            f"{s['no_speech_detected']} | {classes_cell(s)} | "
            f"{pct(d['fpir'])} / {pct(s['fpir'])} | {pct(d['fnir'])} / {pct(s['fnir'])} |"
        )
    reading = ""
    if args.results.is_file():
        old = args.results.read_text()
        reading = old[old.index(READING) :] if READING in old else ""
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(lines) + "\n\n" + (reading or f"{READING}\n\n(to write)\n"))
    args.results.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "conditions": table}, indent=2) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
