"""service.pipeline's models with tiny random models in the official SpeechBrain layout (fast,
no network)."""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from service.core import errors
from service.core.settings import SPACE_CNCELEB, SPACE_VOXCELEB, Settings
from service.pipeline.encoders import SpeakerEncoder
from service.pipeline.language import (
    LanguageCandidate,
    LanguageIdentifier,
    LanguageRouter,
    split_language_label,
)
from service.pipeline.loading import resolve_device
from service.pipeline.registry import ModelRegistry
from tests.audio_factory import synth_voice
from tests.model_factory import build_langid_model, build_speaker_model

IDENTITY = re.compile(r"^[\w./-]+@sha256:[0-9a-f]{16}$")
VOXLINGUA_CODES_TO_CNCELEB = {"zh", "ja", "ko", "th", "vi"}


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return synth_voice(3.0, seed=7, f0=130.0)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def reference_embedding(encoder: SpeakerEncoder, samples: np.ndarray) -> np.ndarray:
    """SpeechBrain's own encode_batch, as its documentation shows it."""
    out = encoder.classifier.encode_batch(torch.from_numpy(samples).unsqueeze(0))
    return out.squeeze().detach().numpy()


# --- loading -----------------------------------------------------------------------------------
def test_tiny_models_have_the_official_layout(tiny_model_dirs: dict[str, Path]) -> None:
    expected = {
        "langid": (
            "speechbrain/lang-id-voxlingua107-ecapa",
            {"embedding_model.ckpt", "classifier.ckpt", "label_encoder.txt"},
        ),
        "voxceleb": (
            "speechbrain/spkrec-ecapa-voxceleb",
            {"embedding_model.ckpt", "classifier.ckpt", "mean_var_norm_emb.ckpt"},
        ),
        "cnceleb": ("LanceaKing/spkrec-ecapa-cnceleb", {"label_encoder.txt"}),
    }
    for role, (hub_name, files) in expected.items():
        directory = tiny_model_dirs[role]
        text = (directory / "hyperparams.yaml").read_text()
        assert f"pretrained_path: {hub_name}\n" in text
        assert files <= {p.name for p in directory.iterdir()}


def test_registry_loads_every_tiny_model(tiny_registry: ModelRegistry) -> None:
    assert tiny_registry.all_loaded
    assert set(tiny_registry.statuses) == {"langid", SPACE_VOXCELEB, SPACE_CNCELEB}
    assert set(tiny_registry.encoders) == {SPACE_VOXCELEB, SPACE_CNCELEB}
    assert isinstance(tiny_registry.language_identifier, LanguageIdentifier)
    for role, status in tiny_registry.statuses.items():
        assert status.role == role
        assert status.loaded and status.error is None
        assert status.load_seconds is not None and 0 < status.load_seconds < 30
        assert status.identity is not None and IDENTITY.match(status.identity), status.identity
    for space, encoder in tiny_registry.encoders.items():
        assert encoder.space == space
        assert encoder.dim == 192
        assert encoder.identity == tiny_registry.statuses[space].identity
        assert tiny_registry.encoder(space) is encoder
    assert tiny_registry.require_language_identifier() is tiny_registry.language_identifier
    # The identity names the hub model the directory is a copy of, not where it lies.
    assert tiny_registry.statuses[SPACE_CNCELEB].identity.startswith(
        "LanceaKing/spkrec-ecapa-cnceleb@sha256:"
    )
    assert tiny_registry.statuses[SPACE_VOXCELEB].identity != (
        tiny_registry.statuses[SPACE_CNCELEB].identity
    )


def test_local_directory_loads_offline_and_writes_nothing(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, no_network: None
) -> None:
    cache = tmp_path / "cache"
    before = {p: p.stat().st_mtime_ns for p in tiny_model_dirs["voxceleb"].iterdir()}
    registry = ModelRegistry.load(
        {SPACE_VOXCELEB: str(tiny_model_dirs["voxceleb"])}, cache_dir=cache, device="cpu"
    )
    assert registry.all_loaded, registry.statuses
    assert not cache.exists() or not any(cache.rglob("*"))
    assert {p: p.stat().st_mtime_ns for p in tiny_model_dirs["voxceleb"].iterdir()} == before


