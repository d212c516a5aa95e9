"""Telephone-band profiles (issue 12): the chain, the per-pair-type rule, the derived index, the
migration, and the real model finding a phone-call probe through the telephone-band profile."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.conditions.make_conditions import tel8k
from service.app import create_app
from service.decisions.bandwidth import (
    PAIR_NATIVE,
    PAIR_TELEPHONE,
    PAIR_WIDEBAND,
    NarrowbandView,
    is_narrowband,
    narrowband_space,
    resolve_views,
)
from service.decisions.cohort import COHORT_SHIPPED, shipped_cohort
from service.decisions.openset import TailFit, per_pair_rate
from service.decisions.probe_quality import LONG_CLEAN, load_rules
from service.pipeline.audio import decode_audio
from service.pipeline.registry import ModelRegistry
from service.pipeline.telephone import telephone_band, telephone_copy, wav_bytes
from storage.db import make_engine, make_session_factory
from storage.migrate import current_revision, head_revision, upgrade_to_head
from storage.speakers import SpeakerStore
from tests.api.conftest import make_settings
from tests.paths import DEV_SPEECH_DIR, REAL_VOXCELEB_DIR, requires_real_model

VOX = "voxceleb"
NB = narrowband_space(VOX)
SHIPPED = shipped_cohort("ecapa-voxceleb")


# --- the chain and the rule ----------------------------------------------------------------------
def test_the_bench_and_the_service_use_one_telephone_chain() -> None:
    x = (np.random.default_rng(0).standard_normal(16_000) * 0.1).astype(np.float32)
    data, _ = tel8k(x, 0)
    assert data == wav_bytes(telephone_band(x), 8_000)
    copy = telephone_copy(x)
    assert copy.source_sample_rate == 8_000 and copy.samples.shape[0] == x.shape[0]
    assert np.array_equal(
        copy.samples, decode_audio(data, max_duration_s=60, min_duration_s=0).samples
    )
    # Nothing above the telephone band survives.
    spectrum = np.abs(np.fft.rfft(copy.samples)) ** 2
    freqs = np.fft.rfftfreq(copy.samples.shape[0], 1 / 16_000)
    assert spectrum[freqs > 4_100].sum() < 1e-4 * spectrum.sum()


def test_narrowband_is_a_source_at_or_below_8_khz() -> None:
    assert is_narrowband(8_000) and is_narrowband(11_025) is False and is_narrowband(None) is False


def test_each_pair_type_is_decided_by_its_own_tail_at_the_same_fpir_and_n() -> None:
    tails = {
        PAIR_WIDEBAND: TailFit(-1.2, 1.1, 0.05),
        PAIR_TELEPHONE: TailFit(0.8, 1.1, 0.05),
        PAIR_NATIVE: TailFit(0.6, 1.3, 0.05),
    }
    view = NarrowbandView(VOX, NB, tails)
    for n in (1, 69, 10_000):
        common = tails[PAIR_WIDEBAND].threshold(0.03, n)
        for pair, tail in tails.items():
            own = tail.threshold(0.03, n)
            # On the common scale, each type's own t(N) lands exactly on the common t(N).
            assert view.to_common(pair, own) == pytest.approx(common)
            assert view.to_common(pair, own + 1e-6) > common > view.to_common(pair, own - 1e-6)
        z = math.log(0.05 / per_pair_rate(0.03, n))
        assert tails[PAIR_TELEPHONE].u + tails[PAIR_TELEPHONE].beta * z == pytest.approx(
            tails[PAIR_TELEPHONE].threshold(0.03, n)
        )


def test_pair_type_tails_ship_with_provenance_and_sit_above_the_wideband_tail() -> None:
    meta = SHIPPED.meta["pairtype_tails"]
    assert "CAL" in meta["fitted_on"] and "TEST" in meta["fitted_on"]
    assert meta["built_by"].startswith("bench/telband_tails.py")
    b, c = TailFit.from_dict(meta["B"]), TailFit.from_dict(meta["C"])
    assert b.n_impostor > 10_000 and c.n_impostor > 1_000
    # Matched-band impostors score higher under AS-norm: their thresholds must be higher.
    assert b.u > SHIPPED.tail("asnorm").u and c.u > SHIPPED.tail("asnorm").u


def test_views_only_where_the_shipped_cohort_scores(tiny_registry: ModelRegistry) -> None:
    from service.core.settings import AsNormSettings
    from service.decisions.cohort import resolve_scoring

    identities = {VOX: "x@sha256:" + SHIPPED.checkpoint_sha256[:16]}
    scoring = resolve_scoring(AsNormSettings((), 100, {}), identities, {VOX: SHIPPED.dim})
    assert scoring[VOX].cohort_origin == COHORT_SHIPPED
    views, why = resolve_views(scoring, enabled=True)
    assert views[VOX].derived == NB and VOX not in why
    views, why = resolve_views(scoring, enabled=False)
    assert not views and "VOICESEARCH_NARROWBAND_PROFILES=off" in why[VOX]
    other = resolve_scoring(AsNormSettings((), 100, {}), {VOX: "random@sha256:00"}, {VOX: 192})
    views, why = resolve_views(other, enabled=True)
    assert not views and "shipped AS-norm cohort" in why[VOX]


def test_a_random_model_gets_no_telephone_band_profiles_and_says_why(
    tmp_path: Path, tiny_model_dirs, tiny_registry: ModelRegistry
) -> None:
    from service.commands import doctor

    settings = make_settings(tmp_path / "data", tiny_model_dirs)
    with TestClient(create_app(settings, models=tiny_registry)) as client:
        shown = client.get("/calibration").json()["spaces"][VOX]["narrowband_profiles"]
        dims = dict(client.app.state.voicesearch.gallery.dims)
    assert "needs the shipped AS-norm cohort" in shown
    assert NB not in dims and VOX in dims  # no derived index is opened
    (vox,) = [c for c in doctor.scoring_checks(settings, tiny_registry) if c.name.endswith(VOX)]
    assert "telephone-band profiles: off, needs the shipped AS-norm cohort" in vox.detail


# --- the migration ---------------------------------------------------------------------------
def test_0006_keeps_old_clips_and_counts_them_wideband(database_url: str) -> None:
    """Up from 0005 with clips older versions stored (rate unknown), then down again: on SQLite
    and on PostgreSQL."""
    from alembic import command
    from sqlalchemy import inspect, text

    from storage.migrate import alembic_config

    command.upgrade(alembic_config(database_url), "0005")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            for speaker_id in (1, 2, 3):
                conn.execute(
                    text(
                        "INSERT INTO speakers (id, external_id, metadata, created_at, updated_at) "
                        "VALUES (:id, :ext, '{}', '2024-01-01', '2024-01-01')"
                    ),
                    {"id": speaker_id, "ext": f"s{speaker_id}"},
                )
            conn.execute(
                text(
                    "INSERT INTO utterances (id, speaker_id, duration_s, sha256, speech_s, "
                    "created_at) VALUES (1, 1, 3.0, 'aa', 2.5, '2024-01-01')"
                )
            )
        upgrade_to_head(database_url)
        assert current_revision(database_url) == head_revision()
        with engine.begin() as conn:
            for utt_id, speaker_id, rate in ((2, 2, 8_000), (3, 3, 8_000), (4, 3, 16_000)):
                conn.execute(
                    text(
                        "INSERT INTO utterances (id, speaker_id, duration_s, sha256, "
                        "source_sample_rate, created_at) "
                        "VALUES (:u, :s, 2.0, :h, :r, '2024-01-01')"
                    ),
                    {"u": utt_id, "s": speaker_id, "h": f"h{utt_id}", "r": rate},
                )
        store = SpeakerStore(make_session_factory(engine), {VOX: "m"})
        # Old clip (rate unknown): wideband. All clips <= 8 kHz: narrowband. Mixed: wideband.
        assert store.natively_narrowband([1, 2, 3, 99], 8_000) == {2}
        assert [u.duration_s for u in store.list_utterances("s1")] == [3.0]
        command.downgrade(alembic_config(database_url), "0005")
        columns = {c["name"] for c in inspect(engine).get_columns("utterances")}
        assert "source_sample_rate" not in columns and "speech_s" in columns
        with engine.connect() as conn:
            kept = conn.execute(text("SELECT count(*) FROM utterances")).scalar_one()
        assert kept == 4
    finally:
        engine.dispose()


# --- the real model ----------------------------------------------------------------------------
ASR = DEV_SPEECH_DIR / "speechbrain_samples" / "ASR"
RTVC = DEV_SPEECH_DIR / "rtvc_samples"


def _upload(name: str, data: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("audio", (name, data, "application/octet-stream"))]


def _phone(path: Path) -> bytes:
    """``path`` as a phone call delivers it (the bench's tel8k condition)."""
    samples = decode_audio(path.read_bytes(), max_duration_s=600, min_duration_s=0).samples
    return tel8k(samples, 0)[0]


def _enroll(client: TestClient, ext: str, files: list[tuple[str, bytes]]) -> dict:
    upload = [("audio", (n, d, "application/octet-stream")) for n, d in files]
    response = client.post("/speakers", files=upload, data={"external_id": ext, "language": "en"})
    assert response.status_code == 201, response.text
    return response.json()


def _find(client: TestClient, name: str, data: bytes) -> dict:
    response = client.post("/find-match", files=_upload(name, data), data={"language": "en"})
    assert response.status_code == 200, response.text
    return response.json()


def _pooled_threshold(answer: dict, n: int) -> float:
    """The space's pooled t(n), the threshold every phone probe's answer shows: the wideband
    strict tails (``service.decisions.probe_quality``) never apply to a phone probe, and a
    long, clean one's telephone-band pairs are mapped so that their own strict bar lands on it
    (no other class has a telephone-band tail). The answer says whether they were
    (``threshold_quality``)."""
    classes = load_rules(SHIPPED.meta["quality_tails"])
    assert classes is not None
    heard = answer["quality"]
    rule = classes.rule_for(heard["speech_s"], heard["snr_db"])
    long_clean = rule is not None and rule.name == LONG_CLEAN
    telephone = answer["probe_band"] == "narrowband"
    assert answer["threshold_quality"] == (LONG_CLEAN if long_clean and telephone else None)
    return SHIPPED.tail("asnorm").threshold(0.03, n)


@requires_real_model
@pytest.mark.timeout(600)
def test_phone_probe_is_found_through_the_telephone_band_profile(
    tmp_path: Path, tiny_model_dirs, real_registry: ModelRegistry
) -> None:
    dirs = {**tiny_model_dirs, "voxceleb": REAL_VOXCELEB_DIR}
    enrolled = {
        "spk1": [(p.name, p.read_bytes()) for p in (ASR / "spk1_snt1.wav", ASR / "spk1_snt2.wav")],
        "p240": [("p240.mp3", (RTVC / "p240_00000.mp3").read_bytes())],
        # Enrolled from a phone line only: natively narrowband (pair type C).
        "spk2": [(f"spk2_{i}.wav", _phone(ASR / f"spk2_snt{i}.wav")) for i in (1, 2)],
    }
    wide_probe = (ASR / "spk1_snt5.wav").read_bytes()
    answers: dict[str, dict] = {}
    for setting in ("off", "on"):
        settings = make_settings(tmp_path / setting, dirs, narrowband_profiles=setting)
        with TestClient(create_app(settings, models=real_registry)) as client:
            for ext, files in enrolled.items():
                _enroll(client, ext, files)
            answers[setting] = _find(client, "wide.wav", wide_probe)
            if setting == "off":
                phone = _find(client, "phone.wav", _phone(ASR / "spk1_snt5.wav"))
                assert phone["probe_band"] == "wideband"
                assert phone["band_note"] == "no telephone-band profiles for this space"
                # Scored against the normal profiles, yet still a phone probe: the pooled tail,
                # even for one long and clean enough that a wideband copy would get the strict.
                long_phone = _find(client, "stranger.wav", _phone(RTVC / "6829_00000.mp3"))
                assert long_phone["probe_band"] == "wideband"
                classes = load_rules(SHIPPED.meta["quality_tails"])
                heard = long_phone["quality"]
                assert classes is not None
                rule = classes.rule_for(heard["speech_s"], heard["snr_db"])
                assert rule is not None and rule.name == LONG_CLEAN, heard
                assert long_phone["threshold"] == pytest.approx(_pooled_threshold(long_phone, 3))
                assert long_phone["threshold_quality"] is None
                shown = client.get("/calibration").json()["spaces"][VOX]["narrowband_profiles"]
                assert "VOICESEARCH_NARROWBAND_PROFILES=off" in shown
                continue
            shown = client.get("/calibration").json()["spaces"][VOX]["narrowband_profiles"]
            assert shown == f"on: narrowband probes search {NB}"
            spaces = client.get("/speakers/spk1").json()["speaker"]["spaces"]
            assert NB in spaces, spaces
            phone = _find(client, "phone.wav", _phone(ASR / "spk1_snt5.wav"))
            assert phone["probe_band"] == "narrowband" and phone["decision"] == "match", phone
            best = phone["best_match"]
            assert best["id"] == "spk1" and best["pair_type"] == PAIR_TELEPHONE
            assert best["profile"] == "telephone_band"
            assert phone["threshold"] == pytest.approx(_pooled_threshold(phone, 3))
            native = _find(client, "phone2.wav", _phone(ASR / "spk2_snt5.wav"))
            assert native["decision"] == "match" and native["best_match"]["id"] == "spk2"
            assert native["best_match"]["pair_type"] == PAIR_NATIVE, native
            # A stranger by phone is scored on the same pair types and the same threshold (whether
            # it clears it is a rate, measured in bench/, not a property of one clip).
            stranger = _find(client, "stranger.wav", _phone(RTVC / "6829_00000.mp3"))
            assert stranger["probe_band"] == "narrowband"
            assert stranger["threshold"] == pytest.approx(_pooled_threshold(stranger, 3))
            # This one is long and clean: its telephone-band pairs met their strict tail.
            assert stranger["threshold_quality"] == LONG_CLEAN, stranger["quality"]
            assert {m["pair_type"] for m in stranger["top_matches"]} == {
                PAIR_TELEPHONE,
                PAIR_NATIVE,
            }
            # The derived index is an index like any other: verified and rebuilt.
            vs = client.app.state.voicesearch
            reports = vs.gallery.verify()
            assert reports[NB].ok and reports[NB].db_count == 3, reports
            assert vs.gallery.rebuild(NB).count == 3
            assert vs.gallery.verify()[NB].ok
    # A wideband probe's answer does not depend on the feature.
    assert answers["on"]["probe_band"] == answers["off"]["probe_band"] == "wideband"
    assert answers["on"]["top_matches"] == answers["off"]["top_matches"]
    assert answers["on"]["threshold"] == answers["off"]["threshold"]
    assert answers["on"]["best_match"]["pair_type"] is None


@requires_real_model
@pytest.mark.timeout(600)
def test_speakers_enrolled_before_the_upgrade_are_still_found_by_phone(
    tmp_path: Path, tiny_model_dirs, real_registry: ModelRegistry
) -> None:
    """No audio is stored, so a speaker enrolled before telephone-band profiles has none: a
    phone probe still reaches them through the normal index, on today's rule (type A)."""
    dirs = {**tiny_model_dirs, "voxceleb": REAL_VOXCELEB_DIR}
    data = tmp_path / "data"
    files = [(p.name, p.read_bytes()) for p in (ASR / "spk1_snt1.wav", ASR / "spk1_snt2.wav")]
    with TestClient(
        create_app(make_settings(data, dirs, narrowband_profiles="off"), models=real_registry)
    ) as client:
        _enroll(client, "spk1", files)
    with TestClient(create_app(make_settings(data, dirs), models=real_registry)) as client:
        _enroll(client, "p240", [("p240.mp3", (RTVC / "p240_00000.mp3").read_bytes())])
        assert NB not in client.get("/speakers/spk1").json()["speaker"]["spaces"]
        phone = _find(client, "phone.wav", _phone(ASR / "spk1_snt5.wav"))
        assert phone["probe_band"] == "narrowband" and phone["searched"] == 2
        best = phone["best_match"]
        assert best["id"] == "spk1" and best["pair_type"] == PAIR_WIDEBAND, phone
        assert best["profile"] == "normal"
        others = [m for m in phone["top_matches"] if m["id"] == "p240"]
        assert others and others[0]["pair_type"] == PAIR_TELEPHONE
        # No audio is stored to backfill from; uploading the same clips again adds only what
        # is missing: their telephone-band embeddings, and with them the profile.
        upload = [("audio", (n, d, "application/octet-stream")) for n, d in files]
        again = client.post("/speakers/spk1/utterances", files=upload)
        assert again.status_code == 201, again.text
        assert [u["created"] for u in again.json()["utterances"]] == [False, False]
        assert NB in again.json()["speaker"]["spaces"]
        phone = _find(client, "phone.wav", _phone(ASR / "spk1_snt5.wav"))
        assert phone["best_match"]["id"] == "spk1"
        assert phone["best_match"]["pair_type"] == PAIR_TELEPHONE, phone


@requires_real_model
@pytest.mark.timeout(600)
def test_identify_speakers_on_a_phone_recording_uses_the_telephone_band_profiles(
    tmp_path: Path, tiny_model_dirs, real_registry: ModelRegistry
) -> None:
    from tests.api.test_identify_real_model import conversation, sentence

    dirs = {**tiny_model_dirs, "voxceleb": REAL_VOXCELEB_DIR}
    settings = make_settings(tmp_path / "data", dirs, vad="silero", min_probe_speech_s=1.5)
    data, _ = conversation()
    call = tel8k(decode_audio(data, max_duration_s=600, min_duration_s=0).samples, 0)[0]
    with TestClient(create_app(settings, models=real_registry)) as client:
        for speaker in ("spk1", "spk2"):
            clips = [(f"{n}.wav", wav_bytes(sentence(speaker, n), 16_000)) for n in (1, 2)]
            _enroll(client, speaker, clips)
        response = client.post(
            "/identify-speakers",
            files={"audio": ("call.wav", call, "audio/wav")},
            data={"language": "en"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [s["speaker"] for s in body["speakers"]] == ["spk1", "spk2"], body["speakers"]
    for found in body["speakers"]:
        assert found["decision"] == "match" and found["pair_type"] == PAIR_TELEPHONE, found
        assert {c["profile"] for c in found["candidates"]} == {"telephone_band"}


@requires_real_model
def test_calibrate_says_that_a_calibration_turns_the_telephone_band_profiles_off(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], real_registry: ModelRegistry
) -> None:
    """Under a stored calibration a phone probe is decided on the calibration's wideband tail
    (measured: telephone-band FNIR 6.9 -> 55 %), so `voicesearch calibrate` says so for every
    space that has telephone-band profiles, and for no other."""
    from service.commands.calibrate import telephone_band_spaces

    dirs = {**tiny_model_dirs, "voxceleb": REAL_VOXCELEB_DIR}
    settings = make_settings(tmp_path / "data", dirs)
    assert telephone_band_spaces(settings, real_registry) == {VOX}
    off = make_settings(tmp_path / "off", dirs, narrowband_profiles="off")
    assert telephone_band_spaces(off, real_registry) == set()
