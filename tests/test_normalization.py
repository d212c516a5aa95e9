"""AS-norm through the gallery: equals the direct computation, and its cache follows the gallery."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.decisions.cohort import shipped_cohort
from service.decisions.normalization import AsNorm
from service.decisions.scoring import as_norm, top_k_stats
from service.search.gallery import Gallery
from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade_to_head
from storage.records import UtteranceInput
from storage.speakers import SpeakerStore

VOX = "voxceleb"
DIM = 16
IDS = {VOX: "vox@1"}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[SpeakerStore, Gallery]]:
    url = f"sqlite:///{tmp_path / 'vs.db'}"
    upgrade_to_head(url)
    engine = make_engine(url)
    store = SpeakerStore(make_session_factory(engine), IDS)
    gallery = Gallery(store, tmp_path / "index", {VOX: DIM}, IDS)
    gallery.open()
    yield store, gallery
    engine.dispose()


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    m = rng.standard_normal((n, DIM)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _enroll(store: SpeakerStore, ext: str, vector: np.ndarray) -> int:
    utt = UtteranceInput(ext, None, None, 2.0, {VOX: vector.astype(np.float32)}, speech_s=2.0)
    record, _ = store.create_speaker(external_id=ext, name=None, metadata=None, utterances=[utt])
    return record.id


def _direct(gallery: Gallery, probe: np.ndarray, cand: int, k: int) -> float:
    """AS-norm computed from scratch: every gallery profile but the candidate is the cohort."""
    ids, vectors = gallery._spaces[VOX].index.vectors()
    raw = float(vectors[ids == cand][0] @ probe)
    others = vectors[ids != cand]
    p_mean, p_std = top_k_stats((others @ probe)[None, :], k)
    c_mean, c_std = top_k_stats((others @ vectors[ids == cand][0])[None, :], k)
    return float(as_norm(np.array([[raw]]), p_mean, p_std, c_mean, c_std)[0, 0])


def test_asnorm_equals_direct_computation_and_follows_gallery_changes(world) -> None:
    store, gallery = world
    rng = np.random.default_rng(5)
    ids = [_enroll(store, f"s{i}", v) for i, v in enumerate(_unit(rng, 30))]
    norm = AsNorm(gallery, [VOX], top_k=10)
    probe = _unit(rng, 1)[0]
    hits = gallery.search(VOX, probe[None, :], 5)[0]
    cands, raw = [h.speaker_id for h in hits], [h.score for h in hits]
    got = norm.normalise(VOX, probe, cands, raw)
    for cand, value in zip(cands, got, strict=True):
        assert value == pytest.approx(_direct(gallery, probe, cand, 10), abs=1e-5)
    assert norm.misses == 5

    # Same gallery: candidate stats come from the cache.
    norm.normalise(VOX, probe, cands, raw)
    assert norm.hits == 5

    # Enroll a speaker close to a candidate: its cohort changes, so must the cached stats.
    close = gallery.vectors(VOX, np.array([cands[0]]))[0] + 0.05 * _unit(rng, 1)[0]
    _enroll(store, "new", close / np.linalg.norm(close))
    got = norm.normalise(VOX, probe, cands, raw)
    assert norm.misses == 10
    for cand, value in zip(cands, got, strict=True):
        assert value == pytest.approx(_direct(gallery, probe, cand, 10), abs=1e-5)

    # Delete one: again recomputed, and a vanished candidate gets no score.
    store.delete("new")
    deleted = ids[-1]
    store.delete(f"s{len(ids) - 1}")
    got = norm.normalise(VOX, probe, [*cands, deleted], [*raw, 0.1])
    assert got[-1] is None
    for cand, value in zip(cands, got[:-1], strict=True):
        assert value == pytest.approx(_direct(gallery, probe, cand, 10), abs=1e-5)


def test_asnorm_with_cohort_file(world, tmp_path: Path) -> None:
    store, gallery = world
    rng = np.random.default_rng(6)
    for i, v in enumerate(_unit(rng, 5)):
        _enroll(store, f"s{i}", v)
    cohort = _unit(rng, 50)
    norm = AsNorm(gallery, [VOX], top_k=8, cohorts={VOX: cohort})
    probe = _unit(rng, 1)[0]
    hits = gallery.search(VOX, probe[None, :], 3)[0]
    got = norm.normalise(VOX, probe, [h.speaker_id for h in hits], [h.score for h in hits])
    for hit, value in zip(hits, got, strict=True):
        cand = gallery.vectors(VOX, np.array([hit.speaker_id]))[0]
        pm, ps = top_k_stats((cohort @ probe)[None, :], 8)
        cm, cs = top_k_stats((cohort @ cand)[None, :], 8)
        want = as_norm(np.array([[hit.score]]), pm, ps, cm, cs)[0, 0]
        assert value == pytest.approx(float(want), abs=1e-5)


def test_fixed_cohort_cache_drops_only_the_changed_profile(world, tmp_path: Path) -> None:
    """Issue 10 item 14: with a fixed cohort a candidate's statistics depend on its own profile
    only; writes elsewhere (another speaker, a speaker who is not searchable) keep the cache,
    a changed profile recomputes its own entry and nothing else."""
    store, gallery = world
    rng = np.random.default_rng(8)
    ids = [_enroll(store, f"s{i}", v) for i, v in enumerate(_unit(rng, 6))]
    gallery.sync()  # a find-match search syncs before normalising
    cohort = _unit(rng, 40)
    norm = AsNorm(gallery, [VOX], top_k=8, cohorts={VOX: cohort})
    probe = _unit(rng, 1)[0]
    raw = [0.1] * len(ids)
    first = norm.normalise(VOX, probe, ids, raw)
    assert (norm.hits, norm.misses) == (0, 6)
    _enroll(store, "elsewhere", _unit(rng, 1)[0])  # another speaker
    weak = SpeakerStore(store.session_factory, IDS, min_profile_speech_s=100.0)
    _enroll(weak, "not-searchable", _unit(rng, 1)[0])  # logged, never indexed
    gallery.sync()
    assert norm.normalise(VOX, probe, ids, raw) == first
    assert (norm.hits, norm.misses) == (6, 6)
    # s0 gets a second utterance: its profile moves, only its statistics are recomputed.
    extra = UtteranceInput("s0-second", None, None, 2.0, {VOX: _unit(rng, 1)[0]}, speech_s=2.0)
    store.add_utterances("s0", [extra])
    gallery.sync()
    again = norm.normalise(VOX, probe, ids, raw)
    assert (norm.hits, norm.misses) == (11, 7)
    assert again[1:] == first[1:] and again[0] != first[0]
    moved = gallery.vectors(VOX, np.array([ids[0]]))[0]
    pm, ps = top_k_stats((cohort @ probe)[None, :], 8)
    cm, cs = top_k_stats((cohort @ moved)[None, :], 8)
    assert again[0] == pytest.approx(float(as_norm(np.array([[0.1]]), pm, ps, cm, cs)[0, 0]))


def test_tiny_gallery_has_no_cohort(world) -> None:
    store, gallery = world
    rng = np.random.default_rng(7)
    only = _enroll(store, "only", _unit(rng, 1)[0])
    norm = AsNorm(gallery, [VOX], top_k=10)
    assert norm.normalise(VOX, _unit(rng, 1)[0], [only], [0.5]) == [None]


def test_find_match_with_asnorm_over_http(tmp_path: Path, tiny_model_dirs, tiny_registry) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.api.conftest import make_settings
    from tests.audio_factory import synth_voice, wav_bytes

    def clip(seed: int) -> bytes:
        return wav_bytes(synth_voice(2.0, seed=seed, f0=90.0 + 15 * seed), 16_000)

    settings = make_settings(tmp_path / "data", tiny_model_dirs, asnorm_spaces=["voxceleb"])
    with TestClient(create_app(settings, models=tiny_registry)) as client:
        for seed in range(1, 6):
            form = {"external_id": f"s{seed}"}
            files = [("audio", ("a.wav", clip(seed), "audio/wav"))]
            assert client.post("/speakers", files=files, data=form).status_code == 201
        body = client.post(
            "/find-match", files=[("audio", ("p.wav", clip(1), "audio/wav"))], data={"top_n": "3"}
        ).json()
        # AS-norm against the gallery (no cohort file; the shipped cohort is for another
        # checkpoint): the shipped AS-norm tail at N = 5, marked uncalibrated.
        t5 = shipped_cohort("ecapa-voxceleb").tail("asnorm").threshold(0.03, 5)
        assert body["score_type"] == "asnorm" and body["threshold"] == pytest.approx(t5)
        assert body["threshold_source"] == "shipped" and body["gallery_size"] == 5
        assert body["threshold_note"] == "shipped default (uncalibrated for this checkpoint)"
        best = body["best_match"]
        assert best["id"] == "s1" and best["similarity"] == pytest.approx(1.0, abs=1e-4)
        assert best["score"] != pytest.approx(best["similarity"])
        assert best["is_match"] == (best["score"] >= t5)
        # Ranked as the bare model ranks (cosine); decided on the AS-norm score, and is_match
        # marks only the leading run of candidates that reach the threshold.
        top = body["top_matches"]
        cosines = [m["similarity"] for m in top]
        assert cosines == sorted(cosines, reverse=True)
        leading = True
        for m in top:
            leading = leading and m["score"] >= t5
            assert m["is_match"] is leading
        shown = client.get("/calibration").json()["spaces"]["voxceleb"]
        assert shown["asnorm"] is True and shown["score_type"] == "asnorm"
        assert shown["source"] == "shipped" and "enrolled gallery" in shown["cohort"]
