"""Every model the process uses, loaded once, plus why any of them is missing.

:meth:`ModelRegistry.load` never raises because one model is missing or broken: it records why
in :attr:`ModelRegistry.statuses` and goes on, so the service can start degraded and say why.
Each model is loaded with SpeechBrain (the reference, and what gets exported), then run by the
backend the settings ask for (``service.pipeline.backends.factory``); its identity says which
vectors it makes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.core import errors
from service.core.settings import InferenceSettings
from service.pipeline.backends import BACKEND_TORCH, HEAD_EMBEDDING, HEAD_LANGID
from service.pipeline.backends.calibration import CalibrationSet, load_calibration
from service.pipeline.backends.export_cache import ExportCache, ProgressFactory, default_progress
from service.pipeline.backends.factory import build_runtime
from service.pipeline.dependencies import model_stack_problem
from service.pipeline.encoders import SpeakerEncoder
from service.pipeline.language import LanguageIdentifier
from service.pipeline.loading import (
    FAILURE_DEPENDENCY,
    FAILURE_DEVICE,
    ModelLoadError,
    describe_failure,
    find_device_problem,
    load_classifier,
    resolve_device,
)

log = logging.getLogger(__name__)

#: The role of the language-ID model in ``Settings.model_sources``; every other role is a space.
LANGID_ROLE = "langid"

#: What :meth:`ModelRegistry.load` runs when given no settings: the reference.
REFERENCE = InferenceSettings(backend=BACKEND_TORCH, threads=0, int8_calibration_dir=None)

#: A model source of ``off`` switches the model off: it is not loaded, and its absence is not a
#: problem (an English-only deployment, or clients that always pass the language).
SOURCE_OFF = "off"


def is_switched_off(source: str | None) -> bool:
    return (source or "").strip().lower() == SOURCE_OFF


@dataclass(frozen=True)
class ModelStatus:
    role: str  # "langid", "voxceleb", "cnceleb"
    source: str
    loaded: bool
    identity: str | None
    error: str | None  # why it failed to load, human readable
    load_seconds: float | None
    enabled: bool = True  # False: switched off by configuration (source "off")
    error_kind: str | None = None  # service.pipeline.loading.FAILURE_* when it failed
    backend: str | None = None  # what runs it: "torch", "onnx", "onnx-int8", "torch (cuda)"…


class ModelRegistry:
    """Every model the process uses, loaded once, plus why any of them is missing."""

    def __init__(
        self,
        *,
        language_identifier: LanguageIdentifier | None = None,
        encoders: dict[str, SpeakerEncoder] | None = None,
        statuses: dict[str, ModelStatus] | None = None,
    ) -> None:
        self.language_identifier = language_identifier
        self.encoders: dict[str, SpeakerEncoder] = dict(encoders or {})
        if statuses is None:
            statuses = {
                space: ModelStatus(
                    space, enc.source, True, enc.identity, None, None, backend=enc.runtime.backend
                )
                for space, enc in self.encoders.items()
            }
            if language_identifier is not None:
                statuses[LANGID_ROLE] = ModelStatus(
                    LANGID_ROLE,
                    language_identifier.source,
                    True,
                    language_identifier.identity,
                    None,
                    None,
                    backend=language_identifier.runtime.backend,
                )
        self.statuses: dict[str, ModelStatus] = dict(statuses)

    @classmethod
    def load(
        cls,
        sources: Mapping[str, str],
        *,
        cache_dir: Path,
        device: str = "auto",
        inference: InferenceSettings = REFERENCE,
        progress: ProgressFactory = default_progress,
    ) -> ModelRegistry:
        """Load every ``role → source``; a model that fails is recorded, never raised. A source
        of ``off`` is recorded as switched off and not loaded.

        ``inference`` picks the backend (default: torch, the reference); ONNX exports are
        cached under ``<cache_dir>/onnx`` and built with ``progress`` bars when missing."""
        exports = ExportCache(Path(cache_dir) / "onnx", progress=progress)
        calibration: list[CalibrationSet] = []  # loaded once, on first need

        def calibration_set() -> CalibrationSet:
            if not calibration:
                calibration.append(load_calibration(inference.int8_calibration_dir))
            return calibration[0]

        language_identifier: LanguageIdentifier | None = None
        encoders: dict[str, SpeakerEncoder] = {}
        statuses: dict[str, ModelStatus] = {}
        wanted = {role: str(source or "") for role, source in sources.items()}
        for role, source in wanted.items():
            if is_switched_off(source):
                statuses[role] = ModelStatus(role, SOURCE_OFF, False, None, None, None, False)
        # Checked once, before any model: a broken torch/torchaudio/speechbrain would otherwise
        # surface as a misleading downstream error (e.g. "hub unreachable" for an uncached id).
        stack_problem = model_stack_problem() if len(statuses) < len(wanted) else None
        resolved = resolve_device(device) if stack_problem is None else "cpu"
        device_problem = find_device_problem(resolved) if stack_problem is None else None
        for role, source in wanted.items():
            if role in statuses:
                continue
            started = time.perf_counter()
            try:
                if stack_problem:
                    raise ModelLoadError(stack_problem, FAILURE_DEPENDENCY)
                if device_problem:
                    raise ModelLoadError(device_problem, FAILURE_DEVICE)
                loaded = load_classifier(source, cache_dir=Path(cache_dir), device=resolved)
                built = build_runtime(
                    loaded,
                    head=HEAD_LANGID if role == LANGID_ROLE else HEAD_EMBEDDING,
                    settings=inference,
                    device=resolved,
                    cache=exports,
                    calibration=calibration_set,
                )
                if role == LANGID_ROLE:
                    language_identifier = LanguageIdentifier(
                        built.runtime,
                        classifier=loaded.classifier,
                        source=source,
                        identity=built.identity,
                    )
                else:
                    encoders[role] = SpeakerEncoder(
                        built.runtime,
                        classifier=loaded.classifier,
                        space=role,
                        source=source,
                        identity=built.identity,
                    )
            except Exception as exc:
                message, kind = describe_failure(exc)
                log.warning(
                    "model %s could not be loaded from %r [%s]: %s", role, source, kind, message
                )
                statuses[role] = ModelStatus(role, source, False, None, message, None, True, kind)
                continue
            seconds = round(time.perf_counter() - started, 3)
            statuses[role] = ModelStatus(
                role, source, True, built.identity, None, seconds, backend=built.backend
            )
            log.info("model %s loaded from %r in %.2fs (%s)", role, source, seconds, built.backend)
        ordered = {role: statuses[role] for role in wanted}  # the configuration's order
        return cls(language_identifier=language_identifier, encoders=encoders, statuses=ordered)

    def encoder(self, space: str) -> SpeakerEncoder:
        found = self.encoders.get(space)
        if found is not None:
            return found
        status = self.statuses.get(space)
        if status is None or space == LANGID_ROLE:
            known = sorted(role for role in self.statuses if role != LANGID_ROLE)
            raise errors.UnknownSpace(
                f"unknown encoder space {space!r}", details={"known_spaces": known}
            )
        if not status.enabled:
            raise errors.ModelUnavailable(
                f"the {space} speaker encoder is switched off "
                f"(VOICESEARCH_MODEL_{space.upper()}=off)",
                details={"model": space, "reason": "switched off"},
            )
        raise errors.ModelUnavailable(
            f"the {space} speaker encoder ({status.source or 'not configured'}) is not loaded: "
            f"{status.error}",
            details={
                "model": space,
                "source": status.source,
                "reason": status.error,
                "kind": status.error_kind,
            },
        )

    def require_language_identifier(self, *, for_routing: bool = True) -> LanguageIdentifier:
        """The language-ID model, or 503 saying why not. ``for_routing``: the caller could pass
        the language instead (find-match, extract-embedding), so the message says so."""
        if self.language_identifier is not None:
            return self.language_identifier
        status = self.statuses.get(LANGID_ROLE)
        source = status.source if status else ""
        if status is not None and not status.enabled:
            reason = "switched off (VOICESEARCH_MODEL_LANGID=off)"
        else:
            reason = (status.error if status else None) or "no language-ID model configured"
        hint = "; pass `language` with the request instead" if for_routing else ""
        raise errors.ModelUnavailable(
            f"the language-ID model ({source or 'not configured'}) is not loaded: {reason}{hint}",
            details={
                "model": LANGID_ROLE,
                "source": source,
                "reason": reason,
                "kind": status.error_kind if status else None,
            },
        )

    @property
    def all_loaded(self) -> bool:
        """Every model that is switched on is loaded (switched-off models do not count)."""
        return all(status.loaded for status in self.statuses.values() if status.enabled)

    def enabled_spaces(self) -> list[str]:
        """Encoder spaces that are switched on (loaded or not)."""
        return [
            role for role, status in self.statuses.items() if role != LANGID_ROLE and status.enabled
        ]