def test_sources_from_settings_load(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        model_langid=str(tiny_model_dirs["langid"]),
        model_voxceleb=str(tiny_model_dirs["voxceleb"]),
        model_cnceleb=str(tiny_model_dirs["cnceleb"]),
    )
    registry = ModelRegistry.load(
        settings.model_sources, cache_dir=settings.resolved_model_cache_dir, device="auto"
    )
    assert registry.all_loaded, registry.statuses


# --- embeddings --------------------------------------------------------------------------------
@pytest.mark.parametrize("space", [SPACE_VOXCELEB, SPACE_CNCELEB])
def test_embedding_is_unit_float32_deterministic_and_matches_speechbrain(
    tiny_registry: ModelRegistry, voice: np.ndarray, space: str
) -> None:
    encoder = tiny_registry.encoder(space)
    first = encoder.embed(voice)
    assert first.shape == (192,)
    assert first.dtype == np.float32
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(encoder.embed(voice), first, atol=1e-6)
    assert cosine(first, reference_embedding(encoder, voice)) >= 0.999


def test_embedding_accepts_any_float_array_and_never_aliases_it(
    tiny_registry: ModelRegistry, voice: np.ndarray
) -> None:
    encoder = tiny_registry.encoder(SPACE_VOXCELEB)
    expected = encoder.embed(voice)
    read_only = voice.copy()
    read_only.flags.writeable = False
    strided = np.repeat(voice, 2)[::2]
    for variant in (voice.astype(np.float64), read_only, strided):
        np.testing.assert_allclose(encoder.embed(variant), expected, atol=1e-5)
    original = voice.copy()
    encoder.embed(voice)
    np.testing.assert_array_equal(voice, original)


def test_embedding_rejects_wrong_shapes(tiny_registry: ModelRegistry) -> None:
    encoder = tiny_registry.encoder(SPACE_VOXCELEB)
    with pytest.raises(ValueError):
        encoder.embed(np.zeros((2, 16000), dtype=np.float32))
    with pytest.raises(errors.EmptyAudio):
        encoder.embed(np.zeros(0, dtype=np.float32))
    with pytest.raises(errors.AudioTooShort):
        encoder.embed(np.zeros(800, dtype=np.float32))
    with pytest.raises(errors.AudioTooShort):
        tiny_registry.require_language_identifier().detect(np.zeros(800, dtype=np.float32))
    with pytest.raises(errors.InvalidInput):
        encoder.embed(np.full(16000, np.nan, dtype=np.float32))
    assert encoder.embed(np.zeros(1600, dtype=np.float32)).shape == (192,)  # silence is fine


def test_embeddings_separate_voices_and_spaces(tiny_registry: ModelRegistry) -> None:
    vox = tiny_registry.encoder(SPACE_VOXCELEB)
    cn = tiny_registry.encoder(SPACE_CNCELEB)
    a = synth_voice(6.0, seed=1, f0=110.0)
    b = synth_voice(6.0, seed=2, f0=210.0)
    same = cosine(vox.embed(a[:48000]), vox.embed(a[48000:]))
    different = cosine(vox.embed(a[:48000]), vox.embed(b[:48000]))
    assert same > different + 0.2, (same, different)
    # Different weights: the two spaces' vectors are unrelated.
    assert cosine(vox.embed(a), cn.embed(a)) < 0.9


