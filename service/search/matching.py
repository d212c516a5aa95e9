"""Who is this? Index search, stateless ranking, pairwise comparison, and the open-set verdict.

Everything here is blocking (SQLite, FAISS) and returns domain results — :class:`MatchResult`,
:class:`Comparison` — that ``service.api.mappers`` turns into response bodies. The decision
rule is the same in every mode: candidates are ranked by the model's own cosine (``similarity``),
each is scored for the decision (``score``: the AS-norm score where AS-norm is on for the space,
else the cosine), and the first one ``is_match`` when its score reaches the threshold in force
*at the size of the gallery searched* (``service.decisions.policy``: t(N) keeps the share of
unenrolled voices matched at the FPIR target). ``is_match`` marks the leading run of candidates
whose scores all reach it, so a candidate after one that does not is never a match.

Why rank on the cosine and decide on AS-norm (issue 12): the ranking is then exactly the bare
model's, so top-1 can never be worse than SpeechBrain used directly (with exact search: the
flat index, which ``auto`` uses below its size threshold; fastscan re-scores its best 1,000
exactly, HNSW is approximate); AS-norm re-ranking gained 1–2 points of top-1 on a 69-speaker
test set but put a wrong speaker first on dev-speech babble.
What AS-norm is for is the decision: its impostor tail barely moves with probe length or
channel, which is what t(N) rests on. (Narrowband probes are the exception, see
``service.search.narrowband``: they are scored against other profiles than the bare model's.)

The verdict says it plainly for an open set: ``match``, ``no_match`` (``below_threshold`` or
``empty_gallery``) or ``undecided`` (``no_speech_detected``: the probe's audio holds no detected
speech at all; any speech gets a decision).

Scores of one answer are always in one unit: if AS-norm cannot score every candidate (a gallery
cohort too small for statistics), the whole answer falls back to raw cosines and the cosine rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.core import errors
from service.core.settings import SPACE_VOXCELEB, Settings
from service.decisions.bandwidth import NarrowbandView
from service.decisions.normalization import AsNorm
from service.decisions.policy import Decision, DecisionPolicy
from service.pipeline.language import LanguageRouter
from service.pipeline.quality import QualityReport
from service.pipeline.registry import ModelRegistry
from service.search.narrowband import NarrowbandSearch
from service.search.vector_store import VectorStore
from storage.calibration import SCORE_ASNORM
from storage.speakers import SpeakerStore

VERDICT_MATCH = "match"
VERDICT_NO_MATCH = "no_match"
VERDICT_UNDECIDED = "undecided"
REASON_NO_SPEECH = "no_speech_detected"
#: Narrowband probes: candidates scored per pair type when top_n asks for fewer.
NARROWBAND_POOL = 20
#: Hits looked up beyond top_n, in case some speaker was deleted since the index search.
DELETED_MARGIN = 4
BAND_NARROW = "narrowband"


def unit(vector: np.ndarray) -> np.ndarray:
    """``vector`` as float32 with unit L2 norm; a vector without direction is the caller's error."""
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise errors.InvalidInput("embedding has no direction (zero or non-finite norm)")
    return vector / norm


class Candidate(Protocol):
    """A caller-supplied candidate of the stateless mode (``StoredEmbedding`` in the API)."""

    @property
    def id(self) -> str: ...

    @property
    def embedding(self) -> list[float]: ...

    @property
    def metadata(self) -> dict[str, Any] | None: ...


@dataclass
class Match:
    id: str  # the speaker's external id (index search) or the caller's candidate id
    similarity: float  # raw cosine
    is_match: bool
    name: str | None = None
    metadata: dict[str, Any] | None = None
    score: float | None = None  # what ``is_match`` compared with the threshold
    match_probability: float | None = None
    #: Narrowband probes only (``service.search.narrowband``): the pair type that decided
    #: (``B`` telephone-band profile, ``C`` natively narrowband enrollment, ``A`` no
    #: telephone-band profile) and which of the speaker's profiles was scored.
    pair_type: str | None = None
    profile: str | None = None


