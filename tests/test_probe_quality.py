"""A probe of a quality class (long and clean, long and noisy, medium and clean) is held to its
class's stricter shipped tail (issue 12; service.decisions.probe_quality): never a lower bar than
the pooled t(N), only where the shipped rule is in force (a calibration carries the classes it
fitted itself: tests/test_calibration.py), and the answer says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from service.api.mappers import strict_tails_out
from service.app import create_app
from service.commands import doctor
from service.core.settings import DecisionSettings
from service.decisions.bandwidth import (
    PAIR_NATIVE,
    PAIR_TELEPHONE,
    PAIR_WIDEBAND,
    Bar,
    NarrowbandView,
)
from service.decisions.cohort import COHORT_SHIPPED, SpaceScoring, shipped_cohort
from service.decisions.openset import TailFit
from service.decisions.policy import (
    SOURCE_CALIBRATED,
    SOURCE_SETTING,
    SOURCE_SHIPPED,
    DecisionPolicy,
)
from service.decisions.probe_quality import (
    LONG_CLEAN,
    LONG_NOISY,
    MEDIUM_CLEAN,
    QualityTails,
    StrictTailRule,
    load_rules,
)
from service.pipeline.registry import ModelRegistry
from service.search.narrowband import strict_bars
from service.search.voicesearch import SpaceCalibration
from storage.calibration import SCORE_ASNORM, SCORE_COSINE, CalibrationStore
from storage.db import make_engine, make_session_factory
from tests.api.conftest import make_settings
from tests.audio_factory import wav_bytes
from tests.paths import DEV_SPEECH_DIR, REAL_VOXCELEB_DIR, requires_real_model

VOX = "voxceleb"
IDENTITY = "model@sha256:ab"
POOLED = {SCORE_ASNORM: TailFit(-1.2, 1.1, 0.05), SCORE_COSINE: TailFit(0.21, 0.05, 0.05)}
RULE = StrictTailRule(
    LONG_CLEAN, 2.0, 20.0, {PAIR_WIDEBAND: TailFit(-0.6, 1.1, 0.05), "B": TailFit(0.8, 1.3, 0.05)}
)
NOISY = StrictTailRule(LONG_NOISY, 2.0, None, {PAIR_WIDEBAND: TailFit(-0.8, 1.1, 0.05)}, None, 20.0)
MEDIUM = StrictTailRule(
    MEDIUM_CLEAN, 1.0, 15.0, {PAIR_WIDEBAND: TailFit(-0.9, 1.1, 0.05)}, max_speech_s=2.0
)


def _policy(
    *,
    quality_tails: bool = True,
    fitted: bool = True,
    asnorm_fixed: dict[str, float] | None = None,
    store: CalibrationStore | None = None,
    rule: StrictTailRule = RULE,
    extra: tuple[StrictTailRule, ...] = (),
) -> DecisionPolicy:
    scoring = SpaceScoring(
        VOX,
        SCORE_ASNORM,
        COHORT_SHIPPED,
        None,
        "shipped",
        fitted,
        POOLED,
        strict=QualityTails((rule, *extra)),
    )
    settings = DecisionSettings(
        thresholds={},
        asnorm_spaces=frozenset(),
        asnorm_thresholds=asnorm_fixed or {},
        quality_tails=quality_tails,
    )
    return DecisionPolicy(settings, store, {VOX: IDENTITY}, {VOX: scoring})


def test_the_rule_applies_only_to_probes_measured_long_and_clean() -> None:
    assert RULE.applies(2.0, 20.0) and RULE.applies(9.5, 41.0)
    assert not RULE.applies(1.99, 40.0) and not RULE.applies(8.0, 19.9)
    # Unknown quality (an embedding sent as numbers, a probe without speech) keeps the pooled bar.
    assert not RULE.applies(None, 30.0) and not RULE.applies(5.0, None)


def test_quality_classes_are_half_open_and_disjoint() -> None:
    a = TailFit(-0.8, 1.1, 0.05)
    noisy = StrictTailRule(LONG_NOISY, 2.0, None, {PAIR_WIDEBAND: a}, max_snr_db=20.0)
    medium = StrictTailRule(MEDIUM_CLEAN, 1.0, 15.0, {PAIR_WIDEBAND: a}, max_speech_s=2.0)
    classes = QualityTails((RULE, noisy, medium))
    assert classes.rule_for(4.0, 30.0) is RULE and classes.rule_for(2.0, 20.0) is RULE
    assert classes.rule_for(4.0, 19.9) is noisy and classes.rule_for(2.0, -5.0) is noisy
    assert classes.rule_for(1.0, 15.0) is medium and classes.rule_for(1.99, 40.0) is medium
    for speech_s, snr_db in ((1.5, 14.9), (0.9, 40.0), (None, 30.0), (4.0, None)):
        assert classes.rule_for(speech_s, snr_db) is None
    assert noisy.describe() == ">= 2 s at < 20 dB" and medium.describe() == "1-2 s at >= 15 dB"
    # Metadata whose classes overlap is refused: a probe must have one bar, not two.
    tail = {"u": -0.8, "beta": 1.1, "mass": 0.05}
    overlapping = {
        "a": {"min_speech_s": 2.0, "min_snr_db": 20.0, "tails": {"A": tail}},
        "b": {"min_speech_s": 1.0, "min_snr_db": 25.0, "tails": {"A": tail}},
    }
    with pytest.raises(ValueError, match="overlap"):
        load_rules(overlapping)
    overlapping["b"]["max_speech_s"] = 2.0
    assert [r.name for r in load_rules(overlapping) or ()] == ["a", "b"]


def test_a_long_clean_probe_gets_the_higher_threshold_and_nothing_else_changes() -> None:
    policy = _policy()
    for n in (1, 6, 1000):
        pooled = policy.decision(VOX, n)
        assert pooled.source == SOURCE_SHIPPED and pooled.quality is None
        strict_t = RULE.tails[PAIR_WIDEBAND].threshold(0.03, n)
        assert strict_t > pooled.threshold  # this strict tail is the heavier one
        clean = pooled.for_probe(4.0, 30.0)
        assert clean.threshold == pytest.approx(strict_t) and clean.quality == LONG_CLEAN
        assert clean.gallery_size == n and clean.tail == pooled.tail
        for speech_s, snr_db in ((1.0, 30.0), (4.0, 10.0), (None, None)):
            assert pooled.for_probe(speech_s, snr_db) == pooled
        # The answer stays in one unit: the cosine fallback has no strict tail.
        cosine = policy.cosine_decision(VOX, n)
        assert cosine.for_probe(4.0, 30.0) == cosine
    # Never a lower bar: a strict tail lighter than the pooled one leaves the pooled t(N).
    light = StrictTailRule(LONG_CLEAN, 2.0, 20.0, {PAIR_WIDEBAND: TailFit(-3.0, 0.5, 0.05)})
    assert light.threshold(PAIR_WIDEBAND, POOLED[SCORE_ASNORM], 0.03, 6) == pytest.approx(
        POOLED[SCORE_ASNORM].threshold(0.03, 6)
    )
    # ... and the answer does not claim the strict tail decided when the pooled bar did.
    pooled = _policy(rule=light).decision(VOX, 6)
    assert pooled.for_probe(4.0, 30.0) == pooled and pooled.quality is None


def test_each_quality_class_holds_its_probes_to_its_own_tail() -> None:
    policy = _policy(extra=(NOISY, MEDIUM))
    for n in (2, 6, 1000):
        pooled = policy.decision(VOX, n)
        for (speech_s, snr_db), rule in (
            ((4.0, 30.0), RULE),
            ((4.0, 10.0), NOISY),
            ((2.5, -3.0), NOISY),
            ((1.5, 30.0), MEDIUM),
            ((1.0, 15.0), MEDIUM),
        ):
            held = pooled.for_probe(speech_s, snr_db)
            assert held.quality == rule.name, (speech_s, snr_db)
            assert held.threshold == pytest.approx(rule.tails[PAIR_WIDEBAND].threshold(0.03, n))
            assert held.threshold > pooled.threshold
        # Sub-second, and 1-2 s under 15 dB: no class, the pooled bar.
        for speech_s, snr_db in ((0.8, 40.0), (1.5, 10.0), (1.99, 14.9)):
            assert pooled.for_probe(speech_s, snr_db) == pooled


def test_the_strict_tail_is_only_used_where_the_shipped_rule_is_fitted_and_on() -> None:
    assert _policy().decision(VOX, 6).for_probe(4.0, 30.0).quality == LONG_CLEAN
    assert _policy(quality_tails=False).decision(VOX, 6).for_probe(4.0, 30.0).quality is None
    assert _policy(fitted=False).decision(VOX, 6).for_probe(4.0, 30.0).quality is None
    fixed = _policy(asnorm_fixed={VOX: 2.5}).decision(VOX, 6)
    assert fixed.source == SOURCE_SETTING and fixed.for_probe(4.0, 30.0).threshold == 2.5


def test_a_calibration_of_ones_own_is_used_as_it_is(migrated_database_url: str) -> None:
    """A stored calibration was fitted on the installation's own probes, long and short alike:
    no shipped strict tail is laid over it."""
    store = CalibrationStore(make_session_factory(make_engine(migrated_database_url)))
    own = TailFit(0.35, 1.25, 0.05, 5000)
    store.add(
        space=VOX,
        model_identity=IDENTITY,
        score_type=SCORE_ASNORM,
        threshold=own.threshold(0.03, 1),
        target_far=0.0,
        n_genuine=100,
        n_impostor=5000,
        n_speakers=40,
        details={"tail": own.to_dict()},
    )
    decision = _policy(store=store).decision(VOX, 6)
    assert decision.source == SOURCE_CALIBRATED and decision.strict is None
    assert decision.threshold == pytest.approx(own.threshold(0.03, 6))
    assert decision.for_probe(6.0, 40.0) == decision


def test_a_long_clean_phone_probe_holds_telephone_band_pairs_to_their_strict_tail() -> None:
    tails = {
        PAIR_WIDEBAND: POOLED[SCORE_ASNORM],
        PAIR_TELEPHONE: TailFit(0.78, 1.1, 0.05),
        PAIR_NATIVE: TailFit(0.64, 1.27, 0.05),
    }
    view = NarrowbandView(VOX, "voxceleb-nb", tails)
    decision = _policy().decision(VOX, 69)
    pooled = {pair: Bar(t.threshold(0.03, 69), t.beta) for pair, t in tails.items()}
    # With every type at its pooled bar the map is the one without bars.
    for pair in tails:
        assert view.to_common(pair, 1.7, pooled) == pytest.approx(view.to_common(pair, 1.7))
    assert strict_bars(view, decision, 1.5, 30.0) is None  # too short
    assert strict_bars(view, decision, 6.0, 12.0) is None  # too noisy
    raised = strict_bars(view, decision, 6.0, 30.0)
    assert raised is not None and raised.quality == LONG_CLEAN
    bars = raised.bars
    # A keeps its pooled bar (its strict tail is for wideband probes), C has no strict tail,
    # B gets its own, with the β of the tail in force.
    assert bars[PAIR_WIDEBAND] == pooled[PAIR_WIDEBAND]
    assert bars[PAIR_NATIVE] == pooled[PAIR_NATIVE]
    strict_b = RULE.tails["B"]
    assert bars[PAIR_TELEPHONE] == Bar(strict_b.threshold(0.03, 69), strict_b.beta, True)
    assert bars[PAIR_TELEPHONE].threshold > pooled[PAIR_TELEPHONE].threshold
    for pair, bar in bars.items():
        # Each type's own threshold lands on the answer's threshold, the order around it kept,
        # and one β of exceedance above it maps to one β_A above the answer's threshold.
        assert view.to_common(pair, bar.threshold, bars) == pytest.approx(decision.threshold)
        above = view.to_common(pair, bar.threshold + bar.beta, bars)
        assert above == pytest.approx(decision.threshold + tails[PAIR_WIDEBAND].beta)
    # A B pair between its pooled and strict bars matched before and does not now.
    between = (pooled[PAIR_TELEPHONE].threshold + bars[PAIR_TELEPHONE].threshold) / 2
    assert view.to_common(PAIR_TELEPHONE, between) > decision.threshold
    assert view.to_common(PAIR_TELEPHONE, between, bars) < decision.threshold
    # A phone probe of a class with a wideband tail only keeps every pooled bar.
    classes = _policy(extra=(NOISY, MEDIUM)).decision(VOX, 69)
    assert strict_bars(view, classes, 6.0, 10.0) is None  # long, noisy
    assert strict_bars(view, classes, 1.5, 30.0) is None  # medium, clean
    raised = strict_bars(view, classes, 6.0, 30.0)
    assert raised is not None and raised.quality == LONG_CLEAN
    # A rule with nothing stricter for these types changes nothing.
    light = StrictTailRule(LONG_CLEAN, 2.0, 20.0, {"B": TailFit(-3.0, 0.5, 0.05)})
    assert strict_bars(view, _policy(rule=light).decision(VOX, 69), 6.0, 30.0) is None


def test_the_shipped_cohort_ships_quality_classes_heavier_than_its_pooled_tail() -> None:
    shipped = shipped_cohort("ecapa-voxceleb")
    classes = load_rules(shipped.meta["quality_tails"])
    assert classes is not None
    by_name = {rule.name: rule for rule in classes}
    assert set(by_name) == {LONG_CLEAN, LONG_NOISY, MEDIUM_CLEAN}
    rule = by_name[LONG_CLEAN]
    assert rule.min_speech_s == 2.0 and rule.min_snr_db == 20.0
    assert by_name[LONG_NOISY].max_snr_db == 20.0 and by_name[LONG_NOISY].min_snr_db is None
    assert by_name[MEDIUM_CLEAN].max_speech_s == 2.0 and by_name[MEDIUM_CLEAN].min_snr_db == 15
    pooled = shipped.tail(SCORE_ASNORM)
    for each in classes:  # every class ships only tails heavier than the pooled one
        for n in (1, 6, 100, 10_000):
            assert each.tails[PAIR_WIDEBAND].threshold(0.03, n) > pooled.threshold(0.03, n)
        assert "bench/quality_tails.py" in shipped.meta["quality_tails"][each.name]["fitted_on"]
    pooled_b = TailFit.from_dict(shipped.meta["pairtype_tails"]["B"])
    for n in (1, 6, 100, 10_000):
        assert rule.tails["B"].threshold(0.03, n) > pooled_b.threshold(0.03, n)
    assert set(rule.tails) == {"A", "B"}  # C: too few long, clean probes to fit one
    # Long, noisy phone probes are too few on CAL; medium ones' B tail is lighter than pooled.
    assert set(by_name[LONG_NOISY].tails) == set(by_name[MEDIUM_CLEAN].tails) == {"A"}
    assert load_rules(None) is None and load_rules({}) is None


def test_calibration_lists_each_class_with_the_pair_types_this_space_can_use() -> None:
    decision = _policy(extra=(NOISY, MEDIUM)).decision(VOX, 6)
    tail = POOLED[SCORE_ASNORM]
    bars = {
        LONG_CLEAN: {PAIR_WIDEBAND: RULE.threshold(PAIR_WIDEBAND, tail, 0.03, 6)},
        LONG_NOISY: {PAIR_WIDEBAND: NOISY.threshold(PAIR_WIDEBAND, tail, 0.03, 6)},
        MEDIUM_CLEAN: {},  # nothing this space can use: not listed
    }
    space = SpaceCalibration(VOX, IDENTITY, decision, True, "shipped", None, bars)
    listed = strict_tails_out(space)
    assert [c.name for c in listed] == [LONG_CLEAN, LONG_NOISY]
    clean, noisy = listed
    # Without telephone-band profiles type B is not shown, though the class has a B tail.
    assert set(clean.tails) == {PAIR_WIDEBAND} and set(noisy.tails) == {PAIR_WIDEBAND}
    assert clean.min_snr_db == 20.0 and clean.max_snr_db is None
    assert noisy.min_snr_db is None and noisy.max_snr_db == 20.0
    assert noisy.tails[PAIR_WIDEBAND].threshold == pytest.approx(bars[LONG_NOISY][PAIR_WIDEBAND])
    assert noisy.tails[PAIR_WIDEBAND].u == NOISY.tails[PAIR_WIDEBAND].u
    # A decision without classes lists none.
    plain = SpaceCalibration(
        VOX, IDENTITY, _policy(quality_tails=False).decision(VOX, 6), True, "shipped", None, None
    )
    assert strict_tails_out(plain) == []


def _find(client: TestClient, name: str, data: bytes) -> dict:
    files = [("audio", (name, data, "application/octet-stream"))]
    response = client.post("/find-match", files=files, data={"language": "en"})
    assert response.status_code == 200, response.text
    return response.json()


@requires_real_model
def test_answers_say_when_a_long_clean_probe_met_the_strict_tail(
    tmp_path: Path, tiny_model_dirs, real_registry: ModelRegistry
) -> None:
    asr = DEV_SPEECH_DIR / "speechbrain_samples" / "ASR"
    dirs = {**tiny_model_dirs, "voxceleb": REAL_VOXCELEB_DIR}
    shipped = shipped_cohort("ecapa-voxceleb")
    classes = load_rules(shipped.meta["quality_tails"])
    assert classes is not None
    by_name = {r.name: r for r in classes}
    rule = by_name[LONG_CLEAN]
    speech = np.concatenate([sf.read(asr / f"spk1_snt{i}.wav", dtype="float32")[0] for i in (4, 5)])
    long_probe = wav_bytes(speech, 16_000)
    # The same two sentences under white noise about 10 dB below them: long and noisy.
    noise = np.random.default_rng(7).standard_normal(speech.size).astype(np.float32)
    noise *= np.sqrt(np.mean(speech**2) / 10.0) / np.sqrt(np.mean(noise**2))
    noisy_probe = wav_bytes(np.clip(speech + noise, -1.0, 1.0), 16_000)
    answers, noisy = {}, {}
    for setting in ("on", "off"):
        settings = make_settings(tmp_path / setting, dirs, quality_tails=setting)
        with TestClient(create_app(settings, models=real_registry)) as client:
            for ext in ("spk1", "spk2"):
                paths = [asr / f"{ext}_snt{i}.wav" for i in (1, 2)]
                files = [("audio", (p.name, p.read_bytes(), "audio/wav")) for p in paths]
                form = {"external_id": ext, "language": "en"}
                assert client.post("/speakers", files=files, data=form).status_code == 201
            # Two sentences back to back: about 5 s of clean speech, well past the 2 s floor.
            answers[setting] = _find(client, "long.wav", long_probe)
            noisy[setting] = _find(client, "noisy.wav", noisy_probe)
            # The same voice sent as numbers has no measured quality: the pooled tail.
            vector = client.post(
                "/extract-embedding", files=[("audio", ("long.wav", long_probe, "audio/wav"))]
            ).json()["embedding"]
            by_vector = client.post("/find-match", json={"user_embedding": vector, "space": VOX})
            assert by_vector.status_code == 200, by_vector.text
            numbers = by_vector.json()
            assert numbers["threshold_quality"] is None
            assert numbers["threshold"] == pytest.approx(
                shipped.tail(SCORE_ASNORM).threshold(0.03, 2)
            )
            listed = client.get("/calibration").json()["spaces"][VOX]["strict_tails"]
            (checked,) = [
                c for c in doctor.scoring_checks(settings, real_registry) if VOX in c.name
            ]
            if setting == "off":
                assert listed == []
                assert "probe quality classes: pooled tail (VOICESEARCH_QUALITY_TAILS=off)" in (
                    checked.detail
                )
                continue
            assert (
                "stricter tails for long clean (>= 2 s at >= 20 dB); long noisy (>= 2 s at "
                "< 20 dB); medium clean (1-2 s at >= 15 dB)" in checked.detail
            )
            assert [c["name"] for c in listed] == [LONG_CLEAN, LONG_NOISY, MEDIUM_CLEAN]
            shown = listed[0]
            assert shown["min_speech_s"] == 2.0 and shown["min_snr_db"] == 20.0
            assert shown["max_speech_s"] is None and shown["max_snr_db"] is None
            assert listed[1]["max_snr_db"] == 20.0 and set(listed[1]["tails"]) == {"A"}
            medium = listed[2]
            assert (medium["min_speech_s"], medium["max_speech_s"]) == (1.0, 2.0)
            assert medium["min_snr_db"] == 15.0 and set(medium["tails"]) == {"A"}
            pooled_2 = shipped.tail(SCORE_ASNORM).threshold(0.03, 2)
            for shown_class in listed[1:]:  # the new classes' bars: the higher t(2)
                own = by_name[shown_class["name"]].tails["A"].threshold(0.03, 2)
                assert shown_class["tails"]["A"]["threshold"] == pytest.approx(max(pooled_2, own))
            assert shown["tails"]["A"]["threshold"] == pytest.approx(
                max(pooled_2, rule.tails["A"].threshold(0.03, 2))
            )
            # Telephone-band profiles are on by default: type B's bar, on its own scale.
            assert shown["tails"]["B"]["threshold"] == pytest.approx(
                rule.tails["B"].threshold(0.03, 2)
            )
    on, off = answers["on"], answers["off"]
    quality = on["quality"]
    assert quality["speech_s"] >= 2.0 and quality["snr_db"] >= 20.0, quality  # a clean sentence
    assert on["threshold_quality"] == LONG_CLEAN and off["threshold_quality"] is None
    pooled = shipped.tail(SCORE_ASNORM).threshold(0.03, 2)
    assert off["threshold"] == pytest.approx(pooled)
    assert on["threshold"] == pytest.approx(max(pooled, rule.tails["A"].threshold(0.03, 2)))
    # Ranking and scores are the bare model's either way; only the bar moved.
    assert on["top_matches"][0]["id"] == off["top_matches"][0]["id"] == "spk1"
    assert [m["score"] for m in on["top_matches"]] == [m["score"] for m in off["top_matches"]]
    assert on["decision"] == off["decision"] == "match"
    # Long and noisy: held to that class's tail where the setting is on, the pooled one where off.
    heard = noisy["on"]["quality"]
    assert heard["speech_s"] >= 2.0 and heard["snr_db"] < 20.0, heard
    assert noisy["on"]["threshold_quality"] == LONG_NOISY
    assert noisy["on"]["threshold"] == pytest.approx(
        max(pooled, by_name[LONG_NOISY].tails["A"].threshold(0.03, 2))
    )
    assert noisy["on"]["threshold"] > pooled
    assert noisy["off"]["threshold_quality"] is None
    assert noisy["off"]["threshold"] == pytest.approx(pooled)
    assert noisy["on"]["top_matches"][0]["id"] == "spk1"
