"""How much speech a speaker is enrolled with, and what that means for them.

Issue 12 measured ECAPA identification against the net speech a profile is built from
(``/work/scratch/issue12/RESULTS.md``, Q3): the error falls steeply from 1 to 2-3 s and is flat
from 8 s; a profile of 1-2 s does not attract impostors. So:

* **searchable** from ``min_enroll_speech_s`` (default 1 s) of net speech summed over the
  speaker's utterances; below it the speaker is stored but not in any index
  (reason ``insufficient_enrollment_speech``). The former 10 s minimum hid most speakers enrolled
  from one or two ordinary clips, turning their probes into confident wrong answers;
* a **tier** for the operator: ``weak`` below 3 s (the knee of the error curve), ``fair`` below
  ``recommended_enroll_speech_s`` (default 8 s), ``good`` from it;
* a **warning** (``enrollment_below_recommended``) below the recommended amount: adding a few
  more seconds of speech is the cheapest accuracy there is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.core.settings import Settings

TIER_WEAK = "weak"
TIER_FAIR = "fair"
TIER_GOOD = "good"
#: Below this much net speech a profile is ``weak`` (ECAPA's error knee, issue 12 Q3).
WEAK_BELOW_S = 3.0
REASON_INSUFFICIENT_SPEECH = "insufficient_enrollment_speech"
WARNING_BELOW_RECOMMENDED = "enrollment_below_recommended"


@dataclass(frozen=True)
class EnrollmentAmount:
    """One speaker's enrollment, as the responses and the CLI report it."""

    speech_s: float
    required_speech_s: float
    recommended_speech_s: float
    tier: str
    searchable: bool
    reason: str | None  # why not searchable; None when searchable
    warnings: list[str] = field(default_factory=list)

    @property
    def missing_speech_s(self) -> float:
        """More net speech needed before the speaker is searchable."""
        return max(0.0, self.required_speech_s - self.speech_s)


@dataclass(frozen=True)
class EnrollmentPolicy:
    required_speech_s: float = 1.0
    recommended_speech_s: float = 8.0

    @classmethod
    def from_settings(cls, settings: Settings) -> EnrollmentPolicy:
        return cls(settings.min_enroll_speech_s, settings.recommended_enroll_speech_s)

    def tier(self, speech_s: float) -> str:
        if speech_s >= self.recommended_speech_s:
            return TIER_GOOD
        return TIER_WEAK if speech_s < WEAK_BELOW_S else TIER_FAIR

    def amount(self, speech_s: float, searchable: bool) -> EnrollmentAmount:
        """``searchable``: whether the speaker has a profile in the index (the store decides,
        from the same minimum)."""
        reason = None
        if not searchable and speech_s < self.required_speech_s:
            reason = REASON_INSUFFICIENT_SPEECH
        warnings = [WARNING_BELOW_RECOMMENDED] if speech_s < self.recommended_speech_s else []
        return EnrollmentAmount(
            speech_s=speech_s,
            required_speech_s=self.required_speech_s,
            recommended_speech_s=self.recommended_speech_s,
            tier=self.tier(speech_s),
            searchable=searchable,
            reason=reason,
            warnings=warnings,
        )
