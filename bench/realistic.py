"""Realistic synthetic speakers: drawn around REAL ECAPA embeddings, with measured spreads.

Uniform random vectors are the worst case for graph and cluster indexes, and made-up clustered
Gaussians may be too easy or too hard. This module measures the real model instead and draws
synthetic speakers with the same statistics:

1. :func:`measure` embeds every clip of the dev-speech manifest (13 speakers, 23 clips) clean
   and in the four degraded conditions of ``bench.conditions.make_conditions`` (1.5 s cut,
   telephone band, 10 dB noise, 32 kbit/s MP3) with the service's own pipeline
   (``ClipPipeline``: decode, VAD, real VoxCeleb ECAPA). Cached under ``$TMPDIR``.
2. :func:`fit` estimates
   * the speaker centres: their mean direction ``mu`` and between-speaker covariance — the
     empirical covariance of the real centres (rank <= 12) shrunk towards an isotropic one with
     the same trace; the shrinkage is chosen so that the spread (std) of cosines between
     different synthetic speakers matches that between the real ones;
   * the within-speaker spread per condition: mean shift (a channel moves every speaker the same
     way) and covariance of (utterance - its speaker's clean centre), shrunk the same way.
3. :class:`RealisticSpeakers` draws N speaker centres, each speaker's enrolled profile (the
   L2-normalised mean of three clean utterances, as the service builds profiles) and probes (one
   utterance of a random speaker in a random condition) whose true speaker is known.

What it cannot know: how real speakers crowd together at a million (13 real speakers give the
direction and the spread, not the fine structure of a large population). :func:`compare_stats`
prints real vs synthetic genuine/impostor cosines so the reader can judge the fit.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import DEV_SPEECH, REAL_VOXCELEB, REPO

CACHE = Path(tempfile.gettempdir()) / "voicesearch-bench-realistic"
MANIFEST = REPO / "bench" / "manifests" / "dev-speech.csv"
ENROLL_UTTERANCES = 3
CHUNK = 100_000


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def measure(cache: Path = CACHE) -> dict[str, np.ndarray]:
    """Real embeddings: ``vectors (n, 192)``, ``speaker (n,)``, ``condition (n,)``, ``clip (n,)``
    for every manifest clip x condition. Cached in ``cache/real-embeddings.npz``."""
    path = cache / "real-embeddings.npz"
    if path.is_file():
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    import csv

    from bench.conditions.make_conditions import CONDITIONS, _read
    from service.core.settings import Settings
    from service.pipeline.clip import ClipPipeline
    from service.pipeline.language import LanguageRouter
    from service.pipeline.quality import QualityAssessor
    from service.pipeline.registry import ModelRegistry

    settings = Settings(data_dir=cache / "data")
    models = ModelRegistry.load(
        {"voxceleb": str(REAL_VOXCELEB)}, cache_dir=cache / "model-cache", device="cpu"
    )
    pipeline = ClipPipeline(
        settings.clip(),
        models,
        LanguageRouter(settings.cnceleb_languages),
        QualityAssessor.from_settings(settings.quality()),
    )
    with open(MANIFEST, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    vectors, speakers, conditions, clips = [], [], [], []
    for n, row in enumerate(rows):
        samples = _read(DEV_SPEECH / row["path"])
        for name, degrade in CONDITIONS.items():
            data, _ext = degrade(samples, n)
            try:
                clip = pipeline.embed_routed(data, "en")
            except Exception as error:  # e.g. a 1.5 s cut with too little speech
                print(f"skip {row['path']} {name}: {error}")
                continue
            vectors.append(clip.vector)
            speakers.append(row["speaker"])
            conditions.append(name)
            clips.append(row["path"])
    out = {
        "vectors": np.stack(vectors).astype(np.float32),
        "speaker": np.asarray(speakers),
        "condition": np.asarray(conditions),
        "clip": np.asarray(clips),
    }
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


@dataclass(frozen=True)
class Spread:
    """A Gaussian: ``mean + basis.T @ (scales * z) + iso * e`` (z, e standard normal)."""

    mean: np.ndarray  # (dim,)
    basis: np.ndarray  # (r, dim) orthonormal rows
    scales: np.ndarray  # (r,)
    iso: float

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        dim = self.mean.shape[0]
        z = rng.standard_normal((n, self.scales.size), dtype=np.float32) * self.scales
        e = rng.standard_normal((n, dim), dtype=np.float32) * np.float32(self.iso)
        return (self.mean + z @ self.basis + e).astype(np.float32)


def _factor(deviations: np.ndarray) -> np.ndarray:
    """Rows ``F`` with ``F.T @ F`` = the sample covariance of ``deviations`` (zero-mean rows)."""
    return deviations / np.sqrt(max(1, deviations.shape[0] - 1))


def _shrunk(factor: np.ndarray, mean: np.ndarray, shrink: float) -> Spread:
    """The covariance ``factor.T @ factor`` times ``shrink``, plus an isotropic part holding the
    rest of its trace."""
    dim = factor.shape[1]
    _, sing, vt = np.linalg.svd(factor, full_matrices=False)
    variances = sing**2
    trace = float(variances.sum())
    return Spread(
        mean=mean.astype(np.float32),
        basis=vt.astype(np.float32),
        scales=np.sqrt(shrink * variances).astype(np.float32),
        iso=float(np.sqrt((1.0 - shrink) * trace / dim)),
    )


def _pair_cosines(x: np.ndarray) -> np.ndarray:
    u = _unit(x)
    sims = u @ u.T
    return sims[np.triu_indices(len(u), 1)]


@dataclass(frozen=True)
class RealisticModel:
    centres: Spread
    within: dict[str, Spread]  # per condition
    real: dict[str, np.ndarray]  # what it was fitted on


def _real_trials(real: dict[str, np.ndarray]) -> dict[str, tuple[list[float], list[float]]]:
    """Per condition: genuine and impostor cosines of every real utterance against every real
    speaker's profile built from their OTHER clean clips (never the probe's own clip)."""
    vectors, speaker, condition, clip = (
        real["vectors"],
        real["speaker"],
        real["condition"],
        real["clip"],
    )
    clean = condition == "clean"
    out: dict[str, tuple[list[float], list[float]]] = {}
    for cond in sorted(set(condition.tolist())):
        genuine, impostor = [], []
        for i in np.flatnonzero(condition == cond):
            for s in sorted(set(speaker.tolist())):
                rows = clean & (speaker == s) & (clip != clip[i])
                if rows.any():
                    sim = float(_unit(vectors[rows].mean(axis=0)) @ vectors[i])
                    (genuine if s == speaker[i] else impostor).append(sim)
        out[cond] = (genuine, impostor)
    return out


def _scaled(spread: Spread, factor: float) -> Spread:
    return Spread(spread.mean * factor, spread.basis, spread.scales * factor, spread.iso * factor)


def _genuine_mean(centres: Spread, within: Spread, rng: np.random.Generator) -> float:
    """Mean cosine of one utterance with a profile of three clean-like utterances."""
    c = _unit(centres.draw(rng, 300))
    profile = _unit(sum(_unit(c + within.draw(rng, 300)) for _ in range(ENROLL_UTTERANCES)))
    probe = _unit(c + within.draw(rng, 300))
    return float(np.mean(np.sum(profile * probe, axis=1)))


def fit(real: dict[str, np.ndarray]) -> RealisticModel:
    vectors, speaker, condition = real["vectors"], real["speaker"], real["condition"]
    clean = condition == "clean"
    names = sorted(set(speaker[clean].tolist()))
    centres = np.stack([_unit(vectors[clean & (speaker == s)].mean(axis=0)) for s in names])
    mu = centres.mean(axis=0)
    target = float(np.std(_pair_cosines(centres)))
    rng = np.random.default_rng(0)
    best: tuple[float, Spread] | None = None
    for shrink in np.linspace(0.0, 1.0, 21):
        spread = _shrunk(_factor(centres - mu), mu, float(shrink))
        got = float(np.std(_pair_cosines(spread.draw(rng, 400))))
        if best is None or abs(got - target) < best[0]:
            best = (abs(got - target), spread)
    assert best is not None
    centre_spread = best[1]
    # Within-speaker spread = clip-to-clip variation (speakers with several clean clips: their
    # deviations from their own mean) + the condition's effect on a clip (degraded minus clean
    # version of the same clip, over every clip: a mean shift plus a spread).
    variation = [
        vectors[clean & (speaker == s)] - vectors[clean & (speaker == s)].mean(axis=0)
        for s in names
        if (clean & (speaker == s)).sum() >= 2
    ]
    rows_total = sum(len(v) for v in variation)
    # Pooled covariance: divide by (rows - groups), not (rows - 1) as _factor does.
    clip_var = np.concatenate(variation) * np.sqrt(
        (rows_total - 1) / max(1, rows_total - len(variation))
    )
    clean_of = {
        c: v for v, c, k in zip(vectors, real["clip"], condition, strict=True) if k == "clean"
    }
    trials = _real_trials(real)
    within: dict[str, Spread] = {}
    for name in sorted(set(condition.tolist())):
        rows = np.flatnonzero(condition == name)
        effect = np.stack([vectors[i] - clean_of[real["clip"][i]] for i in rows])
        shift = effect.mean(axis=0)
        # Independent parts add: Cov(clip + condition) = Cov(clip) + Cov(condition).
        factor = np.concatenate([_factor(clip_var), _factor(effect - shift)])
        spread = _shrunk(factor, shift, 0.5)
        # With 2 multi-clip speakers the spread's size is uncertain: scale it so that the
        # synthetic genuine cosine matches the real one of this condition (bisection).
        goal = float(np.mean(trials[name][0])) if trials[name][0] else None
        if goal is not None:
            low, high = 0.25, 4.0
            for _ in range(14):
                mid = (low * high) ** 0.5
                got = _genuine_mean(centre_spread, _scaled(spread, mid), rng)
                low, high = (mid, high) if got > goal else (low, mid)
            spread = _scaled(spread, (low * high) ** 0.5)
        within[name] = spread
    return RealisticModel(centres=centre_spread, within=within, real=real)


class RealisticSpeakers:
    """Draws synthetic speakers and probes from a :class:`RealisticModel`."""

    def __init__(self, model: RealisticModel, seed: int = 0) -> None:
        self.model = model
        self.seed = seed

    def centres(self, n: int) -> np.ndarray:
        out = np.empty((n, self.model.centres.mean.shape[0]), dtype=np.float32)
        for start in range(0, n, CHUNK):
            rng = np.random.default_rng((self.seed, start // CHUNK))
            m = min(CHUNK, n - start)
            out[start : start + m] = _unit(self.model.centres.draw(rng, CHUNK))[:m]
        return out

    def profiles(self, centres: np.ndarray) -> np.ndarray:
        """Enrolled profile per centre: unit mean of ``ENROLL_UTTERANCES`` clean utterances."""
        out = np.empty_like(centres)
        clean = self.model.within["clean"]
        for start in range(0, centres.shape[0], CHUNK):
            rng = np.random.default_rng((self.seed, 10_000 + start // CHUNK))
            part = centres[start : start + CHUNK]
            total = np.zeros_like(part)
            for _ in range(ENROLL_UTTERANCES):
                total += _unit(part + clean.draw(rng, part.shape[0]))
            out[start : start + part.shape[0]] = _unit(total)
        return out

    def probes(
        self, centres: np.ndarray, m: int, seed: int = 1
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(queries (m, dim), true speaker row (m,), condition name (m,))``: one utterance of a
        random speaker in a random condition (every condition equally likely)."""
        rng = np.random.default_rng((self.seed, 20_000 + seed))
        truth = rng.choice(centres.shape[0], size=m, replace=False)
        names = sorted(self.model.within)
        picked = rng.integers(len(names), size=m)
        queries = np.empty((m, centres.shape[1]), dtype=np.float32)
        for i, name in enumerate(names):
            rows = np.flatnonzero(picked == i)
            if rows.size:
                spread = self.model.within[name]
                queries[rows] = _unit(centres[truth[rows]] + spread.draw(rng, rows.size))
        return queries, truth, np.asarray(names)[picked]


