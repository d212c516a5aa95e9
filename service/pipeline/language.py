"""Spoken language: the language-ID model, and language → encoder space routing.

:class:`LanguageIdentifier` wraps SpeechBrain's VoxLingua107 classifier (labels like
``"zh: Chinese"``), run by any backend (``service.pipeline.backends``); like the encoders it
holds no lock at inference (see ``service.pipeline.encoders``).

Routing is a pure function of settings: the CN-Celeb encoder serves the configured
East/South-East Asian languages, the VoxCeleb encoder everything else. It loads nothing, so the
table can be tested and changed without any model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.settings import SPACE_CNCELEB, SPACE_VOXCELEB
from service.pipeline.backends.runtime import ModelRuntime
from service.pipeline.loading import FAILURE_BAD_CHECKPOINT, ModelLoadError
from service.pipeline.waveform import checked_samples, warmup_signal


@dataclass(frozen=True)
class LanguageCandidate:
    language: str  # ISO code from the label, e.g. "zh" (from "zh: Chinese")
    name: str  # "Chinese"
    confidence: float  # the model's posterior probability, 0..1


@dataclass(frozen=True)
class LanguageDetection:
    language: str
    name: str
    confidence: float
    candidates: list[LanguageCandidate]  # top-k, best first, includes the best


def split_language_label(label: str) -> tuple[str, str]:
    """``"zh: Chinese"`` → ``("zh", "Chinese")``; a label without a colon is its own code."""
    code, sep, name = str(label).partition(":")
    code = code.strip()
    name = name.strip() if sep else code
    return code, name or code


class LanguageIdentifier:
    """The spoken-language classifier (VoxLingua107 label set: ``"zh: Chinese"`` …)."""

    def __init__(
        self, runtime: ModelRuntime, *, classifier: Any, source: str, identity: str
    ) -> None:
        """``classifier``: the SpeechBrain model, for its label set (``runtime`` runs it)."""
        self.runtime = runtime
        self.classifier = classifier
        self.source = source
        self.identity = identity
        label_encoder = classifier.hparams.label_encoder
        ind2lab = dict(getattr(label_encoder, "ind2lab", {}) or {})
        if not ind2lab:
            raise ModelLoadError(
                "label_encoder.txt is missing or empty (no language labels)", FAILURE_BAD_CHECKPOINT
            )
        self._labels: dict[int, tuple[str, str]] = {
            int(index): split_language_label(label) for index, label in ind2lab.items()
        }
        # One probe inference: the classifier's output size must match the label set before
        # any answer is trusted.
        probe = self.runtime.forward([warmup_signal()])
        n_outputs = int(probe.shape[-1])
        if n_outputs != len(self._labels) or set(self._labels) != set(range(n_outputs)):
            raise ModelLoadError(
                f"the classifier has {n_outputs} outputs but label_encoder.txt has "
                f"{len(self._labels)} labels",
                FAILURE_BAD_CHECKPOINT,
            )
        if hasattr(label_encoder, "expect_len"):
            label_encoder.expect_len(n_outputs)  # also silences SpeechBrain's warning about it
        if not np.all(np.isfinite(probe)):
            raise ModelLoadError(
                "the language-ID model produced non-finite scores", FAILURE_BAD_CHECKPOINT
            )
        self.languages: list[str] = [self._labels[i][0] for i in range(n_outputs)]

    def _log_posteriors(self, samples: np.ndarray) -> np.ndarray:
        scores = self.runtime.forward([checked_samples(samples)])[0].astype(np.float64)
        if not np.all(np.isfinite(scores)):
            raise RuntimeError("the language-ID model produced non-finite scores")
        # VoxLingua107's classifier ends in log-softmax, so this log-softmax changes nothing
        # there; a head that emits raw logits still yields proper posteriors.
        return scores - float(np.logaddexp.reduce(scores))

    def detect(self, samples: np.ndarray, top_k: int = 5) -> LanguageDetection:
        log_probs = self._log_posteriors(samples)
        probs = np.exp(log_probs)
        k = max(1, min(int(top_k), probs.shape[0]))
        # Stable sort on -p: ties keep label order, so the result is deterministic.
        order = np.argsort(-probs, kind="stable")[:k]
        candidates = []
        for index in order:
            code, name = self._labels[int(index)]
            confidence = min(1.0, max(0.0, float(probs[index])))
            candidates.append(LanguageCandidate(language=code, name=name, confidence=confidence))
        best = candidates[0]
        return LanguageDetection(
            language=best.language,
            name=best.name,
            confidence=best.confidence,
            candidates=candidates,
        )

    def __repr__(self) -> str:
        return (
            f"LanguageIdentifier(identity={self.identity!r}, labels={len(self._labels)}, "
            f"backend={self.runtime.backend})"
        )


# Codes a caller might reasonably send that the VoxLingua107 label set spells differently. Cantonese
# ("yue") is a language of its own, not an alias: it is routed by the default table instead.
LANGUAGE_ALIASES = {
    "cmn": "zh",
    "zh-cn": "zh",
    "zh-tw": "zh",
    "zh-hk": "zh",
    "zh-hans": "zh",
    "zh-hant": "zh",
    "jp": "ja",
    "kr": "ko",
}


def normalise_language(code: str) -> str:
    """Canonical lower-case code: ``en-US`` → ``en``, ``zh-CN`` / ``cmn-Hans`` → ``zh``."""
    lowered = code.strip().lower().replace("_", "-")
    if lowered in LANGUAGE_ALIASES:
        return LANGUAGE_ALIASES[lowered]
    primary = lowered.split("-", 1)[0]
    return LANGUAGE_ALIASES.get(primary, primary)


class LanguageRouter:
    """Language → encoder space. ``cnceleb_enabled=False`` (the CN-Celeb model switched off):
    every language goes to ``voxceleb``, the one space there is, rather than to a space that
    can never answer."""

    def __init__(self, cnceleb_languages: list[str], *, cnceleb_enabled: bool = True) -> None:
        self._cnceleb = {normalise_language(code) for code in cnceleb_languages}
        self.cnceleb_enabled = cnceleb_enabled

    def space_for(self, language: str) -> str:
        if self.cnceleb_enabled and normalise_language(language) in self._cnceleb:
            return SPACE_CNCELEB
        return SPACE_VOXCELEB
