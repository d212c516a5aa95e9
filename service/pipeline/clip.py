"""One clip through the models: decode → speech detection → language → embedding.

:class:`ClipPipeline` is the one path every upload takes, whoever asks: the HTTP verbs
(``service.search``), ``voicesearch eval`` / ``calibrate`` (``service.evaluation``) and the
benchmarks. Each step is a public method so callers can time or reuse a step on its own:

* :meth:`~ClipPipeline.decode_assessed` — bytes → 16 kHz mono (``service.pipeline.audio``), then
  speech detection and quality codes (``service.pipeline.quality``): an inaudible clip is
  refused (``no_speech``), anything else is kept whole (what gets embedded) with its
  :class:`~service.pipeline.quality.QualityReport`.
* :meth:`~ClipPipeline.route` — the caller's language, else the detected one → encoder space.
* :meth:`~ClipPipeline.embed_routed` — all of the above plus the routed space's encoder.

These are blocking (decoding and inference). Async callers run them through
:meth:`~ClipPipeline.infer`: a worker thread, at most ``inference_concurrency`` at once, because
on a small CPU box one inference already uses every core; the request they belong to is first
admitted by :attr:`~ClipPipeline.queue` (``service.pipeline.inference_queue``: bounded, 503
beyond the bound).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from service.core import errors, metrics
from service.core.settings import SPACE_VOXCELEB, ClipSettings
from service.pipeline.audio import DecodedAudio, decode_audio
from service.pipeline.inference_queue import InferenceQueue
from service.pipeline.language import LanguageDetection, LanguageRouter, normalise_language
from service.pipeline.quality import QualityAssessor, QualityReport
from service.pipeline.registry import LANGID_ROLE, ModelRegistry
from service.pipeline.telephone import telephone_copy

T = TypeVar("T")

LANGUAGE_FROM_CALLER = "caller"
LANGUAGE_DETECTED = "detected"


@dataclass(frozen=True)
class RoutedLanguage:
    language: str | None
    confidence: float | None
    source: str | None  # "caller", "detected", or None when unknown (no language-ID model)
    space: str


@dataclass(frozen=True, eq=False)
class EmbeddedClip:
    """A clip embedded in the space its language routes to."""

    audio: DecodedAudio  # the decoded clip, embedded whole
    routed: RoutedLanguage
    vector: np.ndarray  # float32 (dim,), unit length
    model: str  # identity of the encoder that produced ``vector``
    quality: QualityReport


class ClipPipeline:
    def __init__(
        self,
        settings: ClipSettings,
        models: ModelRegistry,
        router: LanguageRouter,
        quality: QualityAssessor,
    ) -> None:
        self.settings = settings
        self.models = models
        self.router = router
        self.quality = quality
        self.queue = InferenceQueue(settings.inference_concurrency, settings.max_inference_queue)

    async def infer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one step of model work in a thread, at most ``inference_concurrency`` at once,
        first come first served (admit the request first: ``queue.admitted()``)."""
        return await self.queue.run(fn, *args)

    # --- steps --------------------------------------------------------------------------------
    def decode_assessed(self, data: bytes) -> tuple[DecodedAudio, QualityReport]:
        """Decode and assess the speech; refuse only a clip with nothing audible in it."""
        with metrics.timed(metrics.STAGE_DECODE, "audio"):
            audio = decode_audio(
                data,
                max_duration_s=self.settings.max_duration_s,
                min_duration_s=self.settings.min_duration_s,
            )
        with metrics.timed(metrics.STAGE_VAD, "vad"):
            report = self.quality.assess(audio.samples, audio.source_sample_rate).report
        if report.rejected:
            floor = self.quality.detector.audible_floor_dbfs
            raise errors.NoSpeech(
                f"Nothing audible: the recording's level is {report.peak_dbfs:.0f} dBFS, below "
                f"the {floor:g} dBFS floor (silence or dither).",
                details={
                    "speech_seconds": round(report.speech_s, 3),
                    "level_dbfs": report.peak_dbfs,
                    "audible_floor_dbfs": floor,
                    "quality": report.to_dict(),
                },
            )
        return audio, report

    def decode(self, data: bytes) -> DecodedAudio:
        """:meth:`decode_assessed` without the report."""
        return self.decode_assessed(data)[0]

    def route(self, audio: DecodedAudio, language: str | None) -> RoutedLanguage:
        """Use the caller's language, else detect it; then pick the encoder space.

        Without a language-ID model (switched off) and with only one encoder space switched on,
        there is nothing to decide: the clip goes to that space, language unknown. With several
        spaces and language ID switched off, the caller must say the language (422)."""
        if language:
            code = normalise_language(language)
            return RoutedLanguage(code, 1.0, LANGUAGE_FROM_CALLER, self.router.space_for(code))
        if self.models.language_identifier is None:
            langid = self.models.statuses.get(LANGID_ROLE)
            switched_off = langid is None or not langid.enabled
            spaces = self.models.enabled_spaces()
            if switched_off and len(spaces) == 1:
                return RoutedLanguage(None, None, None, spaces[0])
            if switched_off:
                raise errors.LanguageRequired(
                    "language ID is switched off (VOICESEARCH_MODEL_LANGID=off): pass `language` "
                    "with the request",
                    details={"spaces": spaces},
                )
        identifier = self.models.require_language_identifier()
        with metrics.timed(metrics.STAGE_LANGUAGE_ID, LANGID_ROLE):
            detection = identifier.detect(audio.samples)
        return RoutedLanguage(
            detection.language,
            detection.confidence,
            LANGUAGE_DETECTED,
            self.router.space_for(detection.language),
        )

    def route_or_default(self, audio: DecodedAudio, language: str | None) -> RoutedLanguage:
        """:meth:`route` when the language is given or can be detected; without a language-ID
        model an unknown language (``voxceleb`` space) instead of an error. Enrollment embeds
        in every space, so there the language is only recorded, never required."""
        if language or self.models.language_identifier is not None:
            return self.route(audio, language)
        spaces = self.models.enabled_spaces()
        return RoutedLanguage(None, None, None, spaces[0] if len(spaces) == 1 else SPACE_VOXCELEB)

    def detect_language(self, data: bytes) -> tuple[QualityReport, LanguageDetection]:
        """The clip's quality report (its ``duration_s`` is the decoded clip's) and language."""
        audio, report = self.decode_assessed(data)
        identifier = self.models.require_language_identifier(for_routing=False)
        with metrics.timed(metrics.STAGE_LANGUAGE_ID, LANGID_ROLE):
            return report, identifier.detect(audio.samples)

    def embed_routed(self, data: bytes, language: str | None) -> EmbeddedClip:
        """Decode, route and embed in the routed space (``/extract-embedding``, find-match)."""
        audio, report = self.decode_assessed(data)
        routed = self.route(audio, language)
        encoder = self.models.encoder(routed.space)
        with metrics.timed(metrics.STAGE_EMBEDDING, routed.space):
            vector = encoder.embed(audio.samples)
        return EmbeddedClip(audio, routed, vector, encoder.identity, report)

    def embed_telephone(self, audio: DecodedAudio, space: str) -> np.ndarray:
        """The clip as a phone call would deliver it (``service.pipeline.telephone``), embedded
        in ``space``: the clip's contribution to the speaker's telephone-band profile."""
        encoder = self.models.encoder(space)
        with metrics.timed(metrics.STAGE_EMBEDDING, space):
            return encoder.embed(telephone_copy(audio.samples).samples)

    def embed_everywhere(self, audio: DecodedAudio) -> dict[str, np.ndarray]:
        """The clip's embedding in every loaded space (enrollment)."""
        vectors: dict[str, np.ndarray] = {}
        for space, encoder in self.models.encoders.items():
            with metrics.timed(metrics.STAGE_EMBEDDING, space):
                vectors[space] = encoder.embed(audio.samples)
        return vectors