def load_model(cache: Path = CACHE) -> RealisticModel:
    return fit(measure(cache))


def dataset(
    n: int, queries: int = 1000, cache: Path = CACHE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(profiles (n, 192), probe queries, true row per query)`` — profiles cached as .npy
    under ``cache`` (a million takes ~20 s to draw)."""
    model = load_model(cache)
    speakers = RealisticSpeakers(model)
    path = cache / f"profiles-{n}.npy"
    centres = speakers.centres(n)
    if path.is_file():
        profiles = np.load(path, mmap_mode="r")
        profiles = np.ascontiguousarray(profiles)
    else:
        profiles = speakers.profiles(centres)
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, profiles)
    q, truth, _ = speakers.probes(centres, queries)
    return profiles, q, truth


def compare_stats(model: RealisticModel, n: int = 2000) -> dict[str, dict[str, float]]:
    """Genuine (probe vs own profile) and impostor (probe vs other profiles) cosines, real vs
    synthetic, per condition — how well the generator imitates the model."""
    out: dict[str, dict[str, float]] = {}
    for cond, (genuine, impostor) in _real_trials(model.real).items():
        out[f"real {cond}"] = _describe(genuine, impostor)
    speakers = RealisticSpeakers(model, seed=123)
    centres = speakers.centres(n)
    profiles = speakers.profiles(centres)
    q, truth, conds = speakers.probes(centres, min(n, 1000))
    sims = q @ profiles.T
    for cond in sorted(set(conds.tolist())):
        rows = np.flatnonzero(conds == cond)
        genuine = sims[rows, truth[rows]]
        impostor = np.concatenate([np.delete(sims[r], truth[r]) for r in rows[:50]])
        out[f"synthetic {cond}"] = _describe(genuine.tolist(), impostor.tolist())
    return out


def _describe(genuine: list[float], impostor: list[float]) -> dict[str, float]:
    g, i = np.asarray(genuine), np.asarray(impostor)
    return {
        "genuine_mean": round(float(g.mean()), 3) if g.size else float("nan"),
        "genuine_p5": round(float(np.percentile(g, 5)), 3) if g.size else float("nan"),
        "impostor_mean": round(float(i.mean()), 3) if i.size else float("nan"),
        "impostor_std": round(float(i.std()), 3) if i.size else float("nan"),
        "impostor_p99": round(float(np.percentile(i, 99)), 3) if i.size else float("nan"),
        "n_genuine": int(g.size),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(compare_stats(load_model()), indent=1))
