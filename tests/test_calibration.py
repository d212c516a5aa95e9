"""Calibrated thresholds: stored by `voicesearch calibrate`, used for is_match, shown by
GET /calibration, ignored when made with another model."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.decisions.policy import DecisionPolicy
from service.evaluation.calibrate import SpaceScores, fit_space
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


def test_fit_space_meets_target_far() -> None:
    rng = np.random.default_rng(0)
    genuine = rng.normal(0.7, 0.1, 200)
    impostor = rng.normal(0.1, 0.1, 2000)
    result = fit_space(SpaceScores(VOX, SCORE_COSINE, genuine, impostor, 20), "m@1", 0.01)
    assert result.far <= 0.01 and result.frr < 0.05
    assert np.mean(impostor >= result.threshold) <= 0.01
    assert result.logistic.probability(0.7) > 0.9 > 0.1 > result.logistic.probability(0.1)


def test_calibration_in_force_drives_is_match_and_is_reported(
    tmp_path: Path, tiny_model_dirs, tiny_registry: ModelRegistry
) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_dirs)
    with TestClient(create_app(settings, models=tiny_registry)) as client:
        before = client.get("/calibration").json()["spaces"][VOX]
        assert before["source"] == "default" and before["setting"] == "VOICESEARCH_THRESHOLDS"
        assert before["threshold"] == settings.threshold_for(VOX)
        assert client.post("/speakers", files=files(clip(1)), data={"external_id": "a"}).is_success
        found = client.post("/find-match", files=files(clip(1))).json()
        assert found["best_match"]["match_probability"] is None  # uncalibrated

        identity = tiny_registry.encoder(VOX).identity
        store = _store(settings.resolved_database_url)
        _add(store, identity, 0.999)
        _add(store, "some-other-model@sha256:0", 0.1)  # newer, but another model: ignored
        shown = client.get("/calibration").json()["spaces"][VOX]  # (also refreshes the policy)
        assert shown["source"] == "calibrated" and shown["threshold"] == 0.999
        assert shown["target_far"] == 0.01 and shown["n_impostor"] == 90
        assert shown["data"] == "test.csv" and shown["calibrated_at"]
        assert shown["match_probability"] is True and shown["model_identity"] == identity

        same = client.post("/find-match", files=files(clip(1))).json()
        assert same["threshold"] == 0.999 and same["threshold_source"] == "calibrated"
        assert same["best_match"]["is_match"] is True  # cosine 1.0 >= 0.999
        assert same["best_match"]["match_probability"] > 0.99
        other = client.post("/find-match", files=files(clip(5))).json()
        assert other["best_match"]["similarity"] < 0.999
        assert other["best_match"]["is_match"] is False and other["decision"] == "no_match"

        e = np.ones(8).tolist()
        compared = client.post("/compare-voices", json={"embedding1": e, "embedding2": e}).json()
        assert compared["threshold"] == 0.999 and compared["match_probability"] > 0.99


def test_policy_ignores_calibration_of_other_score_type(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'vs.db'}"
    upgrade_to_head(url)
    store = _store(url)
    _add(store, "m@1", 0.6)
    settings = make_settings(tmp_path / "d", {"langid": "x", "voxceleb": "y", "cnceleb": "z"})
    policy = DecisionPolicy(settings.decisions(), store, {VOX: "m@1"})
    assert policy.decision(VOX).source == "calibrated"
    asnorm = settings.model_copy(update={"asnorm_spaces": [VOX]})
    policy = DecisionPolicy(asnorm.decisions(), store, {VOX: "m@1"})
    decision = policy.decision(VOX)
    assert decision.source == "default" and decision.score_type == SCORE_ASNORM


def test_calibrate_command_end_to_end(tmp_path: Path, tiny_model_dirs) -> None:
    from service.commands import calibrate

    audio = tmp_path / "audio"
    audio.mkdir()
    rows = []
    for spk in range(3):
        for take in range(3):
            name = f"s{spk}_{take}.wav"
            data = synth_voice(2.0, seed=10 * spk + take, f0=100.0 + 30 * spk)
            (audio / name).write_bytes(wav_bytes(data, 16_000))
            rows.append((name, f"s{spk}", "enroll" if take < 2 else "probe", "en"))
    (audio / "x.wav").write_bytes(clip(9))
    rows.append(("x.wav", "stranger", "probe", "en"))
    manifest = audio / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "speaker", "role", "language"), *rows])

    settings = make_settings(tmp_path / "data", tiny_model_dirs, min_enroll_speech_s=10.0)
    args = argparse.Namespace(
        manifest=manifest, root=None, target_far=0.1, dry_run=False, json_path=tmp_path / "c.json"
    )
    assert calibrate.run(args, settings) == 0
    assert (tmp_path / "c.json").is_file()
    records = _store(settings.resolved_database_url).all()
    assert {r.space for r in records} == {"voxceleb", "cnceleb"}
    vox = next(r for r in records if r.space == VOX)
    # 3 probes x 3 speakers + a stranger: 3 genuine, 9 impostor trials; enrollments below the
    # 10 s product minimum are still scored (calibration measures scores, not enrollment policy).
    assert (vox.n_genuine, vox.n_impostor, vox.n_speakers) == (3, 9, 3)
    assert vox.score_type == SCORE_COSINE and vox.target_far == 0.1
    assert vox.logistic is not None and vox.source == str(manifest)
    assert vox.far is not None and vox.far <= 0.1


@pytest.mark.parametrize("bad", [1.0, -0.1])
def test_calibrate_rejects_bad_target(tmp_path: Path, bad: float) -> None:
    from service.commands import calibrate

    settings = make_settings(tmp_path / "d", {"langid": "x", "voxceleb": "y", "cnceleb": "z"})
    args = argparse.Namespace(
        manifest=tmp_path / "m.csv", root=None, target_far=bad, dry_run=True, json_path=None
    )
    assert calibrate.run(args, settings) == 2
