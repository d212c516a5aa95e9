"""Which decision is in force per encoder space, at the gallery size in force.

``decision: match`` means "the best of the N enrolled speakers clears t(N)", where t(N) keeps
the false-positive identification rate (FPIR: unenrolled voices matched) at the target
``VOICESEARCH_FPIR_TARGET`` whatever N is (``service.decisions.openset``). Per space, the rule
comes from, in order:

1. ``setting``: an operator's fixed threshold (``VOICESEARCH_THRESHOLDS`` for cosine spaces,
   ``VOICESEARCH_ASNORM_THRESHOLDS`` for AS-norm spaces). It does not follow N; reported as such.
2. ``calibrated``: the newest stored calibration whose model identity and score type match what
   runs (``voicesearch calibrate``). New calibrations store an impostor tail (u, β), which gives
   t(N), and the tails of the probe quality classes the manifest had enough impostor scores for
   (``service.evaluation.quality_fit``); one stored before the tail existed holds a fixed
   pair-FAR threshold and is used as is.
3. ``shipped``: the package's tail for the space's score (``service.decisions.cohort``),
   labelled "uncalibrated for this checkpoint" when the loaded model is not the one it was
   measured with. Where it was fitted for this checkpoint (AS-norm, shipped cohort), a probe of
   a quality class (long and clean, long and noisy, medium and clean) is held to the higher of
   it and the strict tail fitted on its class (:meth:`Decision.for_probe`,
   ``service.decisions.probe_quality``).

Stored calibrations are re-read at most every ``refresh_s`` seconds, so ``voicesearch calibrate``
takes effect in running workers without a restart.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from service.core.settings import DecisionSettings
from service.decisions.bandwidth import PAIR_WIDEBAND
from service.decisions.cohort import FALLBACK, SpaceScoring, shipped_cohort
from service.decisions.openset import TailFit
from service.decisions.probe_quality import QualityTails, load_rules
from service.decisions.scoring import LogisticCalibration
from storage.calibration import SCORE_ASNORM, SCORE_COSINE, CalibrationRecord, CalibrationStore

log = logging.getLogger(__name__)

SOURCE_SETTING = "setting"
SOURCE_CALIBRATED = "calibrated"
SOURCE_SHIPPED = "shipped"

RULE_TAIL = "max_of_n_tail"  # t(N) from an impostor tail
RULE_FIXED = "fixed"  # one threshold whatever N is


@dataclass(frozen=True)
class Decision:
    space: str
    threshold: float  # in force at ``gallery_size``
    score_type: str
    source: str  # SOURCE_SETTING, SOURCE_CALIBRATED or SOURCE_SHIPPED
    rule: str = RULE_FIXED
    fpir_target: float | None = None  # for RULE_TAIL
    gallery_size: int | None = None  # the N the threshold stands for
    tail: TailFit | None = None
    setting: str | None = None  # the setting a fixed threshold comes from
    note: str | None = None  # e.g. "shipped default (uncalibrated for this checkpoint)"
    record: CalibrationRecord | None = None
    logistic: LogisticCalibration | None = None
    #: The strict tails of the probe quality classes (the shipped ones under the shipped rule,
    #: a calibration's own under it), and the name of the class whose tail was applied.
    strict: QualityTails | None = None
    quality: str | None = None

    def at_size(self, n: int) -> Decision:
        """This rule at gallery size ``n`` (a fixed threshold stays what it is)."""
        n = max(int(n), 0)
        if self.tail is None or self.fpir_target is None:
            return dataclasses.replace(self, gallery_size=n)
        threshold = self.tail.threshold(self.fpir_target, n)
        return dataclasses.replace(self, threshold=threshold, gallery_size=n, quality=None)

    def for_probe(self, speech_s: float | None, snr_db: float | None) -> Decision:
        """This rule for one wideband probe of ``speech_s`` seconds of net speech at ``snr_db``:
        a probe of a quality class with a strict tail (``service.decisions.probe_quality``) is
        held to the higher of the pooled and its class's t(N), and ``quality`` names the class
        only when that is the higher. A narrowband probe's pairs are held to theirs in
        ``service.search.narrowband`` (type A stays pooled for them). Call after
        :meth:`at_size`."""
        if self.strict is None or self.tail is None or self.fpir_target is None:
            return self
        rule = self.strict.rule_for(speech_s, snr_db)
        if rule is None:
            return self
        n = self.gallery_size or 0
        tail = rule.tail_in_force(PAIR_WIDEBAND, self.tail, self.fpir_target, n)
        if tail is self.tail:  # the pooled bar is already the higher one
            return self
        threshold = tail.threshold(self.fpir_target, n)
        return dataclasses.replace(self, threshold=threshold, quality=rule.name)

    def predicted_fpir(self, n: int) -> float | None:
        """Modelled FPIR of this threshold at gallery size ``n`` (None without a tail)."""
        return None if self.tail is None else self.tail.predicted_fpir(self.threshold, n)

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
        scoring: Mapping[str, SpaceScoring],
        *,
        refresh_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.model_identities = dict(model_identities)
        self.scoring = dict(scoring)
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._records: dict[str, CalibrationRecord] = {}
        # Each record's quality classes, parsed once when it is first read (record id -> classes;
        # a stored calibration never changes, so neither do they).
        self._classes: dict[int, QualityTails | None] = {}
        self._loaded_at = -float("inf")

    def score_type(self, space: str) -> str:
        scoring = self.scoring.get(space)
        return scoring.score_type if scoring is not None else SCORE_COSINE

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
        known = self._classes
        classes = {
            r.id: known[r.id] if r.id in known else stored_classes(r) for r in records.values()
        }
        with self._lock:
            self._records = records
            self._classes = classes
            self._loaded_at = time.monotonic()

    def _record(self, space: str) -> CalibrationRecord | None:
        if time.monotonic() - self._loaded_at > self.refresh_s:
            self.refresh()
        with self._lock:
            return self._records.get(space)

    def decision(self, space: str, gallery_size: int = 1) -> Decision:
        """The rule in force for the space's own score, at ``gallery_size`` speakers."""
        score_type = self.score_type(space)
        fixed = self._fixed(space, score_type)
        if fixed is not None:
            return fixed.at_size(gallery_size)
        record = self._record(space)
        if record is not None:
            logistic = LogisticCalibration.from_dict(record.logistic) if record.logistic else None
            tail = stored_tail(record)
            return Decision(
                space,
                record.threshold,
                score_type,
                SOURCE_CALIBRATED,
                rule=RULE_TAIL if tail is not None else RULE_FIXED,
                fpir_target=self.settings.fpir_target if tail is not None else None,
                tail=tail,
                record=record,
                logistic=logistic,
                # The quality classes this calibration fitted on its own manifest, if any
                # (service.evaluation.quality_fit): never the shipped ones, which were fitted
                # against the shipped pooled tail, not this one.
                strict=self._calibrated_classes(record) if tail is not None else None,
            ).at_size(gallery_size)
        return self._shipped(space, score_type).at_size(gallery_size)

    def _calibrated_classes(self, record: CalibrationRecord) -> QualityTails | None:
        if not self.settings.quality_tails:
            return None
        with self._lock:
            return self._classes.get(record.id)

    def cosine_decision(self, space: str, gallery_size: int = 1) -> Decision:
        """The rule for raw cosines (pairwise compare: N = 1; stateless ranking: N = the
        caller's candidates; a search whose candidates lack AS-norm statistics). Where the space
        decides on AS-norm, its cosine rule is the operator's cosine threshold or the shipped
        cosine tail."""
        if self.score_type(space) == SCORE_COSINE:
            return self.decision(space, gallery_size)
        fixed = self._fixed(space, SCORE_COSINE)
        chosen = fixed if fixed is not None else self._shipped(space, SCORE_COSINE)
        return chosen.at_size(gallery_size)

    def _fixed(self, space: str, score_type: str) -> Decision | None:
        asnorm = score_type == SCORE_ASNORM
        table = self.settings.asnorm_thresholds if asnorm else self.settings.thresholds
        name = "VOICESEARCH_ASNORM_THRESHOLDS" if asnorm else "VOICESEARCH_THRESHOLDS"
        value = table.get(space)
        if value is None:
            return None
        return Decision(space, float(value), score_type, SOURCE_SETTING, setting=name)

    def _shipped(self, space: str, score_type: str) -> Decision:
        scoring = self.scoring.get(space)
        if scoring is None:  # a space whose model is not loaded: nothing was measured for it
            tail = shipped_cohort(FALLBACK).tail(score_type)
            note = "shipped default (uncalibrated for this checkpoint)"
        else:
            tail, note = scoring.default_tail(score_type), scoring.default_note(score_type)
        strict = scoring.strict_for(score_type, self.settings.quality_tails) if scoring else None
        return Decision(
            space,
            tail.threshold(self.settings.fpir_target, 1),
            score_type,
            SOURCE_SHIPPED,
            rule=RULE_TAIL,
            fpir_target=self.settings.fpir_target,
            tail=tail,
            note=note,
            strict=strict,
        )


def stored_classes(record: CalibrationRecord) -> QualityTails | None:
    """The probe quality classes a calibration fitted (``details["quality_tails"]``,
    ``service.evaluation.quality_fit``); None when it fitted none, or when they cannot be read
    (logged: the calibration's pooled tail still decides)."""
    data = (record.details or {}).get("quality_tails")
    if not data:
        return None
    try:
        return load_rules(data)
    except (KeyError, TypeError, ValueError, AttributeError):
        log.warning(
            "calibration %s has unreadable quality-class tails; its probes keep the pooled tail",
            record.id,
        )
        return None


def stored_tail(record: CalibrationRecord) -> TailFit | None:
    """The impostor tail a calibration stored (``details["tail"]``); None for calibrations made
    before the open-set rule, which hold a fixed pair-FAR threshold."""
    data = record.details.get("tail")
    if not isinstance(data, dict):
        return None
    try:
        return TailFit.from_dict(data)
    except (KeyError, TypeError, ValueError):
        log.warning("calibration %s has an unreadable tail; using its fixed threshold", record.id)
        return None
