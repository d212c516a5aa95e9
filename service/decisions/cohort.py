"""Which score each encoder space decides on, with which cohort, and its shipped default rule.

The package ships an AS-norm cohort for the VoxCeleb ECAPA space (``cohorts/ecapa-voxceleb.npy``,
provenance and licences in ``cohorts/ecapa-voxceleb.json``). Cohort rows only mean something for
the model that made them, so it is used only when the loaded checkpoint is that model: the
sha256 of its ``embedding_model.ckpt`` (the hash in the model identity) and the embedding
dimension must both match. Per space, in order:

1. an operator cohort file (``VOICESEARCH_ASNORM_COHORT=space=/path.npy``): AS-norm with it;
2. the shipped cohort, when it matches the loaded model (and ``VOICESEARCH_SHIPPED_COHORT`` is
   on): AS-norm with it;
3. the space listed in ``VOICESEARCH_ASNORM_SPACES`` without a file: AS-norm against the
   enrolled gallery itself;
4. otherwise raw cosine.

Each space also gets its *shipped default rule*: the exponential impostor tail (u, β) fitted on
the calibration data for the score it uses (``service.decisions.openset``). It is "fitted for
this checkpoint" only when the shipped cohort matches; otherwise it is the same numbers applied
to a model they were not measured on, and says so (``uncalibrated for this checkpoint``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from service.core.settings import SPACE_VOXCELEB, AsNormSettings
from service.decisions.openset import TailFit
from service.decisions.probe_quality import QualityTails, load_rules
from storage.calibration import SCORE_ASNORM, SCORE_COSINE

COHORT_DIR = Path(__file__).resolve().parent / "cohorts"
#: Shipped cohort per space (file stem in COHORT_DIR).
SHIPPED = {SPACE_VOXCELEB: "ecapa-voxceleb"}
#: The file whose default tails stand in for a space that ships no cohort of its own.
FALLBACK = "ecapa-voxceleb"

COHORT_OPERATOR = "operator"
COHORT_SHIPPED = "shipped"
COHORT_GALLERY = "gallery"


@dataclass(frozen=True)
class ShippedCohort:
    name: str
    meta: dict[str, Any]  # the JSON next to the matrix: provenance, licences, tails
    path: Path

    @property
    def checkpoint_sha256(self) -> str:
        return str(self.meta["checkpoint_sha256"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def tail(self, score_type: str) -> TailFit:
        return TailFit.from_dict(self.meta["tails"][score_type])

    def matrix(self) -> np.ndarray:
        return load_matrix(self.path)

    def mismatch(self, identity: str | None, dim: int | None) -> str | None:
        """Why this cohort does not belong to the loaded model; None when it does."""
        digest = checkpoint_digest(identity)
        if digest is None or not self.checkpoint_sha256.startswith(digest):
            return (
                f"the loaded checkpoint ({identity}) is not the one the shipped cohort was made "
                f"with (sha256 {self.checkpoint_sha256[:16]}…)"
            )
        if dim != self.dim:
            return f"embedding dimension {dim} differs from the shipped cohort's {self.dim}"
        return None


def checkpoint_digest(identity: str | None) -> str | None:
    """The sha256 prefix in a model identity (``name@sha256:<hex>``; see pipeline.loading)."""
    if not identity or "@sha256:" not in identity:
        return None
    return identity.rsplit("@sha256:", 1)[1].lower() or None


@lru_cache(maxsize=8)
def shipped_cohort(name: str) -> ShippedCohort:
    meta = json.loads((COHORT_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return ShippedCohort(name, meta, COHORT_DIR / meta["file"])


class CohortConfigError(ValueError):
    """An AS-norm cohort file (``VOICESEARCH_ASNORM_COHORT``) cannot be used with the loaded
    encoder: start-up stops with the reason, instead of every search of that space failing."""


def load_operator_cohort(space: str, path: Path, dim: int) -> np.ndarray:
    """An operator's cohort matrix, checked against the encoder of its space (2-D, at least 2
    rows, ``dim`` columns, finite numbers, no all-zero row) and L2-normalised."""
    where = f"AS-norm cohort of {space!r} ({path})"
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CohortConfigError(f"{where}: cannot be read as a .npy array: {exc}") from None
    if matrix.ndim != 2 or matrix.shape[0] < 2 or matrix.shape[1] != dim:
        raise CohortConfigError(
            f"{where}: need a (n >= 2, {dim}) matrix of {space} embeddings, "
            f"got shape {matrix.shape}"
        )
    if not np.issubdtype(matrix.dtype, np.number):
        raise CohortConfigError(f"{where}: not numbers ({matrix.dtype})")
    matrix = matrix.astype(np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not np.isfinite(matrix).all() or not (norms > 0).all():
        raise CohortConfigError(f"{where}: has NaN/infinite values or an all-zero row")
    matrix /= norms
    matrix.setflags(write=False)
    return matrix


@lru_cache(maxsize=8)
def load_matrix(path: Path) -> np.ndarray:
    """Cohort rows as L2-normalised float32 (read once per process)."""
    m = np.asarray(np.load(path), dtype=np.float32)
    if m.ndim != 2 or m.shape[0] < 2:
        raise ValueError(f"cohort {path}: need a (n >= 2, dim) matrix, got {m.shape}")
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    m.setflags(write=False)
    return m


@dataclass(frozen=True)
class SpaceScoring:
    """How one space scores, and its shipped default rule per score type."""

    space: str
    score_type: str  # SCORE_COSINE or SCORE_ASNORM: what find-match decides on
    cohort_origin: str | None  # COHORT_OPERATOR / COHORT_SHIPPED / COHORT_GALLERY; None: cosine
    cohort: np.ndarray | None  # rows of an operator or shipped cohort
    cohort_status: str  # one sentence: which cohort and why (for /calibration and doctor)
    shipped_matches: bool  # the shipped cohort/tails were measured with this very checkpoint
    tails: Mapping[str, TailFit]  # the shipped default tail per score type
    #: The shipped cohort's stricter AS-norm tails of probe quality classes
    #: (``service.decisions.probe_quality``); None unless AS-norm runs with the shipped cohort.
    strict: QualityTails | None = None

    def default_tail(self, score_type: str) -> TailFit:
        return self.tails[score_type]

    def default_fitted(self, score_type: str) -> bool:
        """The shipped tail for ``score_type`` was measured for what this space runs: the
        same checkpoint and, for AS-norm, the shipped cohort."""
        if not self.shipped_matches:
            return False
        return score_type == SCORE_COSINE or self.cohort_origin == COHORT_SHIPPED

    def strict_for(self, score_type: str, enabled: bool) -> QualityTails | None:  # shipped rule
        """The quality classes' strict tails where they apply to the shipped rule for
        ``score_type``: AS-norm with the shipped cohort of this very checkpoint, and ``enabled``
        (``VOICESEARCH_QUALITY_TAILS``)."""
        if not enabled or score_type != SCORE_ASNORM or not self.default_fitted(score_type):
            return None
        return self.strict

    def default_note(self, score_type: str) -> str:
        if self.default_fitted(score_type):
            return "shipped default (fitted for this checkpoint)"
        return "shipped default (uncalibrated for this checkpoint)"


def resolve_scoring(
    settings: AsNormSettings,
    identities: Mapping[str, str],
    dims: Mapping[str, int],
) -> dict[str, SpaceScoring]:
    """The scoring of every loaded space (see the module docstring for the order)."""
    out: dict[str, SpaceScoring] = {}
    fallback = shipped_cohort(FALLBACK)
    for space, identity in identities.items():
        shipped = shipped_cohort(SHIPPED[space]) if space in SHIPPED else None
        why_not = (
            shipped.mismatch(identity, dims.get(space))
            if shipped
            else "no cohort is shipped for this space"
        )
        if why_not is None and not settings.shipped:
            why_not = "turned off (VOICESEARCH_SHIPPED_COHORT=false)"
        cohort: np.ndarray | None = None
        origin: str | None
        if space in settings.cohorts:
            origin = COHORT_OPERATOR
            cohort = load_operator_cohort(space, Path(settings.cohorts[space]), dims[space])
            status = f"operator cohort {settings.cohorts[space]} ({cohort.shape[0]} rows)"
        elif shipped is not None and why_not is None:
            origin, cohort = COHORT_SHIPPED, shipped.matrix()
            status = f"shipped cohort {shipped.name} ({cohort.shape[0]} rows; checkpoint matches)"
        elif space in settings.spaces:
            origin = COHORT_GALLERY
            status = "AS-norm against the enrolled gallery (no cohort file)"
        else:
            origin = None
            status = "raw cosine"
        if origin != COHORT_SHIPPED and shipped is not None and why_not is not None:
            status += f"; shipped cohort ignored: {why_not}"
        source = shipped or fallback
        out[space] = SpaceScoring(
            space=space,
            score_type=SCORE_ASNORM if origin else SCORE_COSINE,
            cohort_origin=origin,
            cohort=cohort,
            cohort_status=status,
            shipped_matches=shipped is not None
            and shipped.mismatch(identity, dims.get(space)) is None,
            tails={t: source.tail(t) for t in (SCORE_COSINE, SCORE_ASNORM)},
            strict=load_rules(shipped.meta.get("quality_tails"))
            if shipped is not None and origin == COHORT_SHIPPED
            else None,
        )
    return out