def test_concurrent_embeds_on_both_models_match_sequential(tiny_registry: ModelRegistry) -> None:
    clips = [synth_voice(2.0, seed=s, f0=100.0 + 20 * s) for s in range(4)]
    spaces = [SPACE_VOXCELEB, SPACE_CNCELEB]
    expected = {
        (sp, i): tiny_registry.encoder(sp).embed(c) for sp in spaces for i, c in enumerate(clips)
    }
    results: dict[tuple[str, int], np.ndarray] = {}
    failures: list[BaseException] = []

    def work(space: str, index: int) -> None:
        try:
            for _ in range(3):
                results[(space, index)] = tiny_registry.encoder(space).embed(clips[index])
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=key) for key in expected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    for key, vector in expected.items():
        np.testing.assert_allclose(results[key], vector, atol=1e-5)


# --- language identification -------------------------------------------------------------------
def test_detect_maps_labels_to_codes_and_posteriors(
    tiny_registry: ModelRegistry, voice: np.ndarray
) -> None:
    detection = tiny_registry.require_language_identifier().detect(voice)
    assert (detection.language, detection.name) == ("en", "English")
    assert detection.confidence > 0.9
    assert len(detection.candidates) == 5
    assert detection.candidates[0] == LanguageCandidate("en", "English", detection.confidence)
    confidences = [c.confidence for c in detection.candidates]
    assert confidences == sorted(confidences, reverse=True)
    assert all(0.0 <= c <= 1.0 for c in confidences)
    assert len({c.language for c in detection.candidates}) == 5


def test_detect_all_candidates_are_a_probability_distribution(
    tiny_registry: ModelRegistry, voice: np.ndarray
) -> None:
    identifier = tiny_registry.require_language_identifier()
    everything = identifier.detect(voice, top_k=1000)
    assert len(everything.candidates) == 107
    assert sum(c.confidence for c in everything.candidates) == pytest.approx(1.0, abs=1e-4)
    codes = {c.language for c in everything.candidates}
    assert {"en", "zh", "ja", "ko", "th", "vi", "fr", "de"} <= codes
    assert all(re.fullmatch(r"[a-z]{2,3}", code) for code in codes), codes
    assert len(identifier.detect(voice, top_k=1).candidates) == 1
    assert len(identifier.detect(voice, top_k=0).candidates) == 1


def test_unfavoured_model_depends_on_input(tmp_path: Path) -> None:
    registry = ModelRegistry.load(
        {"langid": str(build_langid_model(tmp_path / "lid", seed=3))}, cache_dir=tmp_path
    )
    identifier = registry.require_language_identifier()
    a = identifier.detect(synth_voice(2.0, seed=1, f0=100.0), top_k=107)
    b = identifier.detect(synth_voice(2.0, seed=2, f0=240.0), top_k=107)
    assert a.confidence < 0.5
    pa = {c.language: c.confidence for c in a.candidates}
    pb = {c.language: c.confidence for c in b.candidates}
    assert max(abs(pa[k] - pb[k]) for k in pa) > 1e-6


def test_raw_logits_are_turned_into_probabilities(
    tiny_registry: ModelRegistry, voice: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    identifier = tiny_registry.require_language_identifier()
    logits = torch.linspace(-2.0, 3.0, 107).unsqueeze(0)
    monkeypatch.setattr(
        identifier.classifier,
        "classify_batch",
        lambda wavs: (logits, logits.max(-1).values, logits.argmax(-1), ["?"]),
    )
    detection = identifier.detect(voice, top_k=107)
    expected = torch.softmax(logits[0].double(), dim=0).numpy()
    assert detection.confidence == pytest.approx(float(expected.max()))
    assert sum(c.confidence for c in detection.candidates) == pytest.approx(1.0)


def test_detected_chinese_routes_to_cnceleb(
    langid_zh_dir: Path, tiny_registry: ModelRegistry, tmp_path: Path, voice: np.ndarray
) -> None:
    registry = ModelRegistry.load({"langid": str(langid_zh_dir)}, cache_dir=tmp_path)
    detection = registry.require_language_identifier().detect(voice)
    assert (detection.language, detection.name) == ("zh", "Chinese")
    assert detection.confidence > 0.9
    router = LanguageRouter(Settings(_env_file=None).cnceleb_languages)
    assert router.space_for(detection.language) == SPACE_CNCELEB
    english = tiny_registry.require_language_identifier().detect(voice)
    assert router.space_for(english.language) == SPACE_VOXCELEB


def test_voxlingua_label_set_routes_as_configured(tiny_registry: ModelRegistry) -> None:
    router = LanguageRouter(Settings(_env_file=None).cnceleb_languages)
    identifier = tiny_registry.require_language_identifier()
    to_cnceleb = {c for c in identifier.languages if router.space_for(c) == SPACE_CNCELEB}
    assert to_cnceleb == VOXLINGUA_CODES_TO_CNCELEB


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("zh: Chinese", ("zh", "Chinese")),
        ("haw: Hawaiian", ("haw", "Hawaiian")),
        ("  en :  English ", ("en", "English")),
        ("ia: Interlingua: x", ("ia", "Interlingua: x")),
        ("xx", ("xx", "xx")),
    ],
)
def test_split_language_label(label: str, expected: tuple[str, str]) -> None:
    assert split_language_label(label) == expected


