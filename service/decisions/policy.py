"""Which decision is in force per encoder space: threshold, score type, probability map.

:class:`DecisionPolicy` is built once at start-up. Per encoder space it gives the threshold
``is_match`` uses, the score it applies to (``cosine`` or ``asnorm``), and the logistic map
that turns a score into ``match_probability``. It is the newest stored calibration whose model
identity *and* score type match what the service runs; otherwise the configured default
(``VOICESEARCH_THRESHOLDS`` / ``VOICESEARCH_ASNORM_THRESHOLDS``). Stored calibrations are
re-read at most every ``refresh_s`` seconds, so ``voicesearch calibrate`` (see
``service.evaluation.calibrate``) takes effect in running workers without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from service.core.settings import DecisionSettings
from service.decisions.scoring import LogisticCalibration
from storage.calibration import SCORE_ASNORM, SCORE_COSINE, CalibrationRecord, CalibrationStore

log = logging.getLogger(__name__)

SOURCE_CALIBRATED = "calibrated"
SOURCE_DEFAULT = "default"


@dataclass(frozen=True)
class Decision:
    space: str
    threshold: float
    score_type: str
    source: str  # SOURCE_CALIBRATED or SOURCE_DEFAULT
    setting: str | None = None  # for defaults: the setting the threshold comes from
    record: CalibrationRecord | None = None
    logistic: LogisticCalibration | None = None

    def probability(self, score: float | None) -> float | None:
        if self.logistic is None or score is None:
            return None
        return float(self.logistic.probability(float(score)))


class DecisionPolicy:
    def __init__(
        self,
        settings: DecisionSettings,
        store: CalibrationStore | None,
        model_identities: Mapping[str, str],
        *,
        refresh_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.model_identities = dict(model_identities)
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._records: dict[str, CalibrationRecord] = {}
        self._loaded_at = -float("inf")

    def score_type(self, space: str) -> str:
        return SCORE_ASNORM if space in self.settings.asnorm_spaces else SCORE_COSINE

    def refresh(self) -> None:
        records: dict[str, CalibrationRecord] = {}
        if self.store is not None:
            try:
                records = self.store.in_force(
                    self.model_identities,
                    {space: self.score_type(space) for space in self.model_identities},
                )
            except Exception:  # a locked/old database must not break matching
                log.exception("could not read calibrations; keeping the previous ones")
                records = self._records
        with self._lock:
            self._records = records
            self._loaded_at = time.monotonic()

    def decision(self, space: str) -> Decision:
        if time.monotonic() - self._loaded_at > self.refresh_s:
            self.refresh()
        with self._lock:
            record = self._records.get(space)
        score_type = self.score_type(space)
        if record is not None:
            logistic = LogisticCalibration.from_dict(record.logistic) if record.logistic else None
            return Decision(
                space, record.threshold, score_type, SOURCE_CALIBRATED, None, record, logistic
            )
        if score_type == SCORE_ASNORM:
            return Decision(
                space,
                self.settings.asnorm_thresholds.get(space, DEFAULT_ASNORM_THRESHOLD),
                score_type,
                SOURCE_DEFAULT,
                "VOICESEARCH_ASNORM_THRESHOLDS",
            )
        return Decision(
            space,
            self.settings.threshold_for(space),
            score_type,
            SOURCE_DEFAULT,
            "VOICESEARCH_THRESHOLDS",
        )

    def cosine_decision(self, space: str) -> Decision:
        """The decision for raw cosines (pairwise compare, stateless ranking): AS-norm needs the
        gallery, so where it is on these fall back to the cosine default threshold."""
        decision = self.decision(space)
        if decision.score_type == SCORE_COSINE:
            return decision
        return Decision(
            space,
            self.settings.threshold_for(space),
            SCORE_COSINE,
            SOURCE_DEFAULT,
            "VOICESEARCH_THRESHOLDS",
        )


#: AS-norm threshold when neither a calibration nor ``asnorm_thresholds`` gives one.
DEFAULT_ASNORM_THRESHOLD = 3.0
