"""Who speaks when in a recording, and which of the voices are enrolled.

The path (:meth:`RecordingIdentifier.analyse`, blocking; :meth:`RecordingIdentifier.identify`,
async):

1. decode the upload (``service.pipeline.audio``: same formats, safety and duration limit as
   every upload) and refuse digital silence (``service.pipeline.speech``);
2. speech regions from the service's VAD (``QualityAssessor.segments``: Silero, or energy runs);
3. windows (``service.recordings.segmentation``) embedded with the encoder of the routed space
   (the caller's language, else the language detected on the first speech), in batches;
4. clustering into speakers (``service.recordings.clustering``) and the timeline
   (``service.recordings.timeline``);
5. each speaker's centroid (the normalised mean of its windows) searched in the routed space's
   index by ``Matcher.search_index`` — the very code and decision rule of find-match, with the
   speaker's net speech (and SNR over its own segments) as the probe's, so a speaker heard for
   less than ``min_probe_speech_s`` is ``undecided`` exactly as a short find-match probe is, and
   a long or clean one gets its probe quality class's bar. A speaker with verdict ``match`` is
   named by the enrolled speaker's external id; any other is ``unknown_1``, ``unknown_2``… in
   order of first appearance. Two clusters matched to the same enrolled speaker are one speaker;
6. over HTTP, each unknown voice gets an enroll token (``service.recordings.tokens``) when the
   caller may enroll.

Over HTTP the request is admitted once by the inference queue and steps 1-4 run as several
inference steps (decoding, each batch of windows, clustering), so other requests interleave.

(Over 400 lines: the blocking steps and their async, step-by-step driver are kept together, so
the path the CLI and the benchmark time is visibly the path HTTP runs.)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace

import anyio
import numpy as np

from service.core import errors
from service.core.settings import RecordingSettings
from service.decisions.bandwidth import is_narrowband
from service.pipeline.audio import DecodedAudio, decode_audio
from service.pipeline.clip import RoutedLanguage
from service.pipeline.encoders import SpeakerEncoder
from service.pipeline.quality import frame_powers, snr_db_of
from service.recordings.clustering import ClusterSettings, centroids, cluster
from service.recordings.excerpts import Excerpt, cut
from service.recordings.segmentation import (
    SAMPLE_RATE,
    Region,
    WindowPlan,
    merge_regions,
    plan_windows,
)
from service.recordings.timeline import Segment, build_timeline
from service.recordings.tokens import EnrollTokens, IssuedToken, RedeemedVoice
from service.search.matching import VERDICT_MATCH, MatchResult
from service.search.voicesearch import VoiceSearch
from storage.enroll_tokens import EnrollTokenStore

#: Language detection listens to at most this much of the recording's speech.
LANGUAGE_SAMPLE_S = 30.0
#: Windows per ``embed_many`` request (one inference step over HTTP; one progress report).
CHUNK = 32
#: Windows per encoder call. Windows are all ``window_s`` long (but a short region's), so a
#: batch needs no padding and gives the same embeddings as one window at a time; on 2 CPU cores
#: batches of 16 embed 1.3-1.5x faster than single windows (bench/bench_identify_speed.py).
WINDOW_BATCH = 16
UNKNOWN = "unknown_{}"

Progress = Callable[[int, int], None]  # (windows embedded, windows in all)


@dataclass(frozen=True)
class IdentifyOptions:
    """What a caller may ask of one identify-speakers run."""

    language: str | None = None  # skips language detection
    top_n: int = 5  # candidates listed per voice
    num_speakers: int | None = None  # the exact number of voices, when known
    max_speakers: int | None = None  # an upper bound on the estimated number


@dataclass(frozen=True)
class Analysis:
    """A recording split into speakers, before any of them is matched."""

    duration_s: float
    speech_s: float
    routed: RoutedLanguage
    model: str  # identity of the encoder that embedded the windows
    segments: list[Segment]  # labelled with cluster numbers
    centroids: np.ndarray  # (k, dim): one unit vector per cluster
    windows: int
    samples: np.ndarray  # the decoded recording (16 kHz): enroll tokens keep excerpts of it
    source_sample_rate: int = 16_000  # the upload's own rate (enroll tokens keep its band)

    @property
    def narrowband(self) -> bool:
        """The upload was <= 8 kHz: its voices meet telephone-band profiles."""
        return is_narrowband(self.source_sample_rate)


@dataclass(frozen=True)
class Prepared:
    """A decoded recording with its speech, windows and routed language, not yet embedded."""

    audio: DecodedAudio
    regions: list[Region]
    speech_s: float
    windows: list[Region]
    routed: RoutedLanguage


@dataclass(frozen=True)
class FoundSpeaker:
    label: str  # the enrolled speaker's external id, or unknown_<n>
    result: MatchResult  # the find-match answer for this speaker's centroid
    speech_s: float  # net speech attributed to this speaker
    segments: int
    first_start: float
    snr_db: float | None = None  # estimated over this speaker's segments, as for a clip


@dataclass(frozen=True)
class TimelineSegment:
    start: float
    end: float
    speaker: str
    score: float


@dataclass(frozen=True)
class RecordingResult:
    duration_s: float
    speech_s: float
    routed: RoutedLanguage
    model: str
    speakers: list[FoundSpeaker]  # in order of first appearance
    segments: list[TimelineSegment]
    windows: int
    #: Enroll tokens of the voices that matched nobody (label → token), when issued.
    tokens: dict[str, IssuedToken] = field(default_factory=dict)


def check_speaker_counts(num_speakers: int | None, max_speakers: int | None, limit: int) -> None:
    if num_speakers is not None and max_speakers is not None:
        raise errors.InvalidInput("give num_speakers or max_speakers, not both")
    for name, value in (("num_speakers", num_speakers), ("max_speakers", max_speakers)):
        if value is not None and not 1 <= value <= limit:
            raise errors.InvalidInput(
                f"{name} must be between 1 and {limit}",
                details={name: value, "limit": limit},
            )


def embed_windows(
    encoder: SpeakerEncoder,
    samples: np.ndarray,
    windows: list[Region],
    progress: Progress | None = None,
) -> np.ndarray:
    """``(len(windows), dim)`` unit embeddings, :data:`CHUNK` windows per encoder request."""
    out = np.zeros((len(windows), encoder.dim), dtype=np.float32)
    for lo in range(0, len(windows), CHUNK):
        chunk = windows[lo : lo + CHUNK]
        clips = [samples[w.start : w.end] for w in chunk]
        out[lo : lo + len(chunk)] = encoder.embed_many(clips, WINDOW_BATCH)
        if progress is not None:
            progress(lo + len(chunk), len(windows))
    return out


class RecordingIdentifier:
    """Identify-speakers over a :class:`VoiceSearch`: its pipeline (decoding, VAD, language
    routing, encoders) and its matcher (index search and the open-set decision)."""

    def __init__(
        self,
        voicesearch: VoiceSearch,
        settings: RecordingSettings,
        tokens: EnrollTokens | None = None,
    ) -> None:
        self.voicesearch = voicesearch
        self.settings = settings
        # In the database beside the speakers, so every worker and node shares them.
        self.tokens = tokens or EnrollTokens(
            EnrollTokenStore(voicesearch.store.session_factory), settings
        )
        self.plan = WindowPlan(settings.window_s, settings.hop_s, settings.min_window_s)
        self.clustering = ClusterSettings(threshold=settings.cluster_threshold)

    # --- blocking steps -----------------------------------------------------------------------
    def speech_regions(self, audio: DecodedAudio) -> list[Region]:
        """The speech of a recording, found by the same detector as a clip's (gain-normalised
        Silero at the upload's band); a recording with nothing audible is refused."""
        detection = self.voicesearch.pipeline.quality.detector.detect(
            audio.samples, audio.source_sample_rate
        )
        if not detection.audible:
            raise errors.NoSpeech(
                f"Nothing audible: the recording's level is {detection.level_dbfs:.0f} dBFS "
                "(silence or dither).",
                details={"speech_seconds": 0.0, "level_dbfs": detection.level_dbfs},
            )
        return merge_regions(detection.segments, max_gap_s=0.0, total=audio.samples.shape[0])

    def check(self, options: IdentifyOptions) -> int:
        """Refuse impossible options before any decoding; the ``top_n`` to use."""
        check_speaker_counts(options.num_speakers, options.max_speakers, self.settings.max_speakers)
        return self.voicesearch.matcher.clamp_top_n(options.top_n)

    def prepare(self, data: bytes, options: IdentifyOptions) -> Prepared:
        """Decode, find the speech, plan the windows and route the language (blocking; the
        first inference step)."""
        self.check(options)
        pipeline = self.voicesearch.pipeline
        clip = pipeline.settings
        audio = decode_audio(
            data, max_duration_s=clip.max_duration_s, min_duration_s=clip.min_duration_s
        )
        samples = audio.samples
        regions = self.speech_regions(audio)
        speech_s = sum(r.seconds for r in regions)
        # Windows may bridge a short pause (a breath is not a turn); frames are still
        # labelled only inside the VAD's regions.
        windows = plan_windows(
            merge_regions(
                [(r.start, r.end) for r in regions],
                max_gap_s=self.settings.bridge_gap_s,
                total=samples.shape[0],
            ),
            self.plan,
        )
        if not windows:
            # Nothing to cluster: not one analysis window of speech was found.
            raise errors.NoSpeech(
                f"Found {speech_s:.2f} s of speech: too little to tell voices apart.",
                details={"speech_seconds": round(speech_s, 3)},
            )
        speech = np.concatenate([samples[r.start : r.end] for r in regions])
        listened = DecodedAudio(
            speech[: round(LANGUAGE_SAMPLE_S * SAMPLE_RATE)],
            audio.source_sample_rate,
            audio.source_channels,
            audio.source_format,
        )
        routed = pipeline.route(listened, options.language)
        return Prepared(audio, regions, speech_s, windows, routed)

    def encoder(self, prepared: Prepared) -> SpeakerEncoder:
        return self.voicesearch.pipeline.models.encoder(prepared.routed.space)

    def cluster(
        self, prepared: Prepared, embeddings: np.ndarray, options: IdentifyOptions, model: str
    ) -> Analysis:
        """Window embeddings → voices and the timeline (blocking)."""
        labels = cluster(
            embeddings,
            self.clustering,
            num_speakers=options.num_speakers,
            max_speakers=options.max_speakers,
        )
        k = int(labels.max()) + 1
        means = centroids(embeddings, labels, k)
        scores = np.einsum("ij,ij->i", embeddings, means[labels])
        return Analysis(
            duration_s=prepared.audio.duration_s,
            speech_s=prepared.speech_s,
            routed=prepared.routed,
            model=model,
            segments=build_timeline(prepared.regions, prepared.windows, labels, scores),
            centroids=means,
            windows=len(prepared.windows),
            samples=prepared.audio.samples,
            source_sample_rate=prepared.audio.source_sample_rate,
        )

    def analyse(
        self, data: bytes, options: IdentifyOptions, progress: Progress | None = None
    ) -> Analysis:
        """Decode, find the speech, embed the windows and cluster them (blocking)."""
        prepared = self.prepare(data, options)
        encoder = self.encoder(prepared)
        embeddings = embed_windows(encoder, prepared.audio.samples, prepared.windows, progress)
        return self.cluster(prepared, embeddings, options, encoder.identity)

    def name_speakers(self, analysis: Analysis, top_n: int) -> RecordingResult:
        """Match each cluster against the enrolled speakers (blocking: SQLite, FAISS)."""
        matcher = self.voicesearch.matcher
        space = analysis.routed.space
        k = analysis.centroids.shape[0]
        speech = np.zeros(k)
        count = np.zeros(k, dtype=np.int64)
        first = np.full(k, np.inf)
        spans: list[list[tuple[int, int]]] = [[] for _ in range(k)]
        for seg in analysis.segments:
            speech[seg.label] += seg.end - seg.start
            count[seg.label] += 1
            first[seg.label] = min(first[seg.label], seg.start)
            spans[seg.label].append((round(seg.start * SAMPLE_RATE), round(seg.end * SAMPLE_RATE)))
        # Each voice's SNR over its own segments, the recording's quietest frames as the noise:
        # with its net speech, the probe quality class find-match would give it as a clip.
        powers = frame_powers(analysis.samples)
        snr = [snr_db_of(analysis.samples, spans[c], powers) for c in range(k)]
        results = [
            matcher.search_index(
                space,
                analysis.centroids[c],
                top_n,
                float(speech[c]),
                analysis.narrowband,
                snr[c],
            )
            for c in range(k)
        ]
        # Names in order of first appearance; a cluster with no segment is dropped. An unknown
        # voice's label never takes an enrolled id (someone may be enrolled as "unknown_1").
        order = sorted((c for c in range(k) if count[c]), key=lambda c: first[c])
        matched = {
            c: results[c].match.id  # type: ignore[union-attr]
            for c in order
            if results[c].verdict == VERDICT_MATCH and results[c].match is not None
        }
        taken = set(matched.values())
        names: dict[int, str] = {}
        found: dict[str, FoundSpeaker] = {}
        unknown = 0
        for c in order:
            if c in matched:
                name = matched[c]
            else:
                unknown += 1
                while UNKNOWN.format(unknown) in taken:
                    unknown += 1
                name = UNKNOWN.format(unknown)
            names[c] = name
            speaker = FoundSpeaker(
                name, results[c], float(speech[c]), int(count[c]), first[c], snr[c]
            )
            if name in found:  # two clusters, one enrolled voice: keep the better match
                other = found[name]
                better = max(other, speaker, key=lambda s: s.result.matches[0].score or 0.0)
                speaker = FoundSpeaker(
                    name,
                    better.result,
                    other.speech_s + speaker.speech_s,
                    other.segments + speaker.segments,
                    min(other.first_start, speaker.first_start),
                    better.snr_db,  # the SNR of the voice whose answer is kept
                )
            found[name] = speaker
        segments = _merged_segments(analysis.segments, names)
        return RecordingResult(
            duration_s=analysis.duration_s,
            speech_s=analysis.speech_s,
            routed=analysis.routed,
            model=analysis.model,
            speakers=sorted(found.values(), key=lambda s: s.first_start),
            segments=segments,
            windows=analysis.windows,
        )

    def identify_blocking(
        self, data: bytes, options: IdentifyOptions, progress: Progress | None = None
    ) -> RecordingResult:
        """The whole path in the calling thread (the CLI and the benchmark)."""
        top_n = self.check(options)
        return self.name_speakers(self.analyse(data, options, progress), top_n)

    # --- async (HTTP) -------------------------------------------------------------------------
    async def identify(
        self, data: bytes, options: IdentifyOptions, principal: str | None = None
    ) -> RecordingResult:
        """Admitted once by the inference queue (503 ``overloaded`` beyond it, like every
        request that needs a model), then each step — decoding with the VAD, every
        :data:`CHUNK` windows' embeddings, the clustering — takes an inference slot of its own,
        first come first served: a find-match arriving during a long recording waits for one
        step, not for the whole recording. Matching runs in a worker thread. ``principal``: who
        may redeem the unknown voices' enroll tokens; None issues none."""
        top_n = self.check(options)
        pipeline = self.voicesearch.pipeline
        async with pipeline.queue.admitted():
            prepared = await pipeline.infer(self.prepare, data, options)
            encoder = self.encoder(prepared)
            samples, windows = prepared.audio.samples, prepared.windows
            embeddings = np.zeros((len(windows), encoder.dim), dtype=np.float32)
            for lo in range(0, len(windows), CHUNK):
                chunk = windows[lo : lo + CHUNK]
                embeddings[lo : lo + len(chunk)] = await pipeline.infer(
                    embed_windows, encoder, samples, chunk
                )
            analysis = await pipeline.infer(
                self.cluster, prepared, embeddings, options, encoder.identity
            )
        result = await anyio.to_thread.run_sync(self.name_speakers, analysis, top_n)
        if principal is None or not self.tokens.enabled:
            return result
        unknown = [
            s.label
            for s in result.speakers
            if s.result.verdict != VERDICT_MATCH or s.result.match is None
        ]
        tokens = await anyio.to_thread.run_sync(
            self.tokens.issue,
            analysis.samples,
            result.segments,
            unknown,
            analysis.routed.language,
            principal,
            analysis.source_sample_rate,
        )
        return replace(result, tokens=tokens)

    def redeem(self, token: str, principal: str) -> AbstractAsyncContextManager[RedeemedVoice]:
        """The voice behind an enroll token, for one enrollment (see ``EnrollTokens.redeem``)."""
        return self.tokens.redeem(token, principal)

    async def cut(self, files: list[bytes], excerpt: Excerpt) -> list[bytes]:
        """The same ``excerpt`` of each upload (``start``/``end`` on enrollment uploads)."""
        excerpt.check()
        if excerpt.whole:
            return files
        pipeline = self.voicesearch.pipeline
        return [await pipeline.infer(cut, data, excerpt, pipeline.settings) for data in files]


def _merged_segments(segments: list[Segment], names: dict[int, str]) -> list[TimelineSegment]:
    """Segments with speaker names; neighbours that touch and share a name become one (two
    clusters may have been named alike)."""
    out: list[TimelineSegment] = []
    for seg in segments:
        name = names[seg.label]
        if out and out[-1].speaker == name and seg.start - out[-1].end < 1e-6:
            last = out[-1]
            out[-1] = TimelineSegment(last.start, seg.end, name, (last.score + seg.score) / 2)
        else:
            out.append(TimelineSegment(seg.start, seg.end, name, seg.score))
    return out


def to_rttm(result: RecordingResult, file_id: str) -> str:
    """The timeline as RTTM (NIST), the format diarization scorers read: one
    ``SPEAKER <file> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>`` line per segment."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in file_id) or "recording"
    return "".join(
        f"SPEAKER {safe} 1 {s.start:.3f} {s.end - s.start:.3f} <NA> <NA> {s.speaker} <NA> <NA>\n"
        for s in result.segments
    )