# --- failures are recorded, never raised -------------------------------------------------------
@pytest.fixture
def broken_dir(tmp_path: Path) -> Path:
    directory = build_speaker_model(tmp_path / "broken", seed=5)
    ckpt = directory / "embedding_model.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:2000])
    return directory


def test_missing_broken_and_unreachable_models_are_recorded(
    tiny_model_dirs: dict[str, Path], broken_dir: Path, tmp_path: Path
) -> None:
    started = time.perf_counter()
    registry = ModelRegistry.load(
        {
            "langid": str(tmp_path / "no-such-model"),
            SPACE_VOXCELEB: str(tiny_model_dirs["voxceleb"]),
            SPACE_CNCELEB: str(broken_dir),
            "hub": "voicesearch-tests/no-such-model-4d1c",
        },
        cache_dir=tmp_path / "cache",
    )
    elapsed = time.perf_counter() - started
    assert elapsed < 15, f"failing loads took {elapsed:.1f}s"

    assert not registry.all_loaded
    assert set(registry.statuses) == {"langid", SPACE_VOXCELEB, SPACE_CNCELEB, "hub"}
    assert registry.statuses[SPACE_VOXCELEB].loaded
    assert set(registry.encoders) == {SPACE_VOXCELEB}
    assert registry.language_identifier is None

    for role, fragment in [
        ("langid", "does not exist"),
        (SPACE_CNCELEB, "embedding_model.ckpt"),
        ("hub", "voicesearch-tests/no-such-model-4d1c"),
    ]:
        status = registry.statuses[role]
        assert not status.loaded and status.identity is None and status.load_seconds is None
        assert status.error and fragment in status.error, status.error

    with pytest.raises(errors.ModelUnavailable) as raised:
        registry.encoder(SPACE_CNCELEB)
    assert raised.value.status_code == 503
    assert "cnceleb" in raised.value.message and "corrupt" in raised.value.message
    assert raised.value.details["source"] == str(broken_dir)

    with pytest.raises(errors.ModelUnavailable) as raised:
        registry.require_language_identifier()
    assert "language-ID" in raised.value.message and "does not exist" in raised.value.message

    with pytest.raises(errors.UnknownSpace):
        registry.encoder("klingon")


def test_checkpoint_keys_are_compared_with_the_module_not_read_from_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint with a key the module lacks (or lacking one it has) is refused, even when
    SpeechBrain's own warnings never reach a log handler (their text changes between releases)."""
    import logging

    monkeypatch.setattr(logging.getLogger("speechbrain.utils.checkpoints"), "disabled", True)
    directory = build_speaker_model(tmp_path / "model")
    state = torch.load(directory / "embedding_model.ckpt")
    state["blocks.0.extra.weight"] = torch.zeros(1)
    torch.save(state, directory / "embedding_model.ckpt")

    registry = ModelRegistry.load({SPACE_VOXCELEB: str(directory)}, cache_dir=tmp_path / "c")
    status = registry.statuses[SPACE_VOXCELEB]
    assert not status.loaded
    assert status.error_kind == "bad_checkpoint"
    assert "embedding_model.ckpt: unexpected blocks.0.extra.weight" in (status.error or "")


