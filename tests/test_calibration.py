"""Calibrated decision rules: stored by `voicesearch calibrate` (an impostor tail that sets t(N),
with FPIR/FNIR measured and predicted), used for is_match, shown by GET /calibration, ignored
when made with another model. Calibrations stored before the tail (a fixed pair-FAR threshold)
still work as fixed thresholds."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.decisions.cohort import resolve_scoring
from service.decisions.openset import TailFit
from service.decisions.policy import DecisionPolicy
from service.decisions.probe_quality import LONG_CLEAN, MEDIUM_CLEAN
from service.evaluation.calibrate import (
    PREDICTED_SIZES,
    SpaceScores,
    fit_space,
    store_calibrations,
)
from service.evaluation.quality_fit import MIN_CLASS_IMPOSTORS, class_bounds, fit_classes
from service.pipeline.registry import ModelRegistry
from storage.calibration import SCORE_ASNORM, SCORE_COSINE, CalibrationStore
from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade_to_head
from tests.api.conftest import make_settings
from tests.audio_factory import synth_voice, wav_bytes

VOX = "voxceleb"


def clip(seed: int, duration_s: float = 2.0) -> bytes:
    return wav_bytes(synth_voice(duration_s, seed=seed, f0=90.0 + 15 * seed), 16_000)


def files(*clips: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("audio", (f"c{i}.wav", c, "audio/wav")) for i, c in enumerate(clips)]


def _store(url: str) -> CalibrationStore:
    return CalibrationStore(make_session_factory(make_engine(url)))


def _add(store: CalibrationStore, identity: str, threshold: float, **kw) -> None:
    values = dict(
        space=VOX,
        model_identity=identity,
        score_type=SCORE_COSINE,
        threshold=threshold,
        target_far=0.01,
        n_genuine=10,
        n_impostor=90,
        n_speakers=10,
        logistic={"a": 20.0, "b": -10.0, "prior": 0.5},
        source="test.csv",
    )
    values.update(kw)
    store.add(**values)


def test_store_newest_matching_identity_and_score_type(migrated_database_url: str) -> None:
    # On SQLite and on PostgreSQL (tests/conftest.py).
    store = _store(migrated_database_url)
    _add(store, "m@1", 0.4)
    _add(store, "m@1", 0.5)
    _add(store, "m@2", 0.9)  # another model: never in force for m@1
    _add(store, "m@1", 3.1, score_type=SCORE_ASNORM)
    assert store.in_force({VOX: "m@1"}, {VOX: SCORE_COSINE})[VOX].threshold == 0.5
    assert store.in_force({VOX: "m@1"}, {VOX: SCORE_ASNORM})[VOX].threshold == 3.1
    assert store.in_force({VOX: "m@3"}) == {}


def test_withdraw_deletes_one_spaces_calibrations_and_audits_them(
    migrated_database_url: str,
) -> None:
    # On SQLite and on PostgreSQL: the deletion and its audit row in one transaction.
    from storage import audit

    store = _store(migrated_database_url)
    _add(store, "m@1", 0.4)
    _add(store, "m@1", 3.1, score_type=SCORE_ASNORM, details={"tail": {"u": 0.3, "beta": 1.2}})
    _add(store, "c@1", 0.6, space="cnceleb")
    operator = audit.Actor("cli:ops", "operator")
    gone = store.withdraw(VOX, operator)
    assert [r.threshold for r in gone] == [0.4, 3.1]
    assert store.in_force({VOX: "m@1"}) == {}
    assert store.in_force({"cnceleb": "c@1"})["cnceleb"].threshold == 0.6
    assert store.withdraw(VOX, operator) == []  # nothing left: no second audit row
    entries, total = audit.list_entries(
        make_session_factory(make_engine(migrated_database_url)), limit=10
    )
    assert total == 1
    (entry,) = entries
    assert (entry.action, entry.actor, entry.role) == (
        "calibration.withdraw",
        "cli:ops",
        "operator",
    )
    assert entry.details["space"] == VOX
    assert [c["id"] for c in entry.details["calibrations"]] == [r.id for r in gone]
    assert entry.details["calibrations"][1]["tail"] == {"u": 0.3, "beta": 1.2}


def test_a_failed_withdrawal_deletes_nothing(
    migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The audit row is written in the deletion's transaction: if it fails, nothing is deleted.
    from storage import audit

    store = _store(migrated_database_url)
    _add(store, "m@1", 0.4)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("audit log unavailable")

    monkeypatch.setattr(audit, "add", broken)
    with pytest.raises(RuntimeError):
        store.withdraw(VOX, audit.Actor("cli:ops", "operator"))
    assert store.in_force({VOX: "m@1"})[VOX].threshold == 0.4


def _scores(rng: np.random.Generator, n_speakers: int = 20) -> SpaceScores:
    """Trials of a synthetic open-set run: 200 enrolled probes (top-1 right for 90 %), 100
    unenrolled ones, 2,000 impostor pair scores."""
    genuine = rng.normal(0.7, 0.1, 200)
    impostor = rng.normal(0.1, 0.1, 2000)
    enrolled = np.r_[np.ones(200, bool), np.zeros(100, bool)]
    best = np.r_[genuine, rng.normal(0.1, 0.1, (100, n_speakers)).max(axis=1)]
    top1 = np.r_[rng.random(200) < 0.9, np.zeros(100, bool)]
    return SpaceScores(
        VOX,
        SCORE_COSINE,
        genuine,
        impostor,
        n_speakers,
        probe_enrolled=enrolled,
        probe_top1=top1,
        probe_best=best,
    )


def test_fit_space_fits_the_impostor_tail_and_measures_open_set_rates() -> None:
    scores = _scores(np.random.default_rng(0))
    result = fit_space(scores, "m@1", 0.03, live_gallery_size=250)
    u = np.quantile(scores.impostor, 0.95)
    assert result.tail.u == pytest.approx(u)
    assert result.tail.beta == pytest.approx((scores.impostor[scores.impostor > u] - u).mean())
    assert result.tail.mass == pytest.approx(0.05, abs=1e-3)
    m = result.measured
    assert m.measured and m.gallery_size == 20
    assert m.threshold == pytest.approx(result.tail.threshold(0.03, 20))
    unenrolled_best = scores.probe_best[~scores.probe_enrolled]
    assert m.fpir == pytest.approx(np.mean(unenrolled_best >= m.threshold))
    hit = (scores.probe_best >= m.threshold) & scores.probe_top1
    assert m.fnir == pytest.approx(1 - hit[scores.probe_enrolled].mean())
    # Predictions (a model, labelled so) at 10, 100, 1000 and the live size: t grows with N,
    # and so does the predicted FNIR.
    sizes = [p.gallery_size for p in result.predictions]
    assert sizes == sorted({*PREDICTED_SIZES, 250})
    assert not any(p.measured for p in result.predictions)
    assert all(p.summary()["kind"] == "model prediction" for p in result.predictions)
    thresholds = [p.threshold for p in result.predictions]
    assert thresholds == sorted(thresholds)
    big = [p for p in result.predictions if p.gallery_size > 20]
    assert [p.fnir for p in big] == sorted(p.fnir for p in big)
    assert result.logistic.probability(0.7) > 0.9 > 0.1 > result.logistic.probability(0.1)


def test_probes_without_detected_speech_are_never_counted_as_matches() -> None:
    """The service answers a probe with no detected speech ``undecided`` (never a match), so the
    FPIR/FNIR that calibrate measures and predicts count it as not matched, whatever its score."""
    scores = _scores(np.random.default_rng(0))
    everyone = fit_space(scores, "m@1", 0.03)
    silent = np.ones(scores.probe_best.shape, bool)
    silent[:50] = False  # 50 enrolled probes without detected speech
    silent[200:220] = False  # and 20 unenrolled ones
    scores.probe_decided = silent
    result = fit_space(scores, "m@1", 0.03)
    t = result.measured.threshold
    assert t == everyone.measured.threshold  # same trials, same tail
    accepted = (scores.probe_best >= t) & silent
    assert result.measured.fnir == pytest.approx(
        1 - (accepted & scores.probe_top1)[scores.probe_enrolled].mean()
    )
    assert result.measured.fnir > everyone.measured.fnir
    assert result.measured.fpir == pytest.approx(accepted[~scores.probe_enrolled].mean())
    for before, after in zip(everyone.predictions, result.predictions, strict=True):
        assert after.fnir >= before.fnir and after.fpir <= before.fpir


def _classed_scores(rng: np.random.Generator) -> SpaceScores:
    """The synthetic run of :func:`_scores` where the first 100 enrolled and the first 50
    unenrolled probes are long, clean ones (their impostor scores run higher, as on real audio),
    3,000 of the impostor scores are theirs, and 500 belong to medium, clean probes (too few
    for a tail of their own)."""
    scores = _scores(rng)
    kinds = np.full(300, "", dtype=object)
    kinds[:100] = LONG_CLEAN
    kinds[200:250] = LONG_CLEAN
    scores.probe_class = kinds
    scores.impostor = np.r_[rng.normal(0.3, 0.1, 3000), rng.normal(0.1, 0.1, 2500)]
    scores.impostor_class = np.r_[
        np.full(3000, LONG_CLEAN, dtype=object),
        np.full(500, MEDIUM_CLEAN, dtype=object),
        np.full(2000, "", dtype=object),
    ]
    # The unenrolled long, clean probes' best scores come from that heavier tail too.
    scores.probe_best[200:250] = rng.normal(0.3, 0.1, (50, 20)).max(axis=1)
    return scores


def test_calibrate_fits_the_quality_classes_it_has_enough_impostors_for(
    tmp_path: Path,
) -> None:
    scores = _classed_scores(np.random.default_rng(1))
    result = fit_space(scores, "m@1", 0.03, live_gallery_size=250)
    assert result.classes is not None
    (rule,) = result.classes  # medium_clean: 500 impostor scores, under MIN_CLASS_IMPOSTORS
    own = scores.impostor[scores.impostor_class == LONG_CLEAN]
    assert rule.name == LONG_CLEAN and own.size >= MIN_CLASS_IMPOSTORS
    assert rule.tails["A"].u == pytest.approx(np.quantile(own, 0.95))
    # Bounds are the shipped class's: >= 2 s of speech at >= 20 dB.
    assert (rule.min_speech_s, rule.min_snr_db) == (2.0, 20.0)
    # The measured rates hold each long, clean probe to the higher of the two t(20).
    pooled_t = result.tail.threshold(0.03, 20)
    class_t = rule.tails["A"].threshold(0.03, 20)
    assert class_t > pooled_t and result.measured.threshold == pytest.approx(pooled_t)
    bars = np.where(scores.probe_class == LONG_CLEAN, class_t, pooled_t)
    accepted = scores.probe_best >= bars
    assert result.measured.fpir == pytest.approx(accepted[~scores.probe_enrolled].mean())
    without = fit_space(scores, "m@1", 0.03, min_class_impostors=10**9)
    assert without.classes is None
    # The same 3,000 scores from only 10 probes: a handful of voices, not the class.
    few = np.full(scores.probe_class.shape, "", dtype=object)
    few[:10] = LONG_CLEAN
    assert fit_classes(class_bounds(), scores.impostor, scores.impostor_class, few) is None
    assert result.measured.fpir < without.measured.fpir  # the heavier tail's probes held higher
    assert result.summary()["quality_tails"][LONG_CLEAN]["tails"]["A"]["u"] == rule.tails["A"].u

    # Stored, read back by the policy: a calibrated decision with that class (the setting on).
    url = f"sqlite:///{tmp_path / 'vs.db'}"
    upgrade_to_head(url)
    store = _store(url)
    store_calibrations(store, {VOX: result}, source="m.csv")
    dirs = {"langid": "x", "voxceleb": "y", "cnceleb": "z"}
    settings = make_settings(tmp_path / "data", dirs)
    identities = {VOX: "m@1"}
    decision = _policy(settings, store, identities).decision(VOX, 20)
    assert decision.source == "calibrated" and decision.strict is not None
    assert decision.threshold == pytest.approx(pooled_t)
    held = decision.for_probe(4.0, 30.0)
    assert held.quality == LONG_CLEAN and held.threshold == pytest.approx(class_t)
    assert decision.for_probe(1.5, 30.0) == decision  # medium, clean: no tail was fitted
    off = make_settings(tmp_path / "data2", dirs, quality_tails="off")
    assert _policy(off, store, identities).decision(VOX, 20).strict is None


def test_measured_trials_carry_one_quality_class_per_probe_and_per_impostor_score(
    tmp_path: Path, tiny_model_dirs, tiny_registry: ModelRegistry
) -> None:
    """The classes are aligned with what they label: one per probe (as its best score and
    whether it was decided), one per impostor score."""
    from service.evaluation.calibrate import measure_scores
    from service.evaluation.trials import Row

    rows = []
    for spk in range(4):
        for take, role in enumerate(("enroll", "probe")):
            path = tmp_path / f"s{spk}_{take}.wav"
            path.write_bytes(clip(10 * spk + take, 2.5))
            rows.append(Row(path, f"s{spk}", role, "en"))
    stranger = tmp_path / "x.wav"
    stranger.write_bytes(clip(77, 2.5))
    rows.append(Row(stranger, "nobody", "probe", "en"))
    settings = make_settings(tmp_path / "data", tiny_model_dirs)
    for space, scores in measure_scores(settings, tiny_registry, rows).items():
        assert scores.probe_class.size == scores.probe_best.size == 5, space
        assert scores.probe_decided.size == 5
        assert scores.impostor_class.size == scores.impostor.size > 0, space
        assert set(scores.probe_class) <= {"", LONG_CLEAN, "long_noisy", MEDIUM_CLEAN}


def test_unreadable_stored_classes_leave_the_calibrated_pooled_tail(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'vs.db'}"
    upgrade_to_head(url)
    store = _store(url)
    tail = TailFit(0.5, 0.05, 0.05, 5000)
    bad = {"long_clean": {"min_speech_s": 2.0, "tails": {"A": {"u": "high"}}}}
    _add(store, "m@1", 0.6, details={"tail": tail.to_dict(), "quality_tails": bad})
    dirs = {"langid": "x", "voxceleb": "y", "cnceleb": "z"}
    decision = _policy(make_settings(tmp_path / "d", dirs), store, {VOX: "m@1"}).decision(VOX, 5)
    assert decision.source == "calibrated" and decision.strict is None
    assert decision.for_probe(4.0, 30.0).threshold == pytest.approx(tail.threshold(0.03, 5))


def test_search_probe_says_whether_the_service_would_decide(
    tmp_path: Path, tiny_model_dirs, tiny_registry: ModelRegistry
) -> None:
    import asyncio

    from service.bootstrap import temporary_voicesearch
    from service.evaluation.trials import Row, search_probe

    tone = np.sin(2 * np.pi * 440 * np.arange(32_000) / 16_000).astype(np.float32) * 0.3
    (tmp_path / "tone.wav").write_bytes(wav_bytes(tone, 16_000))
    (tmp_path / "voice.wav").write_bytes(clip(1))
    settings = make_settings(tmp_path / "data", tiny_model_dirs, vad="silero")
    with temporary_voicesearch(settings, tiny_registry) as vs:
        (found,) = asyncio.run(search_probe(vs, Row(tmp_path / "tone.wav", "x", "probe", None), 5))
        assert found.decided is False
    # The energy detector takes the synthetic voice for speech (Silero does not: conftest).
    energy = make_settings(tmp_path / "data2", tiny_model_dirs, vad="energy")
    with temporary_voicesearch(energy, tiny_registry) as vs:
        (found,) = asyncio.run(search_probe(vs, Row(tmp_path / "voice.wav", "x", "probe", None), 5))
        assert found.decided is True
        # Its measured quality comes along: calibrate classes probes by it (quality_fit).
        assert found.speech_s is not None and found.speech_s > 0 and found.snr_db is not None
        assert found.narrowband is False


def test_fit_space_refuses_too_few_impostors() -> None:
    scores = SpaceScores(VOX, SCORE_COSINE, np.array([0.8, 0.9]), np.linspace(0, 0.3, 12), 3)
    with pytest.raises(ValueError, match="impostor scores"):
        fit_space(scores, "m@1", 0.03)


def test_calibration_in_force_drives_is_match_and_is_reported(
    tmp_path: Path, tiny_model_dirs, tiny_registry: ModelRegistry
) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_dirs)
    with TestClient(create_app(settings, models=tiny_registry)) as client:
        before = client.get("/calibration").json()["spaces"][VOX]
        # A random test model is not the checkpoint the shipped cohort belongs to: raw cosine,
        # the shipped cosine tail, and it says so.
        assert before["source"] == "shipped" and before["rule"] == "max_of_n_tail"
        assert before["note"] == "shipped default (uncalibrated for this checkpoint)"
        assert before["score_type"] == "cosine" and before["asnorm"] is False
        assert "shipped cohort ignored" in before["cohort"]
        assert before["fpir_target"] == 0.03 and before["gallery_size"] == 0
        assert client.post("/speakers", files=files(clip(1)), data={"external_id": "a"}).is_success
        found = client.post("/find-match", files=files(clip(1))).json()
        assert found["best_match"]["match_probability"] is None  # uncalibrated
        assert found["gallery_size"] == 1 and found["threshold_source"] == "shipped"

        identity = tiny_registry.encoder(VOX).identity
        store = _store(settings.resolved_database_url)
        # A calibration from before the open-set rule: a fixed threshold, used as is.
        _add(store, identity, 0.999)
        _add(store, "some-other-model@sha256:0", 0.1)  # newer, but another model: ignored
        shown = client.get("/calibration").json()["spaces"][VOX]  # (also refreshes the policy)
        assert shown["source"] == "calibrated" and shown["threshold"] == 0.999
        assert shown["rule"] == "fixed" and shown["tail"] is None
        assert shown["target_far"] == 0.01 and shown["n_impostor"] == 90
        assert shown["data"] == "test.csv" and shown["calibrated_at"]
        assert shown["match_probability"] is True and shown["model_identity"] == identity

        same = client.post("/find-match", files=files(clip(1))).json()
        assert same["threshold"] == 0.999 and same["threshold_source"] == "calibrated"
        assert same["threshold_rule"] == "fixed"
        assert same["best_match"]["is_match"] is True  # cosine 1.0 >= 0.999
        assert same["best_match"]["match_probability"] > 0.99
        other = client.post("/find-match", files=files(clip(5))).json()
        assert other["best_match"]["similarity"] < 0.999
        assert other["best_match"]["is_match"] is False and other["decision"] == "no_match"

        e = np.ones(8).tolist()
        compared = client.post("/compare-voices", json={"embedding1": e, "embedding2": e}).json()
        assert compared["threshold"] == 0.999 and compared["match_probability"] > 0.99

        # A calibration with a tail: t(N) at the live gallery size, FPIR/FNIR reported.
        tail = TailFit(0.5, 0.05, 0.05, 5000)
        _add(store, identity, 0.6, details={"tail": tail.to_dict(), "fpir": 0.02, "fnir": 0.1})
        shown = client.get("/calibration").json()["spaces"][VOX]
        assert shown["source"] == "calibrated" and shown["rule"] == "max_of_n_tail"
        assert shown["tail"] == {"u": 0.5, "beta": 0.05, "mass": 0.05}
        assert shown["fpir"] == 0.02 and shown["fnir"] == 0.1 and shown["gallery_size"] == 1
        assert shown["threshold"] == pytest.approx(tail.threshold(0.03, 1))
        by_n = shown["thresholds_by_gallery_size"]
        assert by_n["1000"] == pytest.approx(tail.threshold(0.03, 1000), abs=1e-4)
        found = client.post("/find-match", files=files(clip(1))).json()
        assert found["threshold"] == pytest.approx(tail.threshold(0.03, 1))
        assert found["threshold_rule"] == "max_of_n_tail" and found["fpir_target"] == 0.03


def test_operator_threshold_wins_as_a_fixed_threshold(
    tmp_path: Path, tiny_model_dirs, tiny_registry: ModelRegistry
) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_dirs, thresholds={VOX: 0.42})
    with TestClient(create_app(settings, models=tiny_registry)) as client:
        store = _store(settings.resolved_database_url)
        _add(store, tiny_registry.encoder(VOX).identity, 0.999)
        shown = client.get("/calibration").json()["spaces"][VOX]
        assert shown["source"] == "setting" and shown["setting"] == "VOICESEARCH_THRESHOLDS"
        assert shown["rule"] == "fixed" and shown["threshold"] == 0.42
        for i in range(3):
            form = {"external_id": f"s{i}"}
            assert client.post("/speakers", files=files(clip(i)), data=form).is_success
        found = client.post("/find-match", files=files(clip(1))).json()
        assert found["threshold"] == 0.42 and found["gallery_size"] == 3
        assert found["threshold_source"] == "setting" and found["fpir_target"] is None


def _policy(settings, store, identities) -> DecisionPolicy:
    scoring = resolve_scoring(settings.asnorm(), identities, {VOX: 8})
    return DecisionPolicy(settings.decisions(), store, identities, scoring)


def test_policy_ignores_calibration_of_other_score_type(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'vs.db'}"
    upgrade_to_head(url)
    store = _store(url)
    _add(store, "m@1", 0.6)
    settings = make_settings(tmp_path / "d", {"langid": "x", "voxceleb": "y", "cnceleb": "z"})
    assert _policy(settings, store, {VOX: "m@1"}).decision(VOX).source == "calibrated"
    asnorm = settings.model_copy(update={"asnorm_spaces": [VOX]})
    decision = _policy(asnorm, store, {VOX: "m@1"}).decision(VOX)
    assert decision.source == "shipped" and decision.score_type == SCORE_ASNORM


def test_calibrate_command_end_to_end(
    tmp_path: Path, tiny_model_dirs, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.commands import calibrate

    audio = tmp_path / "audio"
    audio.mkdir()
    rows = []
    # 8 speakers x (2 enroll + 2 probes) and 4 strangers: 16 genuine and 112 + 32 impostor
    # trials, enough for a tail (it needs 20).
    for spk in range(8):
        for take in range(4):
            name = f"s{spk}_{take}.wav"
            data = synth_voice(1.5, seed=10 * spk + take, f0=90.0 + 20 * spk)
            (audio / name).write_bytes(wav_bytes(data, 16_000))
            rows.append((name, f"s{spk}", "enroll" if take < 2 else "probe", "en"))
    for i in range(4):
        (audio / f"x{i}.wav").write_bytes(clip(90 + i, 1.5))
        rows.append((f"x{i}.wav", f"stranger{i}", "probe", "en"))
    manifest = audio / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "speaker", "role", "language"), *rows])

    settings = make_settings(tmp_path / "data", tiny_model_dirs, min_enroll_speech_s=10.0)
    args = argparse.Namespace(
        manifest=manifest,
        root=None,
        fpir_target=0.05,
        target_far=None,
        dry_run=False,
        json_path=tmp_path / "c.json",
    )
    assert calibrate.run(args, settings) == 0
    assert (tmp_path / "c.json").is_file()
    # Random models have no telephone-band profiles, so nothing is said about them.
    out = capsys.readouterr().out
    assert "stored calibration" in out and "telephone-band" not in out
    # 144 impostor trials: no quality class has the 2,000 a tail of its own needs.
    assert "probe quality classes: none with enough impostor trials" in out
    assert json.loads((tmp_path / "c.json").read_text())[VOX]["quality_tails"] is None
    records = _store(settings.resolved_database_url).all()
    assert {r.space for r in records} == {"voxceleb", "cnceleb"}
    vox = next(r for r in records if r.space == VOX)
    # Enrollments below the 10 s product minimum are still scored (calibration measures
    # scores, not enrollment policy).
    assert (vox.n_genuine, vox.n_impostor, vox.n_speakers) == (16, 144, 8)
    assert vox.score_type == SCORE_COSINE and vox.target_far == 0.05
    assert vox.logistic is not None and vox.source == str(manifest)
    tail = TailFit.from_dict(vox.details["tail"])
    assert vox.details["fpir_target"] == 0.05 and vox.details["gallery_size"] == 8
    assert vox.threshold == pytest.approx(tail.threshold(0.05, 8))
    assert 0.0 <= vox.details["fpir"] <= 1.0 and 0.0 <= vox.details["fnir"] <= 1.0
    predicted = vox.details["predictions"]
    # The live gallery is empty (0 speakers): predictions at 10, 100, 1000.
    assert [p["gallery_size"] for p in predicted] == [10, 100, 1000]
    assert all(p["kind"] == "model prediction" for p in predicted)

    # Withdrawn: the space's calibration is gone (the shipped rule again), the other stays.
    withdraw = argparse.Namespace(withdraw=VOX)
    assert calibrate.run(withdraw, settings) == 0
    assert f"withdrew calibration(s) {vox.id} of {VOX}" in capsys.readouterr().out
    assert {r.space for r in _store(settings.resolved_database_url).all()} == {"cnceleb"}
    assert calibrate.run(withdraw, settings) == 0
    assert "no stored calibration for voxceleb" in capsys.readouterr().out


@pytest.mark.parametrize(("fpir", "far"), [(1.0, None), (-0.1, None), (0.0, None), (None, 0.01)])
def test_calibrate_rejects_bad_target(tmp_path: Path, fpir, far) -> None:
    from service.commands import calibrate

    settings = make_settings(tmp_path / "d", {"langid": "x", "voxceleb": "y", "cnceleb": "z"})
    args = argparse.Namespace(
        manifest=tmp_path / "m.csv",
        root=None,
        fpir_target=fpir,
        target_far=far,
        dry_run=True,
        json_path=None,
    )
    assert calibrate.run(args, settings) == 2


def test_calibrate_needs_a_manifest_or_a_space_to_withdraw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.cli import main

    monkeypatch.setenv("VOICESEARCH_DATA_DIR", str(tmp_path / "d"))
    assert main(["calibrate"]) == 2
    assert "give a MANIFEST to calibrate on, or --withdraw SPACE" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything was opened


@pytest.mark.parametrize(
    "extra",
    [["m.csv"], ["--dry-run"], ["--json", "x.json"], ["--root", "."], ["--fpir-target", "0.05"]],
)
def test_withdraw_refuses_calibration_options(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
) -> None:
    # "--withdraw voxceleb --dry-run" must not delete anything "for a try".
    from service.cli import main

    monkeypatch.setenv("VOICESEARCH_DATA_DIR", str(tmp_path / "d"))
    assert main(["calibrate", "--withdraw", "voxceleb", *extra]) == 2
    assert "--withdraw deletes stored calibrations and takes no" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_withdraw_names_the_spaces_when_one_is_misspelt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.cli import main

    monkeypatch.setenv("VOICESEARCH_DATA_DIR", str(tmp_path / "d"))
    url = f"sqlite:///{tmp_path / 'd' / 'voicesearch.db'}"
    assert main(["calibrate", "--withdraw", "voxceleeb"]) == 2
    err = capsys.readouterr().err
    assert "no space 'voxceleeb'; spaces: voxceleb, cnceleb (stored calibrations: none)" in err
    _add(_store(url), "m@1", 0.4)
    assert main(["calibrate", "--withdraw", "voxceleeb"]) == 2
    assert "(stored calibrations: voxceleb)" in capsys.readouterr().err
    assert _store(url).in_force({VOX: "m@1"})[VOX].threshold == 0.4  # nothing deleted