@dataclass(frozen=True)
class MatchResult:
    """One find-match answer, whatever the mode."""

    matches: list[Match]  # best first
    decision: Decision  # threshold, score type and where the threshold comes from
    verdict: str  # VERDICT_MATCH, VERDICT_NO_MATCH or VERDICT_UNDECIDED
    reason: str | None  # why there is no match
    space: str
    searched: int  # how many candidates were searched
    # Only for a probe given as audio:
    language: str | None = None
    confidence: float | None = None
    language_source: str | None = None
    quality: QualityReport | None = None
    #: ``narrowband`` when the probe (source ≤ 8 kHz) was scored against telephone-band
    #: profiles, ``wideband`` otherwise; the reason when a narrowband probe could not be.
    probe_band: str = "wideband"
    band_note: str | None = None

    @property
    def best_match(self) -> Match | None:
        return self.matches[0] if self.matches else None

    @property
    def match(self) -> Match | None:
        return self.matches[0] if self.verdict == VERDICT_MATCH else None


@dataclass(frozen=True)
class Comparison:
    similarity: float
    is_match: bool
    threshold: float
    space: str
    match_probability: float | None
    threshold_source: str


class Matcher:
    def __init__(
        self,
        settings: Settings,
        models: ModelRegistry,
        router: LanguageRouter,
        store: SpeakerStore,
        gallery: VectorStore,
        policy: DecisionPolicy,
        normalizer: AsNorm | None,
        views: Mapping[str, NarrowbandView] | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.router = router
        self.store = store
        self.gallery = gallery
        self.policy = policy
        self.normalizer = normalizer
        #: Spaces with telephone-band profiles (``service.decisions.bandwidth``).
        self.views = dict(views or {})
        self.narrowband = NarrowbandSearch(gallery, store, policy, normalizer)

    # --- request checks -----------------------------------------------------------------------
    def space_of_request(self, space: str | None, language: str | None) -> str:
        """The space a request names, else the one its language routes to, else voxceleb."""
        if space:
            if space not in self.models.statuses:
                known = sorted(k for k in self.models.statuses if k != "langid")
                raise errors.UnknownSpace(
                    f"unknown encoder space {space!r}", details={"known_spaces": known}
                )
            return space
        if language:
            return self.router.space_for(language)
        return SPACE_VOXCELEB

    def clamp_top_n(self, top_n: int) -> int:
        if top_n > self.settings.max_top_n:
            raise errors.InvalidInput(
                f"top_n may be at most {self.settings.max_top_n}",
                details={"top_n": top_n, "max_top_n": self.settings.max_top_n},
            )
        return top_n

    def _space_unavailable(self, space: str) -> errors.ServiceError:
        status = self.models.statuses.get(space)
        if status is None:
            return errors.UnknownSpace(f"unknown encoder space {space!r}")
        return errors.ModelUnavailable(
            f"the {space} encoder is not loaded: {status.error}", details={"space": space}
        )

    # --- verdict ------------------------------------------------------------------------------
    @staticmethod
    def _verdict(matches: list[Match], speech_s: float | None) -> tuple[str, str | None]:
        """Open-set wording shared by every find-match mode: the verdict and its reason."""
        if speech_s is not None and speech_s <= 0.0:
            # Nothing in the probe was detected as speech (noise, tones, music): rank, never
            # match. Any detected speech, however short, gets a decision (issue 12: a 1.5 s
            # cut-off left most word-length probes unanswered at no FPIR gain).
            for m in matches:
                m.is_match = False
            return VERDICT_UNDECIDED, REASON_NO_SPEECH
        if not matches:
            return VERDICT_NO_MATCH, "empty_gallery"
        if matches[0].is_match:
            return VERDICT_MATCH, None
        return VERDICT_NO_MATCH, "below_threshold"

    def _result(
        self,
        matches: list[Match],
        decision: Decision,
        speech_s: float | None,
        *,
        space: str,
        searched: int,
    ) -> MatchResult:
        verdict, reason = self._verdict(matches, speech_s)
        return MatchResult(matches, decision, verdict, reason, space=space, searched=searched)

    # --- the modes ----------------------------------------------------------------------------
    def compare(self, e1: list[float], e2: list[float], space: str | None) -> Comparison:
        if len(e1) != len(e2):
            raise errors.InvalidInput(
                "embeddings have different lengths",
                details={"embedding1": len(e1), "embedding2": len(e2)},
            )
        space = self.space_of_request(space, None)
        similarity = float(np.dot(unit(np.array(e1)), unit(np.array(e2))))
        decision = self.policy.cosine_decision(space, 1)  # one pair: 1:1 verification
        return Comparison(
            similarity=similarity,
            is_match=similarity >= decision.threshold,
            threshold=decision.threshold,
            space=space,
            match_probability=decision.probability(similarity),
            threshold_source=decision.source,
        )

    def rank_candidates(
        self,
        probe: list[float],
        candidates: Sequence[Candidate],
        top_n: int,
        space: str | None,
        language: str | None,
    ) -> MatchResult:
        """The original stateless find-match: rank the caller's own candidate embeddings."""
        space = self.space_of_request(space, language)
        # The caller's candidates are the gallery: t(N) at their number.
        decision = self.policy.cosine_decision(space, len(candidates))
        threshold = decision.threshold
        top_n = self.clamp_top_n(top_n)
        if not candidates:
            return self._result([], decision, None, space=space, searched=0)
        wrong = [c.id for c in candidates if len(c.embedding) != len(probe)]
        if wrong:
            raise errors.InvalidInput(
                "stored embeddings must have the same length as user_embedding",
                details={"expected": len(probe), "mismatched_ids": wrong[:20]},
            )
        matrix = np.asarray([c.embedding for c in candidates], dtype=np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        scores = matrix @ unit(np.array(probe))
        order = np.argsort(-scores, kind="stable")[:top_n]
        matches = [
            Match(
                id=candidates[i].id,
                similarity=float(scores[i]),
                is_match=False,
                metadata=candidates[i].metadata,
                score=float(scores[i]),
                match_probability=decision.probability(float(scores[i])),
            )
            for i in order
        ]
        mark_leading_matches(matches, threshold)
        return self._result(matches, decision, None, space=space, searched=len(candidates))

    def search_index(
        self,
        space: str,
        vector: np.ndarray,
        top_n: int,
        speech_s: float | None = None,
        narrowband: bool = False,
        snr_db: float | None = None,
    ) -> MatchResult:
        """The enrolled speakers of ``space`` nearest to ``vector`` (unit length).

        ``narrowband``: the probe's source was ≤ 8 kHz; where the space has telephone-band
        profiles it is scored against them (:meth:`search_narrowband`). ``speech_s`` and
        ``snr_db`` (the probe's net speech and estimated SNR, when known) choose its quality
        class, whose stricter tail may raise the bar (``Decision.for_probe``)."""
        note = None
        if narrowband:
            # A phone probe: its telephone-band pairs may be held to their own strict tail
            # (search_narrowband); the wideband one (pair type A) was fitted on wideband probes
            # only, so on the normal profiles below it keeps the pooled tail.
            narrow_snr_db, snr_db = snr_db, None
            view = self.views.get(space)
            if view is None:
                note = "no telephone-band profiles for this space"
            else:
                result = self.search_narrowband(view, vector, top_n, speech_s, narrow_snr_db)
                if result is not None:
                    return result
                note = "telephone-band profiles not used: the rule in force is not the shipped one"
        result = self.search_wideband(space, vector, top_n, speech_s, snr_db)
        return dataclasses.replace(result, band_note=note) if note else result

    def search_narrowband(
        self,
        view: NarrowbandView,
        vector: np.ndarray,
        top_n: int,
        speech_s: float | None,
        snr_db: float | None = None,
    ) -> MatchResult | None:
        """A narrowband probe against ``view``: candidates ranked and decided per pair type."""
        if vector.shape[0] != self.gallery.dims.get(view.space):
            return None  # the wideband path gives the error
        found = self.narrowband.search(view, vector, top_n, NARROWBAND_POOL, speech_s, snr_db)
        if found is None:
            return None
        ranked, decision, size = found
        matches = [
            Match(
                id=r.speaker.external_id,
                name=r.speaker.name,
                metadata=r.speaker.metadata,
                similarity=r.similarity,
                is_match=False,
                score=r.score,
                match_probability=decision.probability(r.score),
                pair_type=r.pair_type,
                profile=r.profile,
            )
            for r in ranked
        ]
        mark_leading_matches(matches, decision.threshold)
        result = self._result(matches, decision, speech_s, space=view.space, searched=size)
        return dataclasses.replace(result, probe_band=BAND_NARROW)

    def search_wideband(
        self,
        space: str,
        vector: np.ndarray,
        top_n: int,
        speech_s: float | None = None,
        snr_db: float | None = None,
    ) -> MatchResult:
        """The normal profiles of ``space``: what every probe got before telephone-band
        profiles, and what a wideband probe still gets."""
        dim = self.gallery.dims.get(space)
        if dim is None:
            raise self._space_unavailable(space)
        if vector.shape[0] != dim:
            raise errors.InvalidInput(
                f"embedding has {vector.shape[0]} values; the {space} space uses {dim}",
                details={"expected": dim, "got": int(vector.shape[0])},
            )
        asnorm = self.policy.score_type(space) == SCORE_ASNORM
        normalizer = self.normalizer if asnorm else None
        # A few hits beyond top_n, so that a speaker deleted between the index search and the
        # lookup below leaves no hole in the answer.
        wanted = top_n + DELETED_MARGIN
        depth = wanted
        if normalizer is not None and normalizer.uses_gallery_cohort(space):
            # AS-norm against the gallery takes the probe's statistics from its top K+1 in this
            # same search, so the search goes that deep (a fixed cohort needs none of it).
            depth = max(wanted, normalizer.top_k + 1)
        # One database round trip: the answered speakers come back with the change cursor that
        # proves the index searched was current (Gallery.search_briefs).
        deep, speakers = self.gallery.search_briefs(space, vector, depth, describe=wanted)
        # The rule at N = the size searched (the search may have caught the index up first).
        size = self.gallery.size(space)
        decision = self.policy.decision(space, size)
        # The bare model's ranking: by cosine, best first (a stable sort keeps the index's order
        # for ties); a speaker deleted since the index search is skipped.
        hits = sorted(
            (hit for hit in deep[:wanted] if hit.speaker_id in speakers), key=lambda h: -h.score
        )[:top_n]
        scores: list[float] = [hit.score for hit in hits]
        if normalizer is not None:
            normed = normalizer.normalise(
                space,
                vector,
                [hit.speaker_id for hit in hits],
                [hit.score for hit in hits],
                probe_hits=deep,
            )
            if all(score is not None for score in normed):
                scores = [float(score) for score in normed if score is not None]
            else:
                # Some candidate has no cohort statistics: never decide on AS-norm scores and
                # cosines together; the whole answer is in cosines, under the cosine rule.
                decision = self.policy.cosine_decision(space, size)
        decision = decision.for_probe(speech_s, snr_db)  # its quality class's stricter tail
        matches = [
            Match(
                id=speakers[hit.speaker_id].external_id,
                name=speakers[hit.speaker_id].name,
                metadata=speakers[hit.speaker_id].metadata,
                similarity=hit.score,
                is_match=False,
                score=score,
                match_probability=decision.probability(score),
            )
            for hit, score in zip(hits, scores, strict=True)
        ]
        mark_leading_matches(matches, decision.threshold)
        return self._result(matches, decision, speech_s, space=space, searched=size)


def mark_leading_matches(matches: list[Match], threshold: float) -> None:
    """``is_match`` for the leading run of ``matches`` (in answer order) whose scores reach
    ``threshold``: the verdict is about the first, and a candidate ranked after one that is no
    match is not called one either."""
    leading = True
    for m in matches:
        leading = leading and m.score is not None and m.score >= threshold
        m.is_match = leading