def test_unreachable_hub_fails_fast_with_a_clear_reason(tmp_path: Path) -> None:
    started = time.perf_counter()
    registry = ModelRegistry.load(
        {"langid": "speechbrain/lang-id-voxlingua107-ecapa-missing-in-tests"},
        cache_dir=tmp_path,
    )
    assert time.perf_counter() - started < 15
    error = registry.statuses["langid"].error or ""
    assert "lang-id-voxlingua107-ecapa-missing-in-tests" in error
    assert "hugging face" in error.lower()  # "could not reach the hub" or "no such repo"


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: (d / "hyperparams.yaml").unlink(), "no hyperparams.yaml"),
        (lambda d: (d / "embedding_model.ckpt").unlink(), "embedding_model.ckpt"),
        (
            lambda d: torch.save(
                dict(list(torch.load(d / "embedding_model.ckpt").items())[:-2]),
                d / "embedding_model.ckpt",
            ),
            "does not match",
        ),
        (
            lambda d: (d / "hyperparams.yaml").write_text("modules: !new:no.such.Module\n"),
            "no.such.Module",
        ),
    ],
    ids=["no-hparams", "no-ckpt", "partial-ckpt", "bad-yaml"],
)
def test_broken_directories_are_explained(tmp_path: Path, mutate, fragment: str) -> None:
    directory = build_speaker_model(tmp_path / "model")
    mutate(directory)
    registry = ModelRegistry.load({SPACE_VOXCELEB: str(directory)}, cache_dir=tmp_path / "c")
    status = registry.statuses[SPACE_VOXCELEB]
    assert not status.loaded
    assert fragment in (status.error or ""), status.error


def test_language_labels_must_match_the_classifier(tmp_path: Path) -> None:
    directory = build_langid_model(tmp_path / "lid")
    (directory / "label_encoder.txt").write_text(
        "'en: English' => 0\n'zh: Chinese' => 1\n================\n'starting_index' => 0\n"
    )
    registry = ModelRegistry.load({"langid": str(directory)}, cache_dir=tmp_path)
    assert "107 outputs" in (registry.statuses["langid"].error or "")


def test_empty_source_means_not_configured(tmp_path: Path) -> None:
    registry = ModelRegistry.load({SPACE_CNCELEB: ""}, cache_dir=tmp_path)
    assert registry.statuses[SPACE_CNCELEB].error == "no model source configured"
    with pytest.raises(errors.ModelUnavailable, match="not configured"):
        registry.encoder(SPACE_CNCELEB)


# --- identity ----------------------------------------------------------------------------------
def test_identity_follows_the_weights_not_the_location(tmp_path: Path) -> None:
    def identity_of(directory: Path) -> str:
        registry = ModelRegistry.load({SPACE_VOXCELEB: str(directory)}, cache_dir=tmp_path)
        identity = registry.statuses[SPACE_VOXCELEB].identity
        assert identity is not None
        return identity

    first = build_speaker_model(tmp_path / "a", seed=0)
    original = identity_of(first)
    assert original == identity_of(first)  # stable across loads
    shutil.copytree(first, tmp_path / "moved")
    assert identity_of(tmp_path / "moved") == original  # same weights elsewhere

    build_speaker_model(first, seed=1)  # new weights in the same directory
    changed = identity_of(first)
    assert changed != original
    assert changed.split("@")[0] == original.split("@")[0]


