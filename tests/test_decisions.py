"""Open-set decisions (issue 12): t(N) follows the gallery, the shipped cohort is used only for
its own checkpoint, only a probe without detected speech is undecided, one answer is in one unit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.bootstrap import build_voicesearch, open_database
from service.decisions.cohort import shipped_cohort
from service.decisions.openset import TailFit, fit_tail, per_pair_rate
from service.decisions.probe_quality import QualityTails, load_rules
from service.pipeline.registry import ModelRegistry
from service.search.voicesearch import VoiceSearch
from storage.records import UtteranceInput
from tests.api.conftest import make_settings
from tests.paths import DEV_SPEECH_DIR, REAL_VOXCELEB_DIR, requires_real_model

VOX = "voxceleb"
SHIPPED = shipped_cohort("ecapa-voxceleb")
CLASSES: QualityTails = load_rules(SHIPPED.meta["quality_tails"]) or QualityTails(())


# --- the rule --------------------------------------------------------------------------------
def test_threshold_grows_with_gallery_size_and_matches_the_formula() -> None:
    tail = SHIPPED.tail("asnorm")
    sizes = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000]
    thresholds = [tail.threshold(0.03, n) for n in sizes]
    assert thresholds == sorted(thresholds) and len(set(thresholds)) == len(sizes)
    for n, t in zip(sizes, thresholds, strict=True):
        p = 1 - (1 - 0.03) ** (1 / n)
        assert t == pytest.approx(tail.u + tail.beta * math.log(tail.mass / p), rel=1e-9)
        # The modelled FPIR of t(N) at N is the target, at every N.
        assert tail.predicted_fpir(t, n) == pytest.approx(0.03, rel=1e-9)
    # Each tenfold growth adds about beta * ln 10 (exactly so for large N).
    assert thresholds[-1] - thresholds[-2] == pytest.approx(tail.beta * math.log(10), rel=1e-4)
    # A stricter target raises the threshold; an empty gallery counts as one speaker.
    assert tail.threshold(0.01, 100) > tail.threshold(0.03, 100)
    assert tail.threshold(0.03, 0) == tail.threshold(0.03, 1)


def test_per_pair_rate_is_exact_for_huge_galleries() -> None:
    # 1 - 0.97 ** (1e-9) cancels catastrophically in float64; the log1p/expm1 form does not.
    assert per_pair_rate(0.03, 10**9) == pytest.approx(-math.log(0.97) / 1e9, rel=1e-6)
    with pytest.raises(ValueError):
        per_pair_rate(1.0, 10)


def test_fit_tail_on_an_exponential_recovers_its_parameters() -> None:
    rng = np.random.default_rng(1)
    scores = rng.exponential(0.5, 200_000) - 1.0  # P(S >= t) = exp(-(t + 1) / 0.5)
    tail = fit_tail(scores)
    assert tail.mass == pytest.approx(0.05, abs=1e-3)
    assert tail.u == pytest.approx(-1.0 + 0.5 * math.log(20), abs=0.02)
    assert tail.beta == pytest.approx(0.5, rel=0.02)
    # t(N) then holds the FPIR it was designed for, checked by simulation at N = 50.
    t = tail.threshold(0.05, 50)
    best = (rng.exponential(0.5, (4000, 50)) - 1.0).max(axis=1)
    assert np.mean(best >= t) == pytest.approx(0.05, abs=0.012)


def test_shipped_cohort_provenance_is_complete_and_licence_clean() -> None:
    meta = SHIPPED.meta
    matrix = SHIPPED.matrix()
    assert matrix.shape == (meta["rows"], meta["dim"]) == (2000, 192)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-3)
    assert set(meta["rows_by_source"]) <= {
        "librispeech_resemblyzer",
        "speech_commands_v002_test",
        "vctk_autovc",
        "aishell1",
    }
    assert sum(meta["rows_by_source"].values()) == meta["rows"]
    assert set(meta["licences"]) == set(meta["rows_by_source"])
    assert len(meta["checkpoint_sha256"]) == 64
    assert TailFit.from_dict(meta["tails"]["asnorm"]).mass == 0.05


# --- through the service with a random test model --------------------------------------------
@pytest.fixture
def vs(tmp_path: Path, tiny_model_dirs, tiny_registry: ModelRegistry) -> Iterator[VoiceSearch]:
    settings = make_settings(tmp_path / "data", tiny_model_dirs)
    engine = open_database(settings)
    try:
        yield build_voicesearch(settings, tiny_registry, engine)
    finally:
        engine.dispose()


def _enroll(vs: VoiceSearch, ext: str, rng: np.random.Generator) -> np.ndarray:
    vectors = {}
    for space, dim in vs.gallery.dims.items():
        v = rng.standard_normal(dim).astype(np.float32)
        vectors[space] = v / np.linalg.norm(v)
    utt = UtteranceInput(ext, None, None, 2.0, vectors, speech_s=2.0)
    vs.store.create_speaker(external_id=ext, name=None, metadata=None, utterances=[utt])
    return vectors[VOX]


def test_only_a_probe_without_detected_speech_is_undecided(vs: VoiceSearch) -> None:
    rng = np.random.default_rng(3)
    vector = _enroll(vs, "a", rng)
    for speech_s in (0.05, 0.6, 1.4, 5.0):
        result = vs.matcher.search_index(VOX, vector, 3, speech_s)
        assert result.verdict == "match" and result.reason is None, speech_s
        assert result.matches[0].is_match
    silent = vs.matcher.search_index(VOX, vector, 3, 0.0)
    assert silent.verdict == "undecided" and silent.reason == "no_speech_detected"
    assert silent.matches[0].id == "a" and silent.matches[0].is_match is False  # still ranked
    assert silent.match is None
    # An embedding given directly carries no speech measurement: always decided.
    assert vs.matcher.search_index(VOX, vector, 3).verdict == "match"


def test_threshold_in_force_follows_the_gallery(vs: VoiceSearch) -> None:
    rng = np.random.default_rng(4)
    probe = _enroll(vs, "s0", rng)
    tail = SHIPPED.tail("cosine")  # random model: raw cosine, shipped cosine tail
    seen = []
    enrolled = 1
    for n in (1, 5, 20):
        while enrolled < n:  # the gallery's size moves at its next search, not at the write
            _enroll(vs, f"s{enrolled}", rng)
            enrolled += 1
        result = vs.matcher.search_index(VOX, probe, 3)
        d = result.decision
        assert (d.gallery_size, d.fpir_target, d.source) == (n, 0.03, "shipped")
        assert d.threshold == pytest.approx(tail.threshold(0.03, n))
        assert d.note == "shipped default (uncalibrated for this checkpoint)"
        assert result.searched == n
        seen.append(d.threshold)
    assert seen == sorted(seen)
    # Pairwise compare is 1:1 (N = 1); stateless ranking uses the number of candidates.
    assert vs.policy.cosine_decision(VOX, 1).threshold == pytest.approx(tail.threshold(0.03, 1))


def test_asnorm_answer_falls_back_to_cosine_as_a_whole(
    tmp_path: Path, tiny_model_dirs, tiny_registry: ModelRegistry
) -> None:
    """Issue 10 item 14: a gallery cohort too small for statistics gives cosines for every
    candidate, under the cosine rule — never AS-norm scores and cosines in one ranking."""
    settings = make_settings(tmp_path / "data", tiny_model_dirs, asnorm_spaces=[VOX])
    engine = open_database(settings)
    try:
        vs = build_voicesearch(settings, tiny_registry, engine)
        rng = np.random.default_rng(5)
        probe = _enroll(vs, "only", rng)
        result = vs.matcher.search_index(VOX, probe, 3)
        assert vs.policy.score_type(VOX) == "asnorm"
        assert result.decision.score_type == "cosine"
        assert result.matches[0].score == pytest.approx(result.matches[0].similarity)
        for i in range(4):
            _enroll(vs, f"x{i}", rng)
        result = vs.matcher.search_index(VOX, probe, 5)
        assert result.decision.score_type == "asnorm"
        cosines = [m.similarity for m in result.matches]
        assert cosines == sorted(cosines, reverse=True)
        assert all(m.score != pytest.approx(m.similarity) for m in result.matches)
    finally:
        engine.dispose()


def _enroll_vector(vs: VoiceSearch, ext: str, vector: np.ndarray) -> None:
    vectors = {space: np.zeros(dim, np.float32) for space, dim in vs.gallery.dims.items()}
    for space, dim in vs.gallery.dims.items():
        v = np.resize(vector, dim).astype(np.float32) if space != VOX else vector
        vectors[space] = v / np.linalg.norm(v)
    utt = UtteranceInput(ext, None, None, 2.0, vectors, speech_s=2.0)
    vs.store.create_speaker(external_id=ext, name=None, metadata=None, utterances=[utt])


def test_candidates_keep_the_cosine_order_where_asnorm_would_reorder_them(
    tmp_path: Path, tiny_model_dirs, tiny_registry: ModelRegistry
) -> None:
    """Issue 12: the answer is ranked as the bare model ranks (cosine), so its top-1 can never be
    worse than SpeechBrain's; AS-norm only decides. Here a "hub" speaker, close to the probe but
    also to a crowd of others, has the higher cosine and the lower AS-norm score than a "loner"."""
    # A fixed AS-norm threshold between the hub's and the loner's scores (measured: 1.77 and
    # 2.26): the loner reaches it, but is ranked after the hub, which does not.
    settings = make_settings(
        tmp_path / "data", tiny_model_dirs, asnorm_spaces=[VOX], asnorm_thresholds={VOX: 2.0}
    )
    engine = open_database(settings)
    try:
        vs = build_voicesearch(settings, tiny_registry, engine)
        dim = vs.gallery.dims[VOX]
        rng = np.random.default_rng(11)
        basis = np.eye(dim, dtype=np.float32)
        probe = basis[0]
        _enroll_vector(vs, "hub", 0.8 * basis[0] + 0.6 * basis[1])
        _enroll_vector(vs, "loner", 0.7 * basis[0] + 0.714 * basis[2])
        # The crowd: cosines 0.3–0.85 with the hub (a wide spread of impostors scores it down),
        # at most 0.68 with the probe (so neither hub nor loner is outranked by it).
        for i, a in enumerate(np.linspace(0.3, 0.85, 12)):
            away = rng.standard_normal(dim).astype(np.float32)
            away[:3] = 0.0
            away /= np.linalg.norm(away)
            hub_direction = (0.8 * basis[0] + 0.6 * basis[1]) * a
            _enroll_vector(vs, f"crowd{i}", hub_direction + math.sqrt(1 - a * a) * away)
        result = vs.matcher.search_index(VOX, probe, 4)
        assert result.decision.score_type == "asnorm"
        by_id = {m.id: m for m in result.matches}
        hub, loner = by_id["hub"], by_id["loner"]
        assert hub.similarity > loner.similarity and hub.score < loner.score  # the setting
        assert [m.id for m in result.matches[:2]] == ["hub", "loner"]
        cosines = [m.similarity for m in result.matches]
        assert cosines == sorted(cosines, reverse=True)
        # The verdict is about the first candidate: the hub, below the threshold. The loner
        # reaches it on its own but, ranked after a non-match, is not called a match.
        assert result.decision.threshold == 2.0 and result.decision.source == "setting"
        assert hub.score < 2.0 <= loner.score
        assert result.verdict == "no_match" and result.reason == "below_threshold"
        assert [m.is_match for m in result.matches] == [False] * len(result.matches)
    finally:
        engine.dispose()


def test_is_match_marks_the_leading_run_of_candidates_that_reach_the_threshold() -> None:
    from service.search.matching import Match, mark_leading_matches

    matches = [
        Match(id=str(i), similarity=0.0, is_match=False, score=s)
        for i, s in enumerate([3.0, 2.5, 1.0, 3.0, None])
    ]
    mark_leading_matches(matches, 2.0)
    assert [m.is_match for m in matches] == [True, True, False, False, False]
    mark_leading_matches(matches, 0.5)
    assert [m.is_match for m in matches] == [True, True, True, True, False]  # None never matches


def test_random_model_ignores_the_shipped_cohort_and_says_why(
    tmp_path: Path, tiny_model_dirs, tiny_registry: ModelRegistry, capsys
) -> None:
    from service.commands import doctor

    settings = make_settings(tmp_path / "data", tiny_model_dirs)
    with TestClient(create_app(settings, models=tiny_registry)) as client:
        shown = client.get("/calibration").json()["spaces"][VOX]
    assert shown["asnorm"] is False and shown["score_type"] == "cosine"
    assert "shipped cohort ignored" in shown["cohort"]
    assert "is not the one the shipped cohort was made with" in shown["cohort"]
    assert shown["note"] == "shipped default (uncalibrated for this checkpoint)"
    checks = doctor.scoring_checks(settings, tiny_registry)
    vox = next(c for c in checks if c.name == f"scores {VOX}")
    assert vox.ok and "shipped cohort ignored" in vox.detail and "uncalibrated" in vox.detail
    assert (
        "probe quality classes: pooled tail (only with AS-norm on the shipped cohort of its "
        "checkpoint)" in vox.detail
    )


# --- the real model ---------------------------------------------------------------------------
def _files(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("audio", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]


@requires_real_model
def test_real_model_uses_the_shipped_cohort_and_decides(
    tmp_path: Path, tiny_model_dirs, real_registry: ModelRegistry
) -> None:
    asr = DEV_SPEECH_DIR / "speechbrain_samples" / "ASR"
    rtvc = DEV_SPEECH_DIR / "rtvc_samples"
    dirs = {**tiny_model_dirs, "voxceleb": REAL_VOXCELEB_DIR}
    settings = make_settings(tmp_path / "data", dirs)
    with TestClient(create_app(settings, models=real_registry)) as client:
        shown = client.get("/calibration").json()["spaces"][VOX]
        assert shown["asnorm"] is True and shown["score_type"] == "asnorm"
        assert shown["source"] == "shipped" and shown["rule"] == "max_of_n_tail"
        assert shown["note"] == "shipped default (fitted for this checkpoint)"
        assert shown["cohort"].startswith("shipped cohort ecapa-voxceleb (2000 rows")
        enroll = {
            "spk1": [asr / f"spk1_snt{i}.wav" for i in (1, 2, 3)],
            "spk2": [asr / f"spk2_snt{i}.wav" for i in (1, 2, 3)],
            "p240": [rtvc / "p240_00000.mp3"],
        }
        for ext, paths in enroll.items():
            form = {"external_id": ext, "language": "en"}
            assert client.post("/speakers", files=_files(*paths), data=form).status_code == 201
        tail = SHIPPED.tail("asnorm")
        classes_seen: set[str | None] = set()
        for speaker in ("spk1", "spk2"):
            found = client.post(
                "/find-match", files=_files(asr / f"{speaker}_snt5.wav"), data={"language": "en"}
            ).json()
            assert found["decision"] == "match" and found["match"]["id"] == speaker, found
            assert found["score_type"] == "asnorm" and found["gallery_size"] == 3
            # The pooled tail, or the stricter one of the probe's quality class where higher
            # (tests/test_probe_quality.py); the answer names the class that set the bar.
            heard = found["quality"]
            rule = CLASSES.rule_for(heard["speech_s"], heard["snr_db"])
            pooled = tail.threshold(0.03, 3)
            bar = pooled if rule is None else rule.threshold("A", tail, 0.03, 3)
            assert found["threshold"] == pytest.approx(bar)
            assert found["threshold_quality"] == (rule.name if bar > pooled else None)
            classes_seen.add(found["threshold_quality"])
            assert found["threshold_source"] == "shipped" and found["fpir_target"] == 0.03
            best = found["best_match"]
            assert best["score"] >= found["threshold"] and -1 <= best["similarity"] <= 1
        # Single clean sentences of 1-2 s of speech: at least one is a medium, clean probe.
        assert "medium_clean" in classes_seen, classes_seen
        for stranger in ("1320_00000.mp3", "6829_00000.mp3", "p260_00000.mp3"):
            found = client.post(
                "/find-match", files=_files(rtvc / stranger), data={"language": "en"}
            ).json()
            assert found["decision"] == "no_match", (stranger, found)
            assert found["reason"] == "below_threshold" and found["match"] is None
