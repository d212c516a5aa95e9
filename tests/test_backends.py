"""service.pipeline.backends with the tiny random models: identities, batches, the export cache
(stale and corrupt exports rebuilt), the INT8 recipe, fallbacks, and export fingerprints.

Model behaviour shared by every backend (unit vectors, input checks, concurrency, language ID)
is tested in test_models.py over ``backend_registry``; the real model's equivalence to PyTorch
in test_backends_real.py.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from service.core.settings import InferenceSettings, Settings
from service.pipeline.backends import BACKENDS, HEAD_EMBEDDING, HEAD_LANGID
from service.pipeline.backends.calibration import DEFAULT_DIR, load_calibration
from service.pipeline.backends.export_cache import (
    EXPORTER_VERSION,
    ExportCache,
    ExportKey,
    compare_outputs,
)
from service.pipeline.backends.int8 import fp32_convs
from service.pipeline.backends.onnx_export import ExportError
from service.pipeline.batching import similar_length_batches
from service.pipeline.loading import load_classifier
from service.pipeline.registry import ModelRegistry
from tests.audio_factory import synth_voice
from tests.fingerprints import check_fingerprint
from tests.model_factory import load_tiny


def quiet_progress(desc: str, total: int):
    from tqdm import tqdm

    return tqdm(total=total, disable=True)


def inference(backend: str, calibration: Path | None = None) -> InferenceSettings:
    return InferenceSettings(backend=backend, threads=1, int8_calibration_dir=calibration)


@pytest.fixture(scope="module")
def loaded_voxceleb(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    return load_classifier(
        str(tiny_model_dirs["voxceleb"]), cache_dir=tmp_path_factory.mktemp("c"), device="cpu"
    )


# --- identities and what runs ------------------------------------------------------------------
def test_identity_and_backend_per_backend(backend_registry: ModelRegistry) -> None:
    """torch and onnx make the same vectors and share an identity; INT8 has its own."""
    for role, status in backend_registry.statuses.items():
        base = status.identity.split("+", 1)[0]
        assert status.loaded and status.identity.startswith(base)
        runtime = (
            backend_registry.language_identifier.runtime
            if role == "langid"
            else backend_registry.encoder(role).runtime
        )
        assert status.backend == runtime.backend
        if runtime.backend == "onnx-int8":
            assert status.identity.startswith(base + "+int8.") and len(status.identity) < 128
        else:
            assert "+" not in status.identity


def test_torch_and_onnx_share_identity_int8_does_not(tiny_model_dirs: dict[str, Path]) -> None:
    identities = {b: load_tiny(tiny_model_dirs, b).statuses["voxceleb"].identity for b in BACKENDS}
    assert identities["torch"] == identities["onnx"]
    assert identities["onnx-int8"] != identities["torch"]
    assert identities["onnx-int8"].startswith(identities["torch"] + "+int8.")


@pytest.mark.parametrize("head", [HEAD_EMBEDDING, HEAD_LANGID])
def test_padded_batch_matches_torch_on_the_same_batch(
    backend_registry: ModelRegistry, tiny_registry: ModelRegistry, head: str
) -> None:
    """Dynamic batch and length: three clips of different lengths in one call give what
    SpeechBrain gives for the same padded batch."""
    clips = [synth_voice(s, seed=n, f0=100.0 + 30 * n) for n, s in enumerate((1.3, 2.9, 0.7))]
    if head == HEAD_EMBEDDING:
        runtime = backend_registry.encoder("voxceleb").runtime
        classifier = backend_registry.encoder("voxceleb").classifier
    else:
        runtime = backend_registry.language_identifier.runtime
        classifier = backend_registry.language_identifier.classifier
    from service.pipeline.backends.torch_backend import TorchRuntime

    reference = TorchRuntime(classifier, head=head).forward(clips)
    got = runtime.forward(clips)
    assert got.shape == reference.shape and got.shape[0] == 3
    check = compare_outputs(head, reference, got)
    if runtime.backend == "onnx-int8":
        assert (
            check.get("min_cosine", 1.0) >= 0.99 and check.get("max_posterior_distance", 0) < 0.05
        )
    else:
        assert check.get("min_cosine", 1.0) >= 0.99999, check
        assert check.get("max_log_posterior_diff", 0.0) < 1e-4, check


def test_embed_many_equals_embed_on_the_cpu(backend_registry: ModelRegistry) -> None:
    encoder = backend_registry.encoder("voxceleb")
    assert encoder.batch_size == 1  # no batching on a CPU: each clip exactly as alone
    clips = [synth_voice(2.0 + 0.01 * n, seed=n) for n in range(3)]
    for many, clip in zip(encoder.embed_many(clips), clips, strict=True):
        np.testing.assert_allclose(many, encoder.embed(clip), atol=1e-6)


def test_similar_length_batches() -> None:
    lengths = [100, 50, 98, 97, 49, 10, 96]
    batches = similar_length_batches(lengths, max_batch=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        longest = max(lengths[i] for i in batch)
        assert min(lengths[i] for i in batch) >= 0.95 * longest
    assert batches[0] == [0, 2, 3]  # longest first
    assert similar_length_batches([], max_batch=4) == []
    assert similar_length_batches([5, 5, 5], max_batch=1) == [[0], [1], [2]]


# --- the export cache ---------------------------------------------------------------------------
def test_export_is_cached_checked_and_keyed(
    loaded_voxceleb, built_fp32: tuple[Path, ExportKey]
) -> None:
    path, key = built_fp32
    cache = ExportCache(path.parent.parent, progress=quiet_progress)
    assert path.parent.name.endswith(f"-v{EXPORTER_VERSION}")
    assert loaded_voxceleb.checkpoint_sha256[:16] in path.parent.name
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["check_against_torch"]["min_cosine"] >= 0.99999
    assert manifest["exporter_version"] == EXPORTER_VERSION and manifest["head"] == "embedding"
    stamp = path.stat().st_mtime_ns
    assert cache.fp32(key, loaded_voxceleb.classifier) == path
    assert path.stat().st_mtime_ns == stamp  # reused, not rebuilt


@pytest.fixture(scope="module")
def built_fp32(loaded_voxceleb, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportKey]:
    cache = ExportCache(tmp_path_factory.mktemp("exports"), progress=quiet_progress)
    key = ExportKey(loaded_voxceleb.name, loaded_voxceleb.checkpoint_sha256, HEAD_EMBEDDING)
    return cache.fp32(key, loaded_voxceleb.classifier), key


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-1000]), "size differs"),
        (lambda p: p.write_bytes(b"x" + p.read_bytes()[1:]), "sha256 differs"),
        (lambda p: p.with_suffix(".json").unlink(), "manifest is missing"),
        (lambda p: p.with_suffix(".json").write_text("{not json"), "manifest is missing"),
        (
            lambda p: p.with_suffix(".json").write_text(
                json.dumps(
                    {**json.loads(p.with_suffix(".json").read_text()), "exporter_version": 0}
                )
            ),
            "stale: exporter_version",
        ),
        (lambda p: p.unlink(), "not built yet"),
    ],
)
def test_stale_or_corrupt_exports_are_recognised(
    built_fp32: tuple[Path, ExportKey], tmp_path: Path, damage, reason: str
) -> None:
    original, key = built_fp32
    path = tmp_path / "fp32.onnx"
    path.write_bytes(original.read_bytes())
    path.with_suffix(".json").write_bytes(original.with_suffix(".json").read_bytes())
    expected = ExportCache._expected(key, "fp32")
    assert ExportCache.invalid_reason(path, expected) is None
    damage(path)
    assert reason in (ExportCache.invalid_reason(path, expected) or "")


def test_a_corrupt_export_is_rebuilt_never_used(
    loaded_voxceleb, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = ExportCache(tmp_path, progress=quiet_progress)
    key = ExportKey(loaded_voxceleb.name, loaded_voxceleb.checkpoint_sha256, HEAD_EMBEDDING)
    path = cache.fp32(key, loaded_voxceleb.classifier)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # a half-written file
    with caplog.at_level(logging.WARNING):
        assert cache.fp32(key, loaded_voxceleb.classifier) == path
    assert "rebuilding" in caplog.text and "size differs" in caplog.text
    assert ExportCache.invalid_reason(path, cache._expected(key, "fp32")) is None
    assert len(path.read_bytes()) == len(good)  # the same graph again


def test_concurrent_first_uses_export_once(
    loaded_voxceleb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.pipeline.backends import export_cache

    calls: list[int] = []
    real = export_cache.export_onnx

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(export_cache, "export_onnx", counting)
    cache = ExportCache(tmp_path, progress=quiet_progress)
    key = ExportKey(loaded_voxceleb.name, loaded_voxceleb.checkpoint_sha256, HEAD_EMBEDDING)
    paths: list[Path] = []
    threads = [
        threading.Thread(target=lambda: paths.append(cache.fp32(key, loaded_voxceleb.classifier)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(paths) == 3 and len(set(paths)) == 1 and len(calls) == 1


def test_onnx_writes_only_its_exports_into_the_cache(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    before = {p: p.stat().st_mtime_ns for p in tiny_model_dirs["voxceleb"].iterdir()}
    registry = ModelRegistry.load(
        {"voxceleb": str(tiny_model_dirs["voxceleb"])},
        cache_dir=cache,
        device="cpu",
        inference=inference("onnx"),
        progress=quiet_progress,
    )
    assert registry.all_loaded, registry.statuses
    written = {p.relative_to(cache).parts[0] for p in cache.rglob("*") if p.is_file()}
    assert written == {"onnx"}
    assert {p: p.stat().st_mtime_ns for p in tiny_model_dirs["voxceleb"].iterdir()} == before


# --- the INT8 recipe ----------------------------------------------------------------------------
def test_int8_keeps_the_sensitive_convs_fp32_with_u8_weights(
    loaded_voxceleb, tmp_path: Path
) -> None:
    import onnx

    cache = ExportCache(tmp_path, progress=quiet_progress)
    key = ExportKey(loaded_voxceleb.name, loaded_voxceleb.checkpoint_sha256, HEAD_EMBEDDING)
    calibration = load_calibration()
    path = cache.int8(key, loaded_voxceleb.classifier, calibration)
    fp32 = onnx.load(str(path.with_name("fp32.onnx")))
    kept = fp32_convs(fp32)
    model = onnx.load(str(path))
    initializers = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    float_convs = {n.name for n in convs if n.input[1] in initializers}
    assert float_convs == set(kept)
    assert any("/embedding/blocks.1/" in n for n in kept) and any("/fbank/" in n for n in kept)
    assert len(convs) - len(float_convs) >= 20  # the bulk of the network is INT8
    weight_points = [
        initializers[n.input[2]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[2].endswith("weight_zero_point")
    ]
    assert weight_points and all(z.data_type == onnx.TensorProto.UINT8 for z in weight_points)
    # Quantising is deterministic: a rebuild gives the very same file.
    first = path.read_bytes()
    cache.discard(path)
    assert cache.int8(key, loaded_voxceleb.classifier, calibration).read_bytes() == first


def test_shipped_calibration_speech() -> None:
    shipped = load_calibration()
    assert shipped.source == str(DEFAULT_DIR) and len(shipped.waves) == 5
    assert 20.0 < shipped.seconds < 30.0
    assert all(w.dtype == np.float32 and np.abs(w).max() > 0.05 for w in shipped.waves)
    assert load_calibration().digest == shipped.digest  # stable: it keys the INT8 identity
    assert (DEFAULT_DIR / "README.md").is_file()


def test_own_calibration_changes_the_int8_identity(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    import soundfile as sf

    folder = tmp_path / "calib"
    folder.mkdir()
    for n in range(2):
        sf.write(folder / f"{n}.wav", synth_voice(3.0, seed=40 + n), 16_000)
    (folder / "notes.txt").write_text("ignored")

    def identity(calibration: Path | None) -> str:
        registry = ModelRegistry.load(
            {"voxceleb": str(tiny_model_dirs["voxceleb"])},
            cache_dir=tmp_path / "cache",
            inference=inference("onnx-int8", calibration),
            progress=quiet_progress,
        )
        assert registry.all_loaded, registry.statuses
        return registry.statuses["voxceleb"].identity

    shipped, own = identity(None), identity(folder)
    assert shipped != own and shipped.split("+")[0] == own.split("+")[0]
    assert len(list((tmp_path / "cache" / "onnx").glob("*/int8-*.onnx"))) == 2


def test_unusable_calibration_leaves_int8_unloaded(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.wav").write_bytes(b"RIFF not really")
    registry = ModelRegistry.load(
        {"voxceleb": str(tiny_model_dirs["voxceleb"])},
        cache_dir=tmp_path / "cache",
        inference=inference("onnx-int8", empty),
        progress=quiet_progress,
    )
    status = registry.statuses["voxceleb"]
    assert not status.loaded and "INT8 model could not be built" in (status.error or "")
    assert "broken.wav" in (status.error or "")


def test_failed_fp32_export_falls_back_to_torch_with_the_same_identity(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.pipeline.backends import export_cache

    def broken(*args, **kwargs):
        raise ExportError("simulated exporter failure")

    monkeypatch.setattr(export_cache, "export_onnx", broken)
    registry = ModelRegistry.load(
        {"voxceleb": str(tiny_model_dirs["voxceleb"])},
        cache_dir=tmp_path / "cache",
        inference=inference("onnx"),
        progress=quiet_progress,
    )
    status = registry.statuses["voxceleb"]
    assert status.loaded and registry.encoder("voxceleb").runtime.backend == "torch"
    assert "onnx export failed: ExportError: simulated exporter failure" in (status.backend or "")
    torch_identity = (
        ModelRegistry.load(
            {"voxceleb": str(tiny_model_dirs["voxceleb"])}, cache_dir=tmp_path / "c2"
        )
        .statuses["voxceleb"]
        .identity
    )
    assert status.identity == torch_identity


def test_settings_choose_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(_env_file=None).backend == "torch"  # the default (bench/RESULTS.md)
    monkeypatch.setenv("VOICESEARCH_BACKEND", "onnx-int8")
    monkeypatch.setenv("VOICESEARCH_INT8_CALIBRATION_DIR", "/some/dir")
    section = Settings(_env_file=None).inference()
    assert section.backend == "onnx-int8" and section.int8_calibration_dir == Path("/some/dir")
    monkeypatch.setenv("VOICESEARCH_BACKEND", "tensorrt")
    with pytest.raises(ValueError):
        Settings(_env_file=None)


# --- drift: an exported model's outputs must not change unnoticed ------------------------------
def _fingerprint_inputs() -> list[np.ndarray]:
    return [synth_voice(2.0, seed=91, f0=115.0), synth_voice(3.0, seed=92, f0=190.0)]


def test_exported_models_do_not_drift(backend_registry: ModelRegistry) -> None:
    """The tiny models' exported outputs against stored fingerprints (tests/fingerprints.py)."""
    encoder = backend_registry.encoder("voxceleb")
    backend = encoder.runtime.backend
    if backend == "torch":
        pytest.skip("nothing exported: torch is the reference")
    vectors = [encoder.embed(x) for x in _fingerprint_inputs()]
    check_fingerprint(f"tiny/{backend}", vectors, 0.999999 if backend == "onnx" else 0.9999)


# --- voicesearch export ------------------------------------------------------------------------
def test_export_command_builds_once_and_reports(
    tiny_model_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from service.cli import main

    for name, value in {
        "VOICESEARCH_DATA_DIR": str(tmp_path / "data"),
        "VOICESEARCH_MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "VOICESEARCH_MODEL_VOXCELEB": str(tiny_model_dirs["voxceleb"]),
        "VOICESEARCH_MODEL_LANGID": "off",
        "VOICESEARCH_MODEL_CNCELEB": "off",
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["export", "--calibration", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert main(["export", "--backend", "onnx-int8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "voxceleb: onnx-int8, identity " in out and "+int8." in out
    built = sorted((tmp_path / "cache" / "onnx").glob("*/*.onnx"))
    assert [p.name.split("-")[0] for p in built] == ["fp32.onnx", "int8"]
    assert all(str(p) in out for p in built)
    stamps = [p.stat().st_mtime_ns for p in built]
    assert main(["export", "--backend", "onnx-int8", "--no-progress"]) == 0  # cached: reused
    assert [p.stat().st_mtime_ns for p in built] == stamps