# --- hub sources -------------------------------------------------------------------------------
def _fake_hub(monkeypatch: pytest.MonkeyPatch, upstream: dict[str, Path]) -> list[str]:
    """Stand-in for huggingface_hub.hf_hub_download backed by local directories.

    Writes into the real cache layout (models--org--name/snapshots/<rev>/file), refuses to
    "download" when local_files_only is set and the file is not cached, and records downloads.
    """
    import huggingface_hub
    from huggingface_hub.utils import LocalEntryNotFoundError

    downloads: list[str] = []

    def hf_hub_download(repo_id: str, filename: str, *, cache_dir=None, **kwargs) -> str:
        repo = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
        target = repo / "snapshots" / ("0" * 40) / filename
        if not target.exists():
            if kwargs.get("local_files_only"):
                raise LocalEntryNotFoundError(f"{repo_id}/{filename} is not cached")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(upstream[repo_id] / filename, target)
            (repo / "refs").mkdir(exist_ok=True)
            (repo / "refs" / "main").write_text("0" * 40)
            downloads.append(filename)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr("service.pipeline.loading._probe_hub", lambda source: None)
    return downloads


def test_hub_model_is_downloaded_once_then_loads_offline(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = "LanceaKing/spkrec-ecapa-cnceleb"
    downloads = _fake_hub(monkeypatch, {repo: tiny_model_dirs["cnceleb"]})
    cache = tmp_path / "cache"

    first = ModelRegistry.load({SPACE_CNCELEB: repo}, cache_dir=cache)
    assert first.all_loaded, first.statuses
    assert "embedding_model.ckpt" in downloads and "hyperparams.yaml" in downloads
    assert any((cache / "huggingface").rglob("embedding_model.ckpt"))

    downloads.clear()
    # must not go online again
    monkeypatch.setattr("service.pipeline.loading._probe_hub", pytest.fail)
    second = ModelRegistry.load({SPACE_CNCELEB: repo}, cache_dir=cache)
    assert second.all_loaded, second.statuses
    assert downloads == []

    # Same weights as the local copy: same identity, same vectors.
    local = ModelRegistry.load({SPACE_CNCELEB: str(tiny_model_dirs["cnceleb"])}, cache_dir=cache)
    assert second.statuses[SPACE_CNCELEB].identity == local.statuses[SPACE_CNCELEB].identity
    clip = synth_voice(2.0, seed=3)
    np.testing.assert_allclose(
        second.encoder(SPACE_CNCELEB).embed(clip), local.encoder(SPACE_CNCELEB).embed(clip)
    )


def test_not_a_path_nor_a_repo_id_is_rejected_without_network(
    tmp_path: Path, no_network: None
) -> None:
    registry = ModelRegistry.load(
        {"a": str(tmp_path / "missing" / "dir"), "b": "not a repo id!", "c": "https://x.y/z"},
        cache_dir=tmp_path,
    )
    assert "does not exist" in (registry.statuses["a"].error or "")
    assert "does not exist" in (registry.statuses["b"].error or "")
    assert "URLs are not supported" in (registry.statuses["c"].error or "")


# --- misc --------------------------------------------------------------------------------------
def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device(" CPU ") == "cpu"
    assert resolve_device("cuda:1") == "cuda:1"


def test_unusable_device_is_reported_for_every_model(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    registry = ModelRegistry.load(
        {role: str(path) for role, path in tiny_model_dirs.items()},
        cache_dir=tmp_path,
        device="cuda",
    )
    assert not registry.encoders and registry.language_identifier is None
    for status in registry.statuses.values():
        assert "CUDA is not available" in (status.error or "")


def test_registry_can_be_assembled_from_loaded_models(tiny_registry: ModelRegistry) -> None:
    encoder = tiny_registry.encoder(SPACE_VOXCELEB)
    registry = ModelRegistry(encoders={SPACE_VOXCELEB: encoder})
    assert registry.all_loaded
    assert registry.statuses[SPACE_VOXCELEB].identity == encoder.identity
    with pytest.raises(errors.ModelUnavailable):
        registry.require_language_identifier()
