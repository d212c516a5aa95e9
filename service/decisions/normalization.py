"""AS-norm (adaptive symmetric score normalisation) for index searches.

``s_norm = 0.5 * ((s - μ_p) / σ_p + (s - μ_c) / σ_c)``, where ``μ, σ`` are the mean and std of
the top-K scores of the probe (``_p``) and of the candidate's profile (``_c``) against a cohort
of impostors (Matějka et al., 2017; :func:`service.decisions.scoring.as_norm`).

Cohort (chosen per space by ``service.decisions.cohort.resolve_scoring``):

* **a fixed cohort**: the shipped one (``cohorts/ecapa-voxceleb.npy``, used when the loaded
  checkpoint is the one it was made with) or an operator file (``VOICESEARCH_ASNORM_COHORT``).
  Rows are embeddings of speakers *not* enrolled; stats are ``x @ cohort.T`` top-K. A candidate's
  stats depend on its own profile only, so they are cached per ``(space, speaker_id)`` together
  with a fingerprint of the profile vector they were computed from: a changed profile recomputes
  its own entry and nothing else (a write elsewhere, or a change-log row of a speaker who is not
  searchable, invalidates nothing).
* **the enrolled gallery itself** (a space in ``VOICESEARCH_ASNORM_SPACES`` without a cohort
  file). Probe side: the probe's top K+1 neighbours (the find-match search itself goes that deep,
  so this costs nothing extra); for each candidate its own score is left out (it is the trial,
  not an impostor). Candidate side: computed lazily for the *returned* candidates only — their
  profile vectors in one batched top-(K+1) search (self excluded) — and cached per
  ``(space, speaker_id)``. Any change to the gallery (its ``version()`` moves) drops this cache,
  because every speaker's cohort may have changed.

With fewer than 2 cohort scores available, normalisation is skipped (returns None).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from service.decisions.cohort import SpaceScoring
from service.decisions.scoring import top_k_stats

_EPS = 1e-6


class CohortHit(Protocol):
    """One search hit: an enrolled speaker's integer id and its cosine with the query."""

    @property
    def speaker_id(self) -> int: ...

    @property
    def score(self) -> float: ...


class CohortGallery(Protocol):
    """What AS-norm needs of the gallery (``service.search.gallery.Gallery`` is one)."""

    def version(self, space: str) -> tuple[int, int]: ...

    def vectors(self, space: str, ids: np.ndarray) -> np.ndarray: ...

    def search(self, space: str, vectors: np.ndarray, k: int) -> Sequence[Sequence[CohortHit]]: ...


class AsNorm:
    def __init__(
        self,
        gallery: CohortGallery,
        spaces: Sequence[str],
        *,
        top_k: int = 100,
        cohorts: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.gallery = gallery
        self.spaces = set(spaces)
        self.top_k = int(top_k)
        self.cohorts: dict[str, np.ndarray] = {}
        for space, matrix in (cohorts or {}).items():
            m = np.asarray(matrix, dtype=np.float32)
            if m.ndim != 2 or m.shape[0] < 2:
                raise ValueError(f"cohort of {space}: need a (n >= 2, dim) matrix, got {m.shape}")
            self.cohorts[space] = m / np.linalg.norm(m, axis=1, keepdims=True)
        self._lock = threading.Lock()
        # Gallery cohort: space -> (gallery version, speaker_id -> stats).
        self._cache: dict[str, tuple[tuple[int, int], dict[int, tuple[float, float]]]] = {}
        # Fixed cohort: (space, speaker_id) -> (profile fingerprint, stats).
        self._fixed: dict[tuple[str, int], tuple[bytes, tuple[float, float]]] = {}
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_scoring(
        cls, scoring: Mapping[str, SpaceScoring], gallery: CohortGallery, *, top_k: int
    ) -> AsNorm | None:
        """AS-norm for the spaces ``scoring`` puts under it; None when no space is."""
        spaces = [s for s, sc in scoring.items() if sc.cohort_origin is not None]
        if not spaces:
            return None
        cohorts = {s: sc.cohort for s, sc in scoring.items() if sc.cohort is not None}
        return cls(gallery, spaces, top_k=top_k, cohorts=cohorts)

    def share_cohort(self, derived: str, space: str) -> None:
        """Normalise ``derived`` (a space made from ``space``'s model, e.g. its telephone-band
        profiles) against ``space``'s fixed cohort. A space without a fixed cohort is not
        shared: a gallery cohort of derived profiles would be a different, untested score."""
        if space in self.cohorts:
            self.cohorts[derived] = self.cohorts[space]
            self.spaces.add(derived)

    def enabled(self, space: str) -> bool:
        return space in self.spaces

    def uses_gallery_cohort(self, space: str) -> bool:
        """True when ``space`` is normalised against the enrolled gallery (no fixed cohort):
        then the probe's statistics come from its own top K+1 gallery hits."""
        return self.enabled(space) and space not in self.cohorts

    def clear_cache(self) -> None:
        """Forget every cached candidate statistic, as a change to the gallery would (for
        benchmarks of the first search after a change)."""
        with self._lock:
            self._cache.clear()
            self._fixed.clear()

    # ------------------------------------------------------------------ statistics
    @staticmethod
    def _stats(scores: np.ndarray, k: int) -> tuple[float, float] | None:
        if scores.size < 2:
            return None
        mean, std = top_k_stats(scores[None, :], k, eps=_EPS)
        return float(mean[0]), float(std[0])

    def normalise(
        self,
        space: str,
        probe: np.ndarray,
        speaker_ids: Sequence[int],
        raw: Sequence[float],
        *,
        probe_hits: Sequence[CohortHit] | None = None,
    ) -> list[float | None]:
        """AS-norm scores of ``probe`` against candidates ``speaker_ids`` with cosines ``raw``.

        ``probe_hits``: the probe's top-(K+1) gallery hits when the caller already searched that
        deep (saves a search). Otherwise the probe and every candidate missing from the cache go
        to the gallery in ONE batched search (one change-log check)."""
        if not speaker_ids:
            return []
        probe = np.asarray(probe, dtype=np.float32).reshape(1, -1)
        ids = [int(i) for i in speaker_ids]
        cohort = self.cohorts.get(space)
        if cohort is not None:
            return self._against_cohort(space, probe, ids, raw, cohort)
        for attempt in range(2):
            version = self.gallery.version(space)
            with self._lock:
                cached_version, cache = self._cache.get(space, (None, {}))
                if cached_version != version:
                    cache = {}
                    self._cache[space] = (version, cache)
                known = {i: cache[i] for i in ids if i in cache}
            wanted = np.asarray([i for i in dict.fromkeys(ids) if i not in known], dtype=np.int64)
            vectors = self.gallery.vectors(space, wanted)
            ok = ~np.isnan(vectors).any(axis=1)
            fresh: dict[int, tuple[float, float] | None] = {int(i): None for i in wanted[~ok]}
            search_probe = probe_hits is None
            queries = np.concatenate([probe, vectors[ok]]) if search_probe else vectors[ok]
            rows = self.gallery.search(space, queries, self.top_k + 1) if queries.shape[0] else []
            hits_of_probe = rows[0] if probe_hits is None else probe_hits
            for i, row_hits in zip(wanted[ok], rows[1:] if search_probe else rows, strict=True):
                kept = [h.score for h in row_hits if h.speaker_id != i][: self.top_k]
                fresh[int(i)] = self._stats(np.asarray(kept, dtype=np.float64), self.top_k)
            pairs = [(h.speaker_id, h.score) for h in hits_of_probe]
            # The search synced the gallery: if that applied changes, cached stats are stale.
            if self.gallery.version(space) == version or attempt == 1:
                break
        with self._lock:
            self.hits += len(known)
            self.misses += int(wanted.size)
            if self._cache.get(space, (None, {}))[0] == version:
                self._cache[space][1].update({k: v for k, v in fresh.items() if v is not None})
        cand = {**known, **fresh}
        out: list[float | None] = []
        for i, s in zip(ids, raw, strict=True):
            kept = [score for sid, score in pairs if sid != i][: self.top_k]
            p = self._stats(np.asarray(kept, dtype=np.float64), self.top_k)
            c = cand.get(i)
            out.append(None if p is None or c is None else _combine(s, p, c))
        return out

    def _against_cohort(
        self,
        space: str,
        probe: np.ndarray,
        ids: list[int],
        raw: Sequence[float],
        cohort: np.ndarray,
    ) -> list[float | None]:
        """AS-norm against a fixed cohort. A candidate whose profile is gone from the index
        (deleted since the search) gets None."""
        p = self._stats((probe @ cohort.T)[0].astype(np.float64), self.top_k)
        unique = list(dict.fromkeys(ids))
        vectors = self.gallery.vectors(space, np.asarray(unique, dtype=np.int64))
        stats: dict[int, tuple[float, float] | None] = {}
        hits = misses = 0
        for i, vector in zip(unique, vectors, strict=True):
            if np.isnan(vector).any():
                stats[i] = None
                continue
            key = hashlib.blake2b(vector.tobytes(), digest_size=16).digest()
            with self._lock:
                cached = self._fixed.get((space, i))
            if cached is not None and cached[0] == key:
                stats[i] = cached[1]
                hits += 1
                continue
            value = self._stats((vector[None, :] @ cohort.T)[0].astype(np.float64), self.top_k)
            stats[i] = value
            misses += 1
            if value is not None:
                with self._lock:
                    self._fixed[(space, i)] = (key, value)
        with self._lock:
            self.hits += hits
            self.misses += misses
        out: list[float | None] = []
        for i, s in zip(ids, raw, strict=True):
            c = stats.get(i)
            out.append(None if p is None or c is None else _combine(s, p, c))
        return out


def _combine(score: float, probe: tuple[float, float], cand: tuple[float, float]) -> float:
    return 0.5 * ((score - probe[0]) / probe[1] + (score - cand[0]) / cand[1])
